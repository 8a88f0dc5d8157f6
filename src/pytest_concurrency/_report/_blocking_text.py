"""Wording of what the probes found: blocking sites, busy thread pools, the diagnosis lines.

The probes measure (``_probes``) and their results describe themselves (one site, one pool:
``_model.probes``); this module combines those sentences for the failure table, the
terminal and HTML reports and the ``text`` entries of the JSON document.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from .._model.names import ANYIO_LIMITER, DEFAULT_EXECUTOR
from .._model.probes import (
    describe_connection_pool,
    describe_pool,
    describe_site,
    site_location,
)

if TYPE_CHECKING:
    from .._model.probes import ConnectionPoolUsage, LoopLag, PoolUsage

__all__ = [
    "back_to_back_line",
    "connection_pool_line",
    "describe_pool",
    "describe_site",
    "diagnose",
    "pool_bound",
    "site_location",
]

#: A pool whose median wait is this share of the median latency explains the latency.
EXPLAINS = 0.5

_MAX_SITES = 5

#: Advice for a pool that kept requests queued for a thread, by pool name.
_POOL_ADVICE = {
    ANYIO_LIMITER: (
        " — `def` endpoints queue for a thread: make them `async def` or raise "
        "anyio.to_thread.current_default_thread_limiter().total_tokens"
    ),
    DEFAULT_EXECUTOR: (
        " — `def` views queue for a thread of the loop's default executor: make them "
        "`async def` or give the loop a larger one with "
        "loop.set_default_executor(ThreadPoolExecutor(max_workers=...))"
    ),
}


def back_to_back_line(loop_lag: LoopLag) -> str | None:
    """The "timers waited … ran back to back" line, when the longest stall was calls in a row."""
    if not loop_lag.back_to_back:
        return None
    # asyncio runs every ready callback before it looks at its timers again.
    return (
        f"timers waited up to {loop_lag.max_ms:,.1f} ms: "
        f"{loop_lag.longest_stall_calls:,} blocking calls, none longer than "
        f"{loop_lag.longest_stall_call_ms:,.1f} ms, ran back to back before the loop "
        "got back to its timers"
    )


def _ms(value: float | None) -> str:
    return f"{value:,.1f} ms" if value is not None else "n/a"


def _share(part: float | None, whole: float | None) -> float | None:
    if part is None or whole is None or not math.isfinite(whole) or whole <= 0:
        return None
    return min(1.0, part / whole)


def connection_pool_line(pool: ConnectionPoolUsage, latency_p50_ms: float | None = None) -> str:
    """The diagnosis of one connection pool: the queue for it and the fix, or what it did."""
    share = _share(pool.wait_p50_ms, latency_p50_ms)
    of_latency = f", {share:.0%} of the p50 latency" if share is not None and share >= 0.01 else ""
    if pool.size is not None and pool.saturation >= 0.01 and pool.waited:
        return (
            f"{pool.name}: {pool.size:,} of {pool.size:,} connections busy "
            f"{pool.saturation:.0%} of the storm, p99 wait {_ms(pool.wait_p99_ms)} "
            f"(p50 {_ms(pool.wait_p50_ms)}{of_latency}): {pool.fix}"
        )
    if _opens_per_request(pool):
        each = _ms(pool.connect_p50_ms)
        opened = "1 connection" if pool.connects == 1 else f"{pool.connects:,} connections"
        reused = f"{pool.reused:,} reused" if pool.reused else "none reused"
        return (
            f"{pool.name}: {opened} opened during the storm, {each} each "
            f"(p50), {pool.connect_s:,.2f} s opening in total, at most {pool.peak_in_use:,} "
            f"open at once, {reused}: {pool.fix}"
        )
    return describe_connection_pool(pool)


def _opens_per_request(pool: ConnectionPoolUsage) -> bool:
    # Django opens one per thread and keeps it (CONN_MAX_AGE > 0), or one per request.
    return (
        pool.library == "Django"
        and pool.connects > 2 * max(1, pool.peak_in_use)
        and pool.reused < pool.connects
    )


def pool_bound(
    connections: Sequence[ConnectionPoolUsage], latency_p50_ms: float | None
) -> ConnectionPoolUsage | None:
    """The connection pool whose wait explains most of the median latency, if one does."""
    for pool in sorted(connections, key=lambda p: -(p.wait_p50_ms or 0.0)):
        share = _share(pool.wait_p50_ms, latency_p50_ms)
        if share is not None and share >= EXPLAINS:
            return pool
    return None


def diagnose(
    loop_lag: LoopLag | None,
    pools: Iterable[PoolUsage],
    connections: Sequence[ConnectionPoolUsage] = (),
    latency_p50_ms: float | None = None,
) -> list[str]:
    """Lines for the budget table: the connection pools requests queued for, what blocked the
    event loop, and which thread pools filled up."""
    # A pool touched once (Django's own request_started signal, say) is not news.
    busy = [p for p in pools if p.used and (p.mean_busy >= 1 or p.saturation > 0)]
    lines: list[str] = []
    # A pool nobody waited for is not news; a connection opened per request is.
    used = [p for p in connections if (p.saturation >= 0.01 and p.waited) or _opens_per_request(p)]
    used.sort(key=lambda p: (-p.saturation, -(p.wait_p50_ms or 0.0)))
    lines.extend(connection_pool_line(p, latency_p50_ms) for p in used)
    bound = pool_bound(used, latency_p50_ms)
    if (
        loop_lag is not None
        and loop_lag.stalls
        and bound is not None
        and (
            loop_lag.blocked_share < EXPLAINS * (bound.wait_p50_ms or 0.0) / (latency_p50_ms or 1.0)
        )
    ):
        # The pool explains the latency: a few stalls of the loop are not the story.
        lines.append(
            f"event loop blocked {loop_lag.blocked_share:.0%} of the storm (longest "
            f"{loop_lag.max_ms:,.1f} ms): not what the requests waited for"
        )
    elif loop_lag is not None and loop_lag.stalls:
        times = "once" if loop_lag.stalls == 1 else f"{loop_lag.stalls:,} times"
        lines.append(
            f"event loop blocked {times} for more than {loop_lag.threshold_ms:g} ms, "
            f"{loop_lag.total_blocked_s:,.2f} s in total ({loop_lag.blocked_share:.0%} of the storm; "
            f"longest {loop_lag.max_ms:,.1f} ms)" + (":" if loop_lag.sites else "")
        )
        lines.extend(f"  {describe_site(site)}" for site in loop_lag.sites[:_MAX_SITES])
        if len(loop_lag.sites) > _MAX_SITES:
            lines.append(f"  … and {len(loop_lag.sites) - _MAX_SITES} more sites")
        in_a_row = back_to_back_line(loop_lag)
        if in_a_row is not None:
            lines.append(f"  {in_a_row}")
        unattributed = loop_lag.unattributed
        if unattributed:
            threads = sum(p.mean_busy for p in busy)
            cause = (
                "probably the loop waiting for the interpreter lock while "
                f"≈{threads:,.0f} app threads ran"
                if threads >= 1
                else "framework or load-generator code, or too short to sample"
            )
            stalls = "1 stall" if unattributed == 1 else f"{unattributed:,} stalls"
            lines.append(f"  {stalls} not traced to app code ({cause})")
    for pool in busy:
        line = describe_pool(pool)
        if pool.saturation >= 0.1:
            line += _POOL_ADVICE.get(pool.name, "")
        lines.append(line)
    return lines
