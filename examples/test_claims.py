"""Claims of framework-comparison articles as a user of pytest-storm would gate them in CI.

Each test states a claim, fires a short storm at the example apps and lets a budget (or
an assertion derived from the model) decide. `pytest-storm demo` measures the same
claims at larger scale and prints a verdict for each.
"""

from __future__ import annotations

from typing import Any

import pytest

from examples import django_app, fastapi_app, flask_app
from pytest_concurrency import BudgetExceeded, Request, lognormal

MODEL = lognormal(p50_ms=80, p99_ms=200)  # an LLM's 800 ms / 2 s, scaled down 10×
PROMPT = Request("POST", "/llm", json={"prompt": "Say hello", "max_tokens": 16})


@pytest.fixture
def model_server(upstream: Any) -> Any:
    upstream.route(fastapi_app.MODEL_URL, latency=MODEL, json={"text": "Hello!", "tokens": 3})
    return upstream


# Gates that count, or that compare with the model, hold on a slow or busy machine: a
# blocking call is one call however fast the CPU, and requests pile up behind a held loop
# at any speed. 100 arrivals/s each awaiting 50 ms keep 100 × 0.05 = 5 in flight on
# average (Little's law); twice that is the limit. A loop held 50 ms per request serves
# at most 20/s, so the 80 more due each second pile up: dozens in flight.
IO_GATE = pytest.mark.concurrency(
    rate=100, duration=0.5, warmup=0.1, max_blocking_calls=0, max_in_flight_peak=10
)


@IO_GATE
def test_async_endpoint_does_not_block_other_users(storm: Any) -> None:
    result = storm(fastapi_app.app, "GET", "/io")
    # Open model: every request due was sent, and none waited for another's 50 ms.
    assert result.status_counts[200] == result.requests > 0


@IO_GATE
def test_blocking_call_in_async_def_blocks_everyone(storm: Any) -> None:
    with pytest.raises(BudgetExceeded) as failed:
        storm(fastapi_app.app, "GET", "/blocking-in-async")
    result = failed.value.result
    assert {v.name for v in result.verdicts if not v.ok} == {
        "max_blocking_calls",
        "max_in_flight_peak",
    }
    # time.sleep(0.05) on the loop: one request at a time, at most 20 a second.
    assert result.throughput < 25
    site = result.loop_lag.sites[0]
    assert site.function == "blocking_in_async"
    assert "time.sleep" in site.call


# The model's own p99 is the yardstick: a storm's p99 within 1.5× the p99 of the model
# calls it made (the 300 ms of a 200 ms model), however slow the machine running both.
LLM_P99_RATIO = 1.5


@pytest.mark.concurrency(
    users=20, duration=0.3, warmup=0.1, p99_ratio=LLM_P99_RATIO, max_error_rate=0
)
def test_sync_llm_endpoint_needs_several_workers(storm: Any, model_server: Any) -> None:
    found = storm.capacity(flask_app.app, requests=[PROMPT], workers=range(1, 21))
    # W sync workers give 20 users a mean latency of 20 × 86 ms (the model's mean) / W, and
    # p99 above the mean: 1.5 × 200 ms needs at least 6; with 20 nobody queues.
    assert found.best is not None
    assert 6 <= found.best <= 20


@pytest.mark.concurrency(
    users=20, duration=0.3, warmup=0.1, p99_ratio=LLM_P99_RATIO, max_error_rate=0
)
def test_too_few_sync_workers_fail_the_same_gate(storm: Any, model_server: Any) -> None:
    with pytest.raises(BudgetExceeded, match="p99_ratio"):
        # 2 workers: 20 × 86 ms / 2 ≈ 860 ms mean latency, four times the model's p99.
        storm(flask_app.app, requests=[PROMPT], workers=2)


@pytest.mark.concurrency(
    users=20, duration=0.4, warmup=0.1, p99_ratio=LLM_P99_RATIO, max_error_rate=0
)
def test_async_llm_endpoint_needs_one_event_loop(storm: Any, model_server: Any) -> None:
    found = storm.capacity(fastapi_app.app, requests=[PROMPT], workers=range(1, 21))
    assert found.best == 1
    assert found.storms == 1


@pytest.mark.concurrency(users=20, duration=0.5, max_error_rate=0)
def test_django_orm_in_an_async_view_hops_to_threads(storm: Any) -> None:
    plain = storm(django_app.asgi_app, "GET", "/async-item/3")
    orm = storm(django_app.asgi_app, "GET", "/orm/3")

    def asgiref_threads(result: Any) -> int:
        return max(p.max_busy for p in result.thread_pools if "asgiref" in p.name)

    # sync_to_async around the query: a thread per request in flight (17–20 of the 20
    # users here), where the same async view without the ORM keeps Django's one thread
    # for its sync parts (two for an instant on a busy machine, while one call hands over
    # to the next). Threads are counted, not timed: the counts hold on a busy machine,
    # where the two storms' throughputs can swap places.
    assert asgiref_threads(plain) <= 2
    assert asgiref_threads(orm) >= 5
