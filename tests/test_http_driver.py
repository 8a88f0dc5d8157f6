"""HTTP/1.1 client driver against real servers on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from time import perf_counter
from typing import Any

import anyio
import pytest

from pytest_concurrency import ConfigError, StormError
from pytest_concurrency._drivers.http import Exchange, HttpDriver, encode_request
from pytest_concurrency._servers import RunningServer, ServerSpec, serve
from pytest_concurrency._workload import Request

ROOT = str(Path(__file__).resolve().parent.parent)
PAYLOAD = {"name": "x" * 200, "tags": [1, 2, 3]}
REQUESTS = [
    Request(path="/"),
    Request("POST", "/echo", json=PAYLOAD),
    Request(path="/stream"),
    Request(path="/slow"),
    Request("HEAD", "/"),
]
POST_LENGTH = len(json.dumps(PAYLOAD, separators=(",", ":")).encode())


class Holder:
    """A virtual user's slot, as the engine keeps one."""

    conn: Any = None
    exchange: Any = None


@pytest.fixture(scope="module")
def uvicorn_server() -> Iterator[RunningServer]:
    with serve(ServerSpec("uvicorn", "tests.apps:asgi_routes", cwd=ROOT)) as server:
        yield server


@pytest.fixture(scope="module")
def gunicorn_server() -> Iterator[RunningServer]:
    spec = ServerSpec("gunicorn", "tests.apps:wsgi_routes", interface="wsgi", workers=2, cwd=ROOT)
    with serve(spec) as server:
        yield server


def run(driver: HttpDriver, *calls: tuple[int, Holder]) -> list[Exchange]:
    async def main() -> list[Exchange]:
        async with anyio.create_task_group() as group:
            await driver.startup(group, 5.0)
        try:
            return [await driver.call(index, holder) for index, holder in calls]
        finally:
            await driver.shutdown(5.0)

    return anyio.run(main)


def test_get_and_post_on_one_keep_alive_connection(uvicorn_server: RunningServer) -> None:
    driver = HttpDriver(uvicorn_server.url, REQUESTS)
    user = Holder()
    first, post, again = run(driver, (0, user), (1, user), (0, user))
    assert (first.status, first.nbytes, post.status, again.nbytes) == (200, 5, 200, 5)
    assert json.loads(b'{"received": %d}' % POST_LENGTH) == {"received": POST_LENGTH}
    assert post.nbytes == len(b'{"received": %d}' % POST_LENGTH)
    assert user.conn is not None
    assert user.conn.used == 3
    assert user.exchange is again


def test_post_body_arrives_whole(
    uvicorn_server: RunningServer, gunicorn_server: RunningServer
) -> None:
    for server in (uvicorn_server, gunicorn_server):
        driver = HttpDriver(server.url, REQUESTS)

        async def main(driver: HttpDriver = driver) -> bytes:
            holder = Holder()
            exchange = await driver.call(1, holder)
            await driver.shutdown(1.0)
            assert exchange.status == 200
            raw, _ = encode_request(REQUESTS[1], "h")
            return raw

        raw = anyio.run(main)
        assert raw.endswith(json.dumps(PAYLOAD, separators=(",", ":")).encode())


def test_gunicorn_sync_workers_close_and_the_user_reconnects(
    gunicorn_server: RunningServer,
) -> None:
    driver = HttpDriver(gunicorn_server.url, REQUESTS)
    user = Holder()
    exchanges = run(driver, (0, user), (1, user), (0, user))
    assert [e.status for e in exchanges] == [200, 200, 200]
    assert [e.nbytes for e in exchanges] == [5, len(b'{"received": %d}' % POST_LENGTH), 5]
    assert user.conn is None  # Connection: close from a sync worker


@pytest.mark.parametrize("server_name", ["uvicorn_server", "gunicorn_server"])
def test_streaming_response_has_a_first_byte_before_the_end(
    server_name: str, request: pytest.FixtureRequest
) -> None:
    server: RunningServer = request.getfixturevalue(server_name)
    driver = HttpDriver(server.url, REQUESTS)

    async def main() -> tuple[float, Exchange, float]:
        start = perf_counter()
        exchange = await driver.call(2, Holder())
        end = perf_counter()
        await driver.shutdown(1.0)
        return start, exchange, end

    start, exchange, end = anyio.run(main)
    assert (exchange.status, exchange.nbytes) == (200, 3000)
    # Three chunks 100 ms apart: the first arrives well before the last.
    assert exchange.first_byte - start < 0.15
    assert end - exchange.first_byte >= 0.15


def test_head_and_empty_body_complete(uvicorn_server: RunningServer) -> None:
    driver = HttpDriver(uvicorn_server.url, [*REQUESTS, Request(path="/empty")])
    user = Holder()
    head, after, empty = run(driver, (4, user), (0, user), (5, user))
    assert (head.status, head.nbytes, after.nbytes, empty.nbytes) == (200, 0, 5, 0)
    assert empty.first_byte > 0  # the end of an empty body counts as its first byte
    assert user.conn.used == 3


def test_timeout_disconnect_closes_and_the_next_call_reconnects(
    uvicorn_server: RunningServer,
) -> None:
    driver = HttpDriver(uvicorn_server.url, REQUESTS)
    user = Holder()

    async def main() -> tuple[BaseException | None, Exchange, float]:
        failure: BaseException | None = None

        async def slow() -> None:
            nonlocal failure
            try:
                await driver.call(3, user)
            except Exception as exc:
                failure = exc

        started = perf_counter()
        async with anyio.create_task_group() as group:
            group.start_soon(slow)
            await anyio.sleep(0.2)
            first_conn = user.conn
            user.exchange.disconnect()  # what the engine does at the request's deadline
        gave_up = perf_counter() - started
        exchange = await driver.call(0, user)
        assert user.conn is not first_conn
        await driver.shutdown(1.0)
        return failure, exchange, gave_up

    failure, exchange, gave_up = anyio.run(main)
    assert isinstance(failure, ConnectionError)
    assert gave_up < 1.0  # did not wait for the 2 s handler
    assert (exchange.status, exchange.nbytes) == (200, 5)


def test_cancelled_call_drops_its_connection(uvicorn_server: RunningServer) -> None:
    driver = HttpDriver(uvicorn_server.url, REQUESTS)
    user = Holder()

    async def main() -> Exchange:
        with anyio.move_on_after(0.2):
            await driver.call(3, user)
        assert user.conn is None
        try:
            return await driver.call(0, user)
        finally:
            await driver.shutdown(1.0)

    assert anyio.run(main).status == 200


def test_refused_connection_raises(unused_port: int) -> None:
    driver = HttpDriver(f"http://127.0.0.1:{unused_port}", REQUESTS)

    async def main() -> None:
        await driver.call(0, Holder())

    with pytest.raises(ConnectionRefusedError):
        anyio.run(main)

    async def start() -> None:
        failure: StormError | None = None
        async with anyio.create_task_group() as group:
            try:
                await driver.startup(group, 1.0)
            except StormError as exc:  # raised outside the group, unwrapped
                failure = exc
        if failure is not None:
            raise failure

    with pytest.raises(StormError, match=rf"127.0.0.1:{unused_port} did not accept a connection"):
        anyio.run(start)


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_encode_request_once() -> None:
    raw, head = encode_request(
        Request("POST", "/items", query={"q": "a b"}, json={"k": 1}, headers={"X-Id": "7"}),
        "127.0.0.1:8000",
    )
    head_part, _, body = raw.partition(b"\r\n\r\n")
    lines = head_part.split(b"\r\n")
    assert lines[0] == b"POST /items?q=a+b HTTP/1.1"
    assert lines[1] == b"Host: 127.0.0.1:8000"
    assert b"content-length: 7" in [line.lower() for line in lines]
    assert b"x-id: 7" in [line.lower() for line in lines]
    assert body == b'{"k":1}'
    assert not head
    assert encode_request(Request("HEAD", "/"), "h")[1]


@pytest.mark.parametrize(
    "url", ["https://127.0.0.1:1", "127.0.0.1:8000", "http://127.0.0.1:8000/api"]
)
def test_base_url_must_be_an_http_root(url: str) -> None:
    with pytest.raises(ConfigError, match="must be an http:// URL"):
        HttpDriver(url, REQUESTS)


@pytest.mark.parametrize(
    ("kind", "interface"),
    [
        ("uvicorn", "wsgi"),
        ("hypercorn", "asgi"),
        ("hypercorn", "wsgi"),
        ("granian", "asgi"),
        ("granian", "wsgi"),
        ("gunicorn", "asgi"),
    ],
)
def test_every_server_kind_answers_get_post_and_stream(kind: str, interface: str) -> None:
    app = "tests.apps:asgi_routes" if interface == "asgi" else "tests.apps:wsgi_routes"
    spec = ServerSpec(kind, app, interface=interface, cwd=ROOT)  # type: ignore[arg-type]
    with serve(spec) as server:
        user = Holder()
        get, post, stream = run(HttpDriver(server.url, REQUESTS), (0, user), (1, user), (2, user))
    assert [get.status, post.status, stream.status] == [200, 200, 200]
    assert [get.nbytes, post.nbytes, stream.nbytes] == [
        5,
        len(b'{"received": %d}' % POST_LENGTH),
        3000,
    ]


def test_connection_close_from_an_async_server_reconnects(uvicorn_server: RunningServer) -> None:
    driver = HttpDriver(uvicorn_server.url, [Request(path="/close"), Request(path="/")])
    user = Holder()
    bye, hello = run(driver, (0, user), (1, user))
    assert (bye.status, bye.nbytes, hello.status, hello.nbytes) == (200, 3, 200, 5)
    assert user.conn.used == 1  # the second request went out on a new connection


def test_a_stale_keep_alive_connection_is_retried_once() -> None:
    """A server that drops an idle connection as the next request goes out: retried, not failed."""
    accepted = 0

    async def main() -> list[Exchange]:
        async def handle(reader: Any, writer: Any) -> None:
            nonlocal accepted
            accepted += 1
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                await reader.readuntil(b"\r\n\r\n")  # the second request: dropped unanswered
            except asyncio.IncompleteReadError:
                pass  # the client closed it at shutdown
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        driver = HttpDriver(f"http://127.0.0.1:{port}", [Request(path="/")])
        user = Holder()
        try:
            return [await driver.call(0, user), await driver.call(0, user)]
        finally:
            await driver.shutdown(1.0)
            server.close()
            await server.wait_closed()

    first, second = anyio.run(main)
    assert (first.status, second.status, second.nbytes) == (200, 200, 2)
    assert accepted == 2


def test_describe_names_the_server_or_its_url() -> None:
    driver = HttpDriver("http://127.0.0.1:8000", REQUESTS, server="uvicorn, 1 worker")
    assert driver.describe() == "uvicorn, 1 worker, over loopback HTTP"
    bare = HttpDriver("http://127.0.0.1:8000", REQUESTS)
    assert bare.describe() == "server at http://127.0.0.1:8000, over loopback HTTP"


def test_a_header_that_could_split_the_request_is_never_written() -> None:
    """A request built mid-storm with CR/LF in a header fails unsent; the server sees one request."""
    received: list[bytes] = []

    async def main() -> tuple[BaseException | None, Exchange]:
        async def handle(reader: Any, writer: Any) -> None:
            try:
                while True:
                    received.append(await reader.readuntil(b"\r\n\r\n"))
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        driver = HttpDriver(f"http://127.0.0.1:{port}", [Request(path="/")])
        user = Holder()
        smuggled = Request(path="/", headers={"X": "v\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x"})
        failure: BaseException | None = None
        try:
            try:
                await driver.call_request(smuggled, user)
            except Exception as exc:
                failure = exc
            return failure, await driver.call(0, user)
        finally:
            await driver.shutdown(1.0)
            server.close()
            await server.wait_closed()

    failure, fine = anyio.run(main)
    assert type(failure).__name__ == "InvalidRequestHeader"
    assert "headers={'X': 'v\\r\\n\\r\\nGET /smuggled" in str(failure)
    assert fine.status == 200
    assert len(received) == 1
    assert b"smuggled" not in received[0]


# -- a server that misbehaves on purpose ---------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: yes\r\n\r\nok"


async def _raw_server(answers: list[list[bytes]]) -> tuple[asyncio.Server, list[bytes]]:
    """A server on 127.0.0.1 that answers its n-th request with the writes ``answers[n]``
    (each write drained before the next), across connections; it keeps the requests."""
    received: list[bytes] = []

    async def handle(reader: Any, writer: Any) -> None:
        try:
            while True:
                received.append(await reader.readuntil(b"\r\n\r\n"))
                for data in answers[min(len(received), len(answers)) - 1]:
                    writer.write(data)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, received


class Capturing(Holder):
    capture = True


def _calls(answers: list[list[bytes]], count: int, *, settle: bool = False) -> Any:
    """*count* calls of one user; each outcome is an Exchange or the exception raised.

    With *settle*, the first call is followed by a wait until the stray bytes the server
    wrote after its answer have failed the connection.
    """

    async def main() -> tuple[list[Any], list[bytes], Capturing]:
        server, received = await _raw_server(answers)
        port = server.sockets[0].getsockname()[1]
        driver = HttpDriver(f"http://127.0.0.1:{port}", [Request(path="/")])
        user = Capturing()
        outcomes: list[Any] = []
        try:
            for call in range(count):
                try:
                    outcomes.append(await driver.call(0, user))
                except Exception as exc:
                    outcomes.append(exc)
                if settle and call == 0:
                    # Let the stray bytes the server wrote after its answer arrive (or not).
                    with anyio.fail_after(5):
                        while user.conn is not None and user.conn.fault is None:
                            await asyncio.sleep(0.001)
            return outcomes, received, user
        finally:
            await driver.shutdown(1.0)
            server.close()
            await server.wait_closed()

    return anyio.run(main)


@pytest.mark.parametrize("split", [False, True], ids=["one write", "separate writes"])
@pytest.mark.parametrize(
    "interim",
    [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"],
    ids=["100", "103"],
)
def test_interim_responses_are_skipped_and_the_final_one_is_the_answer(
    interim: bytes, split: bool
) -> None:
    writes = [interim, OK] if split else [interim + OK]
    outcomes, received, _ = _calls([writes], 3)
    assert [o.status for o in outcomes] == [200, 200, 200]
    assert [o.nbytes for o in outcomes] == [2, 2, 2]
    # The interim response's headers are kept apart from the final one's.
    assert outcomes[0].headers == [(b"Content-Length", b"2"), (b"X-Final", b"yes")]
    assert len(received) == 3


@pytest.mark.parametrize(
    ("first", "settle"),
    [([OK + OK], False), ([OK, OK], True), ([OK, b"garbage\r\n"], True)],
    ids=["second response in the same write", "second response later", "stray bytes"],
)
def test_bytes_with_no_request_outstanding_fail_the_connection(
    first: list[bytes], settle: bool
) -> None:
    outcomes, received, _ = _calls([first, [OK]], 3, settle=settle)
    assert outcomes[0].status == 200
    # The next request is not answered by the stray bytes: it fails, unsent, as a
    # protocol error; the one after reconnects and gets its own answer.
    assert type(outcomes[1]).__name__ == "UnsolicitedResponse"
    assert "with no request outstanding" in str(outcomes[1])
    assert outcomes[2].status == 200
    assert len(received) == 2


def test_switching_protocols_is_final_and_the_connection_is_not_reused() -> None:
    upgrade = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    outcomes, received, _ = _calls([[upgrade + b"\x81\x02hi"], [OK]], 2)
    assert [o.status for o in outcomes] == [101, 200]
    assert len(received) == 2


def test_a_storm_against_a_server_that_answers_twice_fails() -> None:
    """Each request answered by two responses in one write: never two answers counted."""
    from pytest_concurrency import run_storm

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        server, received = await _raw_server([[OK + OK]])
        holder["server"], holder["received"] = server, received
        holder["port"] = server.sockets[0].getsockname()[1]

    def serve_forever() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve_forever, daemon=True)
    thread.start()
    try:
        assert ready.wait(5)

        async def dummy(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
            raise AssertionError("served by the raw server, not in-process")

        result = run_storm(
            dummy,
            "GET",
            "/",
            users=1,
            requests=6,
            server=f"http://127.0.0.1:{holder['port']}",
            check=False,
        )
    finally:

        async def stop() -> None:
            holder["server"].close()
            await holder["server"].wait_closed()

        if "server" in holder:
            asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    # Every other request is the one a second response would have answered: it fails, unsent.
    assert result.requests == 6
    assert result.errors["UnsolicitedResponse"].count == 3
    assert result.status_counts[200] == 3
    assert len(holder["received"]) == 3
    assert not result.passed


def test_a_server_that_closes_each_connection_is_reconnected_to_without_resolving_again(
    gunicorn_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = HttpDriver(gunicorn_server.url, REQUESTS)
    user = Holder()
    opened: list[str] = []
    original = asyncio.BaseEventLoop.create_connection

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(args[1] if len(args) > 1 else kwargs.get("host", "?"))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(asyncio.BaseEventLoop, "create_connection", counted)

    async def main() -> tuple[list[Exchange], set[int]]:
        exchanges, connections = [], set()
        try:
            for _ in range(20):
                exchanges.append(await driver.call(0, user))
                connections.add(id(exchanges[-1]._conn))
        finally:
            await driver.shutdown(1.0)
        return exchanges, connections

    exchanges, connections = anyio.run(main)
    assert [e.status for e in exchanges] == [200] * 20
    assert len(connections) == 20  # sync workers close every connection
    # Only the first connection went through name resolution and asyncio's transport.
    assert len(opened) == 1


def test_a_server_gone_between_two_connections_is_a_refused_request() -> None:
    async def main() -> tuple[Exchange, BaseException | None]:
        async def handle(reader: Any, writer: Any) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        driver = HttpDriver(f"http://127.0.0.1:{port}", [Request(path="/")])
        user = Holder()
        first = await driver.call(0, user)
        server.close()
        await server.wait_closed()
        failure = None
        try:
            await driver.call(0, user)
        except OSError as exc:
            failure = exc
        await driver.shutdown(1.0)
        return first, failure

    first, failure = anyio.run(main)
    assert (first.status, first.nbytes) == (200, 2)
    assert isinstance(failure, ConnectionRefusedError)


def test_a_storm_on_a_real_server_runs_its_client_on_uvloop(
    uvicorn_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("uvloop")
    from pytest_concurrency import run_storm

    loops: list[str] = []
    original = HttpDriver._connect

    async def spied(self: HttpDriver) -> Any:
        loops.append(type(asyncio.get_running_loop()).__module__)
        return await original(self)

    monkeypatch.setattr(HttpDriver, "_connect", spied)
    result = run_storm(
        "tests.apps:asgi_routes", "GET", "/", users=2, requests=10, server=uvicorn_server.url
    )
    assert result.requests == 10
    assert loops
    assert {module.split(".")[0] for module in loops} == {"uvloop"}


class _ClosingServer:
    """A loopback server thread answering every request with *body* and closing the
    connection; its reads are small, so that it allocates little itself."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> _ClosingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()

    def _serve(self) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                received = b""
                while b"\r\n\r\n" not in received:
                    chunk = conn.recv(1024)
                    if not chunk:
                        break
                    received += chunk
                conn.sendall(head % len(self.body) + self.body)


def test_a_large_response_on_a_reconnected_socket_is_read_whole() -> None:
    """Reconnected sockets read into one buffer: what each response keeps is its own copy."""
    # Distinct bytes at every offset, over several reads of the buffer.
    body = b"".join(b"%08d" % n for n in range(100_000))
    with _ClosingServer(body) as server:
        driver = HttpDriver(f"http://127.0.0.1:{server.port}", [Request(path="/")])
        user = Holder()
        user.capture = True  # type: ignore[attr-defined]

        async def main() -> list[Exchange]:
            try:
                return [await driver.call(0, user) for _ in range(3)]
            finally:
                await driver.shutdown(1.0)

        exchanges = anyio.run(main)
    assert len({id(e._conn) for e in exchanges}) == 3  # the server closed each connection
    for exchange in exchanges:
        assert exchange.status == 200
        assert exchange.nbytes == len(body)
        assert exchange.body is not None
        assert b"".join(exchange.body) == body


def test_reading_a_reconnected_socket_allocates_no_read_sized_buffer() -> None:
    """A read of up to 256 KiB from a reconnected socket does not allocate 256 KiB each time
    (``recv(n)`` does, and that costs more than the rest of the request on loopback)."""
    import tracemalloc

    with _ClosingServer(b"ok") as server:
        driver = HttpDriver(f"http://127.0.0.1:{server.port}", [Request(path="/")])
        user = Holder()

        async def main() -> tuple[int, int]:
            try:
                for _ in range(3):  # the first connection, then the reconnect path set up
                    await driver.call(0, user)
                tracemalloc.start()
                try:
                    before = tracemalloc.get_traced_memory()[0]
                    for _ in range(10):
                        assert (await driver.call(0, user)).status == 200
                    return before, tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
            finally:
                await driver.shutdown(1.0)

        before, peak = anyio.run(main)
    assert peak - before < 64 * 1024


@pytest.mark.skipif(not hasattr(__import__("select"), "epoll"), reason="epoll is Linux's")
def test_reconnected_sockets_are_watched_by_the_loop_as_one_file(
    gunicorn_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each new connection costs the loop no reader of its own: the loop watches one epoll
    set holding them."""
    driver = HttpDriver(gunicorn_server.url, REQUESTS)
    user = Holder()
    readers: list[int] = []
    original = asyncio.SelectorEventLoop.add_reader

    def counted(self: Any, fd: Any, *args: Any) -> Any:
        readers.append(fd)
        return original(self, fd, *args)

    monkeypatch.setattr(asyncio.SelectorEventLoop, "add_reader", counted)

    async def main() -> list[int]:
        try:
            return [(await driver.call(0, user)).status for _ in range(20)]
        finally:
            await driver.shutdown(1.0)

    assert anyio.run(main) == [200] * 20
    assert len(readers) == 1


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_reconnects_on_either_loop_answer_every_request(
    gunicorn_server: RunningServer, loop: str
) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    driver = HttpDriver(gunicorn_server.url, REQUESTS)
    user = Holder()

    async def main() -> list[tuple[int, int]]:
        try:
            return [
                ((e := await driver.call(index, user)).status, e.nbytes)
                for index in (0, 1, 0, 4, 0)
            ]
        finally:
            await driver.shutdown(1.0)

    got = anyio.run(main, backend_options={"use_uvloop": loop == "uvloop"})
    answer = len(b'{"received": %d}' % POST_LENGTH)
    assert got == [(200, 5), (200, answer), (200, 5), (200, 0), (200, 5)]


def test_on_uvloop_lasting_connections_stay_on_its_transports_and_closed_ones_reconnect_plain(
    uvicorn_server: RunningServer, gunicorn_server: RunningServer
) -> None:
    """uvloop's C transports carry connections that last (keep-alive); once a server closes
    a connection after its response, each new one is a plain socket in the driver's set."""
    pytest.importorskip("uvloop")
    from pytest_concurrency._drivers.http import _Wire

    def kinds(url: str) -> list[bool]:
        driver = HttpDriver(url, REQUESTS)
        users = [Holder() for _ in range(3)]

        async def main() -> list[bool]:
            wired = []
            try:
                async with anyio.create_task_group() as group:
                    await driver.startup(group, 5.0)
                for user in users * 2:
                    exchange = await driver.call(0, user)
                    assert exchange.status == 200
                    wired.append(isinstance(exchange._conn.transport, _Wire))
            finally:
                await driver.shutdown(1.0)
            return wired

        return anyio.run(main, backend_options={"use_uvloop": True})

    assert kinds(uvicorn_server.url) == [False] * 6
    assert kinds(gunicorn_server.url) == [False] + [True] * 5
