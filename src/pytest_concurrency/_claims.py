"""Popular claims of framework-comparison articles, measured in-process, each with a verdict.

``pytest-storm demo`` runs the scenarios below against the framework examples in
``examples/`` and prints one row per claim: the claim, where it is usually read, the
scenario that tests it, the figures measured per framework, and a verdict.

Verdicts are computed, never written down: each ``judge_*`` function below takes measured
figures and returns "holds", "holds partly" or "does not hold here" with a reason built
from those figures, against thresholds named at the top of this module. The scenario
runners only measure; the judges only judge, so tests can pin the judges with made-up
figures.
"""

from __future__ import annotations

import math
import os
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._api import capacity, run_storm
from ._capacity import CapacityResult
from ._errors import ConcurrencyWarning, ConfigError
from ._report._text import format_number
from ._result import StormResult
from ._simio import Upstream, lognormal
from ._workload import Request

__all__ = [
    "ESTIMATED",
    "HOLDS",
    "MEASURED",
    "NOT_HERE",
    "PARTLY",
    "UNKNOWN",
    "ClaimRow",
    "DemoSettings",
    "Judgement",
    "ScalePoint",
    "ScaleSeries",
    "StormRecord",
    "available_memory_mb",
    "check_examples",
    "claims_markdown",
    "claims_table",
    "judge_async_not_blocking",
    "judge_blocking_in_async",
    "judge_choose_fastapi",
    "judge_scale",
    "judge_streaming",
    "judge_sync_to_async",
    "judge_worker_ratio",
    "peak_rss_growth",
    "run_claims",
    "storms_table",
]

HOLDS = "holds"
PARTLY = "holds partly"
NOT_HERE = "does not hold here"

# -- thresholds of the verdicts ----------------------------------------------------------

#: Claim 1: a worker ratio of at least this share of the claimed one holds ("about 8×")…
RATIO_HOLDS_SHARE = 0.75
#: …and a ratio of at least this still shows the direction of the claim (holds partly).
RATIO_PARTLY_MIN = 2.0
#: Claim 2: the p99 the articles quote, and the error rate above which a scale breaks anyway.
SCALE_P99_MS = 100.0
SCALE_MAX_ERROR_RATE = 0.01
#: Claim 2: the scales the articles name.
CLAIMED_FASTAPI_USERS = 50_000
CLAIMED_DJANGO_SPIKE_USERS = 10_000
CLAIMED_CHOICE_USERS = 5_000
#: Claim 3: per-request cost of the ORM view's own hop (after the query itself) that holds,
#: and below which the difference is within run-to-run noise.
HOP_HOLDS_US = 100.0
HOP_NOISE_US = 25.0
#: Claim 4a: async throughput of at least this share of Little's law (users / wait) holds,
#: this share holds partly; the longest loop stall must stay under this share of the wait.
ASYNC_HOLDS_SHARE = 0.8
ASYNC_PARTLY_SHARE = 0.5
ASYNC_MAX_LAG_SHARE = 0.2
#: Claim 4b: a blocked loop serves at most this multiple of one-request-at-a-time (1 / wait)
#: and is blocked at least this share of the storm.
SERIAL_MAX_MULTIPLE = 1.5
BLOCKED_MIN_SHARE = 0.8
#: Claim 5: the first byte must arrive at least this share of the streamed span before
#: the end (holds), or at least this many ms before it (holds partly).
STREAM_EARLY_SHARE = 0.5
STREAM_MIN_GAP_MS = 5.0

# -- the scenarios' constants ------------------------------------------------------------

#: The model server behind /llm: the articles' 800 ms median / 2 s tail, scaled down 10×.
MODEL_P50_MS = 80.0
MODEL_P99_MS = 200.0
#: Budget of the capacity search, as a multiple of the model's own p99.
LLM_BUDGET_FACTOR = 2.5
LLM_USERS = 50
CLAIMED_WORKER_RATIO = 8.0
#: Every /io endpoint of the examples waits this long on simulated I/O.
IO_WAIT_MS = 50.0
#: WSGI server model of the scale storms: gunicorn with this many sync workers.
WSGI_WORKERS = 8
#: Streamed answer of the model server: chunks and the wait between them.
STREAM_CHUNKS = ("Hel", "lo", ",", " th", "ere", "!", " How", " can I help?")
STREAM_CHUNK_MS = 10.0
STREAM_FIRST_P50_MS = 20.0
STREAM_FIRST_P99_MS = 60.0
#: The 50k storm runs only when its projected memory is under this share of what is free.
MEMORY_SHARE_FOR_50K = 0.5
#: A scale storm whose throughput is under this share of users / wait was capped.
CAPPED_SHARE = 0.8
#: Requests per second one core of FastAPI serves, to size warm-up and window of big storms
#: (a round of n users takes about n / ROUND_RPS seconds).
ROUND_RPS = 12_000

#: Frameworks whose scale ladder never stops early: the claim's subject and its base.
_EVERY_SCALE = ("FastAPI", "Starlette")
_MODEL_URL = "http://model-server/generate"
_STREAM_URL = "http://model-server/stream"
_EXAMPLES = {
    "FastAPI": "examples/fastapi_app.py:app",
    "Starlette": "examples/starlette_app.py:app",
    "Flask": "examples/flask_app.py:app",
    "Django ASGI": "examples/django_app.py:asgi_app",
    "Django WSGI": "examples/django_app.py:wsgi_app",
}


@dataclass(frozen=True)
class Judgement:
    """A verdict and the reason for it, computed from measured figures."""

    verdict: str
    reason: str


# -- 1. workers for an LLM endpoint ------------------------------------------------------


def judge_worker_ratio(
    async_workers: int | None,
    sync_workers: int | None,
    *,
    claimed: float = CLAIMED_WORKER_RATIO,
    largest: int = 64,
) -> Judgement:
    """Claim 1: does the sync app need about *claimed* times the async app's workers?"""
    if async_workers is None:
        return Judgement(NOT_HERE, f"the async app met no budget even with {largest} workers")
    if sync_workers is None:
        ratio = (largest + 1) / async_workers
        bound = f"more than {largest} workers (> {ratio:.0f}×)"
    else:
        ratio = sync_workers / async_workers
        bound = f"{ratio:.1f}×"
    need = claimed * RATIO_HOLDS_SHARE
    if ratio >= need:
        return Judgement(
            HOLDS,
            f"sync needed {bound} the async workers; the claim (≈ {claimed:g}×) holds from "
            f"{need:g}×",
        )
    if ratio >= RATIO_PARTLY_MIN:
        return Judgement(
            PARTLY,
            f"sync needed {bound} the async workers: more, as claimed, but under the "
            f"{need:g}× that ≈ {claimed:g}× allows",
        )
    return Judgement(
        NOT_HERE, f"sync needed only {bound} the async workers (< {RATIO_PARTLY_MIN:g}×)"
    )


# -- 2. scale ------------------------------------------------------------------------------


MEASURED, ESTIMATED, UNKNOWN = "measured", "estimated", "unknown"


@dataclass(frozen=True)
class ScalePoint:
    """One storm of a scale ladder; ``p99_ms`` is None when the storm was not run."""

    users: int
    p99_ms: float | None
    rps: float = 0.0
    error_rate: float = 0.0
    skipped: str = ""
    capped: bool = False
    """Throughput was capped (well under users / wait): more users would only queue."""

    @property
    def ran(self) -> bool:
        """Whether this scale was stormed."""
        return self.p99_ms is not None

    def ok(self, limit: float = SCALE_P99_MS) -> bool:
        """Whether the storm ran and kept its p99 (and errors) within the claim's budget."""
        return (
            self.p99_ms is not None
            and self.p99_ms <= limit
            and self.error_rate <= SCALE_MAX_ERROR_RATE
        )


@dataclass(frozen=True)
class ScaleSeries:
    """One framework's scale ladder, smallest scale first."""

    framework: str
    points: tuple[ScalePoint, ...]

    def held_up_to(self, limit: float = SCALE_P99_MS) -> int:
        """Largest scale below the first break that kept p99 within *limit* (0 if none)."""
        held = 0
        for point in self.points:
            if not point.ran:
                break
            if not point.ok(limit):
                break
            held = point.users
        return held

    def broke_at(self, limit: float = SCALE_P99_MS) -> int | None:
        """Smallest scale that broke the budget (None if none that ran did)."""
        for point in self.points:
            if point.ran and not point.ok(limit):
                return point.users
        return None

    def p99_at(self, users: int) -> tuple[float | None, str]:
        """p99 at *users* and how it is known: ``measured``, ``estimated`` or ``unknown``.

        A scale that was not run is estimated from the last one that was, if that one's
        throughput was capped: by Little's law a closed model's mean latency is then
        ``users / throughput``, and its p99 is no lower than that or than the p99 already seen.
        """
        last: ScalePoint | None = None
        for point in self.points:
            if point.users > users:
                break
            if point.ran:
                last = point
                if point.users == users:
                    return point.p99_ms, MEASURED
        if last is None or last.p99_ms is None:
            return None, UNKNOWN
        if last.capped and last.rps > 0:
            return max(last.p99_ms, users / last.rps * 1000), ESTIMATED
        return last.p99_ms, UNKNOWN

    @property
    def largest_run(self) -> int:
        """Largest scale that was stormed."""
        return max((p.users for p in self.points if p.ran), default=0)


def _users(n: int) -> str:
    return f"{n:,}"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def judge_scale(
    fastapi: ScaleSeries,
    django: Sequence[ScaleSeries],
    *,
    limit: float = SCALE_P99_MS,
    claimed_users: int = CLAIMED_FASTAPI_USERS,
    claimed_spike: int = CLAIMED_DJANGO_SPIKE_USERS,
) -> Judgement:
    """Claim 2a: FastAPI holds p99 under *limit* at *claimed_users*; Django breaks by *claimed_spike*."""
    fa_held = fastapi.held_up_to(limit)
    # The most favourable Django deployment stands for Django.
    best = max(django, key=lambda s: s.held_up_to(limit)) if django else None
    dj_held = best.held_up_to(limit) if best is not None else 0
    dj_broke = best.broke_at(limit) if best is not None else None
    fa_text = (
        f"FastAPI kept p99 ≤ {limit:g} ms up to {_users(fa_held)} users"
        if fa_held
        else f"FastAPI broke p99 ≤ {limit:g} ms at its smallest scale"
    )
    fa_broke = fastapi.broke_at(limit)
    if fa_broke is not None:
        p99, _ = fastapi.p99_at(fa_broke)
        fa_text += f" (p99 {format_number(p99 or math.nan)} ms at {_users(fa_broke)})"
    dj_name = best.framework if best is not None else "Django"
    dj_text = (
        f"{dj_name} held up to {_users(dj_held)}"
        if dj_held
        else f"{dj_name} held at none of its scales"
    )
    if dj_broke is not None:
        dj_text += f" (broke at {_users(dj_broke)})"
    if fa_held >= claimed_users and dj_broke is not None and dj_broke <= claimed_spike:
        return Judgement(HOLDS, f"{fa_text}; {dj_text}")
    if fa_held > dj_held:
        short = (
            f"{claimed_users / fa_held:,.0f}× short of the claimed {_users(claimed_users)}"
            if fa_held
            else "nowhere near the claim"
        )
        if fastapi.largest_run < claimed_users and fa_broke is None:
            short = f"{_users(claimed_users)} was not run"
        return Judgement(PARTLY, f"{fa_text}, {short}; {dj_text}: FastAPI outlasts Django")
    return Judgement(NOT_HERE, f"{fa_text}; {dj_text}: FastAPI did not outlast Django")


def judge_choose_fastapi(
    fastapi: ScaleSeries,
    others: Sequence[ScaleSeries],
    *,
    limit: float = SCALE_P99_MS,
    from_users: int = CLAIMED_CHOICE_USERS,
) -> Judgement:
    """Claim 2b: from *from_users* up, FastAPI beats the others and stays usable (p99 ≤ *limit*)."""
    scales = [p.users for p in fastapi.points if p.ran and p.users >= from_users]
    note = ""
    if not scales and fastapi.largest_run:
        scales = [fastapi.largest_run]
        note = f" ({_users(from_users)} was not run)"
    if not scales:
        return Judgement(NOT_HERE, "FastAPI was not stormed")
    worse: list[str] = []
    unknown: list[str] = []
    estimated = False
    for users in scales:
        fa_p99, _ = fastapi.p99_at(users)
        for other in others:
            p99, how = other.p99_at(users)
            if how == UNKNOWN or p99 is None:
                unknown.append(f"{other.framework} at {_users(users)}")
                continue
            estimated = estimated or how == ESTIMATED
            if fa_p99 is not None and p99 < fa_p99:
                approx = "≈ " if how == ESTIMATED else ""
                worse.append(
                    f"{other.framework} {approx}{format_number(p99)} ms at {_users(users)}"
                )
    first = scales[0]
    fa_first = fastapi.p99_at(first)[0]
    fa_text = f"FastAPI p99 {format_number(fa_first if fa_first is not None else math.nan)} ms"
    if worse:
        return Judgement(NOT_HERE, f"{fa_text} at {_users(first)}{note} lost to {', '.join(worse)}")
    names = ", ".join(o.framework for o in others)
    lead = f"from {_users(first)} users{note} FastAPI had a lower p99 than {names}"
    if estimated:
        lead += " (some by Little's law from their capped throughput)"
    if unknown:
        return Judgement(PARTLY, f"{lead} where known; not known: {', '.join(unknown)}")
    if fa_first is not None and fa_first <= limit:
        return Judgement(
            HOLDS, f"{lead}, and kept it ≤ {limit:g} ms ({format_number(fa_first)} ms)"
        )
    return Judgement(
        PARTLY,
        f"{lead}, but its {format_number(fa_first if fa_first is not None else math.nan)} ms is "
        f"over {limit:g} ms: on one core none of them holds that load",
    )


# -- 3. Django's sync_to_async ---------------------------------------------------------------


def judge_sync_to_async(
    async_view_us: float, orm_view_us: float, query_us: float, *, threads: int
) -> Judgement:
    """Claim 3: the ORM view's own hop costs more than noise once the query itself is paid."""
    hop = orm_view_us - async_view_us - query_us
    share = hop / orm_view_us if orm_view_us > 0 else 0.0
    figures = (
        f"/orm costs {format_number(orm_view_us)} µs a request against "
        f"{format_number(async_view_us)} µs without the hop; minus the query itself "
        f"({format_number(query_us)} µs) the hop costs {format_number(round(hop))} µs "
        f"({share:.0%} of the request), on up to {_count(threads, 'thread')}"
    )
    if hop >= HOP_HOLDS_US:
        return Judgement(HOLDS, f"{figures} (≥ {HOP_HOLDS_US:g} µs)")
    if hop >= HOP_NOISE_US:
        return Judgement(PARTLY, f"{figures}: measurable, under {HOP_HOLDS_US:g} µs")
    return Judgement(NOT_HERE, f"{figures}: within noise (< {HOP_NOISE_US:g} µs)")


# -- 4. blocking -----------------------------------------------------------------------------


def judge_async_not_blocking(
    rps: float, *, users: int, wait_ms: float, loop_lag_max_ms: float
) -> Judgement:
    """Claim 4a: an async endpoint serves its users concurrently (Little's law) without stalls."""
    ideal = users / (wait_ms / 1000)
    share = rps / ideal if ideal > 0 else 0.0
    lag_limit = ASYNC_MAX_LAG_SHARE * wait_ms
    figures = (
        f"{format_number(round(rps))} rps = {share:.0%} of users / wait "
        f"({format_number(round(ideal))} rps); longest loop stall {format_number(loop_lag_max_ms)} ms"
    )
    stalled = not loop_lag_max_ms < lag_limit  # NaN (not measured) counts as a stall
    if share >= ASYNC_HOLDS_SHARE and not stalled:
        return Judgement(
            HOLDS,
            f"{figures}: at least {ASYNC_HOLDS_SHARE:.0%} with no stall of "
            f"{format_number(lag_limit)} ms",
        )
    if share >= ASYNC_PARTLY_SHARE:
        why = "the loop stalled" if stalled else f"under {ASYNC_HOLDS_SHARE:.0%}"
        return Judgement(PARTLY, f"{figures}: {why}")
    return Judgement(NOT_HERE, f"{figures}: under {ASYNC_PARTLY_SHARE:.0%}")


def judge_blocking_in_async(
    rps: float, *, users: int, wait_ms: float, blocked_share: float
) -> Judgement:
    """Claim 4b: a blocking call in ``async def`` serialises every user (one request per wait)."""
    serial = 1000 / wait_ms
    concurrent = users * serial
    figures = (
        f"{format_number(round(rps, 1))} rps against {format_number(serial)} for one request at a "
        f"time and {format_number(round(concurrent))} if concurrent; loop blocked "
        f"{blocked_share:.0%} of the storm"
    )
    if rps <= SERIAL_MAX_MULTIPLE * serial and blocked_share >= BLOCKED_MIN_SHARE:
        return Judgement(HOLDS, figures)
    if rps < ASYNC_PARTLY_SHARE * concurrent:
        return Judgement(PARTLY, f"{figures}: slowed, not serialised")
    return Judgement(NOT_HERE, f"{figures}: the users were still served concurrently")


# -- 5. streaming ----------------------------------------------------------------------------


def judge_streaming(ttfb: dict[str, tuple[float, float]], *, span_ms: float) -> Judgement:
    """Claim 5: the first byte arrives well before the end; *ttfb* maps framework → (ttfb, total) p50."""
    if not ttfb:
        return Judgement(NOT_HERE, "no streaming storm ran")
    early_need = STREAM_EARLY_SHARE * span_ms
    streamed, partly, buffered = [], [], []
    for name, (first, total) in ttfb.items():
        gap = total - first
        text = f"{name} first byte {format_number(first)} ms, last {format_number(total)} ms"
        if gap >= early_need:
            streamed.append(text)
        elif gap >= STREAM_MIN_GAP_MS:
            partly.append(text)
        else:
            buffered.append(text)
    detail = "; ".join(streamed + partly + buffered)
    if not partly and not buffered:
        return Judgement(
            HOLDS,
            f"{detail}: first byte ≥ {format_number(early_need)} ms (half the "
            f"{format_number(span_ms)} ms token stream) before the end",
        )
    if streamed or partly:
        return Judgement(PARTLY, f"{detail}: not every framework streamed early")
    return Judgement(NOT_HERE, f"{detail}: the body arrived in one piece")


# -- measuring -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo's storms: the full run (≈ 2 min) or ``--quick`` (under a minute)."""

    quick: bool
    duration: float
    warmup: float
    capacity_workers: range
    scale_users: tuple[int, ...]
    scale_duration: float
    big_users: int | None
    blocking_duration: float

    @classmethod
    def full_run(cls) -> DemoSettings:
        """The settings of ``pytest-storm demo``."""
        return cls(
            quick=False,
            duration=2.5,
            warmup=0.3,
            capacity_workers=range(1, 65),
            scale_users=(100, 1_000, 5_000, 10_000),
            scale_duration=2.0,
            big_users=CLAIMED_FASTAPI_USERS,
            blocking_duration=2.5,
        )

    @classmethod
    def quick_run(cls) -> DemoSettings:
        """The settings of ``pytest-storm demo --quick``."""
        return cls(
            quick=True,
            duration=0.6,
            warmup=0.2,
            capacity_workers=range(1, 33),
            scale_users=(100, 1_000, 5_000),
            scale_duration=0.6,
            big_users=None,
            blocking_duration=1.0,
        )


@dataclass
class StormRecord:
    """One storm of the demo, the claim it served and how much memory it took."""

    claim: str
    framework: str
    result: StormResult
    rss_growth_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (histograms left out)."""
        return {
            "claim": self.claim,
            "framework": self.framework,
            "rss_growth_mb": self.rss_growth_mb,
            "storm": self.result.to_dict(histograms=False),
        }


@dataclass
class ClaimRow:
    """One claim: what it says, where it is read, the scenario, the figures and the verdict."""

    number: str
    claim: str
    source: str
    scenario: str
    figures: list[str]
    judgement: Judgement
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        """``holds``, ``holds partly`` or ``does not hold here``."""
        return self.judgement.verdict

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "number": self.number,
            "claim": self.claim,
            "source": self.source,
            "scenario": self.scenario,
            "figures": self.figures,
            "verdict": self.judgement.verdict,
            "reason": self.judgement.reason,
            "notes": self.notes,
            "measured": self.data,
            "seconds": round(self.seconds, 1),
        }


def check_examples(root: Path) -> None:
    """Raise :class:`ConfigError` unless *root* holds the framework examples and their libraries."""
    missing = [spec for spec in _EXAMPLES.values() if not (root / spec.split(":")[0]).is_file()]
    if missing:
        raise ConfigError(
            f"the demo storms the framework examples in ./examples, and {root} has no "
            f"{missing[0].split(':')[0]}: run `pytest-storm demo` from the repository root"
        )
    for module in ("fastapi", "starlette", "flask", "django"):
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(
                f"the demo needs {module}: pip install 'pytest-storm[examples]'"
            ) from None


def _status_kb(name: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return float(line.split()[1])
    return None


def available_memory_mb() -> float | None:
    """Memory the kernel says is available to new allocations (Linux), in MB."""
    try:
        text = Path("/proc/meminfo").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return float(line.split()[1]) / 1024
    return None


@contextmanager
def peak_rss_growth() -> Iterator[list[float]]:
    """Yield a list that receives the growth of resident memory (MB) at the peak of the block.

    Linux only: writing 5 to ``/proc/self/clear_refs`` resets the process's peak (VmHWM),
    so the peak of each storm is its own and not the largest of the run so far. Elsewhere
    the list stays empty.
    """
    found: list[float] = []
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        yield found
        return
    base = _status_kb("VmRSS")
    yield found
    peak = _status_kb("VmHWM")
    if base is not None and peak is not None:
        found.append(max(0.0, (peak - base) / 1024))


class _Demo:
    """Runs the scenarios: loads each example once and keeps every storm for the report."""

    def __init__(self, settings: DemoSettings, root: Path, progress: Callable[[str], None]):
        self.settings = settings
        self.root = root
        self.progress = progress
        self.apps: dict[str, Any] = {}
        self.storms: list[StormRecord] = []

    def app(self, framework: str) -> Any:
        from ._cli import load_app

        if framework not in self.apps:
            path, _, attr = _EXAMPLES[framework].partition(":")
            self.apps[framework] = load_app(f"{self.root / path}:{attr}")
        return self.apps[framework]

    def storm(
        self,
        claim: str,
        framework: str,
        method: str | None = None,
        path: str | None = None,
        **params: Any,
    ) -> StormRecord:
        label = path or (params["requests"][0].label if "requests" in params else "?")
        users = params.get("users", 10)
        self.progress(f"  claim {claim}: {framework} {label}, {users:,} users")
        params.setdefault("seed", 1)
        with peak_rss_growth() as growth:
            result = run_storm(self.app(framework), method, path, check=False, **params)
        record = StormRecord(claim, framework, result, growth[0] if growth else None)
        self.storms.append(record)
        return record

    # -- 1 ---------------------------------------------------------------------------------

    def llm_workers(self) -> ClaimRow:
        s = self.settings
        budget = LLM_BUDGET_FACTOR * MODEL_P99_MS
        prompt = Request("POST", "/llm", json={"prompt": "Say hello", "max_tokens": 16})
        found: dict[str, CapacityResult] = {}
        with Upstream() as upstream:
            upstream.route(
                _MODEL_URL,
                latency=lognormal(p50_ms=MODEL_P50_MS, p99_ms=MODEL_P99_MS),
                json={"text": "Hello!", "tokens": 3},
                seed=1,
            )
            for framework in ("FastAPI", "Flask"):
                self.progress(f"  claim 1: capacity of {framework} POST /llm, {LLM_USERS} users")
                found[framework] = result = capacity(
                    self.app(framework),
                    requests=[prompt],
                    users=LLM_USERS,
                    duration=s.duration,
                    warmup=s.warmup,
                    p99_ms=budget,
                    max_error_rate=0,
                    workers=s.capacity_workers,
                    seed=1,
                )
                for workers, storm in sorted(result.results.items()):
                    self.storms.append(StormRecord("1", f"{framework} ({workers} w.)", storm))
        largest = s.capacity_workers[-1]
        fast, flask = found["FastAPI"], found["Flask"]
        judgement = judge_worker_ratio(fast.best, flask.best, largest=largest)
        figures = [_capacity_line(name, found[name]) for name in ("FastAPI", "Flask")]
        if fast.best and flask.best:
            figures.append(f"ratio {flask.best / fast.best:.1f}×")
        model = lognormal(p50_ms=MODEL_P50_MS, p99_ms=MODEL_P99_MS)
        mean_ms = model.mean_ms
        notes = [
            "a worker count is not a property of a framework: by Little's law W sync workers "
            f"give {LLM_USERS} users a mean latency of {LLM_USERS} × "
            f"{format_number(mean_ms)} ms (the model's mean) / W, so a mean under "
            f"{format_number(budget)} ms already takes ≥ {LLM_USERS * mean_ms / budget:.1f} "
            "workers and the p99 more; the ratio follows the budget and the user count",
        ]
        if fast.best == 1:
            notes.append(
                "the async app's one worker is one event loop; in-process, more ASGI workers "
                "would share the same core"
            )
        return ClaimRow(
            "1",
            "50 concurrent users on an LLM endpoint: async FastAPI needs about 8× fewer "
            "workers than sync Flask",
            "FastAPI vs Flask articles on serving LLM endpoints",
            f"POST /llm → model server lognormal p50 {MODEL_P50_MS:g} / p99 {MODEL_P99_MS:g} ms "
            f"(the articles' 800 ms / 2 s ÷ 10); {LLM_USERS} users; budget p99 ≤ "
            f"{budget:g} ms (= {LLM_BUDGET_FACTOR:g} × the model's p99) and no errors; "
            f"smallest worker count of {s.capacity_workers[0]}–{largest} (capacity search)",
            figures,
            judgement,
            notes,
            {name: found[name].to_dict() for name in found} | {"budget_p99_ms": budget},
        )

    # -- 2 ---------------------------------------------------------------------------------

    def scale(self) -> tuple[ClaimRow, ClaimRow]:
        s = self.settings
        plans: list[tuple[str, str, dict[str, Any]]] = [
            ("FastAPI", "/io", {}),
            ("Starlette", "/io", {}),
            ("Django ASGI", "/async-io", {}),
            ("Flask", "/io", {"workers": WSGI_WORKERS}),
            ("Django WSGI", "/io", {"workers": WSGI_WORKERS}),
        ]
        series: dict[str, ScaleSeries] = {}
        records: dict[str, dict[int, StormRecord]] = {}
        for framework, path, extra in plans:
            points: list[ScalePoint] = []
            records[framework] = {}
            broken: ScalePoint | None = None
            for users in s.scale_users:
                if broken is not None:
                    points.append(
                        ScalePoint(
                            users,
                            None,
                            skipped=f"not run: p99 was already {format_number(broken.p99_ms or 0)}"
                            f" ms at {_users(broken.users)}",
                        )
                    )
                    continue
                record = self.storm(
                    "2",
                    framework,
                    "GET",
                    path,
                    users=users,
                    # One round of every user must finish before measuring starts, and
                    # the window must hold about two rounds, or it sees one wave of them.
                    duration=max(s.scale_duration, 2 * users / ROUND_RPS),
                    warmup=max(s.warmup, users / ROUND_RPS),
                    timeout_ms=10_000,
                    **extra,
                )
                records[framework][users] = record
                point = _point(record.result)
                points.append(point)
                if not point.ok() and framework not in _EVERY_SCALE:
                    # Closed-model latency only grows with users once throughput is capped:
                    # the larger scales would only queue longer, for many seconds a storm.
                    broken = point
            series[framework] = ScaleSeries(framework, tuple(points))
        big_note = self._big_storm(series, records)
        fastapi = series["FastAPI"]
        django = [series["Django ASGI"], series["Django WSGI"]]
        others = [series["Django ASGI"], series["Django WSGI"], series["Flask"]]
        figures = [_ladder_line(series[name]) for name, _, _ in plans]
        largest = max(
            (r for rs in records.values() for r in rs.values()), key=lambda r: r.result.users
        )
        notes = [big_note, *_scale_notes(fastapi, records["FastAPI"], largest)]
        scenario = (
            f"GET /io (async wait {IO_WAIT_MS:g} ms; Django ASGI: /async-io; Flask and Django "
            f"WSGI: time.sleep on {WSGI_WORKERS} sync workers); closed users at "
            + ", ".join(_users(u) for u in s.scale_users)
            + (f" (+ {_users(s.big_users)} for FastAPI)" if s.big_users else "")
            + f"; {s.scale_duration:g} s each, or two rounds of every user if longer; FastAPI "
            "and Starlette run every scale, the others stop at "
            f"their first p99 > {SCALE_P99_MS:g} ms"
        )
        data: dict[str, Any] = {
            name: [
                {
                    "users": p.users,
                    "p99_ms": p.p99_ms,
                    "rps": p.rps,
                    "error_rate": p.error_rate,
                    "skipped": p.skipped,
                }
                for p in ser.points
            ]
            for name, ser in series.items()
        }
        data["largest_storm"] = {
            "framework": largest.framework,
            "users": largest.result.users,
            "rss_growth_mb": largest.rss_growth_mb,
        }
        first = ClaimRow(
            "2a",
            "FastAPI holds 50k concurrent users at p99 < 100 ms; Django spikes at 10k",
            "FastAPI vs Django vs Flask performance comparison articles",
            scenario,
            figures,
            judge_scale(fastapi, django),
            notes,
            data,
        )
        choice = judge_choose_fastapi(fastapi, others)
        starlette_p99, how_s = series["Starlette"].p99_at(CLAIMED_CHOICE_USERS)
        fa_p99, how_f = fastapi.p99_at(CLAIMED_CHOICE_USERS)
        choice_notes = []
        if starlette_p99 is not None and fa_p99 is not None and how_s == how_f == MEASURED:
            choice_notes.append(
                f"Starlette, which FastAPI is built on, had p99 {format_number(starlette_p99)} ms "
                f"where FastAPI had {format_number(fa_p99)} ms: the cost is FastAPI's own "
                "per-request work (validation, serialisation), not async"
            )
        second = ClaimRow(
            "2b",
            "Above 5k concurrent users, choose FastAPI",
            "'FastAPI vs Django vs Flask: which to choose' articles",
            "the storms of 2a at ≥ 5,000 users; a ladder that stopped is estimated by Little's "
            "law (users / its capped throughput) from its last storm",
            _choice_lines(series, CLAIMED_CHOICE_USERS),
            choice,
            choice_notes,
            {},
        )
        return first, second

    def _big_storm(
        self, series: dict[str, ScaleSeries], records: dict[str, dict[int, StormRecord]]
    ) -> str:
        """Storm FastAPI at the articles' 50k users if memory allows; say why or why not."""
        big = self.settings.big_users
        if big is None:
            return (
                f"{_users(CLAIMED_FASTAPI_USERS)} users not run in --quick mode "
                "(the full demo runs it when memory allows)"
            )
        fastapi = records["FastAPI"]
        if not fastapi:
            return f"{_users(big)} users not run: FastAPI did not run"
        top = max(fastapi)
        per_user = (fastapi[top].rss_growth_mb or 0.0) / top
        free = available_memory_mb()
        projected = per_user * big
        if free is None or fastapi[top].rss_growth_mb is None:
            return f"{_users(big)} users not run: memory cannot be measured on this system"
        if projected > MEMORY_SHARE_FOR_50K * free:
            return (
                f"{_users(big)} users not run: projected {projected:,.0f} MB "
                f"({per_user * 1024:,.0f} KB per user at {_users(top)}) is over "
                f"{MEMORY_SHARE_FOR_50K:.0%} of the {free:,.0f} MB available"
            )
        record = self.storm(
            "2",
            "FastAPI",
            "GET",
            "/io",
            users=big,
            duration=max(self.settings.scale_duration, 2 * big / ROUND_RPS),
            warmup=max(self.settings.warmup, big / ROUND_RPS),
            timeout_ms=20_000,
        )
        fastapi[big] = record
        points = [*series["FastAPI"].points, _point(record.result)]
        series["FastAPI"] = ScaleSeries("FastAPI", tuple(points))
        grew = record.rss_growth_mb or 0.0
        return (
            f"{_users(big)} users run for FastAPI only, the claim's subject: projected "
            f"{projected:,.0f} MB from {_users(top)} users, measured {grew:,.0f} MB "
            f"({grew * 1024 / big:,.1f} KB per user) of {free:,.0f} MB available"
        )

    # -- 3 ---------------------------------------------------------------------------------

    def django_hop(self) -> ClaimRow:
        s = self.settings
        users = 50
        params: dict[str, Any] = {"users": users, "duration": s.duration, "warmup": s.warmup}
        plain = self.storm("3", "Django ASGI", "GET", "/async-item/3", **params)
        orm = self.storm("3", "Django ASGI", "GET", "/orm/3", **params)
        base = self.storm("3", "Starlette", "GET", "/items/3", **params)
        query_us = _query_cost_us()
        cost = {name: _cost_us(r.result) for name, r in (("plain", plain), ("orm", orm))}
        threads = {name: _asgiref_threads(r.result) for name, r in (("plain", plain), ("orm", orm))}
        base_us = _cost_us(base.result)
        judgement = judge_sync_to_async(
            cost["plain"], cost["orm"], query_us, threads=threads["orm"]
        )
        figures = [
            f"Django ASGI /async-item/3 (async view, no hop of its own): "
            f"{format_number(round(cost['plain']))} µs a request, "
            f"{format_number(round(plain.result.throughput))} rps, p50 "
            f"{format_number(plain.result.latency.p50)} ms, up to {_count(threads['plain'], 'asgiref thread')}",
            f"Django ASGI /orm/3 (sync_to_async around Item.objects.get): "
            f"{format_number(round(cost['orm']))} µs a request, "
            f"{format_number(round(orm.result.throughput))} rps, p50 "
            f"{format_number(orm.result.latency.p50)} ms, up to {_count(threads['orm'], 'asgiref thread')}",
            f"the SQLite query alone, called directly: {format_number(round(query_us, 1))} µs",
            f"reference, Starlette /items/3 (no hop): {format_number(round(base_us, 1))} µs a request",
        ]
        notes = [
            f"even without a hop of its own, Django's async view cost "
            f"{cost['plain'] / base_us:,.0f}× Starlette's handler"
            + (
                f" and kept up to {_count(threads['plain'], 'asgiref thread')} busy: Django's ASGI handler "
                "sends request_started/request_finished (sync receivers) and closes the "
                "response through sync_to_async, so every request hops to a thread anyway"
                if threads["plain"]
                else ""
            ),
            "each request runs in its own ThreadSensitiveContext, so the threads grow with the "
            "requests in flight instead of being capped like a pool",
        ]
        return ClaimRow(
            "3",
            "Django's async views still need sync_to_async in places, which adds overhead",
            "Django async views guides and Django vs FastAPI comparisons",
            f"GET /async-item/3 vs /orm/3 on Django ASGI, {users} users, no I/O wait: cost per "
            "request = 1 / throughput at saturation",
            figures,
            judgement,
            notes,
            {
                "cost_us": cost,
                "query_us": query_us,
                "threads": threads,
                "starlette_us": base_us,
            },
        )

    # -- 4 ---------------------------------------------------------------------------------

    def blocking(self) -> tuple[ClaimRow, ClaimRow]:
        s = self.settings
        users = 50
        io = self.storm(
            "4", "FastAPI", "GET", "/io", users=users, duration=s.duration, warmup=s.warmup
        )
        blocked = self.storm(
            "4",
            "FastAPI",
            "GET",
            "/blocking-in-async",
            users=users,
            duration=s.blocking_duration,
            # Every user's first request waits for the 49 before it: one full round first.
            warmup=users * IO_WAIT_MS / 1000,
        )
        io_lag = io.result.loop_lag
        bl_lag = blocked.result.loop_lag
        io_max = io_lag.max_ms if io_lag is not None else math.nan
        bl_max = bl_lag.max_ms if bl_lag is not None else math.nan
        bl_share = bl_lag.blocked_share if bl_lag is not None else 0.0
        site = bl_lag.sites[0] if bl_lag is not None and bl_lag.sites else None
        figures = [
            _storm_line("FastAPI /io (await anyio.sleep)", io.result)
            + f", longest loop stall {format_number(io_max)} ms",
            _storm_line("FastAPI /blocking-in-async (time.sleep)", blocked.result)
            + f", loop blocked {bl_share:.0%} of the storm",
            "blocking line named: "
            + (f"{site.location} → {site.call}" if site is not None else "none found"),
        ]
        scenario = (
            f"GET on FastAPI, {users} users, each request waiting {IO_WAIT_MS:g} ms: "
            "/io awaits the wait, /blocking-in-async calls time.sleep in async def"
        )
        first = ClaimRow(
            "4a",
            "An async endpoint does not block other users",
            "async vs sync Python web framework explainers",
            scenario,
            figures[:1],
            judge_async_not_blocking(
                io.result.throughput, users=users, wait_ms=IO_WAIT_MS, loop_lag_max_ms=io_max
            ),
            [],
            {"rps": io.result.throughput, "p50_ms": io.result.latency.p50, "lag_max_ms": io_max},
        )
        second = ClaimRow(
            "4b",
            "…but one blocking call inside async def stalls every user",
            "FastAPI async pitfalls articles",
            scenario,
            figures[1:],
            judge_blocking_in_async(
                blocked.result.throughput, users=users, wait_ms=IO_WAIT_MS, blocked_share=bl_share
            ),
            [
                f"mean latency {format_number(blocked.result.latency.mean)} ms ≈ {users} users × "
                f"{IO_WAIT_MS:g} ms: each user waits for the others' sleeps (p50 and p99 swing "
                "with the order the loop serves them)"
            ],
            {
                "rps": blocked.result.throughput,
                "p50_ms": blocked.result.latency.p50,
                "mean_ms": blocked.result.latency.mean,
                "blocked_share": bl_share,
                "lag_max_ms": bl_max,
                "site": site.to_dict() if site is not None else None,
            },
        )
        return first, second

    # -- 5 ---------------------------------------------------------------------------------

    def streaming(self) -> ClaimRow:
        s = self.settings
        users = 20
        prompt = Request("POST", "/stream", json={"prompt": "hi"})
        found: dict[str, StormRecord] = {}
        with Upstream() as upstream:
            upstream.route(
                _STREAM_URL,
                latency=lognormal(p50_ms=STREAM_FIRST_P50_MS, p99_ms=STREAM_FIRST_P99_MS),
                stream=list(STREAM_CHUNKS),
                chunk_latency=STREAM_CHUNK_MS,
                seed=1,
            )
            servers: list[tuple[str, dict[str, Any]]] = [
                ("FastAPI", {}),
                ("Flask", {"workers": WSGI_WORKERS}),
            ]
            for framework, extra in servers:
                found[framework] = self.storm(
                    "5",
                    framework,
                    requests=[prompt],
                    users=users,
                    duration=s.duration,
                    warmup=s.warmup,
                    **extra,
                )
        span = (len(STREAM_CHUNKS) - 1) * STREAM_CHUNK_MS
        pairs: dict[str, tuple[float, float]] = {}
        figures = []
        for name, record in found.items():
            r = record.result
            first, total = r.ttfb.p50, r.latency.p50
            queue = r.queue_wait.p50 if r.queue_wait is not None else 0.0
            # A WSGI request's first byte also waits for a worker; the stream starts after.
            key = f"{name} (after its queue)" if r.queue_wait is not None else name
            pairs[key] = (first - queue, total - queue)
            line = (
                f"{name}: first byte p50 {format_number(first)} ms, whole answer p50 "
                f"{format_number(total)} ms"
            )
            if r.queue_wait is not None and r.service_time is not None:
                line += (
                    f" (of which {format_number(queue)} ms queued for one of {WSGI_WORKERS} "
                    f"workers; each worker held {format_number(r.service_time.p50)} ms per stream)"
                )
            figures.append(line)
        return ClaimRow(
            "5",
            "Streaming responses serve tokens as they arrive",
            "LLM streaming (SSE) with FastAPI tutorials",
            f"POST /stream relaying a model stream: first chunk lognormal p50 "
            f"{STREAM_FIRST_P50_MS:g} / p99 {STREAM_FIRST_P99_MS:g} ms, then "
            f"{len(STREAM_CHUNKS) - 1} chunks {STREAM_CHUNK_MS:g} ms apart; {users} users",
            figures,
            judge_streaming(pairs, span_ms=span),
            [
                "a sync worker is held for the whole stream, not just until the first token: "
                "streaming improves time to first token, not how many users a worker serves"
            ],
            {name: {"ttfb_p50_ms": f, "total_p50_ms": t} for name, (f, t) in pairs.items()},
        )


def _point(result: StormResult) -> ScalePoint:
    p99 = result.latency.p99
    ideal = result.users / (IO_WAIT_MS / 1000)
    return ScalePoint(
        result.users,
        p99 if not math.isnan(p99) else math.inf,
        result.throughput,
        result.error_rate if result.requests else 1.0,
        capped=result.throughput < CAPPED_SHARE * ideal,
    )


def _choice_lines(series: dict[str, ScaleSeries], from_users: int) -> list[str]:
    fastapi = series["FastAPI"]
    scales = [p.users for p in fastapi.points if p.ran and p.users >= from_users]
    lines = []
    for users in scales or [fastapi.largest_run]:
        cells = []
        for name, ser in series.items():
            p99, how = ser.p99_at(users)
            if p99 is None or how == UNKNOWN:
                cells.append(f"{name} –")
            elif how == ESTIMATED:
                cells.append(f"{name} ≈ {format_number(round(p99))} (Little's law)")
            else:
                cells.append(f"{name} {format_number(round(p99))}")
        lines.append(f"p99 ms at {_users(users)} users: " + " · ".join(cells))
    return lines


def _ladder_line(series: ScaleSeries) -> str:
    cells = []
    for p in series.points:
        if p.p99_ms is None:
            cells.append(f"{_short(p.users)}: –")
        else:
            errors = f" ({p.error_rate:.0%} errors)" if p.error_rate > SCALE_MAX_ERROR_RATE else ""
            cells.append(f"{_short(p.users)}: {format_number(round(p.p99_ms))}{errors}")
    held = series.held_up_to()
    tail = f"≤ {SCALE_P99_MS:g} ms up to {_users(held)}" if held else "over from the start"
    return f"{series.framework} p99 ms — " + " · ".join(cells) + f" → {tail}"


def _short(users: int) -> str:
    return f"{users // 1000}k" if users >= 1000 and users % 1000 == 0 else str(users)


def _scale_notes(
    fastapi: ScaleSeries, records: dict[int, StormRecord], largest: StormRecord
) -> list[str]:
    notes = []
    if records:
        peak = max(records.values(), key=lambda r: r.result.throughput)
        rps = peak.result.throughput
        fits = rps * SCALE_P99_MS / 1000
        held = fastapi.held_up_to()
        cores = f"≈ {CLAIMED_FASTAPI_USERS / max(fits, 1):,.0f}"
        if held:
            cores += f"–{CLAIMED_FASTAPI_USERS / held:,.0f}"
        notes.append(
            f"FastAPI peaked at {format_number(round(rps))} rps on one core (loop busy "
            f"{(peak.result.loop_cpu_share or 0):.0%}); by Little's law at most ≈ {fits:,.0f} "
            f"users fit in {SCALE_P99_MS:g} ms at that rate, and it held {_users(held)}: "
            f"{_users(CLAIMED_FASTAPI_USERS)} users at that p99 would take {cores} such cores "
            "even if it scaled linearly"
        )
        if peak.result.harness_share is not None:
            notes.append(
                f"the load generator took ≈ {peak.result.harness_share:.0%} of that core "
                "(measured by the storm itself)"
            )
    grew = largest.rss_growth_mb
    notes.append(
        f"largest storm: {largest.framework} at {largest.result.users:,} users, resident memory "
        + (
            f"+{grew:,.0f} MB ({grew * 1024 / largest.result.users:,.1f} KB per user)"
            if grew is not None
            else "not measured on this system"
        )
    )
    notes.append(
        "what this can say: each framework's own cost per request and where it makes p99 "
        "break on one core of Python, in the same order a server would see; what it cannot: "
        "a deployment's numbers — the articles' 50k users mean many processes on many cores "
        "behind a real network stack, and here the load generator shares the app's core"
    )
    return notes


def _capacity_line(name: str, found: CapacityResult) -> str:
    if found.best is None:
        last = found.tried[-1] if found.tried else None
        tail = f" (p99 {format_number(last.p99)} ms at {last.workers})" if last else ""
        return f"{name}: no worker count met the budget{tail}"
    best = found.trial(found.best)
    text = f"{name}: {found.best} worker{'s' if found.best != 1 else ''}"
    if best is not None:
        text += f" (p99 {format_number(best.p99)} ms, {format_number(round(best.throughput))} rps)"
    below = [t for t in found.tried if t.workers < found.best]
    if below:
        near = below[-1]
        text += f"; {near.workers} gave p99 {format_number(near.p99)} ms"
    return text + f" — {found.storms} storm{'s' if found.storms != 1 else ''}"


def _storm_line(name: str, r: StormResult) -> str:
    return (
        f"{name}: {format_number(round(r.throughput, 1))} rps, p50 {format_number(r.latency.p50)} "
        f"ms, p99 {format_number(r.latency.p99)} ms"
    )


def _cost_us(result: StormResult) -> float:
    return 1e6 / result.throughput if result.throughput > 0 else math.inf


def _asgiref_threads(result: StormResult) -> int:
    return max((p.max_busy for p in result.thread_pools if "asgiref" in p.name), default=0)


def _query_cost_us(rounds: int = 300) -> float:
    """Time the ORM query of /orm/<id> called directly on this thread, µs per call."""
    module = sys.modules.get("examples.django_app")
    if module is None:
        return math.nan
    objects = module.Item.objects
    for _ in range(20):  # open the connection, warm the caches
        objects.get(id=3)
    start = time.perf_counter()
    for _ in range(rounds):
        objects.get(id=3)
    return (time.perf_counter() - start) / rounds * 1e6


def run_claims(
    settings: DemoSettings,
    *,
    root: Path | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> tuple[list[ClaimRow], list[StormRecord]]:
    """Run every claim's scenario and judge it; return the rows and every storm they fired."""
    root = (root or Path(os.getcwd())).resolve()
    check_examples(root)
    demo = _Demo(settings, root, progress)
    rows: list[ClaimRow] = []
    steps: list[Callable[[], ClaimRow | tuple[ClaimRow, ...]]] = [
        demo.llm_workers,
        demo.scale,
        demo.django_hop,
        demo.blocking,
        demo.streaming,
    ]
    with warnings.catch_warnings():
        # The storms' own caveats (a saturated loop, say) are summarised in the notes.
        warnings.simplefilter("ignore", ConcurrencyWarning)
        for step in steps:
            started = time.perf_counter()
            made = step()
            made_rows = list(made) if isinstance(made, tuple) else [made]
            elapsed = time.perf_counter() - started
            for row in made_rows:
                row.seconds = elapsed / len(made_rows)
            rows.extend(made_rows)
    return rows, demo.storms


# -- rendering -------------------------------------------------------------------------------

_WIDTH = 100
_LABEL = 10


def _wrap(label: str, lines: Sequence[str], indent: str = "    ") -> list[str]:
    out: list[str] = []
    lead = f"{indent}{label:<{_LABEL}}"
    hang = " " * len(lead)
    for i, line in enumerate(lines):
        wrapped = textwrap.wrap(
            line,
            width=_WIDTH,
            initial_indent=lead if i == 0 else hang,
            subsequent_indent=hang + "  ",
            break_on_hyphens=False,
        )
        out.extend(wrapped or [lead if i == 0 else hang])
    return out


def claims_table(rows: Sequence[ClaimRow]) -> str:
    """The claims as text: a one-line-per-claim summary, then each claim's scenario and figures."""
    width = max(len(r.claim) for r in rows)
    lines = [f"{'#':<4}{'claim':<{width}}  verdict", f"{'-' * 4}{'-' * width}  {'-' * 18}"]
    lines += [f"{r.number:<4}{r.claim:<{width}}  {r.verdict}" for r in rows]
    for r in rows:
        lines.append("")
        lines.append(f"{r.number:<4}{r.claim}")
        lines += _wrap("source", [r.source])
        lines += _wrap("scenario", [r.scenario])
        lines += _wrap("measured", r.figures)
        lines += _wrap("verdict", [f"{r.verdict.upper()} — {r.judgement.reason}"])
        if r.notes:
            lines += _wrap("notes", r.notes)
    return "\n".join(lines)


def storms_table(storms: Sequence[StormRecord]) -> str:
    """Every storm of the demo side by side: one row per storm, the figures in columns."""
    header = (
        "claim",
        "framework",
        "endpoint",
        "served by",
        "users",
        "requests",
        "rps",
        "p50 ms",
        "p99 ms",
        "errors",
        "+RSS MB",
    )
    table: list[tuple[str, ...]] = [header]
    for s in storms:
        r = s.result
        table.append(
            (
                s.claim,
                s.framework,
                r.label,
                f"{r.interface}, {r.server}",
                f"{r.users:,}",
                f"{r.requests:,}",
                format_number(round(r.throughput)),
                format_number(r.latency.p50),
                format_number(r.latency.p99),
                f"{r.error_rate:.1%}",
                f"{s.rss_growth_mb:,.0f}" if s.rss_growth_mb is not None else "-",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    numeric = set(range(4, len(header)))
    return "\n".join(
        "  ".join(
            c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(row)
        ).rstrip()
        for row in table
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def claims_markdown(rows: Sequence[ClaimRow], storms: Sequence[StormRecord], heading: str) -> str:
    """The claims table and the storms behind it, as Markdown (``reports/claims.md``)."""
    out = [
        heading,
        "",
        "Verdicts are computed from the figures against thresholds stated in "
        "`pytest_concurrency._claims`; nothing in this table is written by hand.",
        "",
        "| # | claim | source | scenario | measured | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        measured = "<br>".join(_cell(f) for f in r.figures)
        verdict = f"**{r.verdict}** — {_cell(r.judgement.reason)}"
        out.append(
            f"| {r.number} | {_cell(r.claim)} | {_cell(r.source)} | {_cell(r.scenario)} "
            f"| {measured} | {verdict} |"
        )
    out += ["", "## Notes", ""]
    for r in rows:
        out += [f"- **{r.number}** {_cell(note)}" for note in r.notes]
    out += ["", "## Every storm", "", "```", storms_table(storms), "```", ""]
    return "\n".join(out)
