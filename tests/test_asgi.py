"""The in-process ASGI driver: scope, lifespan, streaming, errors and timeouts."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from pytest_concurrency import StormError, run_storm
from pytest_concurrency._drivers.asgi import AsgiDriver
from pytest_concurrency._workload import Request

from .apps import asgi_hello


def test_scope_is_built_from_the_request_spec() -> None:
    seen: list[dict[str, Any]] = []
    bodies: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)
        message = await receive()
        bodies.append(message["body"])
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    spec = Request("POST", "/items/a%20b", json={"x": 1}, headers={"X-Test": "1"}, query={"q": "2"})

    async def main() -> None:
        driver = AsgiDriver(app, [spec])
        first = await driver.call(0)
        second = await driver.call(0)
        assert (first.status, second.status) == (201, 201)

    anyio.run(main)
    scope = seen[0]
    assert scope["method"] == "POST"
    assert scope["path"] == "/items/a b"
    assert scope["raw_path"] == b"/items/a%20b"
    assert scope["query_string"] == b"q=2"
    assert (b"x-test", b"1") in scope["headers"]
    assert (b"content-type", b"application/json") in scope["headers"]
    assert bodies == [b'{"x":1}', b'{"x":1}']
    # Each request gets its own copy: an app mutating its scope cannot leak into the next.
    assert seen[0] is not seen[1]
    assert seen[0]["headers"] is not seen[1]["headers"]


def test_asgi2_app_is_detected_and_served() -> None:
    class Asgi2:
        def __init__(self, scope: dict[str, Any]) -> None:
            self.scope = scope

        async def __call__(self, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    result = run_storm(Asgi2, "GET", "/", users=2, requests=20, lifespan="off")
    assert result.interface == "ASGI"
    assert result.status_counts[204] == 20


def test_lifespan_runs_once_around_the_storm() -> None:
    events: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    scope["state"]["db"] = "ready"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["state"]["db"] == "ready"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    result = run_storm(app, "GET", "/", users=5, requests=50)
    assert events == ["lifespan.startup", "lifespan.shutdown"]
    assert result.status_counts[200] == 50


def test_failing_lifespan_startup_is_a_clear_error() -> None:
    sent: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
            return
        sent.append("request")

    with pytest.raises(StormError, match="lifespan startup failed: database unreachable"):
        run_storm(app, "GET", "/", users=2, requests=5)
    assert sent == []


def test_app_without_lifespan_support_is_served() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError("only http")  # what Django does for lifespan scopes
        await asgi_hello(scope, receive, send)

    result = run_storm(app, "GET", "/", users=2, requests=10)
    assert result.status_counts[200] == 10


def test_streaming_response_records_time_to_first_byte() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await anyio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        for _ in range(4):
            await anyio.sleep(0.01)
            await send({"type": "http.response.body", "body": b"token", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    result = run_storm(app, "GET", "/stream", users=4, requests=20)
    # First byte after ~10 ms, whole body after ~50 ms (sleeps never wake early on asyncio).
    assert 9 <= result.ttfb.p50 < result.latency.p50
    assert result.latency.p50 >= 45


def test_exception_in_the_app_is_a_recorded_500_with_traceback() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raise ZeroDivisionError("boom")

    result = run_storm(app, "GET", "/", users=3, requests=30, check=False)
    assert result.status_counts[500] == 30
    assert result.errors["ZeroDivisionError"].count == 30
    assert "boom" in result.errors["ZeroDivisionError"].example
    assert result.error_rate == 1.0


def test_app_that_returns_without_a_response_is_an_error() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    result = run_storm(app, "GET", "/", users=1, requests=5, check=False, lifespan="off")
    assert result.errors["NoResponse"].count == 5


def test_request_that_never_completes_is_cut_off_by_its_timeout() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await anyio.sleep_forever()

    started = time.perf_counter()
    result = run_storm(app, "GET", "/", users=5, duration=0.5, timeout_ms=100, check=False)
    elapsed = time.perf_counter() - started
    assert result.timeouts >= 5 * 4  # each user times out every 100 ms over 0.5 s
    assert result.errors["Timeout"].count == result.timeouts
    assert result.latency.max == pytest.approx(100, abs=1)
    assert elapsed < 0.5 + 0.1 + 2.0  # duration + one timeout + grace


def test_sync_storm_inside_a_running_loop_names_arun() -> None:
    async def main() -> None:
        with pytest.raises(Exception, match=r"await storm.arun"):
            run_storm(asgi_hello, "GET", "/", requests=1)

    anyio.run(main)


def test_arun_on_the_running_loop() -> None:
    from pytest_concurrency import arun_storm

    async def main() -> int:
        result = await arun_storm(asgi_hello, "GET", "/", users=10, requests=200)
        return result.requests

    assert anyio.run(main) == 200


def test_requests_stop_condition_is_exact() -> None:
    result = run_storm(asgi_hello, "GET", "/", users=7, requests=1000)
    assert result.requests == 1000
    assert result.status_counts[200] == 1000


def test_warmup_requests_are_discarded() -> None:
    result = run_storm(asgi_hello, "GET", "/", users=4, requests=100, warmup_requests=40)
    assert result.requests == 100
    assert result.discarded == 40


@pytest.mark.usefixtures("no_leaked_threads")
def test_no_thread_outlives_an_asgi_storm() -> None:
    # The loop-lag watchdog and the thread-pool probe run only while the storm does.
    from examples import fastapi_app

    run_storm(fastapi_app.app, "GET", "/sync-io", users=10, duration=0.3)
    run_storm(asgi_hello, "GET", "/", users=10, duration=0.2, timeout_ms=50)


# -- response headers and lengths, held to what a real server sends -----------------------


def _answer(headers: list[Any], *chunks: bytes, status: int = 200) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for chunk in chunks[:-1]:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": chunks[-1] if chunks else b""})

    return app


BAD_RESPONSE_HEADERS = [
    [(b"x-a", b"v\r\nset-cookie: evil=1")],
    [(b"x-a", b"v\nx")],
    [(b"x-a", b"a\x00b")],
    [(b"x a", b"v")],
    [(b"x-a\r\n", b"v")],
    [(b"", b"v")],
    [(b"content-length", b"two")],
    [(b"content-length", b"2"), (b"content-length", b"3")],
]


@pytest.mark.parametrize("headers", BAD_RESPONSE_HEADERS, ids=repr)
def test_a_response_header_a_server_refuses_is_a_protocol_error(headers: list[Any]) -> None:
    # h11 (uvicorn's and httpx's grammar) refuses each of these too.
    import h11

    with pytest.raises(h11.LocalProtocolError):
        h11.Response(status_code=200, headers=headers)
    app = _answer([(b"content-type", b"text/plain"), *headers], b"ok")
    result = run_storm(app, "GET", "/", users=2, requests=10, check=False, lifespan="off")
    assert result.errors["InvalidHeader"].count == result.failed == 10
    # The same list is refused again: only valid lists are remembered.
    again = run_storm(app, "GET", "/", requests=3, check=False, lifespan="off")
    assert again.errors["InvalidHeader"].count == 3


@pytest.mark.parametrize(
    ("declared", "chunks", "word"),
    [(b"5", (b"ok",), "shorter"), (b"1", (b"ok",), "longer"), (b"3", (b"ab", b"cd"), "longer")],
)
def test_a_content_length_that_lies_is_a_protocol_error(
    declared: bytes, chunks: tuple[bytes, ...], word: str
) -> None:
    app = _answer([(b"content-length", declared)], *chunks)
    result = run_storm(app, "GET", "/", users=2, requests=10, check=False, lifespan="off")
    mismatch = result.errors["ContentLengthMismatch"]
    assert mismatch.count == result.failed == 10
    assert f"the body is {word} than its content-length" in mismatch.example


@pytest.mark.parametrize(
    ("method", "status", "headers", "chunks"),
    [
        ("GET", 200, [(b"Content-Length", b"4")], (b"ab", b"cd")),
        ("GET", 200, [(b"content-length", b"2, 2")], (b"ok",)),
        ("HEAD", 200, [(b"content-length", b"100")], ()),
        ("GET", 304, [(b"content-length", b"100")], ()),
        ("GET", 204, [], ()),
        ("GET", 200, [(b"x-tab", b"a\tb"), (b"x-latin", "caf\u00e9".encode("latin-1"))], (b"ok",)),
    ],
)
def test_responses_a_server_sends_pass(
    method: str, status: int, headers: list[Any], chunks: tuple[bytes, ...]
) -> None:
    app = _answer(headers, *chunks, status=status)
    result = run_storm(app, method, "/", users=2, requests=10, lifespan="off")
    assert result.status_counts == {status: 10}
