"""A zoo of misbehaving apps: each is recorded as what it is, and no storm hangs or lies."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from pytest_concurrency import (
    BudgetExceeded,
    ConcurrencyWarning,
    ConfigError,
    Request,
    StormError,
    run_storm,
)

Scope = dict[str, Any]


def _asgi(*messages: dict[str, Any], after: Any = None) -> Any:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        for message in messages:
            await send(message)
        if after is not None:
            await after(receive)

    return app


START = {"type": "http.response.start", "status": 200, "headers": []}
BODY = {"type": "http.response.body", "body": b"ok"}


@pytest.mark.parametrize(
    ("app", "kind"),
    [
        (_asgi(BODY), "BodyBeforeStart"),
        (_asgi(START, START, BODY), "StartedTwice"),
        (_asgi(START, {"type": "http.response.body", "body": "text"}), "BodyNotBytes"),
        (_asgi({**START, "status": "200"}, BODY), "BadStatus"),
        (_asgi({**START, "headers": [("a", "b")]}, BODY), "BadHeaders"),
        (_asgi(START, BODY, BODY), "MessageAfterResponse"),
        (_asgi(START, {"type": "http.response.bogus"}), "UnknownMessage"),
        (_asgi(START, {**BODY, "more_body": True}), "IncompleteResponse"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_asgi_protocol_violations_are_errors_of_their_own_kind(app: Any, kind: str) -> None:
    result = run_storm(app, "GET", "/", users=2, requests=10, check=False, lifespan="off")
    assert result.errors[kind].count == 10
    assert result.failed == 10


def test_a_violation_the_app_swallows_is_still_recorded() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        with contextlib.suppress(Exception):
            await send(BODY)
        await send(START)
        await send(BODY)

    result = run_storm(app, "GET", "/", requests=5, check=False, lifespan="off")
    assert result.errors["BodyBeforeStart"].count == 5


def test_asgi_app_that_waits_for_the_disconnect_after_its_response_is_served() -> None:
    # Quart waits on receive() after sending its response, until the server says the
    # exchange is over; uvicorn and httpx's transport answer http.disconnect.
    async def wait_for_disconnect(receive: Any) -> None:
        await receive()  # the request
        message = await receive()
        assert message["type"] == "http.disconnect"

    app = _asgi(START, BODY, after=wait_for_disconnect)
    started = time.perf_counter()
    result = run_storm(app, "GET", "/", users=4, requests=200, lifespan="off", timeout_ms=2000)
    assert result.status_counts == {200: 200}
    assert time.perf_counter() - started < 5


def test_a_stream_that_never_ends_still_meets_its_timeout() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(START)
        while True:
            await send({"type": "http.response.body", "body": b"x", "more_body": True})

    started = time.perf_counter()
    result = run_storm(
        app, "GET", "/", users=2, duration=0.3, timeout_ms=100, check=False, lifespan="off"
    )
    assert result.timeouts >= 2
    assert time.perf_counter() - started < 0.3 + 0.1 + 3


def _stubborn(finished: list[str], *, ignore_exit: bool = False) -> Any:
    """An app that swallows its cancellation (and, if asked, GeneratorExit too)."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            while True:
                try:
                    await anyio.sleep(10)
                except anyio.get_cancelled_exc_class():
                    pass
                except GeneratorExit:
                    if not ignore_exit:
                        raise
        finally:
            finished.append("finally")

    return app


def test_an_app_that_swallows_its_cancellation_is_abandoned_and_the_storm_ends() -> None:
    finished: list[str] = []
    started = time.perf_counter()
    with pytest.warns(ConcurrencyWarning, match="went on after being cancelled"):
        result = run_storm(
            _stubborn(finished),
            "GET",
            "/",
            users=3,
            duration=0.3,
            timeout_ms=100,
            check=False,
            lifespan="off",
        )
    # Timeout at 0.1 s, cancellation 20 ms later, abandoned a second after that; the
    # round itself ends at its deadline: nothing waits for the app any longer.
    assert time.perf_counter() - started < 0.3 + 0.1 + 1.0 + 3
    assert result.timeouts >= 3
    assert result.extras["abandoned"]["tasks"] >= 3
    # Every abandoned request was closed: its `finally` ran, nothing is left on a loop.
    assert len(finished) == result.extras["abandoned"]["tasks"]
    with pytest.raises(BudgetExceeded, match="max_error_rate"):
        run_storm(_stubborn([]), "GET", "/", users=1, requests=1, timeout_ms=50, lifespan="off")


# Python itself reports such a coroutine when it is collected ("coroutine ignored
# GeneratorExit"): the app's defect, shown as Python shows it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_app_that_ignores_generator_exit_too_cannot_hold_the_storm() -> None:
    started = time.perf_counter()
    with pytest.warns(ConcurrencyWarning, match="abandoned"):
        result = run_storm(
            _stubborn([], ignore_exit=True),
            "GET",
            "/",
            users=2,
            duration=0.2,
            timeout_ms=50,
            check=False,
            lifespan="off",
        )
    assert result.timeouts >= 2
    assert time.perf_counter() - started < 0.2 + 0.05 + 1.0 + 3


def test_an_abandoned_request_does_not_outlive_the_callers_loop() -> None:
    import asyncio

    from pytest_concurrency import arun_storm

    finished: list[str] = []

    async def main() -> Any:
        result = await arun_storm(
            _stubborn(finished),
            "GET",
            "/",
            users=2,
            duration=0.2,
            timeout_ms=50,
            check=False,
            lifespan="off",
        )
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return result, others

    started = time.perf_counter()
    with pytest.warns(ConcurrencyWarning, match="abandoned"):
        result, others = asyncio.run(main())  # its shutdown waits for every task left
    assert others == []
    assert result.extras["abandoned"]["tasks"] == len(finished) >= 2
    assert time.perf_counter() - started < 0.2 + 0.05 + 1.0 + 3


def test_a_websocket_app_that_swallows_its_cancellation_is_abandoned() -> None:
    from pytest_concurrency import run_websocket_storm

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            try:
                message = await receive()
            except anyio.get_cancelled_exc_class():
                continue
            if message["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": message.get("text") or ""})
            # a disconnect is ignored: the app goes on reading

    started = time.perf_counter()
    with pytest.warns(ConcurrencyWarning, match="abandoned"):
        result = run_websocket_storm(
            app, "/ws", users=2, duration=0.2, lifespan="off", max_disconnect_rate=1
        )
    assert result.extras["abandoned"]["tasks"] == 2
    assert time.perf_counter() - started < 0.2 + 1.0 + 1.0 + 3


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
def test_asgi_app_raising_exit_or_interrupt_is_the_apps_failure(exc: type) -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raise exc()

    result = run_storm(app, "GET", "/", users=2, requests=10, check=False, lifespan="off")
    assert result.errors[exc.__name__].count == 10
    with pytest.raises(BudgetExceeded, match="max_error_rate"):
        run_storm(app, "GET", "/", users=2, requests=10, p99_ms=10, lifespan="off")


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
def test_wsgi_app_raising_exit_or_interrupt_fails_the_storm(exc: type) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise exc(0)

    started = time.perf_counter()
    with pytest.raises(BudgetExceeded, match="max_error_rate") as failed:
        run_storm(app, "GET", "/", requests=10, max_error_rate=0, p99_ms=10)
    assert failed.value.result.errors[exc.__name__].count == 10
    assert time.perf_counter() - started < 3


def _wsgi_twice(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    start_response("200 OK", [])
    return [b"ok"]


def _wsgi_str_chunk(environ: dict[str, Any], start_response: Any) -> list[Any]:
    start_response("200 OK", [])
    return ["text"]


def _wsgi_never_starts(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    return [b"ok"]


def _wsgi_silent(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    return []


def _wsgi_bad_status(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response(200, [])
    return [b"ok"]


@pytest.mark.parametrize(
    ("app", "kind"),
    [
        (_wsgi_twice, "StartedTwice"),
        (_wsgi_str_chunk, "BodyNotBytes"),
        (_wsgi_never_starts, "NoStartResponse"),
        (_wsgi_silent, "NoStartResponse"),
        (_wsgi_bad_status, "BadStatus"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_wsgi_protocol_violations_are_errors_of_their_own_kind(app: Any, kind: str) -> None:
    result = run_storm(app, "GET", "/", requests=10, check=False)
    assert result.errors[kind].count == 10


def test_wsgi_handler_blocked_forever_ends_a_request_count_storm_quickly() -> None:
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        release.wait(30)
        start_response("200 OK", [])
        return [b"ok"]

    started = time.perf_counter()
    try:
        with pytest.raises(StormError, match="still running the app"):
            run_storm(app, "GET", "/", requests=3, timeout_ms=200)
        # timeout + 2 s without progress, then 1 s for the threads: not a 600 s deadline.
        assert time.perf_counter() - started < 6
    finally:
        release.set()


@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
def test_a_request_factory_that_raises_stops_the_storm_with_its_name(interface: str) -> None:
    async def asgi_app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send(START)
            await send(BODY)

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    def factory(user: int, iteration: int) -> Request:
        if iteration == 3:
            raise LookupError("no more ids")
        return Request("GET", f"/items/{iteration}")

    app = asgi_app if interface == "asgi" else wsgi_app
    started = time.perf_counter()
    with pytest.raises(
        StormError, match=r"requests=<function .*factory.* raised LookupError: no more ids"
    ):
        run_storm(app, requests=factory, users=2, duration=5.0, lifespan="off")
    assert time.perf_counter() - started < 3


def test_a_think_time_that_is_not_a_number_is_refused_before_any_load() -> None:
    class Words:
        def sample(self, rng: Any) -> str:
            return "soon"

    with pytest.raises(ConfigError, match=r"think_ms=.* drew 'soon'"):
        run_storm(lambda e, s: [], "GET", "/", think_ms=Words(), interface="wsgi")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"users": 10**9}, r"users=1,000,000,000 would need ≈"),
        ({"rate": 1e9}, r"rate asks for 1,000,000,000 arrivals per second"),
        ({"timeout_ms": 1e300}, r"timeout_ms=1e\+300 .* longer than a day"),
        ({"ramp": 1e9, "duration": 0.3}, r"ramp=1000000000.0 .* longer than the storm"),
        ({"stages": [(1, 1e9)]}, r"stages=1,000,000,000 would need"),
    ],
)
def test_storms_the_machine_cannot_carry_are_refused_at_once(
    params: dict[str, Any], message: str
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    started = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        run_storm(app, "GET", "/", **params)
    assert time.perf_counter() - started < 1


def test_too_many_worker_threads_are_refused_at_once() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        yield b""

    before = threading.active_count()
    with pytest.raises(
        ConfigError, match=r"workers=100000 × threads=1 .* asks for 100,000 threads"
    ):
        run_storm(app, "GET", "/", workers=100_000)
    assert threading.active_count() == before


def test_nothing_is_left_running_after_the_zoo() -> None:
    anyio.run(anyio.sleep, 0.1)  # let any stray task finish
    names = [t.name for t in threading.enumerate() if t.name.startswith("storm-")]
    assert names == []


def test_ctrl_c_with_a_blocked_wsgi_handler_returns_at_once() -> None:
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    script = textwrap.dedent(
        """
        import sys, threading, time
        from pytest_concurrency import run_storm

        started = threading.Event()

        def app(environ, start_response):
            started.set()
            time.sleep(60)
            start_response("200 OK", [])
            return [b"ok"]

        def announce():
            started.wait()
            print("blocked", flush=True)

        threading.Thread(target=announce, daemon=True).start()
        try:
            run_storm(app, "GET", "/", users=2, duration=20, timeout_ms=5000)
        except KeyboardInterrupt:
            sys.exit(130)
        """
    )
    env = {**os.environ, "PYTHONPATH": f"{root / 'src'}{os.pathsep}{root}"}
    with subprocess.Popen(
        [sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True, env=env
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "blocked"
            interrupted = time.perf_counter()
            child.send_signal(signal.SIGINT)
            assert child.wait(timeout=10) == 130
            # Not duration + timeout + 2 s (27 s): the pool's daemon threads are left to die.
            assert time.perf_counter() - interrupted < 3
        finally:
            if child.poll() is None:
                child.kill()


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"headers": {"a": 1}}, "headers={'a': 1}"),
        ({"query": 5}, "query=5"),
        ({"json": object()}, "json=<object object"),
        ({"content": 123}, "content=123"),
        ({"headers": {"é": "x"}}, "headers={'é': 'x'}"),
    ],
)
def test_requests_that_cannot_be_encoded_name_their_field(
    params: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(named)}.* cannot be encoded"):
        run_storm(_asgi(START, BODY), "GET", "/", requests=1, **params)
    with pytest.raises(ConfigError, match=r"path='/a\\x00b' .* cannot be encoded"):
        run_storm(_asgi(START, BODY), "GET", "/a\x00b", requests=1)


def test_scale_beyond_reason_is_refused() -> None:
    from pytest_concurrency._params import Layer, resolve

    config = resolve([Layer("keyword argument", {"users": 10})])
    with pytest.raises(ConfigError, match=r"scale=1e\+308 .* at most"):
        config.scaled(1e308, "--concurrency-scale")
