"""https:// routes reach every client: a TLS port on the loopback upstream, with a
certificate from a throwaway CA made in memory, trusted by the clients only on their way
to a declared https host and only while the guard is in.

Host names are under ``.invalid``; a spy stands in for ``socket.getaddrinfo`` and
``connect`` and never calls through for anything but loopback.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import requests

from pytest_concurrency import Upstream
from pytest_concurrency._api import run_storm

from ._upstream import LATENCY_MS, SLACK_MS, calling_with_aiohttp, spy
from ._upstream import served_over_tls as served
from .test_egress import Spy

__all__ = ["spy"]

pytest.importorskip("trustme")

API = "https://api.example.invalid/v1/chat/completions"


def test_requests_urllib_and_aiohttp_get_the_declared_answer_over_tls(spy: Spy) -> None:
    aiohttp = pytest.importorskip("aiohttp")

    async def with_aiohttp() -> Any:
        async with aiohttp.ClientSession() as session, session.post(API, json={}) as response:
            return response.status, await response.json()

    with Upstream() as upstream:
        route = upstream.route(API, latency=5, json={"id": "chatcmpl-1"})
        with served(upstream):
            answer = requests.post(API, json={"model": "m"}, timeout=5)
            with urllib.request.urlopen(API, timeout=5) as response:
                body = response.read()
            from_aiohttp = asyncio.run(with_aiohttp())
    assert answer.status_code == 200
    assert answer.json() == {"id": "chatcmpl-1"}
    assert body == b'{"id":"chatcmpl-1"}'
    assert from_aiohttp == (200, {"id": "chatcmpl-1"})
    assert route.calls == 3
    assert "api.example.invalid" not in spy.lookups
    assert spy.off_machine == []


def test_the_ca_is_trusted_only_on_the_way_to_a_declared_https_host(spy: Spy) -> None:
    """Only a client context about to meet a declared https host is given the CA, and only
    while the guard is in."""

    def meets(host: str) -> int:
        context = ssl.create_default_context()
        before = context.cert_store_stats()["x509_ca"]
        context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=host)
        return int(context.cert_store_stats()["x509_ca"] - before)

    with Upstream() as upstream:
        upstream.route(API, json={})
        with served(upstream):
            assert meets("api.example.invalid") == 1
            assert meets("other.example.invalid") == 0
        assert meets("api.example.invalid") == 0


# --------------------------------------------------------------------------- storms


#: Made once, as apps keep them: a TLS context is tens of milliseconds of CPU to build (it
#: loads the system's or certifi's CAs), which a client paying it per call pays anyway.
SESSION = requests.Session()
CONTEXT = ssl.create_default_context()


def requests_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A WSGI app whose every request blocks on one https call with requests."""
    answer = SESSION.post(API, json={"prompt": "hi"}, timeout=5).content
    start_response("200 OK", [])
    return [answer]


def urllib_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A WSGI app whose every request blocks on one https call with urllib (a new
    connection and TLS handshake each time: urllib keeps none)."""
    with urllib.request.urlopen(API, timeout=5, context=CONTEXT) as response:
        answer = response.read()
    start_response("200 OK", [])
    return [answer]


aiohttp_app = calling_with_aiohttp(API)


#: urllib keeps no connection: each call pays a TLS handshake (ECDSA: the client verifies a
#: signature, the server makes one, in two threads of one interpreter), measured at 5-15 ms
#: on a loaded 2-core machine.
HANDSHAKE_MS = 20.0


@pytest.mark.parametrize(
    ("app", "params", "extra_ms"),
    [
        (requests_app, {"threads": 5}, 0.0),
        (urllib_app, {"threads": 5}, HANDSHAKE_MS),
        (aiohttp_app, {}, 0.0),
        (requests_app, {"threads": 5, "processes": 2}, 0.0),
    ],
    ids=["requests", "urllib", "aiohttp", "requests-2-shards"],
)
def test_a_storm_waits_on_the_declared_https_route(
    app: Any, params: dict[str, Any], extra_ms: float, spy: Spy, no_leaked_threads: None
) -> None:
    if app is aiohttp_app:
        pytest.importorskip("aiohttp")
    with Upstream() as upstream:
        upstream.route(API, latency=LATENCY_MS, json={"id": "chatcmpl-1"})
        result = run_storm(app, "POST", "/", users=5, requests=60, **params)
    assert result.status_counts == {200: 60}
    route = result.extras["upstream"][API]
    assert route["calls_in_storm"] >= result.requests
    assert LATENCY_MS <= route["waited_ms_p50"] <= LATENCY_MS + SLACK_MS
    # A TLS handshake per new connection comes on top of the wait.
    assert LATENCY_MS - 1 <= result.latency.p50 <= LATENCY_MS + SLACK_MS + extra_ms
    assert result.refused_egress == []
    assert "api.example.invalid" not in spy.lookups
    assert spy.off_machine == []


SERVER_APP = """
import asyncio

import requests

SESSION = requests.Session()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    response = await asyncio.to_thread(SESSION.post, {api!r}, json={{}}, timeout=5)
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": response.content}})
"""


def test_https_routes_answer_a_real_servers_processes_and_come_back(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, spy: Spy
) -> None:
    pytest.importorskip("uvicorn")
    (tmp_path / "tls_server_app.py").write_text(SERVER_APP.format(api=API))
    monkeypatch.syspath_prepend(str(tmp_path))

    def answered(response: Any) -> bool:
        return bool(response.content == b'{"id":"chatcmpl-1"}')

    with Upstream() as upstream:
        upstream.route(API, latency=LATENCY_MS, json={"id": "chatcmpl-1"})
        result = run_storm(
            "tls_server_app:app",
            "POST",
            "/",
            users=5,
            requests=60,
            server="uvicorn",
            checks=[answered],
        )
    assert result.status_counts == {200: 60}
    route = result.extras["upstream"][API]
    # Answered by the storm's own loopback upstream, so counted here.
    assert route["calls_in_storm"] >= result.requests
    assert LATENCY_MS <= route["waited_ms_p50"] <= LATENCY_MS + SLACK_MS
    assert result.refused_egress == []
