"""What the tests of the loopback upstream share: the declared route they call, the wait
they declare and what the model allows on top of it, the spy, and the upstream served on
loopback (by a thread, by a process of its own, or over TLS) with the guard sending its
hosts there.

Host names are under ``.invalid``; the spy stands in for ``socket.getaddrinfo`` and
``connect`` and never calls through for anything but loopback.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

from pytest_concurrency import Upstream
from pytest_concurrency._simio import tls
from pytest_concurrency._simio.distributions import Latency
from pytest_concurrency._simio.egress import EgressGuard
from pytest_concurrency._simio.loopback import ALIAS, LoopbackUpstream
from pytest_concurrency._simio.loopserver import LoopbackProcess

from .test_egress import Spy

__all__ = [
    "LATENCY_MS",
    "MODEL",
    "SLACK_MS",
    "calling_with_aiohttp",
    "latency_only_here",
    "served_by_process",
    "served_by_thread",
    "served_over_tls",
    "spy",
]

MODEL = "http://model-server.invalid/generate"
#: A 50 ms simulated wait and what the model allows on top of it on a loaded 2-core
#: machine: the timer's overshoot, a loopback HTTP exchange (≈ 0.3 ms), the client's work.
LATENCY_MS = 50.0
SLACK_MS = 12.0

_Server = TypeVar("_Server", LoopbackUpstream, LoopbackProcess)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    return Spy(monkeypatch)


@contextmanager
def _serving(server: _Server, guard: Callable[[_Server], EgressGuard]) -> Iterator[_Server]:
    """*server* started, and the guard made for it in, until the block ends."""
    server.start()
    try:
        with guard(server):
            yield server
    finally:
        server.stop()


@contextmanager
def served_by_thread(upstream: Upstream) -> Iterator[LoopbackUpstream]:
    """The upstream's http:// hosts served on loopback, and the guard sending them there."""
    with _serving(LoopbackUpstream(lambda: [upstream]), _http_guard(upstream)) as server:
        yield server


@contextmanager
def served_by_process(upstream: Upstream) -> Iterator[LoopbackProcess]:
    """The upstream's http:// hosts served by a loopback process, and the guard sending them
    there."""
    with _serving(LoopbackProcess(upstream), _http_guard(upstream)) as server:
        yield server


@contextmanager
def served_over_tls(upstream: Upstream) -> Iterator[LoopbackUpstream]:
    """The upstream's https:// hosts served over TLS on loopback, as a storm serves them."""
    context = tls.server_context(upstream.https_hosts)
    server = LoopbackUpstream(lambda: [upstream], tls=context)

    def guard(started: LoopbackUpstream) -> EgressGuard:
        return EgressGuard(
            serve_tls=upstream.https_hosts,
            serve_tls_port=started.tls_port,
            tls_ports=upstream.https_ports,
            tls_ca=tls.ca_pem(),
            alias=ALIAS,
        )

    with _serving(server, guard) as started:
        yield started


def _http_guard(upstream: Upstream) -> Callable[[LoopbackUpstream | LoopbackProcess], EgressGuard]:
    def guard(server: LoopbackUpstream | LoopbackProcess) -> EgressGuard:
        return EgressGuard(serve=upstream.http_hosts, serve_port=server.port, alias=ALIAS)

    return guard


def calling_with_aiohttp(url: str) -> Callable[[dict[str, Any], Any, Any], Awaitable[None]]:
    """An ASGI app whose every request awaits one call to *url* with aiohttp, on one session
    opened at startup and closed at shutdown, as apps keep them (its TLS context, for an
    https *url*, made long before the storm)."""
    sessions: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        import aiohttp

        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    sessions.append(aiohttp.ClientSession())
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await sessions.pop().close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        async with sessions[-1].post(url, json={}) as response:
            answer = await response.read()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": answer})

    return app


def latency_only_here(monkeypatch: pytest.MonkeyPatch, module: str) -> Latency:
    """A 5 ms latency whose class lives in a module only this process has (*module*, put in
    ``sys.modules`` for the test): it pickles, and another interpreter cannot load it."""
    home = types.ModuleType(module)

    class Slow(Latency):
        def sample(self, rng: Any) -> float:
            return 0.005

        def describe(self) -> str:
            return "slow"

    Slow.__module__ = home.__name__
    Slow.__qualname__ = "Slow"
    home.Slow = Slow  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, home.__name__, home)
    return Slow()
