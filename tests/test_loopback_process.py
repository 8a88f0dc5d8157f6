"""Declared routes answered on loopback by a process of their own: same answers, same figures,
waits that keep time under a burst, and a process that ends with the storm's.

Host names are under ``.invalid``; a spy stands in for ``socket.getaddrinfo`` and
``connect`` and never calls through for anything but loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from pytest_concurrency import BudgetExceeded, Upstream
from pytest_concurrency._api import run_storm
from pytest_concurrency._probes import noise
from pytest_concurrency._simio import loopserver, seed_latency, wait_recorder
from pytest_concurrency._simio.distributions import ConstantLatency, normal
from pytest_concurrency._simio.egress import is_loopback
from pytest_concurrency._simio.loopserver import LoopbackProcess, portable

from ._upstream import LATENCY_MS, MODEL, SLACK_MS, latency_only_here, spy
from ._upstream import served_by_process as served
from .test_egress import Spy

__all__ = ["spy"]


def _gone(pid: int, within: float = 10.0) -> bool:
    """Whether process *pid* has ended (and been reaped) within *within* seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def test_requests_and_urllib_get_the_declared_answer_and_figures(spy: Spy) -> None:
    with Upstream() as upstream:
        route = upstream.route(MODEL, latency=5, json={"text": "Hello!"}, headers={"x-a": "1"})
        with served(upstream) as server:
            assert server.pid is not None
            assert server.pid != os.getpid()
            response = requests.post(MODEL, json={"prompt": "hi"}, timeout=5)
            with urllib.request.urlopen(MODEL) as answer:
                body = answer.read()
    assert response.status_code == 200
    assert response.json() == {"text": "Hello!"}
    assert response.headers["x-a"] == "1"
    assert body == b'{"text":"Hello!"}'
    # Counted in the child, added to this process's route when it stopped.
    assert (route.calls, route.in_flight, route.max_in_flight) == (2, 0, 1)
    assert route.waited_s >= 0.009
    assert "model-server.invalid" not in spy.lookups
    assert all(is_loopback(str(address[0])) for address in spy.connects)
    assert _gone(server.pid)


def test_streams_errors_timeouts_head_and_undeclared_paths(spy: Spy) -> None:
    with Upstream() as upstream:
        stream = upstream.route(
            "http://model-server.invalid/stream", stream=["a ", "b ", "c"], chunk_latency=2
        )
        failing = upstream.route("http://model-server.invalid/flaky", error_rate=1.0)
        hung = upstream.route("http://model-server.invalid/hung", timeout_rate=1.0, latency=1)
        model = upstream.route(MODEL, json={"text": "Hello!"})
        with served(upstream), requests.Session() as session:
            with session.get("http://model-server.invalid/stream", stream=True, timeout=5) as r:
                chunks = [chunk for chunk in r.iter_content(chunk_size=None) if chunk]
            flaky = session.get("http://model-server.invalid/flaky", timeout=5)
            with pytest.raises(requests.ReadTimeout):
                session.get("http://model-server.invalid/hung", timeout=0.3)
            missing = session.get("http://model-server.invalid/other", timeout=5)
            head = session.head(MODEL, timeout=5)
            after = session.get(MODEL, timeout=5)  # the connection is still good
    assert b"".join(chunks) == b"a b c"
    assert (stream.calls, stream.in_flight) == (1, 0)
    assert (flaky.status_code, failing.errors) == (503, 1)
    assert hung.timeouts == 1
    assert missing.status_code == 502
    assert "no route for this path on http://model-server.invalid" in missing.text
    assert upstream.undeclared == ["http://model-server.invalid/other"]
    assert upstream.undeclared_calls == 1
    assert (head.status_code, head.headers["content-length"], head.content) == (200, "17", b"")
    assert after.json() == {"text": "Hello!"}
    assert model.calls == 2


@pytest.mark.parametrize("seed", [7, None], ids=["route-seed", "storm-seed"])
def test_a_seeded_route_draws_what_it_draws_in_process(seed: int | None, spy: Spy) -> None:
    """Which calls fail is drawn from the route's generator, or the process-wide one the
    storm seeds: the child draws the same as this process would have."""

    def statuses(serve: bool) -> list[int]:
        seed_latency(3)
        with Upstream() as upstream:
            route = upstream.route(MODEL, error_rate=0.5, seed=seed)
            if not serve:
                plan = [route._plan(loopserver._NO_TIMEOUT)[2] for _ in range(12)]
                return [503 if fails else 200 for fails in plan]
            with served(upstream), requests.Session() as session:
                return [session.get(MODEL, timeout=5).status_code for _ in range(12)]

    answered = statuses(True)
    assert answered == statuses(False)
    assert set(answered) == {200, 503}


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_pipelined_requests_parsed_in_pieces(parser: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if parser == "h11":
        monkeypatch.setitem(sys.modules, "httptools", None)  # import fails: h11 parses
    else:
        pytest.importorskip("httptools")
    seen: list[tuple[str, str, str, bool]] = []
    parse = loopserver._Parser(lambda *request: seen.append(request))
    data = (
        b"POST /generate HTTP/1.1\r\nHost: model-server.invalid\r\nContent-Length: 4\r\n\r\nab"
        b"cdGET /x?q=1 HTTP/1.1\r\nhost: other.invalid:8080\r\nConnection: close\r\n\r\n"
    )
    for start in range(0, len(data), 7):
        parse.feed(data[start : start + 7])
    assert not parse.failed
    assert seen == [
        ("POST", "/generate", "model-server.invalid", True),
        ("GET", "/x?q=1", "other.invalid:8080", False),
    ]


def test_only_routes_without_a_handler_leave_the_process() -> None:
    with Upstream() as static:
        static.route(MODEL, json={"text": "Hello!"}, latency=normal(50, 5))
        assert portable(static)
    with Upstream() as handled:
        handled.route(MODEL, handler=lambda request: {"text": "Hello!"})
        assert not portable(handled)


def test_a_storm_is_answered_by_a_process_that_ends_with_it(spy: Spy) -> None:
    children: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        children.extend(server.pid for server in loopserver._LIVE if server.pid is not None)
        answer = requests.post(MODEL, json={}, timeout=5).content
        start_response("200 OK", [])
        return [answer]

    wait_recorder.stop()
    with Upstream() as upstream:
        upstream.route(MODEL, latency=LATENCY_MS, json={"text": "Hello!"})
        result = run_storm(app, "POST", "/", users=5, threads=5, requests=40)
    assert result.status_counts == {200: 40}
    (child,) = set(children)
    assert child != os.getpid()
    assert _gone(child)
    route = result.extras["upstream"][MODEL]
    assert route["calls_in_storm"] >= result.requests
    assert LATENCY_MS <= route["waited_ms_p50"] <= LATENCY_MS + SLACK_MS
    # Each wait's own error came back with it, into the storm's simulated-wait figures.
    waits = result.extras["simulated_waits"]["async"]
    assert 0 < waits["count"] <= route["calls_in_storm"]
    assert waits["requested_p50_ms"] == LATENCY_MS
    assert spy.off_machine == []


def test_a_storm_with_a_handler_route_is_answered_in_its_own_process(spy: Spy) -> None:
    seen: list[str] = []
    children: list[int] = []

    def handler(request: Any) -> dict[str, str]:
        seen.append(request.method)  # runs here, where the test can see it
        return {"text": "Hello!"}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        children.extend(server.pid for server in loopserver._LIVE if server.pid is not None)
        answer = requests.post(MODEL, json={}, timeout=5).content
        start_response("200 OK", [])
        return [answer]

    with Upstream() as upstream:
        upstream.route(MODEL, latency=5, handler=handler)
        result = run_storm(app, "POST", "/", users=2, threads=2, requests=10)
    assert result.status_counts == {200: 10}
    assert len(seen) >= 10
    assert children == []
    assert result.extras["upstream"][MODEL]["calls_in_storm"] >= 10


@dataclass(frozen=True)
class Steady(ConstantLatency):
    """A latency of the test's own, from a module that imports the package's public names."""


def test_a_latency_of_the_users_own_module_loads_in_the_process(spy: Spy) -> None:
    with Upstream() as upstream:
        route = upstream.route(MODEL, latency=Steady(5), json={"text": "Hello!"})
        with served(upstream):
            response = requests.get(MODEL, timeout=5)
    assert response.json() == {"text": "Hello!"}
    assert route.calls == 1
    assert route.waited_s >= 0.004


def test_routes_a_process_cannot_import_are_answered_by_the_thread(
    spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = latency_only_here(monkeypatch, "storm_latency_only_here")
    threads: list[bool] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        threads.append(any(t.name == "storm-loopback-upstream" for t in threading.enumerate()))
        answer = requests.post(MODEL, json={}, timeout=5).content
        start_response("200 OK", [])
        return [answer]

    with Upstream() as upstream:
        upstream.route(MODEL, latency=slow, json={"text": "Hello!"})
        assert portable(upstream)  # it pickles; the child fails to load it
        result = run_storm(app, "POST", "/", users=2, threads=2, requests=10)
    assert result.status_counts == {200: 10}
    assert all(threads)
    assert loopserver._LIVE == []
    assert result.extras["upstream"][MODEL]["calls_in_storm"] >= 10


def test_a_storm_stopped_by_ctrl_c_stops_its_process(spy: Spy) -> None:
    children: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if not children:
            children.extend(s.pid for s in loopserver._LIVE if s.pid is not None)
            os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C in the middle of the storm
        answer = requests.post(MODEL, json={}, timeout=5).content
        start_response("200 OK", [])
        return [answer]

    with Upstream() as upstream:
        upstream.route(MODEL, latency=5, json={"text": "Hello!"})
        # However the storm ends on an interrupt (it stops early or raises), its process ends.
        with contextlib.suppress(KeyboardInterrupt, BudgetExceeded):
            run_storm(app, "POST", "/", users=2, threads=2, duration=5)
    assert children
    assert all(_gone(child) for child in set(children))
    assert loopserver._LIVE == []


CHILD = """
import sys, time
from pytest_concurrency import Upstream
from pytest_concurrency._simio.loopserver import LoopbackProcess

upstream = Upstream()
upstream.route("http://model-server.invalid/generate")
server = LoopbackProcess(upstream).start()
print(server.pid, flush=True)
time.sleep(60)
"""


def test_the_process_ends_when_the_storms_process_is_killed() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # running
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        # Its socket to the storm's process closed: it ends (reaped by init, not us).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{child}/stat") as file:
                    if file.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except FileNotFoundError:
                break
            time.sleep(0.02)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the loopback process outlived the process that started it")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()


def test_a_collect_after_one_that_timed_out_fails_rather_than_read_its_late_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The answer to a collect that timed out comes later: the next collect must not take it
    for its own (its figures are an earlier window's, and every answer after is off by one)."""
    import select

    from pytest_concurrency._errors import StormError

    with Upstream() as upstream:
        upstream.route(MODEL, latency=5)
        server = LoopbackProcess(upstream).start()
        assert server.pid is not None
        try:
            os.kill(server.pid, signal.SIGSTOP)  # it cannot answer in time
            try:
                monkeypatch.setattr(loopserver, "_COLLECT_TIMEOUT", 0.2)
                with pytest.raises(StormError, match="gave no figures: timed out"):
                    server.collect()
            finally:
                os.kill(server.pid, signal.SIGCONT)
            control = server._control
            assert control is not None
            # The late answer is now waiting on the control socket.
            assert select.select([control], [], [], 10)[0] == [control]
            monkeypatch.setattr(loopserver, "_COLLECT_TIMEOUT", 10.0)
            with pytest.raises(StormError, match=r"an earlier collect failed \(timed out\)"):
                server.collect()
        finally:
            pid = server.pid
            server.stop()
    assert _gone(pid)


@pytest.mark.timing
def test_waits_keep_time_under_a_burst(spy: Spy) -> None:
    """500 concurrent calls at 50 ms from one aiohttp session: each wait's error (answer
    written minus request parsed plus wait) stays within the model: 5 ms at p99 — timer
    granularity (1 ms) plus the answers due in the same tick (≈ 40 µs of CPU each, on a
    core of its own) — plus the longest stall this machine's scheduler puts on any short
    sleep around the burst (measured just before and just after): a stall delays every
    timer due in it, so on a busy machine it sets the top percent. A thread of the
    client's own process came back 25-200 ms late at p99
    (``benchmarks/upstream_clients.py --thread``)."""
    aiohttp = pytest.importorskip("aiohttp")
    count = 500

    async def run(server: LoopbackProcess) -> Any:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def one() -> None:
                async with session.get(MODEL) as response:
                    await response.read()

            await asyncio.gather(*(one() for _ in range(count)))  # open the connections
            server.collect()
            wait_recorder.start()
            await asyncio.gather(*(one() for _ in range(count)))
            server.collect()
            return wait_recorder.stop().async_waits

    before = max(noise._sleep_overshoots_ms())
    with Upstream() as upstream:
        route = upstream.route(MODEL, latency=LATENCY_MS, json={"ok": True})
        with served(upstream) as server:
            waits = asyncio.run(run(server))
    stall_ms = max(before, *noise._sleep_overshoots_ms())
    assert waits.count == count
    assert route.calls == 2 * count
    assert 0 <= waits.p50_ms <= 2.0
    assert waits.p99_ms <= 5.0 + stall_ms
