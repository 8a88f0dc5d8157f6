"""The in-process upstream answers httpx2 (httpx's successor) as it answers httpx."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest

from pytest_concurrency import Upstream
from pytest_concurrency._api import run_storm
from pytest_concurrency._simio import UndeclaredUpstreamError

httpx2 = pytest.importorskip("httpx2")

MODEL = "http://model-server.invalid/generate"
#: A 50 ms simulated wait, and what the model allows on top of it on a loaded 2-core
#: machine: the timer's overshoot (≈ 2 ms at p99 for 1,000 waits) and the app's own work.
LATENCY_MS = 50.0
SLACK_MS = 10.0


def test_async_client_is_answered_with_its_own_types() -> None:
    async def main(upstream: Upstream) -> None:
        async with httpx2.AsyncClient() as client:
            response = await client.post(MODEL, json={"prompt": "hi"})
            assert isinstance(response, httpx2.Response)
            assert response.json() == {"text": "Hello!"}
            streamed = await client.get("http://model-server.invalid/stream")
            assert streamed.text == "a b c"
            with pytest.raises(httpx2.ReadTimeout, match="simulated read timeout"):
                await client.get("http://slow.invalid/")

    with Upstream() as upstream:
        route = upstream.route(MODEL, latency=5, json={"text": "Hello!"})
        upstream.route("http://model-server.invalid/stream", stream=["a ", "b ", "c"])
        slow = upstream.route("http://slow.invalid/", timeout_rate=1.0)
        anyio.run(main, upstream)
    assert (route.calls, route.in_flight, route.max_in_flight) == (1, 0, 1)
    assert route.waited_s >= 0.004
    assert slow.timeouts == 1


def test_sync_client_handler_and_errors() -> None:
    def echo(request: Any) -> httpx.Response:
        # A handler written for httpx answers an httpx2 client too.
        return httpx.Response(201, json={"got": request.content.decode()})

    with Upstream() as upstream, httpx2.Client() as client:
        upstream.route("http://echo.invalid/", handler=echo)
        failing = upstream.route("http://flaky.invalid/", error_rate=1.0)
        response = client.post("http://echo.invalid/x", content=b"body")
        assert isinstance(response, httpx2.Response)
        assert (response.status_code, response.json()) == (201, {"got": "body"})
        assert client.get("http://flaky.invalid/").status_code == 503
        assert failing.errors == 1
        message = "undeclared upstream host 'other.invalid'"
        with pytest.raises(UndeclaredUpstreamError, match=re.escape(message)) as info:
            client.get("http://other.invalid/")
        assert isinstance(info.value, httpx2.TransportError)
        assert info.value.request.url == "http://other.invalid/"
    assert upstream.undeclared == ["http://other.invalid/"]


def test_uninstall_restores_httpx2() -> None:
    before = (httpx2.HTTPTransport.handle_request, httpx2.AsyncHTTPTransport.handle_async_request)
    with Upstream():
        assert httpx2.HTTPTransport.handle_request is not before[0]
    after = (httpx2.HTTPTransport.handle_request, httpx2.AsyncHTTPTransport.handle_async_request)
    assert after == before


# One client per app, as apps keep them: building one loads the system's CA store (≈ 50 ms).
ASYNC_CLIENT = httpx2.AsyncClient()
SYNC_CLIENT = httpx2.Client()


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app whose every request awaits one call to the model with httpx2."""
    if scope["type"] != "http":
        return
    answer = (await ASYNC_CLIENT.post(MODEL, json={"prompt": "hi"})).content
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": answer})


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A WSGI app whose every request blocks on one call to the model with httpx2."""
    answer = SYNC_CLIENT.post(MODEL, json={"prompt": "hi"}).content
    start_response("200 OK", [])
    return [answer]


@pytest.mark.parametrize(
    ("app", "params"),
    [(asgi_app, {}), (wsgi_app, {"threads": 10})],
    ids=["asgi-async-client", "wsgi-sync-client"],
)
def test_a_storm_waits_on_the_declared_route(app: Any, params: dict[str, Any]) -> None:
    users = 10
    with Upstream() as upstream:
        upstream.route(MODEL, latency=LATENCY_MS, json={"text": "Hello!"})
        result = run_storm(app, "POST", "/", users=users, requests=100, **params)
    assert result.status_counts == {200: 100}
    route = result.extras["upstream"][MODEL]
    # One call per request: the warm-up and every measured request.
    assert route["calls_in_storm"] == result.requests + result.discarded
    assert LATENCY_MS <= route["waited_ms_p50"] <= LATENCY_MS + SLACK_MS
    # Nothing queues (a thread or the loop per user): each request takes the one wait.
    assert LATENCY_MS - 1 <= result.latency.p50 <= LATENCY_MS + SLACK_MS
    # Little's law: users / latency.
    assert result.throughput == pytest.approx(users / (LATENCY_MS / 1000), rel=0.25)
    assert result.refused_egress == []
