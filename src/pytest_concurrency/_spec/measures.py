"""How each budget's figure is read from a storm's result (NaN: this storm could not measure it)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from hdrh.histogram import HdrHistogram

from .._model.extras import SimulatedWaits
from .._model.probes import ConnectionPoolUsage, PoolUsage
from .._model.result import EndpointStats, StormResult

Measure = Callable[[StormResult], float]

#: A request that waited longer than this for a worker counts as queued (``max_queued``);
#: below it, the wait is the pool's own hand-off, not a shortage of workers.
QUEUED_AFTER_MS = 1.0


def _connection_waits(r: StormResult) -> list[float]:
    # The wait of the app's connection pools for a connection: a queue like the workers'.
    return [
        float(p.wait_p99_ms) for p in r.connection_pools if p.used and p.wait_p99_ms is not None
    ]


def queue_p99(r: StormResult) -> float:
    connections = _connection_waits(r)
    if r.queue_wait is not None:
        return max([float(r.queue_wait.p99), *connections])
    # ASGI: the wait for a thread of the app's own pool (FastAPI `def` endpoints, Django).
    pool = r.busiest_pool
    if pool is not None and pool.wait_p99_ms is not None:
        connections.append(float(pool.wait_p99_ms))
    return max(connections) if connections else math.nan


def saturation(r: StormResult) -> float:
    connections = [p.saturation for p in r.connection_pools if p.used and p.size is not None]
    if r.pool is not None:
        return max([r.pool.saturation, *connections])
    pool = r.busiest_pool
    if pool is not None:
        connections.append(pool.saturation)
    return max(connections) if connections else math.nan


# -- one named pool (``pool_budgets``) ----------------------------------------------------------


def pool_wait_p99(pool: PoolUsage | ConnectionPoolUsage) -> float:
    """The p99 wait for a thread or a connection of one pool, ms."""
    return float(pool.wait_p99_ms) if pool.wait_p99_ms is not None else math.nan


def pool_saturation(pool: PoolUsage | ConnectionPoolUsage) -> float:
    """The share of the storm with every thread or connection of one pool taken, someone waiting."""
    if isinstance(pool, ConnectionPoolUsage) and pool.size is None:
        return math.nan  # a pool without a limit is never full
    return float(pool.saturation)


def pool_busy(pool: PoolUsage | ConnectionPoolUsage) -> float:
    """The most threads (or connections) of one pool busy at once."""
    return float(pool.max_busy if isinstance(pool, PoolUsage) else pool.peak_in_use)


def pools_measured(
    thread_pools: Sequence[PoolUsage], connection_pools: Sequence[ConnectionPoolUsage]
) -> list[PoolUsage | ConnectionPoolUsage]:
    """The app's thread pools and connection pools used during the storm (a thread pool
    whose work was too short to be seen busy still timed its waits)."""
    return [
        *(p for p in thread_pools if p.used or p.wait_p99_ms is not None),
        *(p for p in connection_pools if p.used),
    ]


#: The suffix of one pool's copy in a process shard or a server's worker.
_COPY = re.compile(r" \((?:shard \d+|worker pid \d+)\)$")


def find_pool(selector: str, names: Sequence[str]) -> tuple[list[str], str]:
    """The pools of *names* that *selector* names, or none and why.

    A pool is named by its whole name, or by a part of it (case aside) that no other
    pool's name holds: ``'SQLAlchemy'``, ``'aiohttp'``, ``'asgiref'``. Its copies in each
    process shard or server worker (``… (shard 1)``) are the same pool: all are found.
    """
    found = [n for n in names if selector in (n, _COPY.sub("", n))]
    if not found:
        wanted = selector.casefold()
        found = [n for n in names if wanted in n.casefold()]
    if found and len({_COPY.sub("", n) for n in found}) == 1:
        return found, ""
    listed = ", ".join(repr(n) for n in (found or names))
    if found:
        return [], (
            f"{selector!r} names {len(found)} pools measured ({listed}): give more of one's name"
        )
    if not names:
        return [], (
            f"no pool named {selector!r} was measured: the storm used no thread pool or "
            "connection pool the probes watch"
        )
    return [], f"no pool named {selector!r} was measured; the pools measured: {listed}"


def loop_lag(r: StormResult) -> float:
    lag = r.loop_lag_max_ms
    return float(lag) if lag is not None else math.nan


def _count_above(histogram: HdrHistogram, threshold_us: int) -> int:
    return sum(
        item.count_at_value_iterated_to
        for item in histogram.get_recorded_iterator()
        if item.value_iterated_to > threshold_us
    )


def queued(r: StormResult) -> float:
    # Only the WSGI pool records every request's wait; an app's own thread pools keep a
    # p99, not a count (their count would be a guess).
    histogram = r.histograms.get("queue_wait")
    if r.pool is None or histogram is None:
        return math.nan
    if r.pool.saturation <= 0:
        # Never were all workers busy with requests queued: a wait seen then is the hand-off
        # to an idle worker (the first requests wait for the pool's threads to be scheduled
        # on a loaded machine), not a shortage of workers.
        return 0.0
    return float(_count_above(histogram, round(QUEUED_AFTER_MS * 1000)))


def in_flight_peak(r: StormResult) -> float:
    samples = [float(p.in_flight) for p in r.timeline if p.in_flight is not None]
    # Open model: the most requests in flight at once, which the storm counted;
    # otherwise the busiest second's mean is the closest figure the timeline keeps.
    if r.model == "open" and r.peak_in_flight is not None:
        samples.append(float(r.peak_in_flight))
    # Samples are taken on the event loop, so a loop held by a blocking call sees none of
    # the requests it holds back. Little's law counts them, from the intended send time:
    # the mean in flight (a floor for the peak) is throughput × mean latency.
    if math.isfinite(r.latency.mean) and math.isfinite(r.throughput):
        samples.append(r.throughput * r.latency.mean / 1000)
    return max(samples) if samples else math.nan


def threads_busy(r: StormResult) -> float:
    if r.pool is not None:
        if r.pool.saturation > 0:
            # Requests queued while every worker was busy: all of them were, at that moment.
            return float(r.pool.size)
        # Otherwise the busiest second's mean, rounded up (the timeline keeps no finer peak).
        busy = [p.busy_workers for p in r.timeline if p.busy_workers is not None]
        return float(min(r.pool.size, math.ceil(max(busy)))) if busy else math.nan
    if r.thread_pools or r.connection_pools:
        # Threads, or connections a thread holds (one per request at most).
        held = [p.max_busy for p in r.thread_pools] + [p.peak_in_use for p in r.connection_pools]
        return float(max(held))
    if r.loop_lag is not None:
        # The thread-pool probes ran with the loop monitor and saw no pool at work.
        return 0.0
    return math.nan


def blocking_calls(r: StormResult) -> float:
    lag = r.loop_lag
    if lag is None:
        return math.nan
    # Only calls the watchdog named in the app's code: a stall with no named call is the
    # machine's or the harness's, and counting it would make the budget flap.
    return float(lag.calls)


def _waits_p99(waits: SimulatedWaits | None) -> float:
    """The p99 of the simulated waits as requested; NaN when the storm made none.

    With both kinds (awaited and blocking), the larger p99: the combined p99 is no larger.
    """
    if waits is None:
        return math.nan
    kinds = [w for w in (waits.async_waits, waits.blocking_waits) if w.count]
    if not kinds:
        return math.nan
    return max(w.requested_p99_ms for w in kinds)


def p99_ratio(r: StormResult) -> float:
    own = _waits_p99(r.simulated_waits)
    if not own > 0:
        return math.nan
    return r.latency.p99 / own


#: Latency budgets -> the LatencyStats field they limit (for storms and endpoints alike).
def latency(field: str) -> Callable[[StormResult | EndpointStats], float]:
    """The latency statistic *field* (``p99``, ``max``, …) of a storm or an endpoint, ms."""
    return lambda r: float(getattr(r.latency, field))


def ttfb_p99(r: StormResult) -> float:
    return r.ttfb.p99


def throughput(r: StormResult | EndpointStats) -> float:
    return r.throughput


def error_rate(r: StormResult | EndpointStats) -> float:
    return r.error_rate


def dropped(r: StormResult) -> float:
    return float(r.dropped) if r.model == "open" else math.nan


def connect_p99(r: Any) -> float:
    """A WebSocket storm's handshake p99 (infinite when no handshake completed)."""
    return float(r.connect.p99) if r.connect.count else math.inf


def disconnect_rate(r: Any) -> float:
    """Fraction of a WebSocket storm's accepted connections the server closed."""
    return float(r.disconnect_rate) if r.connections else math.inf
