"""Routes declared while a storm runs, after its loopback upstream process started, are
answered over loopback like the routes declared before it, and counted with them.

Host names are under ``.invalid``; a spy stands in for ``socket.getaddrinfo`` and
``connect`` and never calls through for anything but loopback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import requests

from pytest_concurrency import Upstream
from pytest_concurrency._api import run_storm
from pytest_concurrency._simio import loopserver

from ._upstream import MODEL, spy
from .test_egress import Spy

__all__ = ["spy"]

LATE = "http://model-server.invalid/late"
LATE_HOST = "http://late-host.invalid/answer"


def _declaring(declare: Callable[[], Any], url: str, pids: list[int]) -> Any:
    """A WSGI app whose first request declares a route (*declare*), and whose every request
    then calls *url* with requests, answering with what it got."""
    lock = threading.Lock()
    declared: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with lock:
            if not declared:
                pids.extend(s.pid for s in loopserver._LIVE if s.pid is not None)
                declared.append(declare())
        answer = requests.get(url, timeout=5)
        start_response(f"{answer.status_code} Answered", [])
        return [answer.content]

    return app


def test_a_route_declared_mid_storm_is_answered_by_the_running_process(spy: Spy) -> None:
    pids: list[int] = []
    with Upstream() as upstream:
        upstream.route(MODEL, latency=5, json={"text": "Hello!"})  # the process serves the host
        late: list[Any] = []

        def declare() -> Any:
            late.append(upstream.route(LATE, latency=20, json={"late": True}))

        app = _declaring(declare, LATE, pids)
        result = run_storm(app, "GET", "/", users=2, threads=2, requests=10, check=False)
    assert pids, "a loopback process answered the storm"
    assert result.status_counts == {200: 10}, result.errors
    (route,) = late
    assert route.calls == 10
    assert result.upstream is not None
    figures = result.upstream[LATE]
    assert figures.calls_in_storm == 10
    # The process's waits came back with its counts: each call waited its 20 ms.
    assert figures.waited_ms_p50 is not None
    assert figures.waited_ms_p50 >= 20.0
    assert upstream.undeclared_calls == 0
    assert spy.off_machine == []


def test_a_host_declared_mid_storm_is_served_on_loopback_too(spy: Spy) -> None:
    pids: list[int] = []
    with Upstream() as upstream:
        upstream.route(MODEL, latency=5, json={"text": "Hello!"})
        app = _declaring(
            lambda: upstream.route(LATE_HOST, latency=5, content="yes"), LATE_HOST, pids
        )
        result = run_storm(app, "GET", "/", users=2, threads=2, requests=8, check=False)
    assert pids
    assert result.refused_egress == []
    assert result.status_counts == {200: 8}, result.errors
    assert result.upstream is not None
    assert result.upstream[LATE_HOST].calls_in_storm == 8
    assert spy.off_machine == []


def test_a_route_with_a_handler_declared_mid_storm_runs_its_handler_here(spy: Spy) -> None:
    pids: list[int] = []
    seen: list[str] = []

    def handler(request: Any) -> dict[str, str]:
        seen.append(request.url.path)  # runs in this process, where the test can see it
        return {"handled": "yes"}

    with Upstream() as upstream:
        upstream.route(MODEL, latency=5, json={"text": "Hello!"})
        app = _declaring(lambda: upstream.route(LATE, latency=5, handler=handler), LATE, pids)
        result = run_storm(app, "GET", "/", users=2, threads=2, requests=8, check=False)
    assert pids
    assert result.status_counts == {200: 8}, result.errors
    assert seen == ["/late"] * 8
    assert result.upstream is not None
    assert result.upstream[LATE].calls_in_storm == 8
    assert spy.off_machine == []
