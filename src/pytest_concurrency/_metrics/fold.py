"""Fold a round's raw records into a result: histograms, endpoints, pool figures, timeline.

Runs after the round, off the hot path. Every percentile of recorded latencies comes
from an HDR histogram (:func:`latency_stats`); per-second figures of the timeline
are exact order statistics of that second's values.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._model.remarks import short_window_warning
from .._model.result import EndpointStats, Knee, PoolStats, StormResult, TimelinePoint
from .._workload import Profile
from .breakdown import attribute
from .percentile import quantile
from .records import (
    STATUS_TIMEOUT,
    ErrorBook,
    ErrorSummary,
    LatencyStats,
    Moments,
    Recorder,
    is_failure,
    latency_stats,
    new_histogram,
    record_many,
)

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram

    from .._engine.plan import StormPlan
    from .._engine.schedule import Window

__all__ = ["PoolModel", "RunFigures", "fold", "is_failure"]


@dataclass(frozen=True)
class PoolModel:
    """The worker pool a round ran on, for its saturation figures."""

    description: str
    size: int


@dataclass
class RunFigures:
    """What a round measured besides the per-request records."""

    rec: Recorder
    book: ErrorBook
    window: Window
    cpu: float
    wall: float
    dropped: list[float]
    in_flight: list[tuple[float, int]] = field(default_factory=list)
    profile: Profile | None = None
    #: Loop stalls seen by a loop monitor, ``(start, end)`` on the round's clock: the
    #: requests in flight meanwhile waited for the loop.
    stalls: list[tuple[float, float]] = field(default_factory=list)
    #: Records of several processes, each with its own loop (shards): each one's first
    #: record and its loop's stalls (which held its requests only), in place of ``stalls``.
    loops: list[tuple[int, list[tuple[float, float]]]] = field(default_factory=list)


def fold(
    plan: StormPlan, figures: RunFigures, *, server: str, pool: PoolModel | None
) -> StormResult:
    """Fold one round's records into a :class:`StormResult` (budgets not yet judged)."""
    config = plan.config
    rec, book, window = figures.rec, figures.book, figures.window
    measure_from_us = int((window.measure_from - window.origin) * 1e6)
    keep = _kept(rec, measure_from_us, config.warmup_requests)

    latency_h, latency_m, ttfb_h, ttfb_m = _latency_and_ttfb(rec, keep)
    histograms = {"latency": latency_h, "ttfb": ttfb_h}
    queue_stats, service_stats = _queue_and_service(rec, keep, histograms, pool)
    status_counts, timeouts, failed, errors = _outcomes(rec, keep, book)
    duration, throughput = _throughput(rec, keep, window, measure_from_us)
    endpoints: dict[str, EndpointStats] = {}
    if len(plan.mix.labels) > 1 or plan.mix.factory is not None:
        endpoints = _endpoints(rec, keep, plan.mix.labels, duration, histograms)

    sweep = _pool_figures(rec, keep, window, pool, queue_stats, latency_m) if pool else None
    pool_stats = sweep.stats if sweep is not None else None
    busy_by_second = sweep.busy_by_second if sweep is not None else []
    peak_in_flight, flight_by_second = _in_flight(figures, sweep)

    dropped = [t for t in figures.dropped if t >= window.measure_from]
    profile = figures.profile
    timeline = _timeline(
        rec, keep, window, busy_by_second, dropped, figures.in_flight, profile, flight_by_second
    )
    open_model = config.rate is not None
    single = plan.requests[0] if len(plan.requests) == 1 else None
    result = StormResult(
        label=plan.label,
        app=plan.app_name,
        interface=plan.interface.upper(),
        server=server,
        method=single.method.upper() if single is not None else "MIX",
        path=single.path if single is not None else "*",
        users=_users(config.users, open_model, profile),
        requests=len(keep),
        duration=duration,
        throughput=throughput,
        latency=latency_stats(latency_h, latency_m),
        ttfb=latency_stats(ttfb_h, ttfb_m),
        queue_wait=queue_stats,
        service_time=service_stats,
        status_counts=status_counts,
        errors=errors,
        failed=failed,
        timeouts=timeouts,
        pool=pool_stats,
        timeline=timeline,
        endpoints=endpoints,
        histograms=histograms,
        params=config.workload(),
        budgets=dict(config.budgets),
        discarded=len(rec) - len(keep),
        window=(window.measure_from, window.stop_at if math.isfinite(window.stop_at) else math.inf),
        model="open" if open_model else "closed",
        rate=config.rate,
        dropped=len(dropped),
        peak_in_flight=peak_in_flight if figures.in_flight or pool is not None else None,
    )
    if profile is not None and profile.varies:
        result.knee = _knee(timeline)
    if plan.url is None:
        # In-process only: behind a real server the waits are the server's, not seen here.
        result.attribution = attribute(
            rec,
            keep,
            origin=window.origin,
            stalls=figures.stalls,
            loops=figures.loops,
            pool=pool.description if pool is not None else None,
            labels=plan.mix.labels,
            measure_from_us=measure_from_us,
            histogram=latency_h,
        )
    if not open_model and not config.stages:
        _warn_short_window(result, config.users)
    return result


def _in_flight(figures: RunFigures, sweep: _Sweep | None) -> tuple[int, list[float]]:
    """The most requests in flight at once, and per second where only the pool counted them."""
    if sweep is not None and not figures.in_flight:
        # The pool samples nothing while it runs: its own records say what was in
        # flight (dispatched, not yet completed) at every moment.
        return sweep.peak_in_flight, sweep.in_flight_by_second
    return max((b for _, b in figures.in_flight), default=0), []


def _latency_and_ttfb(
    rec: Recorder, keep: array[int]
) -> tuple[HdrHistogram, Moments, HdrHistogram, Moments]:
    """The measured requests' latency and time to first byte: histograms and moments."""
    lats, ttfbs = rec.latency, rec.ttfb
    latency_h, ttfb_h = new_histogram(), new_histogram()
    latency_m = record_many(latency_h, (lats[i] for i in keep))
    ttfb_m = record_many(ttfb_h, (ttfbs[i] for i in keep if ttfbs[i] >= 0))
    return latency_h, latency_m, ttfb_h, ttfb_m


def _outcomes(
    rec: Recorder, keep: array[int], book: ErrorBook
) -> tuple[Counter[int], int, int, dict[str, ErrorSummary]]:
    """The measured requests' status counts (timeouts apart), failures and error summaries."""
    statuses, errors_idx = rec.status, rec.error
    status_counts: Counter[int] = Counter(statuses[i] for i in keep)
    timeouts = status_counts.pop(STATUS_TIMEOUT, 0)
    failed = sum(1 for i in keep if is_failure(statuses[i], errors_idx[i]))
    return status_counts, timeouts, failed, book.summaries(errors_idx[i] for i in keep)


def _warn_short_window(result: StormResult, users: int) -> None:
    """Say so when a closed storm's window was shorter than one round of every user."""
    duration, throughput = result.duration, result.throughput
    if duration <= 0:
        return
    # Little's law: one round of every user takes users / throughput seconds.
    round_s = users / throughput if throughput > 0 else math.inf
    if round_s > duration:
        result.warnings.append(short_window_warning(duration, round_s, users, throughput))


def _queue_and_service(
    rec: Recorder, keep: array[int], histograms: dict[str, HdrHistogram], pool: PoolModel | None
) -> tuple[LatencyStats | None, LatencyStats | None]:
    """Queue wait and service time of a pool's requests (None without a pool)."""
    if pool is None:
        return None, None
    lats, queues, statuses = rec.latency, rec.queue, rec.status
    queue_h, service_h = new_histogram(), new_histogram()
    queue_m = record_many(queue_h, (queues[i] for i in keep))
    service_m = record_many(
        service_h, (lats[i] - queues[i] for i in keep if statuses[i] != STATUS_TIMEOUT)
    )
    histograms["queue_wait"] = queue_h
    histograms["service_time"] = service_h
    return latency_stats(queue_h, queue_m), latency_stats(service_h, service_m)


def _throughput(
    rec: Recorder, keep: array[int], window: Window, measure_from_us: int
) -> tuple[float, float]:
    """The measured duration (s) and throughput (rps) of a round.

    Throughput: completions inside the measurement window over its length, whenever the
    request was sent (a request sent during warm-up still used the window).
    """
    starts, lats, statuses = rec.start, rec.latency, rec.status
    if math.isinf(window.stop_at):
        if keep:
            first = min(starts[i] for i in keep)
            last = max(starts[i] + lats[i] for i in keep)
            duration = max(1e-6, (last - first) / 1e6)
        else:
            duration = 0.0
        completed = len(keep)
    else:
        duration = window.stop_at - window.measure_from
        stop_us = int((window.stop_at - window.origin) * 1e6)
        # A timed-out request did not complete for its client, whenever its worker finished.
        completed = sum(
            1
            for s, lat, st in zip(starts, lats, statuses, strict=True)
            if measure_from_us <= s + lat <= stop_us and st != STATUS_TIMEOUT
        )
    return duration, completed / duration if duration > 0 else 0.0


def _endpoints(
    rec: Recorder,
    keep: array[int],
    labels: Sequence[str],
    duration: float,
    histograms: dict[str, HdrHistogram],
) -> dict[str, EndpointStats]:
    """Per-endpoint figures of a mix (each endpoint's latency histogram added to *histograms*)."""
    lats, statuses, errors_idx, ends = rec.latency, rec.status, rec.error, rec.endpoint
    chosen_by: dict[int, array[int]] = {}
    for i in keep:
        bucket = chosen_by.get(ends[i])
        if bucket is None:
            bucket = chosen_by[ends[i]] = array("I")
        bucket.append(i)
    endpoints: dict[str, EndpointStats] = {}
    for index, label in enumerate(labels):
        chosen = chosen_by.pop(index, array("I"))
        h = new_histogram()
        moments = record_many(h, (lats[i] for i in chosen))
        bad = sum(1 for i in chosen if is_failure(statuses[i], errors_idx[i]))
        rps = len(chosen) / duration if duration > 0 else 0.0
        endpoints[label] = EndpointStats(label, len(chosen), bad, latency_stats(h, moments), rps)
        histograms[f"latency:{label}"] = h
    return endpoints


def _knee(timeline: list[TimelinePoint]) -> Knee | None:
    """First second whose p99 is more than twice (and 10 ms above) the calm seconds' p99."""
    calm = [p.p99 for p in timeline[:3] if p.requests]
    if not calm or len(timeline) < 4:
        return None
    base = min(calm)
    for point in timeline[3:]:
        if point.requests and point.p99 > max(2 * base, base + 10):
            return Knee(point.second, point.target, point.p99, base)
    return None


def _users(users: int, open_model: bool, profile: Profile | None) -> int:
    """The users the storm was asked for: the configured users, or the highest target of its
    stages; none for an open-model storm (its arrivals are not users). What was measured in
    flight is ``peak_in_flight``."""
    if open_model:
        return 0
    if profile is not None and profile.varies:
        return max(users, math.ceil(max(value for _, value in profile.points)))
    return users


def _kept(rec: Recorder, measure_from_us: int, warmup_requests: int) -> array[int]:
    """Indices of the measured requests: sent after warm-up, past the first *warmup_requests*
    completions. An index array, not a list: 4 bytes a request instead of ≈ 36."""
    starts, lats = rec.start, rec.latency
    keep = array("I", (i for i in range(len(rec)) if starts[i] >= measure_from_us))
    if not warmup_requests or not keep:
        return keep
    # Drop the first completions (ties in index order, as a stable sort by completion
    # would) without sorting every request: only the cut-off completion time is needed.
    count = min(warmup_requests, len(keep))
    cutoff = heapq.nsmallest(count, (starts[i] + lats[i] for i in keep))[-1]
    ties = count - sum(1 for i in keep if starts[i] + lats[i] < cutoff)
    kept = array("I")
    for i in keep:
        end = starts[i] + lats[i]
        if end < cutoff:
            continue
        if end == cutoff and ties > 0:
            ties -= 1
            continue
        kept.append(i)
    return kept


@dataclass
class _Sweep:
    stats: PoolStats
    busy_by_second: list[float]
    in_flight_by_second: list[float]
    peak_in_flight: int


#: Event kinds of the pool sweep, in the three low bits of an event (time << 3 | kind). A
#: request that queued and was then served has three events: it starts waiting, a worker
#: takes it (one event for both counts), it ends.
_BUSY_END, _WAIT_END, _TAKEN, _WAIT_START, _BUSY_START = range(5)
_KIND_BITS = 3
#: Time slices of the sweep's bucket sort: at most this many, no finer than 1 ms, and
#: about one for every _PER_SLICE requests.
_MAX_SLICES = 1 << 16
_PER_SLICE = 64


def _pool_figures(
    rec: Recorder,
    keep: array[int],
    window: Window,
    pool: PoolModel,
    queue_stats: LatencyStats | None,
    latency_m: Moments,
) -> _Sweep:
    """Saturation (share of the window with every worker busy and requests queued), busy
    workers and requests in flight per second, and the most requests ever in flight.

    Every served request, warm-up included, occupied a worker and may have waited for
    one: the sweep uses them all. Its events are packed integers (time << 3 | kind) in one
    array per time slice, so the fold holds 8 bytes per event (at most 3 a request) and
    sorts one slice at a time, instead of a list of tuples for the whole storm.
    """
    starts, lats = rec.start, rec.latency
    lo = int((window.measure_from - window.origin) * 1e6)
    if math.isinf(window.stop_at):
        hi = max((starts[i] + lats[i] for i in keep), default=lo)
    else:
        hi = int((window.stop_at - window.origin) * 1e6)
    span = max(1, hi - lo)
    seconds = max(1, math.ceil(span / 1e6))
    busy_us = [0.0] * seconds
    flight_us = [0.0] * seconds
    saturated = 0
    busy_total = 0.0
    peak = 0

    first, slices = _pool_events(rec)
    busy = waiting = 0
    prev = lo
    size = pool.size
    # The hot loop of the fold (up to three events a request): comparisons instead of
    # min()/max() calls, which cost a call each.
    for k, bucket in enumerate(slices):
        if bucket is None:
            continue
        slices[k] = None  # each slice's memory goes as soon as it is swept
        for event in sorted(bucket):
            at = (event >> _KIND_BITS) + first
            a = prev if prev > lo else lo
            b = at if at < hi else hi
            if b > a and (busy or waiting):
                busy_total += busy * (b - a)
                # Saturated: every worker busy and requests queued behind them.
                if busy >= size and waiting > 0:
                    saturated += b - a
                second = (a - lo) // 1_000_000
                if second == (b - lo - 1) // 1_000_000 and second < seconds:
                    busy_us[second] += busy * (b - a)
                    flight_us[second] += (busy + waiting) * (b - a)
                else:
                    _spread(busy_us, a - lo, b - lo, busy)
                    _spread(flight_us, a - lo, b - lo, busy + waiting)
                if busy + waiting > peak:  # noqa: PLR1730 - no call per event
                    peak = busy + waiting
            if at > prev:  # noqa: PLR1730 - no call per event
                prev = at
            kind = event & 7
            if kind == _BUSY_END:
                busy -= 1
            elif kind == _TAKEN:
                waiting -= 1
                busy += 1
            elif kind == _WAIT_START:
                waiting += 1
            elif kind == _BUSY_START:
                busy += 1
            else:
                waiting -= 1
    stats = _pool_stats(pool, saturated / span, busy_total / span, queue_stats, latency_m)
    return _Sweep(stats, [b / 1e6 for b in busy_us], [f / 1e6 for f in flight_us], peak)


def _pool_stats(
    pool: PoolModel,
    saturation: float,
    mean_busy: float,
    queue_stats: LatencyStats | None,
    latency_m: Moments,
) -> PoolStats:
    """The pool's figures from the sweep's shares and the storm's queue and latency."""
    mean_queue = queue_stats.mean if queue_stats is not None else math.nan
    mean_latency = latency_m.mean / 1000
    share = mean_queue / mean_latency if mean_latency and not math.isnan(mean_latency) else math.nan
    return PoolStats(
        description=pool.description,
        size=pool.size,
        saturation=saturation,
        mean_busy=mean_busy,
        mean_queue_ms=mean_queue,
        queue_share=share,
    )


def _pool_events(rec: Recorder) -> tuple[int, list[array[int] | None]]:
    """Every request's pool events (wait start, taken, busy start and end), packed as
    ``(time - first) << 3 | kind`` in time slices; returns ``first`` and the slices."""
    starts, lats, queues, statuses = rec.start, rec.latency, rec.queue, rec.status
    first = min(starts, default=0)
    last = max((s + lat for s, lat in zip(starts, lats, strict=True)), default=0)
    # About _PER_SLICE requests' events a slice: an array costs ≈ 80 bytes of its own.
    slice_count = min(_MAX_SLICES, max(1, len(rec) // _PER_SLICE))
    width = max(1000, (last - first) // slice_count + 1)
    slices: list[array[int] | None] = [None] * ((last - first) // width + 1)

    def add(at: int, kind: int) -> None:
        k = (at - first) // width
        bucket = slices[k]
        if bucket is None:
            bucket = slices[k] = array("q")
        bucket.append(((at - first) << _KIND_BITS) | kind)

    for sent, queue, lat, status in zip(starts, queues, lats, statuses, strict=True):
        # A request waits at most its latency (a timed-out one, its timeout).
        begin = sent + (queue if queue < lat else lat) if queue > 0 else sent
        end = sent + lat if status != STATUS_TIMEOUT else begin
        if begin > sent:
            add(sent, _WAIT_START)
            add(begin, _TAKEN if end > begin else _WAIT_END)
        elif end > begin:
            # The common case, a request that never waited: its two events inline.
            at = begin - first
            k = at // width
            bucket = slices[k]
            if bucket is None:
                bucket = slices[k] = array("q")
            bucket.append((at << _KIND_BITS) | _BUSY_START)
        if end > begin:
            add(end, _BUSY_END)
    return first, slices


def _spread(buckets: list[float], a: int, b: int, weight: int) -> None:
    """Add ``weight × (b − a)`` µs to per-second buckets, split at second boundaries."""
    while a < b:
        second = int(a // 1_000_000)
        if second >= len(buckets):
            return
        edge = min(b, (second + 1) * 1_000_000)
        buckets[second] += weight * (edge - a)
        a = edge


def _timeline(
    rec: Recorder,
    keep: array[int],
    window: Window,
    busy: list[float],
    dropped: list[float],
    in_flight: list[tuple[float, int]],
    profile: Profile | None,
    flight_by_second: list[float],
) -> list[TimelinePoint]:
    starts, lats, statuses, errors = rec.start, rec.latency, rec.status, rec.error
    lo = int((window.measure_from - window.origin) * 1e6)
    # Latencies by second of completion in arrays (8 bytes each); each second is sorted
    # on its own for its exact order statistics.
    by_second: dict[int, array[int]] = {}
    bad: Counter[int] = Counter()
    for i in keep:
        second = max(0, (starts[i] + lats[i] - lo) // 1_000_000)
        bucket = by_second.get(second)
        if bucket is None:
            bucket = by_second[second] = array("q")
        bucket.append(lats[i])
        if is_failure(statuses[i], errors[i]):
            bad[second] += 1
    drops: Counter[int] = Counter(int(t - window.measure_from) for t in dropped)
    flight_sum: Counter[int] = Counter()
    flight_n: Counter[int] = Counter()
    for at, count in in_flight:
        second = int(at - window.measure_from)
        if second >= 0:
            flight_sum[second] += count
            flight_n[second] += 1
    offset = window.measure_from - window.origin
    points = []
    for second in sorted(set(by_second) | set(drops)):
        values = sorted(by_second.pop(second, ()))
        count = len(values)
        if flight_n[second]:
            flight: float | None = flight_sum[second] / flight_n[second]
        elif second < len(flight_by_second):
            flight = flight_by_second[second]
        else:
            flight = None
        points.append(
            TimelinePoint(
                second=int(second),
                requests=count,
                errors=bad[second],
                p50=quantile(values, 0.5) / 1000 if count else math.nan,
                p99=quantile(values, 0.99) / 1000 if count else math.nan,
                max=values[-1] / 1000 if count else math.nan,
                busy_workers=busy[second] if second < len(busy) else None,
                target=profile.value(offset + second + 0.5) if profile is not None else None,
                dropped=drops[second],
                in_flight=flight,
            )
        )
    return points
