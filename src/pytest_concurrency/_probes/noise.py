"""How late short sleeps wake on this machine: the timer and scheduler noise a storm's
figures sit on. Measured once per process (≈ 0.5 s); the report words it.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time

from .._metrics import latency_stats, new_histogram, record_many

__all__ = ["noise_figures"]

_NOISE_SAMPLES = 200
_NOISE_SLEEP_S = 0.001


def _percentiles(overshoots_ms: list[float]) -> tuple[float, float]:
    """p50 and p99 of the overshoots, through the same HDR histogram as storm latencies."""
    histogram = new_histogram()
    moments = record_many(histogram, (max(0, round(v * 1000)) for v in overshoots_ms))
    stats = latency_stats(histogram, moments)
    return stats.p50, stats.p99


def _sleep_overshoots_ms() -> list[float]:
    out = []
    for _ in range(_NOISE_SAMPLES):
        start = time.perf_counter()
        time.sleep(_NOISE_SLEEP_S)
        out.append((time.perf_counter() - start - _NOISE_SLEEP_S) * 1e3)
    return out


async def _asyncio_overshoots_ms() -> list[float]:
    out = []
    for _ in range(_NOISE_SAMPLES):
        start = time.perf_counter()
        await asyncio.sleep(_NOISE_SLEEP_S)
        out.append((time.perf_counter() - start - _NOISE_SLEEP_S) * 1e3)
    return out


def _measure_asyncio() -> list[float]:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_asyncio_overshoots_ms())
    # A loop already runs in this thread: asyncio.run would refuse, so measure on another.
    box: list[list[float]] = []
    thread = threading.Thread(
        target=lambda: box.append(asyncio.run(_asyncio_overshoots_ms())),
        name="pytest-storm-noise",
    )
    thread.start()
    thread.join()
    return box[0]


@functools.cache
def noise_figures() -> dict[str, float]:
    """How late 1 ms sleeps wake on this machine (ms over, p50 and p99); measured once (≈0.5 s)."""
    sleep_p50, sleep_p99 = _percentiles(_sleep_overshoots_ms())
    asyncio_p50, asyncio_p99 = _percentiles(_measure_asyncio())
    return {
        "samples": float(_NOISE_SAMPLES),
        "sleep_p50_ms": round(sleep_p50, 3),
        "sleep_p99_ms": round(sleep_p99, 3),
        "asyncio_p50_ms": round(asyncio_p50, 3),
        "asyncio_p99_ms": round(asyncio_p99, 3),
    }
