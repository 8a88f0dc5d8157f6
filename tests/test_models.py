"""Storm figures against queueing models: Little's law for pools, simulated latency for I/O.

These storms take seconds each; they are marked ``timing`` and their tolerances come
from the model plus what this kind of machine adds (thread wake-ups of a few ms,
timer overshoot of about 2 ms for a thousand concurrent sleeps).
"""

from __future__ import annotations

import warnings

import pytest

from pytest_concurrency import ConcurrencyWarning, run_storm

from .apps import asgi_blocking, asgi_sleep, wsgi_sleep

pytestmark = pytest.mark.timing

SERVICE = 0.050  # seconds each request holds its worker


def test_littles_law_on_a_saturated_worker_pool() -> None:
    # 50 closed users, 8 workers, 50 ms each: the pool completes 8 / 0.05 = 160 rps;
    # Little's law gives the time each request spends inside: N / X = 50 / 160 = 312.5 ms,
    # of which 312.5 - 50 = 262.5 ms is waiting for a worker.
    result = run_storm(
        wsgi_sleep(SERVICE), "GET", "/io", users=50, workers=8, duration=3.0, warmup=0.5
    )
    assert result.throughput == pytest.approx(160, rel=0.15)
    assert result.latency.mean == pytest.approx(312.5, rel=0.15)
    assert result.queue_wait is not None
    assert result.queue_wait.mean == pytest.approx(262.5, rel=0.20)
    assert result.service_time is not None
    assert result.service_time.p50 == pytest.approx(50, abs=5)
    assert result.saturation is not None
    assert result.saturation >= 0.9


def test_a_pool_as_large_as_the_users_does_not_queue() -> None:
    result = run_storm(
        wsgi_sleep(SERVICE), "GET", "/io", users=50, workers=50, duration=2.0, warmup=0.3
    )
    assert result.latency.mean == pytest.approx(50, rel=0.15)
    assert result.throughput == pytest.approx(50 / SERVICE, rel=0.20)
    assert result.saturation is not None
    assert result.saturation < 0.3


def test_blocking_call_in_async_handler_is_timed_honestly() -> None:
    # One request at a time on the loop: 1 / 0.02 = 50 rps, and each of the 50 users waits
    # for the 49 before it: mean latency 50 × 20 ms = 1,000 ms, not the 20 ms of one handler.
    result = run_storm(asgi_blocking(0.02), "GET", "/", users=50, duration=3.0, warmup=1.0)
    assert result.throughput == pytest.approx(50, rel=0.15)
    assert result.latency.mean == pytest.approx(1000, rel=0.15)
    assert result.latency.p50 > 20 * 10


def test_async_handler_serves_hundreds_of_waiting_users() -> None:
    # 500 users each waiting 50 ms on async I/O: 500 / 0.05 = 10,000 rps if the loop keeps
    # up; if it cannot, the storm must say that the load generator was CPU-bound.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConcurrencyWarning)
        result = run_storm(asgi_sleep(SERVICE), "GET", "/", users=500, duration=2.0, warmup=0.3)
    cpu_bound = [
        w
        for w in caught
        if issubclass(w.category, ConcurrencyWarning) and "load generator" in str(w.message)
    ]
    if not cpu_bound:
        assert result.latency.p50 == pytest.approx(50, abs=5)
        assert result.throughput == pytest.approx(10_000, rel=0.15)
    else:
        assert result.harness_share is not None
    assert result.failed == 0
