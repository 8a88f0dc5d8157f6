"""The latency proxy: a loopback TCP proxy with toxics in front of a real service.

The service is a TCP echo server started on 127.0.0.1 by each test; every latency bound is
the toxic's own figure plus the slack of a loaded 2-core machine (timer overshoot, thread
hand-offs), never a sleep that hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_concurrency import ConfigError, Upstream
from pytest_concurrency._api import run_storm
from pytest_concurrency._simio import uniform
from pytest_concurrency._simio.egress import EgressGuard

SLACK_MS = 12.0


class Echo:
    """A TCP echo server on 127.0.0.1, one thread per connection; stopped on exit."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            thread = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.server.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._accepting.join(5)
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo()
    try:
        yield server
    finally:
        server.close()


def _round_trip(sock: socket.socket, data: bytes = b"ping") -> float:
    start = time.perf_counter()
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        assert chunk, "the proxy closed the connection"
        got += chunk
    assert got == data
    return (time.perf_counter() - start) * 1000


def test_each_round_trip_waits_the_latency_of_each_direction(echo: Echo) -> None:
    with Upstream() as upstream:
        proxy = upstream.proxy(echo.target, latency=20, upstream_latency=10)
        with socket.create_connection(proxy.address, timeout=5) as sock:
            times = [_round_trip(sock) for _ in range(5)]
        deadline = time.monotonic() + 5
        while proxy.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = upstream.stats()[f"tcp://{echo.target}"]
    assert all(30 <= ms <= 30 + SLACK_MS for ms in times), times
    assert stats["calls"] == 1
    assert stats["max_in_flight"] == 1
    assert stats["in_flight"] == 0
    assert (stats["bytes_up"], stats["bytes_down"]) == (20, 20)
    assert (stats["chunks_up"], stats["chunks_down"]) == (5, 5)
    assert stats["chunks_delayed"] == 10
    assert 10 <= stats["waited_ms_p50"] <= 20 + SLACK_MS
    assert not proxy.running  # stopped with the upstream


def test_jitter_follows_the_distribution(echo: Echo) -> None:
    with Upstream() as upstream:
        proxy = upstream.proxy(echo.target, latency=uniform(10, 30), seed=7)
        with socket.create_connection(proxy.address, timeout=5) as sock:
            times = [_round_trip(sock) for _ in range(20)]
    assert all(10 <= ms <= 30 + SLACK_MS for ms in times), times
    # Jitter, not a constant: the draws spread over the interval.
    assert max(times) - min(times) >= 8


def test_bandwidth_caps_the_bytes_per_second(echo: Echo) -> None:
    data = b"x" * 50_000
    with Upstream() as upstream:
        proxy = upstream.proxy(echo.target, bandwidth=500)  # 500 KB/s: 50 KB in 100 ms
        with socket.create_connection(proxy.address, timeout=5) as sock:
            elapsed = _round_trip(sock, data)
    assert 100 <= elapsed <= 100 + 5 * SLACK_MS


def test_a_hung_connection_passes_nothing_and_is_closed_after_timeout_after(
    echo: Echo,
) -> None:
    with Upstream() as upstream:
        proxy = upstream.proxy(echo.target, timeout_rate=1.0, timeout_after=200)
        with socket.create_connection(proxy.address, timeout=5) as sock:
            sock.sendall(b"ping")
            sock.settimeout(0.1)
            with pytest.raises(TimeoutError):
                sock.recv(10)
            sock.settimeout(5)
            start = time.perf_counter()
            assert sock.recv(10) == b""  # closed by the proxy, after timeout_after
            closed_after = (time.perf_counter() - start) * 1000
        assert proxy.timeouts == 1
    assert echo.accepted == 0  # a hung dependency: nothing reached it
    assert 100 - 5 <= closed_after <= 100 + SLACK_MS


def _until_reset(sock: socket.socket) -> None:
    while True:
        sock.sendall(b"ping")
        if not sock.recv(10):
            return


def test_a_reset_connection_is_reset(echo: Echo) -> None:
    with Upstream() as upstream:
        proxy = upstream.proxy(echo.target, reset_rate=1.0, reset_after=30)
        with socket.create_connection(proxy.address, timeout=5) as sock:
            assert _round_trip(sock) < 30  # data flows until the reset
            with pytest.raises(ConnectionResetError):
                _until_reset(sock)
        assert proxy.resets == 1


def test_the_egress_guard_sends_the_target_to_the_proxy_but_not_the_proxys_own(
    echo: Echo,
) -> None:
    with Upstream() as upstream:
        proxy = upstream.proxy(echo.target, latency=20)
        with (
            EgressGuard(redirect=upstream.redirects),
            socket.create_connection(("127.0.0.1", echo.port), timeout=5) as sock,
        ):
            elapsed = _round_trip(sock)
        assert proxy.calls == 1
    assert 20 <= elapsed <= 20 + SLACK_MS
    assert echo.accepted == 1  # the proxy's own connection reached the service


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("5432", "must be 'host:port'"),
        ("db:port", "must be 'host:port'"),
        ("127.0.0.1:70000", "must have a port between 1 and 65535"),
        (5432, "must be 'host:port' or a (host, port) tuple"),
    ],
)
def test_a_bad_target_is_a_config_error(target: Any, problem: str) -> None:
    with Upstream() as upstream, pytest.raises(ConfigError, match=re.escape(problem)):
        upstream.proxy(target)


def test_bad_toxics_are_config_errors_naming_the_parameter(echo: Echo) -> None:
    with Upstream() as upstream:
        with pytest.raises(ConfigError, match=r"latency=0.02 is a bare number below 1"):
            upstream.proxy(echo.target, latency=0.02)
        with pytest.raises(ConfigError, match=r"timeout_rate=2 must be between 0.0 and 1.0"):
            upstream.proxy(echo.target, timeout_rate=2)
        with pytest.raises(ConfigError, match=r"bandwidth=0 must be a positive number"):
            upstream.proxy(echo.target, bandwidth=0)
        upstream.proxy(echo.target)
        with pytest.raises(ConfigError, match="is already declared"):
            upstream.proxy(echo.target)
        assert len(upstream.proxies) == 1


#: Round trips each request of the storm's app makes on its one connection.
ROUND_TRIPS = 3


def _echo_app(port: int) -> Any:
    """An ASGI app whose every request opens a connection to the service at its own
    address, makes ROUND_TRIPS round trips and closes it."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(ROUND_TRIPS):
                writer.write(b"ping")
                await writer.drain()
                await reader.readexactly(4)
        finally:
            writer.close()
            await writer.wait_closed()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


@pytest.mark.parametrize("params", [{}, {"processes": 2}], ids=["in-process", "2-shards"])
def test_a_storm_waits_the_proxy_latency_per_round_trip(echo: Echo, params: dict[str, Any]) -> None:
    """The app keeps its own address for the service; during the storm it meets the proxy
    (in forked shards too: they inherit the guard, and the proxy counts in this process)."""
    with Upstream() as upstream:
        upstream.proxy(echo.target, latency=10)
        result = run_storm(_echo_app(echo.port), "GET", "/", users=4, requests=40, **params)
    assert result.status_counts == {200: 40}
    model_ms = ROUND_TRIPS * 10
    assert model_ms <= result.latency.p50 <= model_ms + SLACK_MS
    figures = result.extras["upstream"][f"tcp://{echo.target}"]
    assert figures["calls_in_storm"] >= 40
    # Concurrent connections; one the app has closed stays open until the proxy has
    # closed its side to the service too, so the peak may pass the 4 users.
    assert 1 < figures["max_in_flight"] <= 2 * 4
    assert figures["bytes_down"] >= 40 * ROUND_TRIPS * 4
    assert result.refused_egress == []


SERVER_APP = """
import asyncio

PORT = {port}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    try:
        for _ in range({trips}):
            writer.write(b"ping")
            await writer.drain()
            await reader.readexactly(4)
    finally:
        writer.close()
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b"ok"}})
"""


def test_a_real_servers_processes_meet_the_proxy_too(
    echo: Echo, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("uvicorn")
    (tmp_path / "proxy_server_app.py").write_text(
        SERVER_APP.format(port=echo.port, trips=ROUND_TRIPS)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with Upstream() as upstream:
        upstream.proxy(echo.target, latency=10)
        result = run_storm(
            "proxy_server_app:app", "GET", "/", users=4, requests=40, server="uvicorn"
        )
    assert result.status_counts == {200: 40}
    model_ms = ROUND_TRIPS * 10
    assert model_ms <= result.latency.p50 <= model_ms + SLACK_MS
    # The proxy runs in the storm's process: the server's connections are counted there.
    assert result.extras["upstream"][f"tcp://{echo.target}"]["calls_in_storm"] >= 40
