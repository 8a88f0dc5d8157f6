"""Edges of the loopback upstream process: requests pipelined on one connection, a shard
forked while another thread holds the registry of running processes, a percent-encoded
path, a Ctrl-C while it starts, and the latency generators it hands back.

Host names are under ``.invalid``; requests go to the process's port on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time

import pytest

from pytest_concurrency import Upstream
from pytest_concurrency._simio import loopserver, seed_latency
from pytest_concurrency._simio.distributions import normal
from pytest_concurrency._simio.loopserver import LoopbackProcess
from pytest_concurrency._simio.waits import _default_rng

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


def test_a_shard_forked_while_the_registry_is_held_can_still_collect() -> None:
    # Another thread of the storm's process holds the registry's lock when a shard forks:
    # the shard (which owns no loopback process) must not wait on a lock nobody releases.
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with loopserver._LIVE_LOCK:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        pid = os.fork()
        if pid == 0:  # the shard
            done = threading.Event()

            def collect() -> None:
                loopserver.collect_live()
                done.set()

            threading.Thread(target=collect, daemon=True).start()
            os._exit(0 if done.wait(5) else 1)
    finally:
        release.set()
        holder.join()
    deadline = time.monotonic() + 30
    while True:
        ended, status = os.waitpid(pid, os.WNOHANG)
        if ended:
            break
        assert time.monotonic() < deadline, "the shard did not end"
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(status) == 0, "the shard hung on the registry's lock"


def test_a_percent_encoded_path_matches_its_route_as_in_process() -> None:
    # A client sends a route's non-ASCII path percent-encoded; the route matches the decoded
    # path (httpx's ``URL.path``), as the thread of the storm's process matches it.
    with Upstream() as upstream:
        route = upstream.route("http://model-server.invalid/search/café", json={"hit": 1})
        server = LoopbackProcess(upstream).start()
        try:
            request = b"GET /search/caf%C3%A9?q=1 HTTP/1.1\r\nHost: model-server.invalid\r\n\r\n"
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(request)
                sock.settimeout(10)
                answer = sock.recv(65536)
            server.collect()
        finally:
            server.stop()
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert route.calls == 1
        assert upstream.undeclared_calls == 0


def test_ctrl_c_while_the_process_starts_stops_it_and_stays_a_ctrl_c(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A Ctrl-C while the storm waits for the process to listen is the user's: it must not
    # become a failed start (which the storm answers by serving the routes from a thread).
    def interrupted(sock: socket.socket) -> bytes:
        raise KeyboardInterrupt

    with Upstream() as upstream:
        upstream.route(MODEL, latency=5, json={})
        server = LoopbackProcess(upstream)
        monkeypatch.setattr(loopserver, "_receive", interrupted)
        with pytest.raises(KeyboardInterrupt):
            server.start()
    assert server.pid is not None
    assert server._process is None  # reaped
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)
    assert server not in loopserver._LIVE


def _calls(server: LoopbackProcess, count: int) -> None:
    """*count* calls to the route, one after another, on one connection."""
    request = b"GET /generate HTTP/1.1\r\nHost: model-server.invalid\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        for _ in range(count):
            sock.sendall(request)
            assert _read_answers(sock, 1).startswith(b"HTTP/1.1 200")


def test_the_generator_goes_on_from_what_the_process_drew() -> None:
    # In-process, a storm's draws advance the process-wide generator, so the next storm
    # (or round) draws on from there. Served by a process, it must go on from the draws the
    # process made, not draw the same latencies again.
    seed_latency(11)
    with Upstream() as upstream:
        route = upstream.route(MODEL, latency=normal(5, 1), json={})
        model = random.Random()
        model.setstate(_default_rng.getstate())
        for _ in range(3):
            route.latency.sample(model)
        server = LoopbackProcess(upstream).start()
        try:
            _calls(server, 3)
            server.collect()
        finally:
            server.stop()
    assert _default_rng.getstate() == model.getstate()


def test_a_routes_own_generator_goes_on_where_it_was() -> None:
    # A route with its own seed has drawn already (an earlier round): the process draws on
    # from there, as the route would in-process, and hands back where it stopped.
    with Upstream() as upstream:
        route = upstream.route(MODEL, latency=normal(5, 1), json={}, seed=5)
        for _ in range(4):
            route.latency.sample(route._rng)
        model = random.Random()
        model.setstate(route._rng.getstate())
        for _ in range(2):
            route.latency.sample(model)
        server = LoopbackProcess(upstream).start()
        try:
            _calls(server, 2)
            server.collect()
        finally:
            server.stop()
        assert route._rng.getstate() == model.getstate()


def test_no_answer_comes_before_its_latency() -> None:
    # uvloop's timers count whole milliseconds of a clock read at the loop's last turn, so a
    # timer may fire up to 1 ms early: the process waits out the rest before it answers.
    with Upstream() as upstream:
        route = upstream.route(MODEL, latency=5.3, json={})
        server = LoopbackProcess(upstream).start()
        try:
            _calls(server, 40)
            server.collect()
        finally:
            server.stop()
    assert len(route._waits_us) == 40
    assert min(route._waits_us) >= 5300, sorted(route._waits_us)[:5]
