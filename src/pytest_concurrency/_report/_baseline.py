"""Saved runs (``.storms/NAME.json``) and comparison of this run's storms with one of them.

A comparison judges each difference against its own noise. Every compared figure gets a
90% interval for its change, by bootstrap: over the rounds of a ``rounds=`` storm (the
run-to-run spread, which is what flaps a gate), else over the requests recorded in the
storm's HDR histogram (the spread of the percentile itself); a closed model's throughput is
a count of completions and also carries the noise of a count. The rounds of one session
share its process and its moment, so the interval also gets what moves between sessions:

* **The machine's CPU.** Where a storm measured its CPU contention (the time its threads
  waited for a CPU, ``extras["cpu_contention"]``, per round), the ratio of the two
  sessions' slowdowns bounds how far the CPU-bound share of its time per request can have
  moved, in the direction the machine moved; elsewhere (real servers, baselines without
  it) the machine's load averages, saved with the baseline and read again now, bound it
  both ways.
* **The storm itself.** At equal contention a CPU-bound storm still moves between sessions
  (caches, the GIL's hand-offs between its threads, where the allocator put things). A
  saved baseline keeps each storm's last :data:`HISTORY` sessions; from
  :data:`HISTORY_MIN` of them on, their spread (a 99% prediction interval for one more)
  says how far the figure moves, and until then :data:`SESSION_NOISE` bounds the
  CPU-bound share of its time per request.

Against a threshold the change is then **regressed** (the whole interval is past it),
**improved** (the whole interval is better than no change), **unchanged** (the interval
stays within it) or **inconclusive** (the interval straddles it: the noise is wider than
the threshold). Only "regressed" fails a test. Error rates are counts of failed requests,
not noise: they are judged as measured.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import random
import re
import statistics
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from .._errors import ConfigError
from .._metrics.percentile import quantile, rank
from .._spec.table import COMPARE_FIGURES
from ._files import LOCK_TIMEOUT, locked
from ._json import READABLE_VERSIONS, SCHEMA_VERSION, document_records, write_json
from ._records import FIGURES, StormRecord, StormRow, as_records, figures
from ._schema import first_problem
from ._text import format_number

__all__ = [
    "COMPARE_FAIL_OPTION",
    "COMPARE_ROUNDS",
    "DEFAULT_DIRECTORY",
    "LONGEST_NAME",
    "Comparison",
    "FigureDelta",
    "Judgement",
    "Noise",
    "Threshold",
    "baseline_path",
    "compare",
    "comparison_table",
    "cpu_slowdown",
    "figure_problems",
    "history_spread",
    "judge",
    "judgement_head",
    "judgement_interval",
    "judgement_line",
    "judgements",
    "load",
    "load_document",
    "machine_load",
    "machine_warning",
    "merge_documents",
    "merged_for_save",
    "parse_compare_fail",
    "regression_messages",
    "regressions",
    "save",
    "save_merged",
    "session_summary",
    "show_figure",
    "with_history",
]

#: Rounds of each storm when a comparison can fail a test (unless the storm sets rounds):
#: one round has no spread, and a gate without a spread flaps.
COMPARE_ROUNDS = 3
#: Bootstrap draws per figure; seeded per storm and figure, so a verdict is reproducible.
_DRAWS = 1000
#: Two-sided coverage of the interval of a change.
_COVERAGE = 0.90
#: Most rounds the advice of an inconclusive comparison asks for.
_MOST_ROUNDS = 20
#: How steeply a CPU-bound storm's time per request follows its CPU slowdown ((run + wait) /
#: run of its threads): a storm that waits for a CPU also pays again for its caches and for
#: each hand-off between its threads, so time per request grows faster than the slowdown.
#: ``benchmarks/contention.py`` measures it: up to the 2.5th power on two cores with one to
#: four busy processes beside the storm.
CONTENTION_POWER = 2.5
#: How far a storm's CPU-bound time per request moves between two sessions on its own, at
#: equal contention: rounds of one session share its process and its moment and cannot see
#: it. Measured with ``benchmarks/flake.py`` (see the README).
SESSION_NOISE = 0.5
#: Sessions of each storm a baseline keeps (``sessions``, the newest last).
HISTORY = 20
#: Saved sessions a storm needs before their spread stands in for :data:`SESSION_NOISE`.
HISTORY_MIN = 3
_HISTORY_FIGURES = ("p50", "p99", "max", "rps")
#: Student's t at 99.5 % (a two-sided 99 % prediction interval) by degrees of freedom.
_T995 = {
    2: 9.925,
    3: 5.841,
    4: 4.604,
    5: 4.032,
    6: 3.707,
    7: 3.499,
    8: 3.355,
    9: 3.250,
    10: 3.169,
    11: 3.106,
    12: 3.055,
    13: 3.012,
    14: 2.977,
    15: 2.947,
    16: 2.921,
    17: 2.898,
    18: 2.878,
    19: 2.861,
}
#: A machine factor past this leaves an inconclusive change to the machine, not to rounds.
_MACHINE_SETTLES = 1.1

DEFAULT_DIRECTORY = ".storms"
COMPARE_FAIL_OPTION = "--concurrency-compare-fail"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: Longest baseline name: ``NAME.json`` and the temporary and lock files beside it must
#: fit the 255 bytes most file systems allow a file name.
LONGEST_NAME = 100
#: Machine fields that make figures incomparable when they differ (noise is expected to).
_MACHINE_KEYS = ("host", "cpu_model", "cpu_count", "cpu_usable", "implementation", "python")
_TABLE_FIGURES = ("p50", "p99", "max", "rps", "error_rate")
_TITLES = {"max": "max", "p50": "p50", "p99": "p99", "rps": "rps", "error_rate": "errors"}


def baseline_path(name: str, directory: str | os.PathLike[str], *, option: str = "") -> Path:
    """``directory/NAME.json``; a name with a path separator or odd characters is refused."""
    stem = name.removesuffix(".json")
    where = f"{option}={name!r}" if option else f"baseline name {name!r}"
    if not _NAME.fullmatch(stem):
        raise ConfigError(
            f"{where}: a baseline name is letters, digits, '.', '_' and '-' (such as main or "
            "py311-linux); it is stored as NAME.json in the storage directory"
        )
    if len(stem) > LONGEST_NAME:
        shown = f"{option}={name[:40] + '…'!r}" if option else f"baseline name {name[:40]!r}…"
        raise ConfigError(
            f"{shown}: the name is {len(stem)} characters long; a baseline name has at "
            f"most {LONGEST_NAME} (it is stored as NAME.json in the storage directory)"
        )
    return Path(directory) / f"{stem}.json"


def _storm_key(entry: Mapping[str, Any]) -> tuple[str, str, int]:
    return (str(entry.get("nodeid", "")), str(entry.get("label", "")), int(entry.get("index", 0)))


def merge_documents(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """*new* with the storms of *old* that it does not have (matched by node id, label, index).

    Returns the merged document and how many storms it kept from *old*. A session that ran
    some tests (``--lf``, ``-k``) then updates their storms and leaves the others.
    """
    fresh = {_storm_key(entry) for entry in new.get("storms", [])}
    kept = [entry for entry in old.get("storms", []) if _storm_key(entry) not in fresh]
    merged = dict(new)
    merged["storms"] = [*kept, *new.get("storms", [])]
    return merged, len(kept)


def merged_for_save(
    name: str,
    doc: Mapping[str, Any],
    directory: str | os.PathLike[str],
    *,
    replace: bool = False,
    option: str = "--concurrency-save",
) -> tuple[Path, dict[str, Any], int]:
    """Where baseline *name* goes, the document to write there, and the storms kept from before.

    An existing baseline of that name is merged with *doc* storm by storm (its storms that
    did not run this session are kept) unless *replace*. An existing file that is not a
    valid baseline is a :class:`ConfigError`: it is neither merged nor silently lost. So is
    a storm of *doc* with a compared figure that is not a finite number of at least 0 (a
    storm that measured nothing): saved, it would switch the next run's gate off.
    """
    path = baseline_path(name, directory, option=option)
    for entry in doc.get("storms", []):
        problems = figure_problems(entry) if isinstance(entry, Mapping) else []
        if problems:
            raise ConfigError(
                f"{option}={name!r}: storm {_storm_title(entry)} cannot be saved as a "
                f"baseline: {'; '.join(problems)}. A gate compared with such a figure would "
                f"pass anything, so {path} was left as it was (fix the storm, or leave its "
                "test out of the saving run with -k)"
            )
    doc = _with_load(doc)
    if replace or not path.is_file():
        return path, with_history(doc, None), 0
    old = load_document(path, option=f"{option}={name!r}")
    merged, kept = merge_documents(old, with_history(doc, old))
    return path, merged, kept


def save_merged(
    name: str,
    doc: Mapping[str, Any],
    directory: str | os.PathLike[str],
    *,
    replace: bool = False,
    option: str = "--concurrency-save",
) -> tuple[Path, int]:
    """Save *doc* as baseline *name* (see :func:`merged_for_save`); the path and storms kept.

    The read, the merge and the write happen under an exclusive lock on ``NAME.json.lock``,
    so sessions saving the same baseline at once each keep their storms; the file is
    replaced atomically, so a reader sees the old baseline or the new one, never a mix.
    """
    path = baseline_path(name, directory, option=option)
    try:
        with locked(path, timeout=LOCK_TIMEOUT):
            path, merged, kept = merged_for_save(
                name, doc, directory, replace=replace, option=option
            )
            return write_json(path, merged), kept
    except TimeoutError as exc:
        raise ConfigError(
            f"{option}={name!r}: another process is saving {path} and still holds its lock "
            f"({exc.filename}) after {LOCK_TIMEOUT:g} s; the baseline was not saved"
        ) from None


def with_history(doc: Mapping[str, Any], old: Mapping[str, Any] | None) -> dict[str, Any]:
    """*doc* whose storms carry their ``sessions``: the last :data:`HISTORY` saves of each.

    Each save of a storm adds one summary of its figures (medians over its rounds) to the
    sessions its previous save had (a baseline saved before history was kept starts with
    its own figures). Their spread is how far the storm moves between sessions on its own,
    which the rounds of one session cannot show.
    """
    before = {_storm_key(e): e for e in (old or {}).get("storms", []) if isinstance(e, Mapping)}
    created = str(doc.get("created", ""))
    storms = []
    for entry in doc.get("storms", []):
        previous = before.get(_storm_key(entry))
        sessions: list[Any] = []
        if previous is not None:
            kept = previous.get("sessions")
            if isinstance(kept, list) and kept:
                sessions = [s for s in kept if isinstance(s, Mapping)]
            else:
                sessions = [session_summary(previous, str((old or {}).get("created", "")))]
        storms.append(
            {**entry, "sessions": [*sessions, session_summary(entry, created)][-HISTORY:]}
        )
    out = dict(doc)
    out["storms"] = storms
    return out


def session_summary(data: Mapping[str, Any], created: str) -> dict[str, Any]:
    """One session of a storm as its history keeps it: figures (medians over rounds), CPU."""
    point = figures(data)
    summary: dict[str, Any] = {"created": created}
    for figure in _HISTORY_FIGURES:
        values = _round_values(data, figure)
        value = statistics.median(values) if values else point.get(figure, math.nan)
        if isinstance(value, int | float) and math.isfinite(value):
            summary[figure] = round(float(value), 4)
    slowdown = cpu_slowdown(data)
    if slowdown is not None:
        summary["cpu_slowdown"] = round(slowdown, 4)
    summary["cpu_share"] = round(cpu_share(data), 4)
    return summary


def _with_load(doc: Mapping[str, Any]) -> dict[str, Any]:
    # The load a session saw is what a later comparison needs to tell a slower machine from
    # slower code; a document that already states it keeps its own.
    out = dict(doc)
    machine = dict(out.get("machine") or {})
    if "load" not in machine:
        load = machine_load()
        if load is not None:
            machine["load"] = load
    out["machine"] = machine
    return out


def machine_load() -> dict[str, float] | None:
    """The machine's load averages over 1, 5 and 15 minutes and its usable cores (None: unknown)."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return {"1m": one, "5m": five, "15m": fifteen, "cores": float(cores)}


def save(
    name: str, doc: Mapping[str, Any], directory: str | os.PathLike[str], *, replace: bool = False
) -> Path:
    """Keep *doc* as the baseline *name*, merged by storm into one of that name unless *replace*."""
    return save_merged(name, doc, directory, replace=replace)[0]


#: Smallest value a compared figure may have (every figure is a time, a rate or a share).
_LEAST = 0.0


def figure_problems(entry: Mapping[str, Any]) -> list[str]:
    """What is wrong with a storm's compared figures, as ``p99 is null (not measured)``.

    A compared figure that is missing, null, not a number, NaN, infinite or negative would
    switch a gate off (a comparison with NaN is never a regression; one with infinity is
    always an improvement), so a baseline may hold none. The figures of each round, which
    bound the noise, are held to the same rule where they are given.
    """
    problems = []
    for name, (where, _, _) in FIGURES.items():
        value: Any = entry
        present = True
        for step in where:
            if not isinstance(value, Mapping) or step not in value:
                present = False
                break
            value = value[step]
        problem = _figure_problem(value) if present else "is missing"
        if problem is not None:
            problems.append(f"{name} {problem}")
    rounds = entry.get("rounds")
    for i, one in enumerate(rounds if isinstance(rounds, list) else []):
        if not isinstance(one, Mapping):
            continue
        for name in _ROUND_KEYS:
            value = one.get(name)
            if value is None:  # a round may lack a figure; it is left out of the spread
                continue
            problem = _figure_problem(value)
            if problem is not None:
                problems.append(f"rounds[{i}].{name} {problem}")
    return problems


def _figure_problem(value: Any) -> str | None:
    if value is None:
        return "is null (not measured)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"is {value!r}, not a number"
    if not math.isfinite(value):
        return f"is {value!r}, not a finite number"
    if value < _LEAST:
        return f"is {value!r}, below {_LEAST:g}"
    return None


def _storm_title(entry: Mapping[str, Any]) -> str:
    index = entry.get("index")
    suffix = f" [{index}]" if isinstance(index, int) and index else ""
    return f"{entry.get('nodeid', '?')} · {entry.get('label', '?')}{suffix}"


def load_document(path: Path, *, option: str) -> dict[str, Any]:
    """Read and check a saved session document; every defect is a :class:`ConfigError`."""
    where = f"{option}: baseline {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} cannot be read ({exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON ({exc})") from None
    except RecursionError:
        raise ConfigError(
            f"{where} nests its values too deeply to be read; it is not a session document "
            "(save it again with --concurrency-save)"
        ) from None
    if not isinstance(doc, dict) or "schema_version" not in doc:
        raise ConfigError(f"{where} is not a pytest-storm session document (no schema_version)")
    if doc["schema_version"] not in READABLE_VERSIONS:
        raise ConfigError(
            f"{where} has schema_version {doc['schema_version']!r}; this pytest-storm reads "
            f"version {SCHEMA_VERSION} (save it again with --concurrency-save)"
        )
    problem = first_problem(doc)
    if problem is not None:
        storm = re.match(r"storms\[(\d+)\]", problem)
        if storm is not None and isinstance(doc["storms"][int(storm.group(1))], Mapping):
            problem += f" (storm {_storm_title(doc['storms'][int(storm.group(1))])})"
        raise ConfigError(
            f"{where} does not fit the session document schema: {problem} "
            "(save it again with --concurrency-save, or replace it with --concurrency-save-replace)"
        )
    for entry in doc["storms"]:
        problems = figure_problems(entry)
        if problems:
            raise ConfigError(
                f"{where}: storm {_storm_title(entry)}: {'; '.join(problems)}. A compared "
                "figure must be a finite number of at least 0, or a gate compared with it "
                "would pass anything (replace the baseline with --concurrency-save-replace)"
            )
    return doc


def load(name: str, directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The baseline *name*; a missing one is a :class:`ConfigError` listing those that exist."""
    path = baseline_path(name, directory, option="--concurrency-compare")
    if not path.is_file():
        found = sorted(p.stem for p in Path(directory).glob("*.json"))
        have = f"saved baselines: {', '.join(found)}" if found else "no baseline is saved there"
        raise ConfigError(
            f"--concurrency-compare={name!r}: no baseline {path} ({have}; "
            "save one with --concurrency-save=NAME)"
        )
    return load_document(path, option=f"--concurrency-compare={name!r}")


@dataclass(frozen=True)
class Noise:
    """Bootstrap draws of a figure's baseline and current value, and where their spread came from."""

    baseline: tuple[float, ...]
    current: tuple[float, ...]
    #: ``rounds`` (run-to-run spread), ``latencies`` (the requests of one round each) or
    #: ``requests`` (the count of completions of one round each, a closed model's rps).
    source: str
    rounds_now: int = 1
    rounds_then: int = 1
    #: How many times more CPU one session may have had than the other (1: no swing known).
    load_swing: float = 1.0
    #: The storm's CPU slowdown in the baseline and now, when both measured it.
    contention: tuple[float, float] | None = None
    #: How far CPU-bound time per request moves between sessions on its own (0.5: ±50%).
    session_noise: float = 0.0
    #: The share of the storm's time per request that is CPU-bound (see :func:`cpu_share`).
    cpu_share: float = 1.0
    #: Saved sessions of the storm whose spread stood in for *session_noise* (0: none).
    history: int = 0
    #: How far the figure moves between sessions by its history (log, 99 % prediction).
    history_spread: float = 0.0
    #: Set when one round's requests cannot bound this tail figure: the requests a round
    #: would need (0: no count will do, as for ``max``), and the fewest a side had.
    unbounded: tuple[int, int] | None = None
    #: Factors of the current figure the sessions alone explain (the code alone would have
    #: given the current figure times one of them): bounds the interval takes at its ends.
    envelope: tuple[float, float] = (1.0, 1.0)
    #: How far the shorter window moves with a scheduler slice lost at each end (≥ 1).
    jitter: float = 1.0

    @property
    def machine_factor(self) -> float:
        """How many times the sessions alone may have moved the figure (≥ 1)."""
        low, high = self.envelope
        return max(high, 1.0 / low) if low > 0 else math.inf

    @property
    def sessions_help(self) -> bool:
        """True while saving the baseline again would add to the storm's history."""
        return self.history < HISTORY

    @property
    def rounds_settle(self) -> bool:
        """False when the machine's swing between the sessions is wider than rounds can narrow."""
        return self.machine_factor <= _MACHINE_SETTLES


@dataclass(frozen=True)
class FigureDelta:
    """One figure of a storm in the baseline and now, with the noise of both when known."""

    figure: str
    baseline: float
    current: float
    noise: Noise | None = field(default=None, compare=False)

    @property
    def delta(self) -> float:
        """Current minus baseline, in the figure's unit."""
        return self.current - self.baseline

    @property
    def relative(self) -> float:
        """Change as a fraction of the baseline (NaN when the baseline is 0 or unmeasured)."""
        if not self.baseline or math.isnan(self.baseline) or math.isnan(self.current):
            return math.nan
        return self.delta / self.baseline

    @property
    def worse(self) -> float:
        """How much worse the figure got, in its unit (negative when it improved)."""
        return self.delta if FIGURES[self.figure][2] else -self.delta


@dataclass(frozen=True)
class Comparison:
    """A storm of this run against the same storm of the baseline (``None`` when it is new)."""

    nodeid: str
    label: str
    index: int
    deltas: dict[str, FigureDelta] | None

    @property
    def is_new(self) -> bool:
        """True when the baseline has no storm with this node id, label and index."""
        return self.deltas is None


@dataclass(frozen=True)
class Threshold:
    """How much a figure may worsen: by a percentage of the baseline, or by an absolute amount."""

    figure: str
    amount: float
    relative: bool

    def allowed(self, baseline: float) -> float:
        """Largest allowed worsening in the figure's unit."""
        return baseline * self.amount / 100 if self.relative else self.amount

    def describe(self) -> str:
        """``p99:10%`` / ``mean:5ms`` — as it was written."""
        unit = FIGURES[self.figure][1]
        if self.figure == "error_rate":
            return f"error_rate:{format_number(self.amount * 100)}%"
        if self.relative:
            return f"{self.figure}:{format_number(self.amount)}%"
        return f"{self.figure}:{format_number(self.amount)}{unit}"


def compare(
    current_rows: Sequence[StormRow | StormRecord],
    baseline_doc: Mapping[str, Any],
    *,
    noise_for: Collection[str] = (),
    load: Mapping[str, float] | None = None,
    session_noise: float | None = None,
) -> list[Comparison]:
    """Match this run's storms with the baseline's by (node id, storm label, index in the test).

    The figures named in *noise_for* (those a threshold judges) also get their noise.
    *load* is this session's :func:`machine_load` (None: read it now; empty: unknown); with
    the baseline's, it bounds how far the CPU available can have moved between the two.
    *session_noise* is how far CPU-bound time per request moves between two sessions on
    its own (default :data:`SESSION_NOISE`).
    """
    floor = SESSION_NOISE if session_noise is None else session_noise
    saved = {record.key: record for record in document_records(baseline_doc)}
    loads_now = machine_load() if load is None else load
    machine = baseline_doc.get("machine")
    loads_then = machine.get("load") if isinstance(machine, Mapping) else None
    swing = load_swing(
        loads_then if isinstance(loads_then, Mapping) else None,
        loads_now if isinstance(loads_now, Mapping) else None,
    )
    out = []
    for record in as_records(current_rows):
        old = saved.get(record.key)
        deltas = None
        if old is not None:
            now, then = figures(record.data), figures(old.data)
            cache: dict[int, _Latencies | None] = {}
            slowed_then, slowed_now = cpu_slowdown(old.data), cpu_slowdown(record.data)
            contention = (
                (slowed_then, slowed_now)
                if slowed_then is not None and slowed_now is not None
                else None
            )
            deltas = {
                name: FigureDelta(
                    name,
                    then[name],
                    now[name],
                    _noise(
                        name,
                        old,
                        record,
                        then[name],
                        now[name],
                        cache,
                        swing,
                        contention,
                        floor,
                        history_spread(old.data, name),
                    )
                    if name in noise_for
                    else None,
                )
                for name in FIGURES
            }
        out.append(Comparison(record.nodeid, record.label, record.index, deltas))
    return out


# -- noise -----------------------------------------------------------------------------------

#: Figures each round of a ``rounds=`` storm keeps (``StormResult.rounds``).
_ROUND_KEYS = ("p50", "p99", "max", "rps", "error_rate")
#: Latency figures -> the quantile of the recorded latencies they are (None: the mean).
_QUANTILES: dict[str, float | None] = {
    "p50": 0.50,
    "p90": 0.90,
    "p95": 0.95,
    "p99": 0.99,
    "p999": 0.999,
    "max": 1.0,
    "mean": None,
}

_Draw = Callable[[random.Random], float]


def _round_values(data: Mapping[str, Any], figure: str) -> list[float]:
    if figure not in _ROUND_KEYS:
        return []
    values = []
    for entry in data.get("rounds") or []:
        value = entry.get(figure) if isinstance(entry, Mapping) else None
        if isinstance(value, int | float) and math.isfinite(value):
            values.append(float(value))
    return values if len(values) >= 2 else []


class _Latencies:
    """Order statistics of one storm's recorded latencies, to resample a percentile cheaply.

    The q-quantile of n values drawn again from the recording is its k-th smallest value
    with k ~ Binomial(n, q) (normal approximation), and its maximum the k-th with
    k = ceil(n · u^(1/n)): one draw costs a binary search, not n.
    """

    def __init__(self, histogram: HdrHistogram) -> None:
        self.values: list[int] = []
        self.cumulative: list[int] = []
        total = 0
        weighted = squares = 0.0
        counts = histogram.counts
        # The counts array directly: the library's iterators cost ~1 s per histogram.
        for index in range(histogram.counts_len):
            count = counts[index]
            if not count:
                continue
            value = histogram.get_highest_equivalent_value(histogram.get_value_from_index(index))
            total += count
            weighted += value * count
            squares += value * value * count
            self.values.append(value)
            self.cumulative.append(total)
        self.n = total
        self.mean = weighted / total if total else 0.0
        self.stdev = math.sqrt(max(0.0, squares / total - self.mean**2)) if total else 0.0

    def at_rank(self, k: int) -> float:
        index = bisect.bisect_left(self.cumulative, max(1, min(self.n, k)))
        return float(self.values[index])

    def point(self, q: float | None) -> float:
        if q is None:
            return float(self.mean)
        return self.at_rank(rank(self.n, q))

    def draw(self, q: float | None, rng: random.Random) -> float:
        n = self.n
        if q is None:
            return float(self.mean + rng.gauss(0.0, 1.0) * self.stdev / math.sqrt(n))
        if q >= 1.0:
            return self.at_rank(math.ceil(n * rng.random() ** (1.0 / n)))
        k = round(n * q + rng.gauss(0.0, 1.0) * math.sqrt(n * q * (1.0 - q)))
        return self.at_rank(k)


def _latencies(record: StormRecord) -> _Latencies | None:
    try:
        histogram = record.histograms.get("latency")
    except (ValueError, TypeError, KeyError):  # an encoding that does not decode
        return None
    if histogram is None or histogram.get_total_count() < 2:
        return None
    return _Latencies(histogram)


def _from_rounds(values: list[float]) -> _Draw:
    """Draws of the median of *values* resampled, as a factor of the storm's *point* figure."""
    centre = statistics.median(values)

    def draw(rng: random.Random) -> float:
        resample = [values[rng.randrange(len(values))] for _ in values]
        return statistics.median(resample) / centre if centre else 1.0

    return draw


def _borrowed(values: list[float]) -> _Draw:
    """A single round's factor, from the spread of the other side's rounds.

    One round is one draw from the run-to-run spread: its true value is the observed one
    divided by a factor drawn from that spread.
    """
    centre = statistics.median(values)
    factors = [v / centre for v in values if v > 0] if centre else []

    def draw(rng: random.Random) -> float:
        return 1.0 / factors[rng.randrange(len(factors))] if factors else 1.0

    return draw


def _unchanged(rng: random.Random) -> float:
    return 1.0


#: Fewer completions than this in a window are judged as a Poisson count (±1/√n).
_FEW = 30


def _on_schedule(data: Mapping[str, Any]) -> bool:
    return data.get("model") == "open" and not data.get("dropped")


def _closed(data: Mapping[str, Any]) -> bool:
    requests = data.get("requests")
    return data.get("model") == "closed" and isinstance(requests, int) and requests > 0


def _counted(draw: _Draw, data: Mapping[str, Any], *, rounds: bool) -> _Draw:
    """*draw* times the counting noise of the storm's completed requests.

    With rounds, only the requests cut at the window's edges (±2), unless there are so few
    (under :data:`_FEW`) that the count is Poisson-noisy whatever the rounds showed.
    """
    n = float(data["requests"])
    if rounds and n >= _FEW:

        def edges(rng: random.Random) -> float:
            return draw(rng) * max(0.05, 1.0 + rng.uniform(-2.0, 2.0) / n)

        return edges
    spread = 1.0 / math.sqrt(n)

    def counted(rng: random.Random) -> float:
        return draw(rng) * max(0.05, 1.0 + rng.gauss(0.0, 1.0) * spread)

    return counted


def _from_latencies(lat: _Latencies, q: float | None) -> _Draw:
    point = lat.point(q)

    def draw(rng: random.Random) -> float:
        return lat.draw(q, rng) / point if point else 1.0

    return draw


def _noise(
    figure: str,
    old: StormRecord,
    new: StormRecord,
    then: float,
    now: float,
    cache: dict[int, _Latencies | None],
    swing: float = 1.0,
    contention: tuple[float, float] | None = None,
    floor: float = 0.0,
    history: tuple[float, int] | None = None,
) -> Noise | None:
    """Bootstrap draws of the figure in the baseline and now; None when no spread is known."""
    if figure == "error_rate" or math.isnan(then) or math.isnan(now):
        return None
    rounds_then, rounds_now = _round_values(old.data, figure), _round_values(new.data, figure)
    unbounded: tuple[int, int] | None = None
    counted = figure == "rps" and _closed(old.data) and _closed(new.data)
    draw_then: _Draw | None = None
    draw_now: _Draw | None = None
    source = "rounds"
    if rounds_then or rounds_now:
        draw_then = _from_rounds(rounds_then) if rounds_then else _borrowed(rounds_now)
        draw_now = _from_rounds(rounds_now) if rounds_now else _borrowed(rounds_then)
    elif figure in _QUANTILES:
        for record in (old, new):
            if id(record) not in cache:
                cache[id(record)] = _latencies(record)
        lat_then, lat_now = cache[id(old)], cache[id(new)]
        if lat_then is None or lat_now is None:
            return None
        draw_then = _from_latencies(lat_then, _QUANTILES[figure])
        draw_now = _from_latencies(lat_now, _QUANTILES[figure])
        source = "latencies"
        unbounded = _unbounded(_QUANTILES[figure], min(lat_then.n, lat_now.n))
    elif counted:
        draw_then = draw_now = _unchanged
        source = "requests"
    else:
        return None
    if counted:
        # A closed model's throughput is a count of completions in a window. With rounds,
        # their spread shows its noise but for the requests cut at the window's edges (±2);
        # with one round, nothing does: a count of n is known to about ±1/√n (Poisson).
        draw_then = _counted(draw_then, old.data, rounds=source == "rounds")
        draw_now = _counted(draw_now, new.data, rounds=source == "rounds")
    rng = random.Random(zlib.crc32(repr((new.key, figure)).encode("utf-8")))
    baseline = tuple(then * draw_then(rng) for _ in range(_DRAWS))
    current = tuple(now * draw_now(rng) for _ in range(_DRAWS))
    # What the sessions alone may explain, as a range of factors g: the code alone would
    # have given the current figure times some g within it. These are bounds, not draws:
    # the interval takes its worst case at either end.
    low_ratio = high_ratio = 1.0  # CPU-bound time per request, now over then
    if history is None and floor > 0:
        low_ratio, high_ratio = 1.0 / (1.0 + floor), 1.0 + floor
    if contention is not None:
        # Measured: it moved by up to the slowdowns' ratio (to its power), in the direction
        # the machine moved and no further.
        then_s, now_s = contention
        moved = (now_s / then_s) ** CONTENTION_POWER if then_s > 0 and now_s > 0 else 1.0
        low_ratio, high_ratio = low_ratio * min(1.0, moved), high_ratio * max(1.0, moved)
    elif swing > 1.0:
        # Guessed from load averages: either session may have had up to *swing* times the
        # CPU of the other.
        low_ratio, high_ratio = low_ratio / swing, high_ratio * swing
    share = max(cpu_share(old.data), cpu_share(new.data))
    if figure == "rps" and _on_schedule(old.data) and _on_schedule(new.data):
        share = 0.0  # an open model that kept its arrival rate: throughput is the schedule's
    # Latency divided by, throughput (requests over time per request, Little's law)
    # multiplied by, the time per request the sessions explain; only its CPU-bound share.
    times = ((1.0 - share) + share * low_ratio, (1.0 - share) + share * high_ratio)
    factors = times if figure == "rps" else (1.0 / times[1], 1.0 / times[0])
    jitter = _window_jitter(old.data, new.data)
    moves = math.exp(history[0]) if history is not None else 1.0
    envelope = (factors[0] / moves / jitter, factors[1] * moves * jitter)
    return Noise(
        baseline=baseline,
        current=current,
        source=source,
        rounds_now=max(1, len(rounds_now)),
        rounds_then=max(1, len(rounds_then)),
        load_swing=swing if contention is None else 1.0,
        contention=contention,
        session_noise=floor,
        cpu_share=share,
        history=history[1] if history is not None else 0,
        history_spread=history[0] if history is not None else 0.0,
        unbounded=unbounded,
        envelope=envelope,
        jitter=jitter,
    )


#: How long a thread may wait when another process takes its CPU: a scheduler slice
#: (Linux CFS targets 6 ms of latency; a busy machine stretches it).
_SLICE_S = 0.006


def _window_jitter(*storms: Mapping[str, Any]) -> float:
    """How far a short window's figures move when the storm loses a slice at each end (≥ 1).

    A storm measured over 20 ms that loses 12 ms to other processes reads 60% slower; over
    10 s, 0.1%. Counted for the shorter of the two windows.
    """
    windows = [
        float(data["duration"])
        for data in storms
        if isinstance(data.get("duration"), int | float) and data["duration"] > 0
    ]
    if not windows:
        return 1.0
    return 1.0 + 2 * _SLICE_S / min(windows)


def _unbounded(q: float | None, n: int) -> tuple[int, int] | None:
    """(requests needed, requests had) when *n* requests cannot bound the *q*-quantile above.

    The largest of n values lies above the q-quantile with probability 1 - q^n; below 95%
    nothing in the sample bounds the quantile from above (the p99 of 37 requests is their
    slowest, and the next round's slowest may be anywhere higher). A bootstrap cannot see
    past the values it resamples, so such a figure is not judged from one round.
    """
    if q is None or q <= 0.5:
        return None
    if q >= 1.0:
        return (0, n)
    needed = math.ceil(math.log(0.05) / math.log(q))
    return (needed, n) if n < needed else None


def history_spread(data: Mapping[str, Any], figure: str) -> tuple[float, int] | None:
    """How far *figure* moves between the storm's saved sessions, and how many there are.

    The half-width of a 99 % prediction interval for one more session, on the log of the
    figure (Student's t over the sessions' spread); None with fewer than
    :data:`HISTORY_MIN` sessions or for a figure the history does not keep.
    """
    if figure not in _HISTORY_FIGURES:
        return None
    sessions = data.get("sessions")
    if not isinstance(sessions, list):
        return None
    logs = []
    for session in sessions[-HISTORY:]:
        value = session.get(figure) if isinstance(session, Mapping) else None
        if isinstance(value, int | float) and math.isfinite(value) and value > 0:
            logs.append(math.log(value))
    k = len(logs)
    if k < HISTORY_MIN:
        return None
    return _T995[k - 1] * statistics.stdev(logs) * math.sqrt(1.0 + 1.0 / k), k


def cpu_slowdown(data: Mapping[str, Any]) -> float | None:
    """A storm's CPU slowdown ((run + wait) / run of its threads), the median over its rounds.

    None where it was not measured (a real server, another platform, an older baseline).
    """
    values = []
    for entry in data.get("rounds") or []:
        value = entry.get("cpu_slowdown") if isinstance(entry, Mapping) else None
        if isinstance(value, int | float) and math.isfinite(value) and value >= 1.0:
            values.append(float(value))
    if values:
        return statistics.median(values)
    measured = _run_and_wait(data)
    if measured is None or not measured[0] > 0:
        return None
    run, wait = measured
    return (run + max(0.0, wait)) / run


def _run_and_wait(data: Mapping[str, Any]) -> tuple[float, float] | None:
    """The seconds a storm's threads ran and waited for a CPU (``extras["cpu_contention"]``)."""
    extras = data.get("extras")
    measured = extras.get("cpu_contention") if isinstance(extras, Mapping) else None
    if not isinstance(measured, Mapping):
        return None
    run, wait = measured.get("run_s"), measured.get("wait_s")
    if not isinstance(run, int | float) or not isinstance(wait, int | float):
        return None
    return float(run), float(wait)


def load_swing(then: Mapping[str, Any] | None, now: Mapping[str, Any] | None) -> float:
    """How many times more CPU one of two sessions may have had than the other (at least 1).

    Past the core count, the load average is a mean over minutes: at a storm's moment the
    other runnable threads may all have been asleep (a whole core) or all running (about
    cores / load of one). So the swing is the highest load of either session (1, 5 or 15
    minutes) over the cores; below the cores nothing competed and there is no swing.
    """
    swing = 1.0
    for loads in (then, now):
        if not loads:
            continue
        cores = loads.get("cores")
        if not isinstance(cores, int | float) or cores <= 0:
            continue
        for key in ("1m", "5m", "15m"):
            value = loads.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                swing = max(swing, float(value) / float(cores))
    return swing


def cpu_share(data: Mapping[str, Any]) -> float:
    """The share of a storm's time per request that moves with the CPU the machine gives it.

    Throughput is requests in flight over time per request (Little's law); only the part
    that is not a wait slows down when the machine gives the storm less CPU. Two measures
    bound it, and the smaller holds: the time outside simulated waits (counted at their
    requested median, at most their mean, so the share errs high), and the share of the
    window the storm's threads spent running or ready to run (``cpu_contention``): a storm
    whose threads were busy 3% of the window spent the rest waiting on I/O or timers.
    Without either, every millisecond may be the CPU's.
    """
    return min(_share_outside_waits(data), _share_busy(data))


def _share_busy(data: Mapping[str, Any]) -> float:
    measured = _run_and_wait(data)
    window = data.get("duration")
    if measured is None or not isinstance(window, int | float) or window <= 0:
        return 1.0
    return min(1.0, max(0.0, sum(measured) / float(window)))


def _share_outside_waits(data: Mapping[str, Any]) -> float:
    service = data.get("service_time")
    latency = data.get("latency")
    timed = service if isinstance(service, Mapping) and service.get("mean") else latency
    mean = timed.get("mean") if isinstance(timed, Mapping) else None
    requests = data.get("requests")
    extras = data.get("extras")
    waits = extras.get("simulated_waits") if isinstance(extras, Mapping) else None
    if not isinstance(mean, int | float) or not mean > 0 or not isinstance(requests, int):
        return 1.0
    if not isinstance(waits, Mapping) or requests <= 0:
        return 1.0
    waited = 0.0
    for kind in waits.values():
        if isinstance(kind, Mapping) and kind.get("count"):
            waited += float(kind["count"]) * float(kind.get("requested_p50_ms") or 0.0)
    return min(1.0, max(0.0, 1.0 - waited / requests / float(mean)))


def parse_compare_fail(expr: str, *, origin: str = COMPARE_FAIL_OPTION) -> list[Threshold]:
    """Parse ``p99:10%,rps:5%,mean:5ms`` into thresholds; a bad item is a :class:`ConfigError`.

    ``N%`` is relative to the baseline figure; ``Nms`` (latency) and ``N`` or ``Nrps``
    (throughput) are absolute. For ``error_rate``, ``N%`` means percentage points and a
    bare number a fraction, because a relative change of a zero error rate is meaningless.
    """
    names = ", ".join(FIGURES)
    items = [item.strip() for item in expr.split(",")]
    if not expr.strip() or not all(items):
        raise ConfigError(
            f"{origin}={expr!r}: expected FIGURE:AMOUNT items separated by commas, "
            f"such as p99:10%,rps:5%,mean:5ms (figures: {names})"
        )
    thresholds = []
    for item in items:
        figure, sep, amount = (part.strip() for part in item.partition(":"))
        # A figure by its name (``p99_ms``), or by the key it is filed under (``p99``).
        figure = COMPARE_FIGURES.get(figure, figure)
        if not sep:
            raise ConfigError(
                f"{origin}={expr!r}: {item!r} has no ':'; expected FIGURE:AMOUNT such as p99:10%"
            )
        if figure not in FIGURES:
            raise ConfigError(f"{origin}={expr!r}: unknown figure {figure!r}; choose from {names}")
        unit = FIGURES[figure][1]
        match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%|ms|rps)?", amount)
        if match is None:
            raise ConfigError(
                f"{origin}={expr!r}: {amount!r} for {figure} is not an amount; "
                f"write N% (relative to the baseline) or N{unit} (absolute)"
            )
        value, suffix = float(match.group(1)), match.group(2)
        if suffix not in (None, "%", unit or None):
            raise ConfigError(
                f"{origin}={expr!r}: {figure} is measured in {unit or 'a fraction'}, "
                f"not {suffix}; write {figure}:{match.group(1)}% or {figure}:{match.group(1)}{unit}"
            )
        if figure == "error_rate":
            thresholds.append(Threshold(figure, value / 100 if suffix == "%" else value, False))
        else:
            thresholds.append(Threshold(figure, value, suffix == "%"))
    return thresholds


@dataclass(frozen=True)
class Judgement:
    """A figure's change against its threshold: the verdict and the interval it rests on.

    ``worse``, ``low``, ``high`` and ``allowed`` are in the threshold's terms: a fraction of
    the baseline for ``N%`` thresholds, the figure's unit for absolute ones; positive is worse.
    """

    delta: FigureDelta
    threshold: Threshold
    verdict: str
    worse: float
    low: float
    high: float
    allowed: float
    relative: bool
    #: Rounds that would likely settle an inconclusive change (None: more rounds will not).
    settle_rounds: int | None = None

    @property
    def figure(self) -> str:
        """The compared figure, such as ``p99``."""
        return self.delta.figure

    @property
    def has_noise(self) -> bool:
        """True when the interval has width (the noise of the figure was known)."""
        return self.high > self.low


def judge(d: FigureDelta, threshold: Threshold) -> Judgement | None:
    """Regressed, improved, unchanged or inconclusive; None when either side was not measured."""
    if math.isnan(d.baseline) or math.isnan(d.current):
        return None
    sign = 1.0 if FIGURES[d.figure][2] else -1.0
    relative = threshold.relative and d.baseline != 0

    def worsening(then: float, now: float) -> float:
        change = (now - then) / then if relative else now - then
        return sign * change

    worse = worsening(d.baseline, d.current)
    allowed = threshold.amount / 100 if relative else threshold.allowed(d.baseline)
    if d.noise is not None and d.noise.unbounded is not None:
        # Either side's true value may lie anywhere above what one round showed.
        return Judgement(
            d, threshold, "inconclusive", worse, -math.inf, math.inf, allowed, relative
        )
    low = high = worse
    if d.noise is not None:
        pairs = [
            (then, now)
            for then, now in zip(d.noise.baseline, d.noise.current, strict=True)
            if then > 0 or not relative
        ]
        if pairs:
            tail = (1 - _COVERAGE) / 2
            # Each end of the interval at the worst case of what the sessions explain.
            ends = [
                sorted(worsening(then, now * g) for then, now in pairs) for g in d.noise.envelope
            ]
            # The point estimate stays inside its own interval, whatever the resampling.
            low = min(worse, *(quantile(draws, tail) for draws in ends))
            high = max(worse, *(quantile(draws, 1 - tail) for draws in ends))
    slack = 1e-12
    if low > allowed + slack:
        verdict = "regressed"
    elif high <= allowed + slack:
        verdict = "improved" if high < 0 else "unchanged"
    else:
        verdict = "inconclusive"
    settle = None
    if verdict == "inconclusive" and d.noise is not None and d.noise.rounds_settle:
        # (A swing of the machine's CPU between the sessions is not settled by more rounds.)
        rounds = d.noise.rounds_now if d.noise.source == "rounds" else 1
        half, gap = (high - low) / 2, abs(worse - allowed)
        if gap > 0:
            needed = max(rounds + 2, math.ceil(rounds * (half / gap) ** 2))
            settle = needed if needed <= _MOST_ROUNDS else None
    return Judgement(d, threshold, verdict, worse, low, high, allowed, relative, settle)


def judgements(comparison: Comparison, thresholds: Sequence[Threshold]) -> list[Judgement]:
    """Every threshold's verdict on *comparison* (none for a storm new since the baseline)."""
    if comparison.deltas is None:
        return []
    out = []
    for threshold in thresholds:
        found = judge(comparison.deltas[threshold.figure], threshold)
        if found is not None:
            out.append(found)
    return out


def regression_messages(comparison: Comparison, thresholds: Sequence[Threshold]) -> list[str]:
    """One line per threshold *comparison* breaks beyond its noise (latency grew, throughput fell)."""
    return [
        judgement_head(j) for j in judgements(comparison, thresholds) if j.verdict == "regressed"
    ]


def regressions(comparisons: Sequence[Comparison], thresholds: Sequence[Threshold]) -> list[str]:
    """Every broken threshold, as ``nodeid · label: p99 grew from … to … (+25.0%; allowed p99:10%)``."""
    out: list[str] = []
    for c in comparisons:
        suffix = f" [{c.index}]" if c.index else ""
        out.extend(
            f"{c.nodeid} · {c.label}{suffix}: {line}" for line in regression_messages(c, thresholds)
        )
    return out


def machine_warning(baseline_doc: Mapping[str, Any], machine: Mapping[str, Any]) -> str | None:
    """A sentence when the baseline was measured on another machine (figures then mislead)."""
    then = baseline_doc.get("machine") or {}
    differ = [
        f"{key} {then.get(key)!r} → {machine.get(key)!r}"
        for key in _MACHINE_KEYS
        if key in then and key in machine and then.get(key) != machine.get(key)
    ]
    if not differ:
        return None
    return (
        "the baseline was measured on a different machine or Python ("
        + "; ".join(differ)
        + "): differences may come from the machine, not the code"
    )


def _cell(d: FigureDelta) -> str:
    now = show_figure(d.figure, d.current) if not math.isnan(d.current) else "n/a"
    if math.isnan(d.baseline) or math.isnan(d.current):
        return now
    if d.figure == "error_rate":
        return f"{now} ({(d.current - d.baseline) * 100:+.2f}pp)"
    if math.isnan(d.relative):
        return f"{now} (was {show_figure(d.figure, d.baseline)})"
    return f"{now} ({d.relative:+.1%})"


def comparison_table(comparisons: Sequence[Comparison]) -> str:
    """This run's figures with their change since the baseline, one line per storm."""
    header = ("test", "storm", *(_TITLES[f] for f in _TABLE_FIGURES))
    rows: list[tuple[str, ...]] = [header]
    for c in comparisons:
        storm = c.label + (f" [{c.index}]" if c.index else "")
        if c.deltas is None:
            rows.append((c.nodeid, storm, "new: not in the baseline", *[""] * 4))
        else:
            rows.append((c.nodeid, storm, *(_cell(c.deltas[f]) for f in _TABLE_FIGURES)))
    # A "new" row spans the figure columns; it must not widen them.
    measured = [r for r in rows if not r[2].startswith("new:")]
    widths = [max(len(r[i]) for r in (rows if i < 2 else measured)) for i in range(len(header))]
    lines = []
    for row in rows:
        if row[2].startswith("new:"):
            lines.append("  ".join((row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2])))
            continue
        cells = [
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# -- baseline comparison -------------------------------------------------------------------


def show_figure(figure: str, value: float) -> str:
    """``12.01 ms``, ``1,000 rps``, ``2.00%`` — a compared figure with its unit."""
    if figure == "error_rate":
        return f"{value:.2%}"
    unit = FIGURES[figure][1]
    return f"{format_number(value)} {unit}".rstrip()


def _signed(j: Judgement, worse: float) -> str:
    """A worsening back in the figure's direction: ``+12.0%`` or ``-3 ms``."""
    change = worse if FIGURES[j.figure][2] else -worse
    if j.relative:
        return f"{change:+.1%}"
    if j.figure == "error_rate":
        return f"{change:+g}"
    unit = FIGURES[j.figure][1]
    return f"{'+' if change >= 0 else '-'}{format_number(abs(change))} {unit}".rstrip()


def _noise_source(j: Judgement) -> str:
    noise = j.delta.noise
    if noise is None:
        return ""
    if noise.source == "latencies":
        where = "from the recorded latencies, one round each"
    elif noise.source == "requests":
        where = "from the count of requests, one round each"
    elif noise.rounds_now == noise.rounds_then:
        where = f"over {noise.rounds_now} rounds each"
    else:
        where = f"over {noise.rounds_now} rounds now and {noise.rounds_then} in the baseline"
    return where + _machine_words(noise)


def _machine_words(noise: Noise) -> str:
    """What besides the rounds widened the interval: the machine, the sessions ('' if nothing)."""
    parts = []
    if noise.contention is not None:
        then, now = (1.0 - 1.0 / slowdown for slowdown in noise.contention)
        if abs(now - then) >= 0.005:
            parts.append(
                f"the storm's wait for a CPU ({then:.0%} of its ready time in the baseline, "
                f"{now:.0%} now)"
            )
    elif noise.load_swing > 1.0:
        parts.append(f"the machine's load (up to {noise.load_swing:.1f}× the CPU either way)")
    if noise.history:
        parts.append(
            f"the spread of its {noise.history} saved sessions "
            f"(±{math.expm1(noise.history_spread):.0%} for one more)"
        )
    elif noise.session_noise > 0 and noise.cpu_share >= 0.05:
        parts.append(
            f"±{noise.session_noise:.0%} between sessions for its CPU-bound time "
            f"({noise.cpu_share:.0%} of each request; the default until the baseline holds "
            "3 saved sessions of it)"
        )
    if noise.jitter >= 1.05:
        parts.append(
            f"a short window (a scheduler slice lost at each end moves it ±{noise.jitter - 1:.0%})"
        )
    if not parts:
        return ""
    return ", " + ", ".join(parts[:-1]) + (", and " if len(parts) > 1 else "and ") + parts[-1]


def judgement_head(j: Judgement) -> str:
    """``p99 grew from 10 ms to 12 ms (+20.0%; allowed p99:10%)``."""
    d = j.delta
    verb = "grew" if d.current >= d.baseline else "fell"
    change = f"{d.relative:+.1%}" if not math.isnan(d.relative) else f"{d.delta:+g}"
    return (
        f"{d.figure} {verb} from {show_figure(d.figure, d.baseline)} to "
        f"{show_figure(d.figure, d.current)} ({change}; allowed {j.threshold.describe()})"
    )


def judgement_interval(j: Judgement) -> str:
    """``90% interval of the change +12.0% … +30.0%, over 3 rounds each`` ('' without noise)."""
    if not j.has_noise:
        return ""
    noise = j.delta.noise
    if noise is not None and noise.unbounded is not None:
        needed, had = noise.unbounded
        need = f"{needed:,} or more would" if needed else "no count of requests will; rounds will"
        return (
            f"one round each ({had:,} requests on the smaller side) cannot bound {j.figure} "
            f"from above ({need})"
        )
    # In the figure's own direction: a fall in throughput is a negative change.
    low, high = (j.low, j.high) if FIGURES[j.figure][2] else (j.high, j.low)
    return f"90% interval of the change {_signed(j, low)} … {_signed(j, high)}, {_noise_source(j)}"


def judgement_line(j: Judgement) -> str:
    """The change, its interval and the verdict in one line; inconclusive says what would settle it."""
    interval = judgement_interval(j)
    line = judgement_head(j) + (f" — {interval}" if interval else "")
    if j.verdict == "regressed":
        return line
    if j.verdict == "improved":
        return f"{line}: improved beyond its noise"
    if j.verdict == "unchanged":
        return f"{line}: within its threshold"
    noise = j.delta.noise
    if noise is not None and noise.unbounded is not None:
        return (
            f"{line}: inconclusive — run rounds=3 on the storm (and save the baseline with as "
            "many) to judge it"
        )
    half = (j.high - j.low) / 2
    width = f"{half:.1%}" if j.relative else show_figure(j.figure, half)
    if noise is not None and not noise.rounds_settle:
        advice = (
            "the storm moves that much between sessions (its CPU, the machine), which more "
            "rounds in one session do not settle: "
            + ("save the baseline in more sessions, " if noise.sessions_help else "")
            + "compare on a quiet machine, or judge count-based budgets in CI"
        )
    elif j.settle_rounds is not None:
        advice = (
            f"run {j.settle_rounds} rounds (rounds={j.settle_rounds} on the storm, and save the "
            "baseline with as many) to settle it"
        )
    else:
        advice = (
            "the change sits on the threshold, so more rounds will not settle it soon: "
            "lengthen the storm or loosen the threshold"
        )
    return (
        f"{line}: inconclusive — the noise (±{width}) is wider than the margin to the "
        f"threshold; {advice}"
    )
