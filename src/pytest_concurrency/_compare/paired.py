"""A storm run against the control and the experiment in two processes, round by round.

Both processes import the app by the same import path, each from its own tree, and
build the same plan; each runs one warm-up round that is thrown away, then they
alternate A B, B A, A B … (A the control), so a drift of the machine (a neighbour
starting, a CPU clocking down) falls on both sides of the pairs alike. In *duet* order
(Bulej et al., "Duet benchmarking", 2020) the two rounds of a pair run at once instead:
a neighbour's burst falls on both rounds of the pair, pairs cost half the time, but each
side shares the machine with the other. Each round is a sixth of the storm's duration
(or request count), so six pairs cost about two storms (one in duet).

After :data:`~.stats.MIN_PAIRS` pairs every judged figure is checked after each pair;
the rounds stop when none is inconclusive or one regressed ("settled"), when the next
pair would pass the time budget ("time cap"), or when no inconclusive figure could
settle within it, by the pairs' spread or by its interval narrowing as ``1/sqrt(pairs)``
("noise too wide"). Both processes are stopped on every exit path: the parent
terminates them, and each ends itself when its parent disappears.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from time import perf_counter
from typing import Any

import pytest_concurrency

from .._baseline.thresholds import Threshold
from .._engine import shards as _shards  # noqa: F401 - registers the histogram pickler
from .._engine.plan import StormPlan
from .._errors import ConfigError, StormError
from .._model.result import StormResult
from .._params import Layer
from .spec import ChildSpec
from .stats import MIN_PAIRS, paired_change, projected_half_width
from .verdict import (
    IDLE_BUSY,
    FigureVerdict,
    busy_share,
    figure_values,
    judge,
    storm_verdict,
    verdict_line,
)

__all__ = ["Child", "Children", "PairedOutcome", "live_children", "run_paired"]

#: Seconds each process gets to import the app and plan the storm.
_STARTUP_TIMEOUT = 60.0
#: Seconds between SIGTERM and SIGKILL when a process is stopped.
_KILL_GRACE = 2.0
#: Most pairs, whatever the budget.
MAX_PAIRS = 30
#: A round is this fraction of the storm: the fewest pairs cost about two storms.
ROUND_SHARE = 1 / 6
#: Shortest round, seconds.
MIN_ROUND_S = 0.2

#: Said of every storm whose pairs ran in duet.
DUET_NOTE = (
    "rounds ran in duet: each experiment round shared the machine with a control round, so "
    "its figures (and the storm's budgets judged on them) are those of half the machine"
)

_LIVE: set[subprocess.Popen[bytes]] = set()

#: One string-hash seed for both sides: with a seed of its own, each process lays out its
#: dicts and sets differently, a fixed difference of a few percent that every pair repeats.
_HASH_SEED = os.environ.get("PYTHONHASHSEED") or str(random.SystemRandom().randrange(1, 2**32))


def live_children() -> list[int]:
    """Process ids of control and experiment processes still running (none between storms)."""
    return [p.pid for p in list(_LIVE) if p.poll() is None]


@dataclass
class PairedOutcome:
    """The verdict on a storm run paired, and the experiment's rounds."""

    against: str
    verdicts: list[FigureVerdict]
    pairs: int
    ended: str
    seconds: float
    order: str
    experiment: list[StormResult] = field(default_factory=list)
    control: list[StormResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """``regressed``, ``inconclusive``, ``improved``, ``unchanged`` or ``unmeasured``."""
        return storm_verdict(self.verdicts)

    @property
    def line(self) -> str:
        """The one-line verdict (at most 160 characters)."""
        return verdict_line(self.verdicts, against=self.against, pairs=self.pairs, ended=self.ended)

    def to_dict(self) -> dict[str, Any]:
        """The storm's JSON ``comparison`` block."""
        return {
            "mode": "paired",
            "against": self.against,
            "verdict": self.verdict,
            "line": self.line,
            "pairs": self.pairs,
            "ended": self.ended,
            "seconds": round(self.seconds, 3),
            "order": self.order,
            "figures": [v.to_dict() for v in self.verdicts],
            "notes": list(self.notes),
        }

    def chosen(self) -> StormResult:
        """The experiment's round with the median p99: the storm's result."""
        ordered = sorted(self.experiment, key=lambda r: (r.latency.p99, -r.throughput))
        return ordered[(len(ordered) - 1) // 2]


def round_layer(plan: StormPlan, scale: tuple[float, str] | None) -> Layer:
    """One round of the pairs: a sixth of the storm, never repeated by ``rounds``."""
    config = plan.config
    factor = scale[0] if scale is not None else 1.0
    values: dict[str, Any] = {"rounds": 1}
    if config.stages:
        pass  # a staged storm's shape is its stages: every round runs them whole
    elif config.duration is not None:
        values["duration"] = max(MIN_ROUND_S, config.duration * ROUND_SHARE) / factor
        values["warmup"] = config.warmup * ROUND_SHARE / factor
    elif config.requests is not None:
        values["requests"] = max(1, math.ceil(config.requests * ROUND_SHARE / factor))
    return Layer("a round of --concurrency-control", values)


def default_budget(plan: StormPlan) -> float | None:
    """Seconds of pairs allowed when the user set none: four times the storm (None: unknown)."""
    config = plan.config
    if config.stages:
        return 4.0 * sum(seconds for seconds, _ in config.stages)
    if config.duration is not None:
        return 4.0 * (config.duration + config.warmup)
    return None


def check_sendable(spec: ChildSpec, option: str) -> None:
    """Every parameter must cross to the processes: a clear error before any load if not."""
    for layer in spec.layers:
        for name, value in layer.values.items():
            try:
                pickle.dumps(value)
            except Exception as exc:
                raise ConfigError(
                    f"{name}={value!r} (from {layer.origin}) cannot be sent to the control and "
                    f"experiment processes of {option}: {type(exc).__name__}: {exc}; define it "
                    "at module level"
                ) from None
    try:
        pickle.dumps(spec.requests)
    except Exception as exc:
        raise ConfigError(
            f"requests={spec.requests!r} cannot be sent to the control and experiment "
            f"processes of {option}: {type(exc).__name__}: {exc}; define it at module level"
        ) from None


class Child:
    """A control or experiment process, serving every storm whose app comes from its tree."""

    def __init__(self, role: str) -> None:
        self.role = role
        ours, theirs = socket.socketpair()
        package_parent = str(Path(pytest_concurrency.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONHASHSEED"] = _HASH_SEED
        env["PYTHONPATH"] = os.pathsep.join(
            [package_parent, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
        )
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pytest_concurrency._compare.child",
                    str(theirs.fileno()),
                    str(os.getpid()),
                ],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        _LIVE.add(self.process)
        self.conn = Connection(ours.detach())

    def plan(self, spec: ChildSpec) -> None:
        """Ask the process to import the app and plan its storm (answered by receive())."""
        self.conn.send(("plan", spec))

    def receive(self, timeout: float) -> tuple[str, Any]:
        # The process holds the only other end of the socket: its death reads as EOF.
        if wait([self.conn], timeout):
            try:
                message: tuple[str, Any] = self.conn.recv()
            except (EOFError, OSError):
                pass
            else:
                return message
        elif self.process.poll() is None:
            raise StormError(f"the {self.role} process did not answer within {timeout:.0f} s")
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(5.0)
        raise StormError(
            f"the {self.role} process (pid {self.process.pid}) died with exit code "
            f"{self.process.returncode}"
        )

    def round(self, timeout: float) -> StormResult:
        self.start_round()
        return self.finish_round(timeout)

    def start_round(self) -> None:
        """Ask for one round (answered by :meth:`finish_round`)."""
        self.conn.send("round")

    def finish_round(self, timeout: float) -> StormResult:
        """The round asked for by :meth:`start_round`."""
        kind, payload = self.receive(timeout)
        if kind != "done":
            raise StormError(f"the {self.role} process failed: {payload}")
        result: StormResult = payload
        return result

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the process: its socket closed, SIGTERM, SIGKILL after a grace period."""
        with suppress(OSError):
            self.conn.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(_KILL_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5.0)
        _LIVE.discard(self.process)


class Children:
    """The session's control and experiment processes, by role and ``sys.path``: started on
    first use, reused by later storms, stopped by :meth:`close` (and when a storm fails)."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, tuple[str, ...]], Child] = {}

    def get(self, role: str, spec: ChildSpec) -> Child:
        """The process for *role* importing from *spec*'s ``sys.path``."""
        key = (role, tuple(spec.sys_path))
        child = self._running.get(key)
        if child is None or not child.alive:
            child = self._running[key] = Child(role)
        return child

    def discard(self, child: Child) -> None:
        """Stop *child* and forget it (its state is unknown after a failure)."""
        child.stop()
        self._running = {k: c for k, c in self._running.items() if c is not child}

    def close(self) -> None:
        """Stop every process."""
        running, self._running = list(self._running.values()), {}
        for child in running:
            child.stop()


@contextmanager
def _pair(
    children: Children, control: ChildSpec, experiment: ChildSpec
) -> Iterator[tuple[Child, Child]]:
    a = children.get("control", control)
    b = children.get("experiment", experiment)
    try:
        yield a, b
    except BaseException:
        # A failed or interrupted storm leaves the processes mid-round: stop them.
        children.discard(a)
        children.discard(b)
        raise


def _median(values: Sequence[float]) -> float:
    kept = sorted(v for v in values if not math.isnan(v))
    if not kept:
        return math.nan
    mid = len(kept) // 2
    return kept[mid] if len(kept) % 2 else (kept[mid - 1] + kept[mid]) / 2


def could_settle(verdict: FigureVerdict, pairs: int, reachable: int) -> bool:
    """Whether an inconclusive figure could settle by *reachable* pairs.

    Two projections, either enough: the interval as the pairs' spread predicts it on
    *reachable* pairs (:func:`~.stats.projected_half_width`, around today's estimate),
    and today's interval narrowed as ``1/sqrt(n)``. The first matters on few pairs: the
    exact interval on 6 pairs spans every pair (its extremes), far wider than the spread
    says, and narrows faster than ``1/sqrt(n)`` as pairs are added."""
    change = verdict.change
    if verdict.verdict != "inconclusive" or change is None or change.low <= 0:
        return verdict.verdict == "inconclusive"
    allowed = math.log(verdict.allowed)
    estimate, low, high = math.log(change.ratio), math.log(change.low), math.log(change.high)
    if not verdict.figure.bigger_is_worse:
        estimate, low, high = -estimate, -high, -low
    shrink = math.sqrt(pairs / max(pairs, reachable))
    narrowed = (estimate - (estimate - low) * shrink, estimate + (high - estimate) * shrink)
    candidates = [narrowed]
    if math.isfinite(change.spread):
        half = projected_half_width(change.spread, max(pairs, reachable))
        candidates.append((estimate - half, estimate + half))
    return any(lo > allowed or hi <= allowed for lo, hi in candidates)


def _plan_both(
    a: Child, b: Child, control: ChildSpec, experiment: ChildSpec, *, against: str, option: str
) -> None:
    """Both processes import the app and plan the storm; one that cannot is a clear error
    before any load."""
    a.plan(control)
    b.plan(experiment)
    for child, spec in ((a, control), (b, experiment)):
        kind, payload = child.receive(_STARTUP_TIMEOUT)
        if kind == "error":
            if child is a:
                raise ConfigError(
                    f"{option}: the control {against!r} cannot import the app "
                    f"{spec.app!r}: {payload}"
                )
            raise ConfigError(
                f"{option}: the experiment process cannot import the app {spec.app!r}: {payload}"
            )


def _one_pair(
    a: Child,
    b: Child,
    outcome: PairedOutcome,
    values: dict[str, tuple[list[float], list[float]]],
    *,
    duet: bool,
    timeout: float,
) -> str:
    """Run one pair of rounds (A first on even pairs, B first on odd ones), add them to
    *outcome* and their figures to *values*; return the pair's order (``AB``, ``BA`` or
    ``[AB]`` in duet)."""
    sides = (a, b) if outcome.pairs % 2 == 0 else (b, a)
    if duet:
        for child in sides:
            child.start_round()
        got = [(child, child.finish_round(timeout)) for child in sides]
    else:
        got = [(child, child.round(timeout)) for child in sides]
    for child, result in got:
        (outcome.control if child is a else outcome.experiment).append(result)
        for name, value in figure_values(result).items():
            pair = values.setdefault(name, ([], []))
            pair[0 if child is a else 1].append(value)
    outcome.pairs += 1
    return "[AB]" if duet else "".join("A" if child is a else "B" for child in sides)


def run_paired(
    children: Children,
    control: ChildSpec,
    experiment: ChildSpec,
    *,
    thresholds: Sequence[Threshold],
    against: str,
    budget: float | None,
    option: str,
    round_timeout: float,
    cpu_named: bool = True,
    duet: bool = False,
) -> PairedOutcome:
    """Run the storm paired until its verdict settles or the budget is spent.

    *duet*: each pair's two rounds run at once (both processes started together) rather
    than one after the other.

    CPU per request that the thresholds did not name (*cpu_named* False) is left out for
    a storm whose threads ran less than :data:`IDLE_BUSY` of its rounds.
    """
    started = perf_counter()
    with _pair(children, control, experiment) as (a, b):
        _plan_both(a, b, control, experiment, against=against, option=option)
        a.round(round_timeout)  # warm-up rounds, thrown away
        b.round(round_timeout)
        begun = perf_counter()
        values: dict[str, tuple[list[float], list[float]]] = {}
        outcome = PairedOutcome(against, [], 0, "time cap", 0.0, "")
        order: list[str] = []
        verdicts: list[FigureVerdict] = []
        judged = list(thresholds)
        busy = math.nan
        pair_seconds = 0.0
        while outcome.pairs < MAX_PAIRS:
            first = perf_counter()
            order.append(_one_pair(a, b, outcome, values, duet=duet, timeout=round_timeout))
            pair_seconds = max(pair_seconds, perf_counter() - first)
            if outcome.pairs >= MIN_PAIRS:
                busy = _median([busy_share(r) for r in outcome.control + outcome.experiment])
                judged = [
                    t for t in thresholds if cpu_named or t.figure != "cpu" or not busy < IDLE_BUSY
                ]
                verdicts = [
                    judge(t, paired_change(*values.get(t.figure, ([], [])))) for t in judged
                ]
                settled = all(v.verdict != "inconclusive" for v in verdicts) or any(
                    v.verdict == "regressed" for v in verdicts
                )
                if settled:
                    outcome.ended = "settled"
                    break
                spent = perf_counter() - begun
                cap = budget if budget is not None else pair_seconds * 2 * MIN_PAIRS
                if spent + pair_seconds > cap:
                    outcome.ended = f"time cap {cap:.1f} s"
                    break
                reachable = outcome.pairs + int((cap - spent) / pair_seconds)
                if not any(could_settle(v, outcome.pairs, reachable) for v in verdicts):
                    outcome.ended = f"noise too wide to settle within {cap:.1f} s"
                    break
        else:
            outcome.ended = f"cap of {MAX_PAIRS} pairs"
        outcome.verdicts = verdicts
        if duet:
            outcome.notes.append(DUET_NOTE)
        if len(judged) < len(thresholds):
            outcome.notes.append(
                f"CPU per request not judged: the storm's threads ran {busy:.0%} of its rounds, "
                "so it is mostly the harness's own fixed costs (name cpu:N% to judge it)"
            )
        outcome.order = "".join(order)
        outcome.seconds = perf_counter() - started
        return outcome
