"""Claim 8: an async framework does not save you from a 5-connection database pool."""

from __future__ import annotations

import os
from typing import Any

from pytest_concurrency import StormResult

from .base import HOLDS, NOT_HERE, PARTLY, ClaimRow, Demo, Judgement, format_number, rounded

__all__ = ["POOL_USERS", "SATURATED", "judge_pool_bound", "run"]

#: As many users as the large pool has connections: it never makes one wait.
POOL_USERS = 20
#: A pool full with requests waiting most of the storm (its start included) is the bottleneck.
SATURATED = 0.5


def judge_pool_bound(
    small_p50_ms: float, fixed_p50_ms: float, saturation: float, little_ms: float
) -> Judgement:
    """Holds when the small pool is saturated and its wait is what Little's law predicts."""
    figures = (
        f"p50 {format_number(small_p50_ms)} ms with 5 connections against "
        f"{format_number(fixed_p50_ms)} ms with 20; the 5-connection pool was full with "
        f"requests waiting {saturation:.0%} of the storm (Little's law: "
        f"≈ {format_number(little_ms)} ms a request)"
    )
    if saturation >= SATURATED and small_p50_ms >= 2 * fixed_p50_ms:
        return Judgement(HOLDS, figures)
    if small_p50_ms >= 1.3 * fixed_p50_ms:
        return Judgement(PARTLY, figures)
    return Judgement(NOT_HERE, figures)


def _pool(result: StormResult) -> Any:
    return result.busiest_connection_pool


def run(demo: Demo) -> ClaimRow:
    """FastAPI + SQLAlchemy async with 5 connections against 20, the same 20 ms query."""
    from examples import db_pool_app

    s = demo.settings
    params: dict[str, Any] = {"users": POOL_USERS, "duration": s.duration, "warmup": s.warmup}
    small = demo.storm(
        "8", "FastAPI + SQLAlchemy (5)", "GET", "/report", app=db_pool_app.app, **params
    )
    fixed = demo.storm(
        "8", "FastAPI + SQLAlchemy (20)", "GET", "/report", app=db_pool_app.app_fixed, **params
    )
    hold_ms = db_pool_app.QUERY_SECONDS * 1000
    little_ms = POOL_USERS / db_pool_app.SMALL_POOL * hold_ms
    figures = []
    for size, record in ((db_pool_app.SMALL_POOL, small), (db_pool_app.FIXED_POOL, fixed)):
        r = record.result
        pool = _pool(r)
        shown = f"; {pool}" if pool is not None else "; no connection pool figures (probe saw none)"
        figures.append(
            f"pool_size={size}: {rounded(r.throughput)} rps, p50 {format_number(r.latency.p50)} ms, "
            f"p99 {format_number(r.latency.p99)} ms{shown}"
        )
    pool = _pool(small.result)
    judgement = judge_pool_bound(
        small.result.latency.p50,
        fixed.result.latency.p50,
        pool.saturation if pool is not None else 0.0,
        little_ms,
    )
    backend = (
        "PostgreSQL (STORM_DATABASE_URL)"
        if os.environ.get("STORM_DATABASE_URL")
        else "SQLite through aiosqlite"
    )
    return ClaimRow(
        "8",
        "An async framework does not save you from a 5-connection database pool",
        "async framework tutorials (FastAPI + SQLAlchemy async)",
        f"GET /report on FastAPI + SQLAlchemy async ({backend}), each request holding a "
        f"connection {format_number(hold_ms)} ms, {POOL_USERS} users: pool_size 5 against 20",
        figures,
        judgement,
        [
            "the event loop is free the whole time: the requests wait in the pool's queue, "
            "which only the pool probe shows (5 connections × 20 ms serve 250 requests/s)"
        ],
        {
            "small": _pool(small.result).to_dict() if _pool(small.result) else None,
            "fixed": _pool(fixed.result).to_dict() if _pool(fixed.result) else None,
        },
    )
