"""Claim 7: Pydantic v2 serialises 5–10× faster than v1."""

from __future__ import annotations

import timeit
from typing import Any

from .base import HOLDS, NOT_HERE, PARTLY, ClaimRow, Demo, Judgement, format_number

__all__ = [
    "CLAIMED_MAX_SPEEDUP",
    "CLAIMED_MIN_SPEEDUP",
    "PARTLY_MIN_SPEEDUP",
    "judge_pydantic",
    "run",
]

#: The claim's own range starts at 5×; a clear gain short of it holds partly.
CLAIMED_MIN_SPEEDUP = 5.0
CLAIMED_MAX_SPEEDUP = 10.0
PARTLY_MIN_SPEEDUP = 1.5


def judge_pydantic(serialise_speedup: float, endpoint_speedup: float) -> Judgement:
    """Claim 7 from the speed-up of serialisation alone and of the whole endpoint."""
    figures = (
        f"serialisation {serialise_speedup:.1f}× faster with v2; the whole endpoint "
        f"{endpoint_speedup:.2f}× the v1 throughput"
    )
    if serialise_speedup >= CLAIMED_MIN_SPEEDUP:
        if serialise_speedup > CLAIMED_MAX_SPEEDUP:
            figures += f" (beyond the claimed {CLAIMED_MAX_SPEEDUP:g}×)"
        why = (
            "; the endpoint gains less: the rest of a request (routing, the ASGI exchange, "
            "building the model) does not get faster"
            if endpoint_speedup < CLAIMED_MIN_SPEEDUP
            else ""
        )
        return Judgement(HOLDS, figures + why)
    if serialise_speedup >= PARTLY_MIN_SPEEDUP:
        return Judgement(PARTLY, f"{figures}: faster, short of {CLAIMED_MIN_SPEEDUP:g}×")
    return Judgement(NOT_HERE, f"{figures}: no clear gain")


def _serialise_us(repeat: int) -> tuple[float, float]:
    from examples.pydantic_app import OrderV1, OrderV2, order_data

    data = order_data(1)
    v2 = OrderV2(**data)  # type: ignore[arg-type]
    v1 = OrderV1(**data)
    best_v2 = min(timeit.repeat(v2.model_dump_json, number=repeat, repeat=5)) / repeat
    best_v1 = min(timeit.repeat(v1.json, number=repeat, repeat=5)) / repeat
    return best_v1 * 1e6, best_v2 * 1e6


def run(demo: Demo) -> ClaimRow:
    """Time serialisation of one order both ways, then storm the two endpoints."""
    s = demo.settings
    v1_us, v2_us = _serialise_us(200 if s.quick else 1000)
    storms: dict[str, Any] = {}
    for version in ("v1", "v2"):
        storms[version] = demo.storm(
            "7",
            f"FastAPI + Pydantic {version}",
            "GET",
            f"/orders-{version}/7",
            app=_app(),
            users=20,
            duration=s.duration,
            warmup=s.warmup,
        )
    rps_v1 = storms["v1"].result.throughput
    rps_v2 = storms["v2"].result.throughput
    serialise = v1_us / v2_us if v2_us > 0 else 0.0
    endpoint = rps_v2 / rps_v1 if rps_v1 > 0 else 0.0
    figures = [
        f"one order of 50 lines serialised: v1 .json() {format_number(round(v1_us, 1))} µs, "
        f"v2 model_dump_json() {format_number(round(v2_us, 1))} µs (best of 5)",
        f"GET /orders-v1/7: {format_number(round(rps_v1))} rps · GET /orders-v2/7: "
        f"{format_number(round(rps_v2))} rps (20 users, in-process, one core)",
    ]
    return ClaimRow(
        "7",
        "Pydantic v2 serializes 5–10× faster than v1",
        "2026 FastAPI comparison articles",
        "the same order (50 nested lines) built and serialised with pydantic.v1 and pydantic "
        "v2 models in one FastAPI app: the serialisation alone, then each endpoint under 20 users",
        figures,
        judge_pydantic(serialise, endpoint),
        [
            "pydantic 2 ships the v1 API as pydantic.v1, so both run on the same interpreter "
            "and the same app; the endpoint also builds and validates the model each request"
        ],
        {"serialise_us": {"v1": v1_us, "v2": v2_us}, "rps": {"v1": rps_v1, "v2": rps_v2}},
    )


def _app() -> Any:
    from examples.pydantic_app import app

    return app
