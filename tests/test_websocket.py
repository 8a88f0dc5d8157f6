"""WebSocket storms: the in-process ASGI websocket scope, round trips, closes, rooms, budgets."""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from examples import django_channels_app, fastapi_app, flask_app, starlette_app

from pytest_concurrency import (
    BudgetExceeded,
    ConfigError,
    StormError,
    WebSocketResult,
    run_websocket_storm,
)
from pytest_concurrency._report._terminal import storms_table

Scope = dict[str, Any]
App = Callable[[Scope, Any, Any], Awaitable[None]]


def websocket_only(app: App) -> App:
    """The app on websocket scopes; lifespan (and anything else) answered by returning."""

    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await app(scope, receive, send)

    return wrapped


@websocket_only
async def echo(scope: Scope, receive: Any, send: Any) -> None:
    """Raw ASGI echo: text and bytes both ways."""
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept", "subprotocol": (scope["subprotocols"] or [None])[0]})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": "You said: " + message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": b"You said: " + message["bytes"]})


def test_echo_round_trips_are_measured_from_their_intended_send() -> None:
    result = run_websocket_storm(echo, "/ws", users=20, duration=0.3)
    assert isinstance(result, WebSocketResult)
    assert result.method == "WEBSOCKET"
    assert result.label == "WEBSOCKET /ws"
    assert result.messages == result.requests > 100
    assert result.round_trip is result.latency
    assert result.status_counts[101] == result.messages
    assert result.connect.count == result.connections == 20
    assert result.peak_connections == result.held_connections == 20
    assert result.disconnects == result.refused == 0
    assert result.throughput == pytest.approx(result.messages / result.duration, rel=0.2)
    assert result.loop_lag is not None  # the round runs under the engine's loop monitor
    assert result.passed


def test_bytes_echo() -> None:
    replies: list[Any] = []

    @websocket_only
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            replies.append(message.get("bytes"))
            await send({"type": "websocket.send", "bytes": message["bytes"][::-1]})

    result = run_websocket_storm(
        app, "/ws", users=3, messages=30, message=b"\x00\x01abc", expect=b"cba\x01\x00"
    )
    assert result.messages == 30
    assert replies
    assert all(r == b"\x00\x01abc" for r in replies)


def test_factory_builds_each_users_messages() -> None:
    seen: list[str] = []

    @websocket_only
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            seen.append(message["text"])
            await send({"type": "websocket.send", "text": "ok"})

    run_websocket_storm(
        app, "/ws", users=2, messages=6, factory=lambda user, i: f"{user}:{i}", expect="ok"
    )
    assert {"0:0", "0:1", "1:0", "1:1"} <= set(seen)


def test_scope_carries_path_query_headers_and_subprotocols() -> None:
    scopes: list[Scope] = []

    @websocket_only
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await echo(scope, receive, send)

    result = run_websocket_storm(
        app,
        "/ws/lobby",
        users=1,
        messages=1,
        query={"token": "t"},
        headers={"x-user": "ada"},
        subprotocols=["chat"],
    )
    scope = scopes[0]
    assert scope["path"] == "/ws/lobby"
    assert scope["scheme"] == "ws"
    assert scope["query_string"] == b"token=t"
    assert scope["subprotocols"] == ["chat"]
    headers = dict(scope["headers"])
    assert headers[b"x-user"] == b"ada"
    assert headers[b"upgrade"] == b"websocket"
    assert headers[b"sec-websocket-protocol"] == b"chat"
    assert "method" not in scope
    assert result.passed


def test_a_refused_handshake_is_counted_with_its_close_code() -> None:
    @websocket_only
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 4003})

    result = run_websocket_storm(app, "/ws", users=2, messages=10, check=False)
    assert result.refused == 10
    assert result.connections == 0
    assert result.close_codes == {4003: 10}
    assert result.status_counts == {403: 10}  # the spec's answer to a close before accept
    assert result.error_rate == 1.0
    assert not result.passed  # any failed message fails the storm by default
    with pytest.raises(BudgetExceeded, match="max_error_rate"):
        run_websocket_storm(app, "/ws", users=1, messages=2)


def test_a_denial_response_is_a_refused_handshake_with_its_status() -> None:
    @websocket_only
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert "websocket.http.response" in scope["extensions"]
        await receive()
        await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"who are you?"})

    result = run_websocket_storm(app, "/ws", users=1, messages=3, check=False)
    assert result.refused == 3
    assert result.status_counts == {401: 3}
    assert not result.close_codes


def test_a_server_close_is_counted_with_its_code() -> None:
    @websocket_only
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": message["text"]})
        await send({"type": "websocket.close", "code": 1008, "reason": "one message only"})

    result = run_websocket_storm(app, "/ws", users=2, messages=10, max_disconnect_rate=1.0)
    assert result.messages == 10
    assert result.error_rate == 0  # each connection closed after its answer: reconnects
    assert result.connections == 10
    assert result.disconnects >= 8
    assert result.close_codes[1008] == result.disconnects
    assert result.held_connections <= 2
    with pytest.raises(BudgetExceeded, match="max_disconnect_rate"):
        run_websocket_storm(app, "/ws", users=2, messages=10, max_disconnect_rate=0.5)


def test_a_close_while_a_message_waits_fails_the_message() -> None:
    @websocket_only
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        await send({"type": "websocket.close", "code": 1011})

    result = run_websocket_storm(app, "/ws", users=1, messages=4, check=False)
    assert result.failed == 4
    assert set(result.errors) == {"ConnectionClosed"}
    assert "code 1011" in result.errors["ConnectionClosed"].example
    assert result.close_codes == {1011: 4}


def test_the_app_hears_the_client_leave() -> None:
    disconnects: list[Any] = []

    @websocket_only
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": "ok"})
        disconnects.append(message["code"])

    result = run_websocket_storm(app, "/ws", users=3, messages=9, expect="ok")
    assert disconnects == [1000, 1000, 1000]
    assert result.held_connections == 3


def test_server_initiated_messages_are_counted_apart_from_replies() -> None:
    @websocket_only
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "welcome"})
        while (message := await receive())["type"] == "websocket.receive":
            await anyio.sleep(0.001)
            await send({"type": "websocket.send", "text": message["text"]})
            await send({"type": "websocket.send", "text": "typing…"})

    result = run_websocket_storm(app, "/ws", users=1, messages=5)
    assert result.messages == 5
    # "welcome" was answered before the first message; each "typing…" after its reply.
    assert result.server_messages >= 4


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ({"type": "websocket.send", "text": "early"}, "SendBeforeAccept"),
        ({"type": "websocket.accept"}, "AcceptedTwice"),
        ({"type": "websocket.send", "text": "a", "bytes": b"b"}, "BadFrame"),
        ({"type": "websocket.send", "text": b"bytes"}, "BadFrame"),
        ({"type": "http.response.start", "status": 200}, "UnknownMessage"),
    ],
)
def test_protocol_violations_are_recorded_by_kind(message: dict[str, Any], kind: str) -> None:
    @websocket_only
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        if message.get("type") != "websocket.send" or "early" not in str(message.get("text")):
            await send({"type": "websocket.accept"})
            await receive()
        with contextlib.suppress(Exception):  # swallowed: recorded all the same
            await send(message)

    result = run_websocket_storm(app, "/ws", users=1, messages=2, check=False)
    assert result.failed == 2
    assert kind in result.errors


def test_an_app_that_returns_without_a_handshake_is_a_violation() -> None:
    @websocket_only
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()

    result = run_websocket_storm(app, "/ws", users=1, messages=2, check=False)
    assert "NoHandshake" in result.errors
    assert result.refused == 2


def test_an_app_error_after_the_handshake_is_recorded_by_its_type() -> None:
    @websocket_only
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        raise LookupError("no such room")

    result = run_websocket_storm(app, "/ws", users=1, messages=3, check=False)
    assert set(result.errors) == {"LookupError"}
    assert result.close_codes == {1011: 3}


def test_a_handshake_that_never_comes_times_out() -> None:
    @websocket_only
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await anyio.sleep(10)

    started = time.perf_counter()
    result = run_websocket_storm(
        app, "/ws", users=2, duration=0.2, connect_timeout_ms=50, check=False
    )
    assert time.perf_counter() - started < 5
    assert "ConnectTimeout" in result.errors
    assert result.timeouts == result.failed > 0


def test_a_reply_that_never_comes_times_out_and_the_user_reconnects() -> None:
    @websocket_only
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] == "websocket.receive":
            pass  # never answers

    result = run_websocket_storm(app, "/ws", users=2, duration=0.3, timeout_ms=50, check=False)
    assert result.timeouts == result.failed >= 4
    assert result.connections >= 4  # a fresh connection after each timeout


def test_open_model_messages_arrive_at_the_rate() -> None:
    result = run_websocket_storm(echo, "/ws", rate=400, duration=0.5)
    assert result.model == "open"
    assert result.messages == pytest.approx(200, abs=10)
    assert 1 <= result.connections <= 50


def test_a_broadcast_room_delivers_every_message_to_every_listener() -> None:
    members: set[Any] = set()
    received: dict[int, int] = {}

    @websocket_only
    async def room(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        members.add(send)
        try:
            while (message := await receive())["type"] == "websocket.receive":
                await anyio.sleep(0.002)
                for member in list(members):
                    await member({"type": "websocket.send", "text": message["text"]})
                    received[id(member)] = received.get(id(member), 0) + 1
        finally:
            members.discard(send)

    result = run_websocket_storm(room, "/ws/room", users=3, listeners=10, messages=30)
    assert result.listeners == 10
    assert result.messages == 30
    assert result.peak_connections == 13
    assert result.connect.count == 13
    # Every listener got every message (the senders too, as unanswered server messages).
    assert sorted(received.values())[-10:] == [30] * 10
    assert result.latency.min >= 2.0  # delivery waits for the room's own 2 ms


def test_a_room_whose_listener_is_refused_stops_before_any_message() -> None:
    @websocket_only
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close"})

    with pytest.raises(StormError, match="room listener 0 could not connect"):
        run_websocket_storm(app, "/ws", users=1, listeners=2, messages=1)


def test_budgets_on_connect_and_throughput() -> None:
    result = run_websocket_storm(
        echo, "/ws", users=5, duration=0.3, connect_p99_ms=5000, min_messages_per_s=10
    )
    names = {v.name for v in result.verdicts}
    assert {"connect_p99_ms", "min_rps"} <= names
    with pytest.raises(BudgetExceeded, match=r"connect_p99_ms") as raised:
        run_websocket_storm(echo, "/ws", users=5, duration=0.2, connect_p99_ms=0)
    assert "WEBSOCKET /ws" in str(raised.value)


def test_warm_up_discards_messages_but_keeps_the_handshakes() -> None:
    result = run_websocket_storm(
        echo, "/ws", users=5, warmup=0.2, duration=0.2, connect_p99_ms=5000
    )
    assert result.discarded > 0
    assert result.connect.count == 5
    assert result.passed


def test_a_wsgi_app_is_refused_before_any_load() -> None:
    with pytest.raises(ConfigError, match="WSGI has no WebSockets"):
        run_websocket_storm(flask_app.app, "/ws", users=10, duration=1)


async def _async_matcher(message: Any) -> bool:
    return True


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"message": 42}, r"message=42 \(from keyword argument\) must be str"),
        ({"factory": "x"}, r"factory='x' \(from keyword argument\) must be callable"),
        ({"messages": 5, "duration": 1}, "give one stop condition"),
        ({"requests": 5}, "give messages= to stop after a count"),
        ({"listeners": 0}, r"listeners=0 \(from keyword argument\)"),
        ({"connect_timeout_ms": -1}, r"connect_timeout_ms=-1"),
        ({"max_disconnect_rate": 2}, "fraction between 0 and 1"),
        ({"processes": 2}, "WebSocket storms run in one process"),
        ({"on_start": print}, "applies to HTTP requests"),
        ({"engine": "locust", "server": "http://127.0.0.1:9"}, "runs on the native engine"),
        ({"expect": 42}, r"expect=42 \(from keyword argument\) must be the reply as str"),
        ({"expect": _async_matcher}, "is an async function"),
        ({"expect": "hi", "listeners": 2}, "does not apply to a broadcast room"),
    ],
)
def test_bad_websocket_parameters_fail_before_any_load(
    params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        run_websocket_storm(echo, "/ws", **params)


def test_a_failing_factory_stops_the_storm_with_its_error() -> None:
    def factory(user: int, i: int) -> str:
        if i == 2:
            raise ValueError("out of words")
        return "hi"

    with pytest.raises(StormError, match=r"out of words when called with \(0, 2\)"):
        run_websocket_storm(echo, "/ws", users=1, messages=10, factory=factory)
    with pytest.raises(ConfigError, match=r"division by zero when called with \(0, 0\).*before"):
        run_websocket_storm(echo, "/ws", factory=lambda user, i: 1 / 0 and "x")


def test_reports_show_a_websocket_storm() -> None:
    result = run_websocket_storm(echo, "/ws", users=2, messages=20)
    data = json.loads(json.dumps(result.to_dict()))
    ws = data["extras"]["websocket"]
    assert ws["peak_connections"] == 2
    assert ws["connect"]["count"] == 2
    assert "connect" in data["histograms"]
    lines = storms_table([("test_chat", result)])
    assert "WEBSOCKET /ws" in lines[1]
    assert "20" in lines[1]
    pytest.importorskip("plotly")
    from pytest_concurrency._report._html import render_html

    assert "WEBSOCKET /ws" in render_html([("test_chat", result)])


@pytest.mark.parametrize(
    "app",
    [fastapi_app.app, starlette_app.app, django_channels_app.application],
    ids=["fastapi", "starlette", "django-channels"],
)
def test_example_chats_echo(app: Any) -> None:
    result = run_websocket_storm(app, "/ws", users=10, duration=0.3, p99_ms=2000)
    assert result.messages > 10
    assert result.held_connections == 10
    result = run_websocket_storm(app, "/ws", users=2, messages=10, message=b"bytes")
    assert result.messages == 10


@pytest.mark.parametrize(
    "app",
    [fastapi_app.app, starlette_app.app, django_channels_app.application],
    ids=["fastapi", "starlette", "django-channels"],
)
def test_example_rooms_reach_every_listener(app: Any) -> None:
    result = run_websocket_storm(app, "/ws/room", users=2, listeners=5, messages=10)
    assert result.messages == 10
    assert result.peak_connections == 7


@pytest.mark.timing
def test_an_async_wait_keeps_round_trips_near_it_at_200_connections() -> None:
    result = run_websocket_storm(fastapi_app.app, "/ws/wait", users=200, duration=1.5)
    wait_ms = fastapi_app.CHAT_WAIT_SECONDS * 1000
    assert result.held_connections == 200
    assert wait_ms <= result.round_trip.p50 < wait_ms * 3
    # Little's law: 200 connections, each a round trip every ≈ p50.
    assert result.throughput == pytest.approx(200 / (result.round_trip.mean / 1000), rel=0.3)


@pytest.mark.timing
def test_a_blocking_wait_serialises_round_trips() -> None:
    wait = fastapi_app.CHAT_WAIT_SECONDS
    few = run_websocket_storm(fastapi_app.app, "/ws/blocking", users=10, duration=1.0)
    many = run_websocket_storm(fastapi_app.app, "/ws/blocking", users=50, duration=1.5)
    # One message at a time on the loop: at most 1/wait messages per second, whatever
    # the connection count, so each round trip waits for the others (≈ users × wait).
    assert few.throughput <= 1.1 / wait
    assert many.throughput <= 1.1 / wait
    assert few.round_trip.p50 >= 10 * wait * 1000 * 0.8
    assert many.round_trip.p50 >= 3 * few.round_trip.p50
    assert few.loop_lag_max_ms is not None
    assert few.loop_lag_max_ms >= wait * 1000 * 0.8


FIXTURE_TESTS = """
import pytest
from pytest_concurrency import BudgetExceeded

async def echo(scope, receive, send):
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]})

@pytest.mark.concurrency(users=4, duration=0.3, p99_ms=5000)
def test_chat(storm):
    result = storm.websocket(echo, "/ws", message="hi", connect_p99_ms=5000)
    assert result.messages > 0
    assert result.peak_connections == 4
    assert {v.name for v in result.verdicts} >= {"p99_ms", "connect_p99_ms"}

def test_chat_budget_fails(storm):
    storm.websocket(echo, "/ws", users=2, messages=10, p50_ms=0)
"""


def test_storm_fixture_fires_websocket_storms_into_the_reports(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_ws=FIXTURE_TESTS)
    report = pytester.path / "storms.json"
    result = pytester.runpytest_subprocess(
        "-p", "pytest_concurrency.plugin", "-p", "no:cacheprovider",
        f"--concurrency-json={report}",
    )  # fmt: skip
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*storm broke its budget (p50_ms)*",
            "*storm WEBSOCKET /ws on *(ASGI, event loop (asyncio), WebSocket) — 2 users*",
            "*= storms =*",
            "test_ws.py::test_chat*WEBSOCKET /ws*ASGI event loop (asyncio), WebSocket*4*pass",
            "test_ws.py::test_chat_budget_fails*WEBSOCKET /ws*2*10*FAIL p50_ms",
        ]
    )
    storms = json.loads(report.read_text())["storms"]
    assert [s["extras"]["websocket"]["peak_connections"] for s in storms] == [4, 2]


def test_a_blocking_handler_is_named_by_the_loop_monitor() -> None:
    result = run_websocket_storm(
        fastapi_app.app, "/ws/blocking", users=5, duration=0.3, check=False
    )
    assert result.loop_lag is not None
    sites = {(site.file.rsplit("/", 1)[-1], site.function) for site in result.loop_lag.sites}
    assert ("fastapi_app.py", "_echo") in sites


def test_a_django_sync_consumer_runs_on_one_shared_thread() -> None:
    result = run_websocket_storm(
        django_channels_app.application, "/ws/sync", users=5, duration=0.5, check=False
    )
    pools = {pool.name: pool for pool in result.thread_pools}
    sync = pools["asgiref SyncToAsync threads"]
    assert sync.max_busy == 1
    assert sync.mean_busy > 0.8  # one thread, busy nearly all the time
    # One message at a time for all five connections: ≈ 5 waits per round trip.
    assert result.throughput <= 1.1 / django_channels_app.CHAT_WAIT_SECONDS


async def answer_once_then_close(scope: Scope, receive: Any, send: Any) -> None:
    """Module level, so that a server process can import it: refuses ?deny, else one answer."""
    if scope["type"] != "websocket":
        return
    await receive()
    if b"deny" in scope["query_string"]:
        await send({"type": "websocket.close", "code": 4003})
        return
    await send({"type": "websocket.accept"})
    message = await receive()
    await send({"type": "websocket.send", "text": message["text"]})
    await send({"type": "websocket.close", "code": 4001})


def test_a_real_server_holds_the_connections_over_sockets() -> None:
    result = run_websocket_storm(
        "examples.fastapi_app:app", "/ws", server="uvicorn", users=10, duration=0.5
    )
    assert result.server.startswith("uvicorn")
    assert result.server.endswith("WebSocket")
    assert result.messages > 10
    assert result.peak_connections == result.held_connections == 10
    assert result.loop_lag is None  # behind a real server the loop is the client's


def test_a_real_server_reports_refusals_and_close_codes() -> None:
    app = "tests.test_websocket:answer_once_then_close"
    closing = run_websocket_storm(app, "/ws", server="uvicorn", users=2, messages=10, check=False)
    # Over a socket a message may cross the server's close on the wire: it is lost.
    assert set(closing.errors) <= {"ConnectionClosed"}
    assert closing.disconnects >= 4
    assert closing.close_codes[4001] == closing.disconnects
    refused = run_websocket_storm(
        app, "/ws", server="uvicorn", users=1, messages=3, query={"deny": "1"}, check=False
    )
    assert refused.refused == 3
    assert refused.status_counts == {403: 3}


def test_a_busy_shared_loop_is_a_note_that_passes_under_w_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pytest_concurrency import ConcurrencyWarning
    from pytest_concurrency._engine import websocket as engine

    real = engine.finish

    def saturated(plan: Any, output: Any) -> Any:
        # The loop's CPU share as a machine to itself would measure it under this load.
        result = real(plan, output)
        result.loop_cpu_share = 0.97
        return result

    monkeypatch.setattr(engine, "finish", saturated)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConcurrencyWarning)
        result = run_websocket_storm(echo, "/ws", users=5, duration=0.2)
    assert result.passed
    assert not [w for w in result.warnings if "event loop" in w]
    (note,) = [n for n in result.notes if "event loop" in n]
    assert "busy 97% of the storm" in note
    # Whether the app or the load generator kept it busy is not known: no advice to move.
    assert "may do better" not in note


# -- matching answers to messages -----------------------------------------------------------


async def slow_answer_with_heartbeat(scope: Scope, receive: Any, send: Any) -> None:
    """Module level, so that a server process can import it: each message is echoed after
    200 ms, while a presence heartbeat goes out every 5 ms."""
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})

    async def heartbeat() -> None:
        with contextlib.suppress(Exception):  # the client has gone
            while True:
                await anyio.sleep(0.005)
                await send({"type": "websocket.send", "text": "presence: 3 online"})

    async with anyio.create_task_group() as group:
        group.start_soon(heartbeat)
        with contextlib.suppress(Exception):
            while (message := await receive())["type"] == "websocket.receive":
                await anyio.sleep(0.2)
                await send({"type": "websocket.send", "text": message["text"]})
        group.cancel_scope.cancel()


@pytest.mark.parametrize("server", [None, "uvicorn"], ids=["in-process", "uvicorn"])
def test_a_heartbeat_does_not_end_a_round_trip(server: str | None) -> None:
    app: Any = slow_answer_with_heartbeat
    params: dict[str, Any] = {}
    if server is not None:
        app, params = "tests.test_websocket:slow_answer_with_heartbeat", {"server": server}
    result = run_websocket_storm(
        app, "/ws", users=2, messages=4, p99_ms=50, timeout_ms=5000, check=False, **params
    )
    assert result.messages == 4
    assert result.status_counts == {101: 4}
    # Each round trip ends at its echo, 200 ms on (less a timer's early wake-up), not at
    # the next heartbeat 5 ms on; so the p99_ms=50 budget fails.
    assert result.round_trip.min >= 195
    assert not result.passed
    assert [v.name for v in result.verdicts if not v.ok] == ["p99_ms"]
    # ≈ 40 heartbeats per 200 ms wait: counted, never taken for an answer.
    assert result.unmatched >= 4 * 10
    assert result.extras["websocket"]["unmatched"] == result.unmatched
    assert any("answered no message that waited" in note for note in result.notes)


def _answering(reply: Callable[[Any], Any], *, flood: int = 0) -> App:
    @websocket_only
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            for n in range(flood):
                await send({"type": "websocket.send", "text": f"news #{n}"})
            await send({"type": "websocket.send", **reply(message)})

    return app


def test_a_binary_reply_to_a_text_message_is_no_answer() -> None:
    app = _answering(lambda m: {"bytes": m["text"].encode()})
    result = run_websocket_storm(app, "/ws", users=1, duration=0.3, timeout_ms=50, check=False)
    assert result.timeouts == result.failed == result.messages > 0
    assert result.unmatched >= result.messages
    assert not result.passed


def test_a_flood_is_counted_and_the_echo_still_answers() -> None:
    app = _answering(lambda m: {"text": m["text"]}, flood=20)
    result = run_websocket_storm(app, "/ws", users=2, messages=10)
    assert result.status_counts == {101: 10}
    assert result.unmatched == 20 * 10
    assert result.passed


def test_an_unrelated_reply_needs_expect() -> None:
    app = _answering(lambda m: {"text": "ok"})
    unmatched = run_websocket_storm(app, "/ws", users=1, duration=0.3, timeout_ms=50, check=False)
    assert unmatched.timeouts == unmatched.failed > 0
    assert run_websocket_storm(app, "/ws", users=1, messages=5, expect="ok").passed
    by_callable = run_websocket_storm(
        app, "/ws", users=1, messages=5, expect=lambda m: m.startswith("o")
    )
    assert by_callable.passed
    assert by_callable.unmatched == 0
    # A literal matches its own kind only: bytes never answer text.
    wrong_kind = run_websocket_storm(
        app, "/ws", users=1, duration=0.3, timeout_ms=50, expect=b"ok", check=False
    )
    assert wrong_kind.timeouts == wrong_kind.failed > 0
