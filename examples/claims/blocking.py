"""Claims 4a and 4b: an async endpoint does not block other users, but one blocking call does."""

from __future__ import annotations

import importlib.util
import math

from pytest_concurrency import StormResult

from .base import (
    HOLDS,
    IO_WAIT_MS,
    NOT_HERE,
    PARTLY,
    ClaimRow,
    Demo,
    Judgement,
    format_number,
    rounded,
)

__all__ = [
    "ASYNC_HOLDS_SHARE",
    "ASYNC_MAX_LAG_SHARE",
    "ASYNC_PARTLY_SHARE",
    "BLOCKED_MIN_SHARE",
    "SERIAL_MAX_MULTIPLE",
    "judge_async_not_blocking",
    "judge_blocking_in_async",
    "run",
]

#: Claim 4a: async throughput of at least this share of Little's law (users / wait) holds,
#: this share holds partly; the longest loop stall must stay under this share of the wait.
ASYNC_HOLDS_SHARE = 0.8
ASYNC_PARTLY_SHARE = 0.5
ASYNC_MAX_LAG_SHARE = 0.2
#: Claim 4b: a blocked loop serves at most this multiple of one-request-at-a-time (1 / wait)
#: and is blocked at least this share of the storm.
SERIAL_MAX_MULTIPLE = 1.5
BLOCKED_MIN_SHARE = 0.8


def judge_async_not_blocking(
    rps: float,
    *,
    users: int,
    wait_ms: float,
    loop_lag_max_ms: float,
    blocking_calls: int | None = None,
) -> Judgement:
    """Claim 4a: an async endpoint serves its users concurrently (Little's law) without stalls.

    With *blocking_calls* (loop stalls traced to a line of the app's own code), the verdict
    rests on that count, which does not depend on the machine: a stall the operating system
    caused on a busy machine is not the app blocking its users.
    """
    ideal = users / (wait_ms / 1000)
    share = rps / ideal if ideal > 0 else 0.0
    lag_limit = ASYNC_MAX_LAG_SHARE * wait_ms
    figures = (
        f"{rounded(rps)} rps = {share:.0%} of users / wait "
        f"({rounded(ideal)} rps); longest loop stall {format_number(loop_lag_max_ms)} ms"
    )
    if blocking_calls is not None:
        figures += f", {blocking_calls} blocking call(s) traced to the app"
        stalled = blocking_calls > 0
    else:
        stalled = not loop_lag_max_ms < lag_limit  # NaN (not measured) counts as a stall
    if share >= ASYNC_HOLDS_SHARE and not stalled:
        no_stall = (
            "no blocking call"
            if blocking_calls is not None
            else f"no stall of {format_number(lag_limit)} ms"
        )
        return Judgement(HOLDS, f"{figures}: at least {ASYNC_HOLDS_SHARE:.0%} with {no_stall}")
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
        f"time and {rounded(concurrent)} if concurrent; loop blocked "
        f"{blocked_share:.0%} of the storm"
    )
    if rps <= SERIAL_MAX_MULTIPLE * serial and blocked_share >= BLOCKED_MIN_SHARE:
        return Judgement(HOLDS, figures)
    if rps < ASYNC_PARTLY_SHARE * concurrent:
        return Judgement(PARTLY, f"{figures}: slowed, not serialised")
    return Judgement(NOT_HERE, f"{figures}: the users were still served concurrently")


def run(demo: Demo) -> tuple[ClaimRow, ClaimRow]:
    """Storm FastAPI's awaiting /io and its time.sleep twin with the same users."""
    s = demo.settings
    users = 50
    io = demo.storm("4", "FastAPI", "GET", "/io", users=users, duration=s.duration, warmup=s.warmup)
    blocked = demo.storm(
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
            io.result.throughput,
            users=users,
            wait_ms=IO_WAIT_MS,
            loop_lag_max_ms=io_max,
            blocking_calls=io_lag.calls if io_lag is not None else None,
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
    real = _behind_uvicorn(demo, users)
    if real:
        first.figures.append(real["/io"][0])
        second.figures.append(real["/blocking-in-async"][0])
        first.data["uvicorn_rps"] = real["/io"][1]
        second.data["uvicorn_rps"] = real["/blocking-in-async"][1]
        for row, path in ((first, "/io"), (second, "/blocking-in-async")):
            row.judgement = Judgement(
                row.judgement.verdict,
                f"{row.judgement.reason} (rests on the in-process figures; behind uvicorn: "
                f"{rounded(real[path][1])} rps)",
            )
    return first, second


def _behind_uvicorn(demo: Demo, users: int) -> dict[str, tuple[str, float]]:
    """The same two storms behind one uvicorn worker, with a real HTTP client on loopback."""
    if importlib.util.find_spec("uvicorn") is None:
        return {}
    s = demo.settings
    lines = {}
    for path, warmup, duration in (
        ("/io", s.warmup, s.duration),
        ("/blocking-in-async", users * IO_WAIT_MS / 1000, s.blocking_duration),
    ):
        record = demo.storm(
            "4",
            "FastAPI (uvicorn)",
            "GET",
            path,
            app="examples.fastapi_app:app",
            users=users,
            duration=duration,
            warmup=warmup,
            server="uvicorn",
        )
        rps = record.result.throughput
        lines[path] = (_storm_line(f"behind uvicorn (1 worker) {path}", record.result), rps)
    return lines


def _storm_line(name: str, r: StormResult) -> str:
    return (
        f"{name}: {format_number(round(r.throughput, 1))} rps, p50 {format_number(r.latency.p50)} "
        f"ms, p99 {format_number(r.latency.p99)} ms"
    )
