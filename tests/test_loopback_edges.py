"""Edges of the loopback upstream process: requests pipelined on one connection.

Host names are under ``.invalid``; requests go to the process's port on 127.0.0.1 only.
"""

from __future__ import annotations

import socket

from pytest_concurrency import Upstream
from pytest_concurrency._simio.loopserver import LoopbackProcess

MODEL = "http://model-server.invalid/generate"
LATENCY_MS = 300.0
#: A single timer's overshoot on a loaded 2-core machine, far below one more wait.
SLACK_MS = 150.0


def _read_answers(sock: socket.socket, count: int, within: float = 10.0) -> bytes:
    """Bytes from *sock* until *count* answers (each ending its empty JSON body) came."""
    sock.settimeout(within)
    data = b""
    while data.count(b"HTTP/1.1 200") < count or not data.endswith(b"{}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_pipelined_request_waits_its_own_latency_not_its_queue() -> None:
    # Two requests sent at once on one connection are answered in order: the second's
    # wait starts when the first is answered, and its figure is its own wait, not the
    # time it queued behind the first.
    with Upstream() as upstream:
        route = upstream.route(MODEL, latency=LATENCY_MS, json={})
        server = LoopbackProcess(upstream).start()
        try:
            request = b"GET /generate HTTP/1.1\r\nHost: model-server.invalid\r\n\r\n"
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(request * 2)
                answers = _read_answers(sock, 2)
            assert answers.count(b"HTTP/1.1 200") == 2
            server.collect()
        finally:
            server.stop()
        assert route.calls == 2
        waits_ms = [us / 1000 for us in route._waits_us]
        assert len(waits_ms) == 2
        for waited in waits_ms:
            assert LATENCY_MS - 1 <= waited <= LATENCY_MS + SLACK_MS, waits_ms
