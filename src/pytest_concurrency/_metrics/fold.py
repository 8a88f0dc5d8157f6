"""Fold a round's raw records into a result: histograms, endpoints, pool figures, timeline.

Runs after the round, off the hot path. Every percentile of recorded latencies comes
from an HDR histogram (:func:`latency_stats`); per-second figures of the timeline
are exact order statistics of that second's values.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._result import EndpointStats, Knee, PoolStats, StormResult, TimelinePoint
from .._workload import Profile
from .records import (
    STATUS_TIMEOUT,
    ErrorBook,
    LatencyStats,
    Moments,
    Recorder,
    latency_stats,
    new_histogram,
    record_many,
)

if TYPE_CHECKING:
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


def is_failure(status: int, error: int) -> bool:
    """A request failed for its client: an exception, a timeout or a status >= 400."""
    return bool(error) or status >= 400 or status == STATUS_TIMEOUT


def fold(
    plan: StormPlan, figures: RunFigures, *, server: str, pool: PoolModel | None
) -> StormResult:
    """Fold one round's records into a :class:`StormResult` (budgets not yet judged)."""
    config = plan.config
    rec, book, window = figures.rec, figures.book, figures.window
    n = len(rec)
    starts = rec.start
    lats = rec.latency
    measure_from_us = int((window.measure_from - window.origin) * 1e6)
    keep = [i for i in range(n) if starts[i] >= measure_from_us]
    if config.warmup_requests:
        by_completion = sorted(keep, key=lambda i: starts[i] + lats[i])
        keep = sorted(by_completion[config.warmup_requests :])
    discarded = n - len(keep)

    latency_h, ttfb_h, queue_h, service_h = (new_histogram() for _ in range(4))
    latency_m = record_many(latency_h, (lats[i] for i in keep))
    ttfbs = rec.ttfb
    ttfb_m = record_many(ttfb_h, (ttfbs[i] for i in keep if ttfbs[i] >= 0))
    histograms = {"latency": latency_h, "ttfb": ttfb_h}
    queue_stats: LatencyStats | None = None
    service_stats: LatencyStats | None = None
    pool_stats: PoolStats | None = None
    queues = rec.queue
    statuses = rec.status
    if pool is not None:
        served = [i for i in keep if statuses[i] != STATUS_TIMEOUT]
        queue_m = record_many(queue_h, (queues[i] for i in keep))
        service_m = record_many(service_h, (lats[i] - queues[i] for i in served))
        histograms["queue_wait"] = queue_h
        histograms["service_time"] = service_h
        queue_stats = latency_stats(queue_h, queue_m)
        service_stats = latency_stats(service_h, service_m)

    status_counts: Counter[int] = Counter(statuses[i] for i in keep)
    timeouts = status_counts.pop(STATUS_TIMEOUT, 0)
    errors_idx = rec.error

    def failed_at(i: int) -> bool:
        return is_failure(statuses[i], errors_idx[i])

    failed = sum(1 for i in keep if failed_at(i))
    errors = book.summaries(errors_idx[i] for i in keep)

    # Throughput: completions inside the measurement window over its length, whenever
    # the request was sent (a request sent during warm-up still used the window).
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
    throughput = completed / duration if duration > 0 else 0.0

    endpoints: dict[str, EndpointStats] = {}
    labels = plan.mix.labels
    if len(labels) > 1 or plan.mix.factory is not None:
        ends = rec.endpoint
        chosen_by: dict[int, list[int]] = {}
        for i in keep:
            chosen_by.setdefault(ends[i], []).append(i)
        for index, label in enumerate(labels):
            chosen = chosen_by.get(index, [])
            h = new_histogram()
            moments = record_many(h, (lats[i] for i in chosen))
            bad = sum(1 for i in chosen if failed_at(i))
            rps = len(chosen) / duration if duration > 0 else 0.0
            endpoints[label] = EndpointStats(
                label, len(chosen), bad, latency_stats(h, moments), rps
            )
            histograms[f"latency:{label}"] = h

    busy_by_second: list[float] = []
    if pool is not None:
        pool_stats, busy_by_second = _pool_figures(rec, keep, window, pool, queue_stats, latency_m)

    dropped = [t for t in figures.dropped if t >= window.measure_from]
    profile = figures.profile
    timeline = _timeline(rec, keep, window, busy_by_second, dropped, figures.in_flight, profile)
    spec0 = plan.requests[0] if plan.requests else None
    single = spec0 is not None and len(plan.requests) == 1
    open_model = config.rate is not None
    result = StormResult(
        label=plan.label,
        app=plan.app_name,
        interface=plan.interface.upper(),
        server=server,
        method=spec0.method.upper() if single and spec0 is not None else "MIX",
        path=spec0.path if single and spec0 is not None else "*",
        users=config.users if not open_model else max((b for _, b in figures.in_flight), default=0),
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
        discarded=discarded,
        window=(window.measure_from, window.stop_at if math.isfinite(window.stop_at) else math.inf),
        model="open" if open_model else "closed",
        rate=config.rate,
        dropped=len(dropped),
    )
    if profile is not None and profile.varies:
        result.knee = _knee(timeline)
    if not open_model and not config.stages and duration > 0:
        # Little's law: one round of every user takes users / throughput seconds.
        round_s = config.users / throughput if throughput > 0 else math.inf
        if round_s > duration:
            shown = f"≈{round_s:,.2f} s" if math.isfinite(round_s) else "longer than the storm"
            result.warnings.append(
                f"the measured window ({duration:.2f} s) is shorter than one round of users "
                f"({shown}: {config.users:,} users / {throughput:,.1f} rps): the figures describe "
                "a start-up transient; lengthen duration or warmup"
            )
    return result


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


def _pool_figures(
    rec: Recorder,
    keep: list[int],
    window: Window,
    pool: PoolModel,
    queue_stats: LatencyStats | None,
    latency_m: Moments,
) -> tuple[PoolStats, list[float]]:
    """Saturation (share of the window with every worker busy) and busy workers per second."""
    starts, lats, queues, statuses = rec.start, rec.latency, rec.queue, rec.status
    # Every served request, warm-up included, occupied a worker and may have waited for
    # one: use them all. Events: (time µs, change of busy workers, change of waiting requests).
    events: list[tuple[int, int, int]] = []
    for i in range(len(rec)):
        sent = starts[i]
        begin = sent + queues[i]
        if begin > sent:
            events.append((sent, 0, 1))
            events.append((begin, 0, -1))
        end = sent + lats[i] if statuses[i] != STATUS_TIMEOUT else begin
        if end > begin:
            events.append((begin, 1, 0))
            events.append((end, -1, 0))
    events.sort()
    lo = int((window.measure_from - window.origin) * 1e6)
    if math.isinf(window.stop_at):
        hi = max((starts[i] + lats[i] for i in keep), default=lo)
    else:
        hi = int((window.stop_at - window.origin) * 1e6)
    span = max(1, hi - lo)
    seconds = max(1, math.ceil(span / 1e6))
    busy_us = [0.0] * seconds
    saturated = 0
    busy_total = 0.0
    busy = waiting = 0
    prev = lo
    for at, d_busy, d_waiting in events:
        a, b = max(prev, lo), min(at, hi)
        if b > a and busy:
            busy_total += busy * (b - a)
            # Saturated: every worker busy and requests queued behind them.
            if busy >= pool.size and waiting > 0:
                saturated += b - a
            _spread(busy_us, a - lo, b - lo, busy)
        prev = max(prev, at)
        busy += d_busy
        waiting += d_waiting
    mean_queue = queue_stats.mean if queue_stats is not None else math.nan
    mean_latency = latency_m.mean / 1000
    share = mean_queue / mean_latency if mean_latency and not math.isnan(mean_latency) else math.nan
    stats = PoolStats(
        description=pool.description,
        size=pool.size,
        saturation=saturated / span,
        mean_busy=busy_total / span,
        mean_queue_ms=mean_queue,
        queue_share=share,
    )
    return stats, [b / 1e6 for b in busy_us]


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
    keep: list[int],
    window: Window,
    busy: list[float],
    dropped: list[float],
    in_flight: list[tuple[float, int]],
    profile: Profile | None,
) -> list[TimelinePoint]:
    starts, lats, statuses, errors = rec.start, rec.latency, rec.status, rec.error
    lo = int((window.measure_from - window.origin) * 1e6)
    by_second: dict[int, list[int]] = {}
    bad: Counter[int] = Counter()
    for i in keep:
        second = max(0, (starts[i] + lats[i] - lo) // 1_000_000)
        by_second.setdefault(second, []).append(lats[i])
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
        values = sorted(by_second.get(second, []))
        count = len(values)
        points.append(
            TimelinePoint(
                second=int(second),
                requests=count,
                errors=bad[second],
                p50=values[int(0.5 * (count - 1))] / 1000 if count else math.nan,
                p99=values[int(0.99 * (count - 1))] / 1000 if count else math.nan,
                max=values[-1] / 1000 if count else math.nan,
                busy_workers=busy[second] if second < len(busy) else None,
                target=profile.value(offset + second + 0.5) if profile is not None else None,
                dropped=drops[second],
                in_flight=flight_sum[second] / flight_n[second] if flight_n[second] else None,
            )
        )
    return points
