"""The same marker works on FastAPI, Starlette, Flask and Django (WSGI and ASGI) apps."""

from __future__ import annotations

from typing import Any

import pytest
from examples import django_app, fastapi_app, flask_app, starlette_app

from pytest_concurrency import BudgetExceeded

APPS: dict[str, Any] = {
    "starlette": starlette_app.app,
    "fastapi": fastapi_app.app,
    "flask": flask_app.app,
    "django-wsgi": django_app.wsgi_app,
    "django-asgi": django_app.asgi_app,
}
INTERFACE = {
    "starlette": "ASGI",
    "fastapi": "ASGI",
    "flask": "WSGI",
    "django-wsgi": "WSGI",
    "django-asgi": "ASGI",
}


@pytest.mark.concurrency(users=20, duration=0.4, max_error_rate=0, p99_ms=2000)
@pytest.mark.parametrize("framework", list(APPS))
def test_marker_on_every_framework(storm: Any, framework: str) -> None:
    result = storm(APPS[framework], "GET", "/items/7", workers=4)
    assert result.interface == INTERFACE[framework]
    assert result.requests > 0
    assert result.status_counts[200] == result.requests


@pytest.mark.concurrency(users=10, requests=40, max_error_rate=0)
def test_not_found_counts_as_failure(storm: Any) -> None:
    with pytest.raises(BudgetExceeded, match=r"max_error_rate") as raised:
        storm(fastapi_app.app, "GET", "/nope")
    result = raised.value.result
    assert result.status_counts[404] == 40
    assert result.error_rate == 1.0


def test_fastapi_sync_endpoint_runs_on_the_thread_pool(storm: Any) -> None:
    # `def` endpoints go through anyio's thread limiter (40 threads): 60 users waiting
    # 50 ms each cannot all be served at once, so throughput stays near 40 / 0.05 = 800 rps
    # at most, while the async endpoint serves all 60 concurrently (60 / 0.05 = 1,200).
    sync = storm(fastapi_app.app, "GET", "/sync-io", users=60, duration=1.0, warmup=0.3)
    assert sync.throughput < 800 * 1.1
    assert sync.latency.p50 > 50 * 60 / 40 * 0.8
