"""A latency proxy's delays are charged to the request that waited for them: a ``proxy``
part of the request's breakdown, through the app's connection (its own or a pooled one).

The service is a TCP echo server on 127.0.0.1; nothing else is reached.
"""

from __future__ import annotations

import queue
import socket
from typing import Any

import pytest

from pytest_concurrency import Upstream
from pytest_concurrency._api import run_storm
from pytest_concurrency._model.result import WaitShare

from .test_proxy import ROUND_TRIPS, Echo, _echo_app, echo

__all__ = ["echo"]

LATENCY_MS = 10.0


def _parts(shares: tuple[WaitShare, ...]) -> dict[tuple[str, str], float]:
    return {(p.kind, p.name): p.ms for p in shares}


def _pooled_app(port: int) -> Any:
    """A WSGI app whose requests share a pool of blocking connections to the service (opened
    on demand, kept between requests) and make ROUND_TRIPS round trips each."""
    pool: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
    opened: list[socket.socket] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        try:
            sock = pool.get_nowait()
        except queue.Empty:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            opened.append(sock)
        try:
            for _ in range(ROUND_TRIPS):
                sock.sendall(b"ping")
                got = b""
                while len(got) < 4:
                    got += sock.recv(64)
        finally:
            pool.put(sock)
        start_response("200 OK", [])
        return [b"ok"]

    app.opened = opened  # type: ignore[attr-defined]
    return app


@pytest.mark.parametrize("kind", ["asyncio", "pooled-blocking"])
def test_a_request_is_charged_the_proxy_delays_it_waited(echo: Echo, kind: str) -> None:
    app = _echo_app(echo.port) if kind == "asyncio" else _pooled_app(echo.port)
    params: dict[str, Any] = {} if kind == "asyncio" else {"threads": 4}
    try:
        with Upstream() as upstream:
            proxy = upstream.proxy(echo.target, latency=LATENCY_MS)
            result = run_storm(app, "GET", "/", users=4, requests=40, **params)
    finally:
        for sock in getattr(app, "opened", []):
            sock.close()
    assert result.status_counts == {200: 40}
    assert result.attribution is not None
    p50 = result.attribution.band("p50")
    assert p50 is not None
    charged = _parts(p50.parts).get(("proxy", proxy.label), 0.0)
    # The model: ROUND_TRIPS answers, each delayed LATENCY_MS by the proxy, all waited for
    # by the request; the rest of its time is its own and the loop's (a few ms at most).
    model_ms = ROUND_TRIPS * LATENCY_MS
    assert model_ms * 0.95 <= charged <= p50.latency_ms
    assert p50.parts[0].kind == "proxy"


@pytest.mark.parametrize("processes", [1, 2])
def test_shard_requests_proxy_delays_are_said_to_be_missing_from_the_breakdown(
    echo: Echo, processes: int
) -> None:
    """The proxy runs in this process; a request sent from a forked shard cannot be charged
    its delays: the result says where they are instead."""
    with Upstream() as upstream:
        proxy = upstream.proxy(echo.target, latency=LATENCY_MS)
        result = run_storm(
            _echo_app(echo.port), "GET", "/", users=4, requests=40, processes=processes
        )
    assert result.status_counts == {200: 40}
    assert result.upstream[proxy.label]["calls_in_storm"] >= 40
    said = [n for n in result.notes if "not in the per-request breakdown" in n]
    if processes == 1:
        assert said == []
        return
    assert said == [
        f"processes=2: the delays of latency proxy {proxy.label} on requests sent from the "
        "shards appear only in the proxy's totals (result.upstream), not in the per-request "
        "breakdown"
    ]
