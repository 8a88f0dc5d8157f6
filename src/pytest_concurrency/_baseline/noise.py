"""The noise of a figure compared with a saved session: what the rounds, the requests and
the machine between the two sessions can explain.

Every compared figure gets draws of its value in the baseline and now: over the rounds
of a ``rounds=`` storm (the run-to-run spread, which is what flaps a gate), else over the
requests recorded in the storm's HDR histogram (the spread of the percentile itself); a
closed model's throughput is a count of completions and also carries the noise of a
count. The rounds of one session share its process and its moment, so the interval also
takes, as bounds at its ends, what moves between sessions:

* **The machine's CPU.** Where a storm measured its CPU contention (the time its threads
  waited for a CPU, ``extras["cpu_contention"]``, per round), the ratio of the two
  sessions' slowdowns bounds how far the CPU-bound share of its time per request can have
  moved, in the direction the machine moved; elsewhere (real servers, baselines without
  it) the machine's load averages, saved with the baseline and read again now, bound it
  both ways.
* **The storm itself.** At equal contention a CPU-bound storm still moves between sessions
  (caches, the GIL's hand-offs between its threads, where the allocator put things). A
  saved baseline keeps each storm's last :data:`HISTORY` sessions; from
  :data:`HISTORY_MIN` of them on, their spread says how far the figure moves, and until
  then :data:`SESSION_NOISE` bounds the CPU-bound share of its time per request.
"""

from __future__ import annotations

import bisect
import math
import os
import random
import statistics
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hdrh.histogram import HdrHistogram

from .._metrics.percentile import rank
from .._report._records import StormRecord

__all__ = [
    "CONTENTION_POWER",
    "CPU_SESSION_NOISE",
    "HISTORY",
    "HISTORY_MIN",
    "SESSION_NOISE",
    "Latencies",
    "Noise",
    "cpu_share",
    "cpu_slowdown",
    "history_spread",
    "load_swing",
    "machine_load",
]

#: Sessions of each storm a baseline keeps (``sessions``, the newest last).
HISTORY = 20


HISTORY_FIGURES = ("p50", "p99", "max", "rps", "cpu")


#: Bootstrap draws per figure; seeded per storm and figure, so a verdict is reproducible.
_DRAWS = 1000


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
#: How far a storm's CPU time per request moves between two sessions on its own: ±6 % over
#: eight sessions of ``benchmarks/gate_power.py``'s CPU-bound storm (a pure-Python loop) at
#: a load average of 4 on 2 cores, but Django's ``/orm/3`` of the examples read 509, 574,
#: 576 and 715 µs per request in four sessions within 40 s at a load average of 3.5 (a
#: neighbour on the other hardware thread slows every instruction): bounded at ±30 %.
CPU_SESSION_NOISE = 0.3


#: Saved sessions a storm needs before their spread stands in for :data:`SESSION_NOISE`.
HISTORY_MIN = 3


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


@dataclass(frozen=True)
class Noise:
    """Bootstrap draws of a figure's baseline and current value, and where their spread came from."""

    baseline: tuple[float, ...]
    current: tuple[float, ...]
    #: ``rounds`` (run-to-run spread), ``latencies`` (the requests of one round each),
    #: ``requests`` (the count of completions of one round each, a closed model's rps) or
    #: ``sessions`` (one round each of CPU time: only the spread between sessions).
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


#: Figures each round of a ``rounds=`` storm keeps (``StormResult.rounds``).
ROUND_KEYS = ("p50", "p99", "max", "rps", "error_rate", "cpu")


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


def round_values(data: Mapping[str, Any], figure: str) -> list[float]:
    if figure not in ROUND_KEYS:
        return []
    values = []
    for entry in data.get("rounds") or []:
        value = entry.get(figure) if isinstance(entry, Mapping) else None
        if isinstance(value, int | float) and math.isfinite(value):
            values.append(float(value))
    return values if len(values) >= 2 else []


class Latencies:
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


def _latencies(record: StormRecord) -> Latencies | None:
    try:
        histogram = record.histograms.get("latency")
    except (ValueError, TypeError, KeyError):  # an encoding that does not decode
        return None
    if histogram is None or histogram.get_total_count() < 2:
        return None
    return Latencies(histogram)


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


def _from_latencies(lat: Latencies, q: float | None) -> _Draw:
    point = lat.point(q)

    def draw(rng: random.Random) -> float:
        return lat.draw(q, rng) / point if point else 1.0

    return draw


def noise_of(
    figure: str,
    old: StormRecord,
    new: StormRecord,
    then: float,
    now: float,
    cache: dict[int, Latencies | None],
    swing: float = 1.0,
    contention: tuple[float, float] | None = None,
    floor: float = 0.0,
    history: tuple[float, int] | None = None,
) -> Noise | None:
    """Bootstrap draws of the figure in the baseline and now, and the bounds the sessions
    put on it; None when no spread is known."""
    if figure == "error_rate" or math.isnan(then) or math.isnan(now):
        return None
    drawn = _draws(figure, old, new, cache)
    if drawn is None:
        return None
    draw_then, draw_now, source, unbounded = drawn
    rng = random.Random(zlib.crc32(repr((new.key, figure)).encode("utf-8")))
    baseline = tuple(then * draw_then(rng) for _ in range(_DRAWS))
    current = tuple(now * draw_now(rng) for _ in range(_DRAWS))
    share = max(cpu_share(old.data), cpu_share(new.data))
    if figure == "rps" and _on_schedule(old.data) and _on_schedule(new.data):
        share = 0.0  # an open model that kept its arrival rate: throughput is the schedule's
    jitter = _window_jitter(old.data, new.data)
    envelope = _envelope(figure, share, swing, contention, floor, history, jitter)
    if figure == "cpu":
        # Run time, not wall time: the machine's load and the window's edges do not move
        # it; the sessions do, by CPU_SESSION_NOISE or the history's narrower spread.
        floor, share, swing, contention, jitter = CPU_SESSION_NOISE, 1.0, 1.0, None, 1.0
        envelope = _envelope(figure, share, swing, contention, floor, history, jitter)
    return Noise(
        baseline=baseline,
        current=current,
        source=source,
        rounds_now=max(1, len(round_values(new.data, figure))),
        rounds_then=max(1, len(round_values(old.data, figure))),
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


def _draws(
    figure: str, old: StormRecord, new: StormRecord, cache: dict[int, Latencies | None]
) -> tuple[_Draw, _Draw, str, tuple[int, int] | None] | None:
    """How to draw the figure again in the baseline and now (as factors of the point figure),
    where the spread came from, and whether one round's requests cannot bound it."""
    rounds_then, rounds_now = round_values(old.data, figure), round_values(new.data, figure)
    unbounded: tuple[int, int] | None = None
    counted = figure == "rps" and _closed(old.data) and _closed(new.data)
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
    elif figure == "cpu":
        draw_then = draw_now = _unchanged
        source = "sessions"
    else:
        return None
    if counted:
        # A closed model's throughput is a count of completions in a window. With rounds,
        # their spread shows its noise but for the requests cut at the window's edges (±2);
        # with one round, nothing does: a count of n is known to about ±1/√n (Poisson).
        draw_then = _counted(draw_then, old.data, rounds=source == "rounds")
        draw_now = _counted(draw_now, new.data, rounds=source == "rounds")
    return draw_then, draw_now, source, unbounded


def _envelope(
    figure: str,
    share: float,
    swing: float,
    contention: tuple[float, float] | None,
    floor: float,
    history: tuple[float, int] | None,
    jitter: float,
) -> tuple[float, float]:
    """What the sessions alone may explain, as a range of factors g: the code alone would
    have given the current figure times some g within it. These are bounds, not draws: the
    interval takes its worst case at either end.

    Between sessions the storm moves by :data:`SESSION_NOISE` (*floor*) on its CPU-bound
    share, or by its saved sessions' spread where that is narrower: history narrows the
    bound, never widens it (the spread of 3 sessions is itself known to a factor of 10).
    """
    by_floor = _machine_factors(figure, share, swing, contention, floor)
    if history is None:
        low, high = by_floor
    else:
        low, high = _machine_factors(figure, share, swing, contention, 0.0)
        moves = math.exp(history[0])
        low, high = max(low / moves, by_floor[0]), min(high * moves, by_floor[1])
    return low / jitter, high * jitter


def _machine_factors(
    figure: str,
    share: float,
    swing: float,
    contention: tuple[float, float] | None,
    floor: float,
) -> tuple[float, float]:
    low_ratio = high_ratio = 1.0  # CPU-bound time per request, now over then
    if floor > 0:
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
    # Latency divided by, throughput (requests over time per request, Little's law)
    # multiplied by, the time per request the sessions explain; only its CPU-bound share.
    times = ((1.0 - share) + share * low_ratio, (1.0 - share) + share * high_ratio)
    return times if figure == "rps" else (1.0 / times[1], 1.0 / times[0])


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
    if figure not in HISTORY_FIGURES:
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
    measured = run_and_wait(data)
    if measured is None or not measured[0] > 0:
        return None
    run, wait = measured
    return (run + max(0.0, wait)) / run


def run_and_wait(data: Mapping[str, Any]) -> tuple[float, float] | None:
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
    measured = run_and_wait(data)
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
