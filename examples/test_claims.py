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


@pytest.mark.concurrency(users=20, duration=0.5, warmup=0.1, max_loop_lag_ms=20, max_error_rate=0)
def test_async_endpoint_does_not_block_other_users(storm: Any) -> None:
    result = storm(fastapi_app.app, "GET", "/io")
    # 20 users each awaiting 50 ms at once: at most 20 / 0.05 s = 400 rps (Little's law);
    # a blocked loop would serve 20.
    assert 0.8 * 400 <= result.throughput <= 1.05 * 400


@pytest.mark.concurrency(users=20, duration=0.5, max_loop_lag_ms=20)
def test_blocking_call_in_async_def_blocks_everyone(storm: Any) -> None:
    with pytest.raises(BudgetExceeded, match="max_loop_lag_ms") as failed:
        storm(fastapi_app.app, "GET", "/blocking-in-async")
    result = failed.value.result
    # time.sleep(0.05) on the loop: one request at a time, 20 rps whatever the users.
    assert result.throughput < 25
    site = result.loop_lag.sites[0]
    assert site.function == "blocking_in_async"
    assert "time.sleep" in site.call


@pytest.mark.concurrency(users=20, duration=0.3, warmup=0.1, p99_ms=300, max_error_rate=0)
def test_sync_llm_endpoint_needs_several_workers(storm: Any, model_server: Any) -> None:
    found = storm.capacity(flask_app.app, requests=[PROMPT], workers=range(1, 21))
    # W sync workers give 20 users a mean latency of 20 × 86 ms (the model's mean) / W, so
    # the 300 ms budget needs at least 6; with 20 nobody queues and p99 is the model's 200 ms.
    assert found.best is not None
    assert 6 <= found.best <= 20


@pytest.mark.concurrency(users=20, duration=0.4, warmup=0.1, p99_ms=300, max_error_rate=0)
def test_async_llm_endpoint_needs_one_event_loop(storm: Any, model_server: Any) -> None:
    found = storm.capacity(fastapi_app.app, requests=[PROMPT], workers=range(1, 21))
    assert found.best == 1
    assert found.storms == 1


@pytest.mark.concurrency(users=20, duration=0.5, max_error_rate=0)
def test_django_orm_in_an_async_view_hops_to_threads(storm: Any) -> None:
    plain = storm(django_app.asgi_app, "GET", "/async-item/3")
    orm = storm(django_app.asgi_app, "GET", "/orm/3")
    # sync_to_async around the query: a thread per request in flight, and fewer requests
    # a second than the same async view without the ORM.
    threads = max(p.max_busy for p in orm.thread_pools if "asgiref" in p.name)
    assert threads > 1
    assert orm.throughput < plain.throughput
