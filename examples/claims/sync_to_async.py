"""Claim 3: Django's async views still need sync_to_async in places, which adds overhead."""

from __future__ import annotations

import math
import time
from typing import Any

from pytest_concurrency import StormResult

from .base import HOLDS, NOT_HERE, PARTLY, ClaimRow, Demo, Judgement, count, format_number, rounded

__all__ = ["HOP_HOLDS_US", "HOP_NOISE_US", "judge_sync_to_async", "run"]

#: Per-request cost of the ORM view's own hop (after the query itself) that holds, and
#: below which the difference is within run-to-run noise.
HOP_HOLDS_US = 100.0
HOP_NOISE_US = 25.0


def judge_sync_to_async(
    async_view_us: float, orm_view_us: float, query_us: float, *, threads: int
) -> Judgement:
    """The ORM view's own hop costs more than noise once the query itself is paid."""
    hop = orm_view_us - async_view_us - query_us
    share = hop / orm_view_us if orm_view_us > 0 else 0.0
    figures = (
        f"/orm costs {format_number(orm_view_us)} µs a request against "
        f"{format_number(async_view_us)} µs without the hop; minus the query itself "
        f"({format_number(query_us)} µs) the hop costs {rounded(hop)} µs "
        f"({share:.0%} of the request), on up to {count(threads, 'thread')}"
    )
    if hop >= HOP_HOLDS_US:
        return Judgement(HOLDS, f"{figures} (≥ {HOP_HOLDS_US:g} µs)")
    if hop >= HOP_NOISE_US:
        return Judgement(PARTLY, f"{figures}: measurable, under {HOP_HOLDS_US:g} µs")
    return Judgement(NOT_HERE, f"{figures}: within noise (< {HOP_NOISE_US:g} µs)")


def run(demo: Demo) -> ClaimRow:
    """Saturate Django ASGI's async view with and without the ORM hop; Starlette for scale."""
    s = demo.settings
    users = 50
    params: dict[str, Any] = {"users": users, "duration": s.duration, "warmup": s.warmup}
    plain = demo.storm("3", "Django ASGI", "GET", "/async-item/3", **params)
    orm = demo.storm("3", "Django ASGI", "GET", "/orm/3", **params)
    base = demo.storm("3", "Starlette", "GET", "/items/3", **params)
    query_us = _query_cost_us()
    cost = {name: _cost_us(r.result) for name, r in (("plain", plain), ("orm", orm))}
    threads = {name: _asgiref_threads(r.result) for name, r in (("plain", plain), ("orm", orm))}
    base_us = _cost_us(base.result)
    judgement = judge_sync_to_async(cost["plain"], cost["orm"], query_us, threads=threads["orm"])
    figures = [
        f"Django ASGI /async-item/3 (async view, no hop of its own): "
        f"{rounded(cost['plain'])} µs a request, "
        f"{rounded(plain.result.throughput)} rps, p50 "
        f"{format_number(plain.result.latency.p50)} ms, up to {count(threads['plain'], 'asgiref thread')}",
        f"Django ASGI /orm/3 (sync_to_async around Item.objects.get): "
        f"{rounded(cost['orm'])} µs a request, "
        f"{rounded(orm.result.throughput)} rps, p50 "
        f"{format_number(orm.result.latency.p50)} ms, up to {count(threads['orm'], 'asgiref thread')}",
        f"the SQLite query alone, called directly: {format_number(round(query_us, 1))} µs",
        f"reference, Starlette /items/3 (no hop): {format_number(round(base_us, 1))} µs a request",
    ]
    notes = [
        f"even without a hop of its own, Django's async view cost "
        f"{cost['plain'] / base_us:,.0f}× Starlette's handler"
        + (
            f" and kept up to {count(threads['plain'], 'asgiref thread')} busy: Django's ASGI "
            "handler sends request_started/request_finished (sync receivers) and closes the "
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
        {"cost_us": cost, "query_us": query_us, "threads": threads, "starlette_us": base_us},
    )


def _cost_us(result: StormResult) -> float:
    return 1e6 / result.throughput if result.throughput > 0 else math.inf


def _asgiref_threads(result: StormResult) -> int:
    return max((p.max_busy for p in result.thread_pools if "asgiref" in p.name), default=0)


def _query_cost_us(rounds: int = 300) -> float:
    """Time the ORM query of /orm/<id> called directly on this thread, µs per call."""
    import examples.django_app  # noqa: F401  (configures Django before its models load)
    from examples.django_items.models import Item

    objects = Item.objects
    for _ in range(20):  # open the connection, warm the caches
        objects.get(id=3)
    start = time.perf_counter()
    for _ in range(rounds):
        objects.get(id=3)
    return (time.perf_counter() - start) / rounds * 1e6
