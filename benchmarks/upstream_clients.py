"""What a simulated upstream call costs, per client, and how late its waits come back.

    python benchmarks/upstream_clients.py [--calls N] [--rounds R] [--burst B] [--storm S]
                                          [--thread]

Per call (µs, best of R rounds of N sequential calls, zero latency, one keep-alive
connection), in one run so the ratios hold on a noisy machine:
  - httpx.Client and httpx2.Client answered in-process by the transport patch,
  - requests.Session and aiohttp.ClientSession answered on loopback (a real HTTP/1.1 server
    on 127.0.0.1, reached through the egress guard's name resolution), by the loopback
    process a storm uses for routes without a handler and by the loopback thread it uses
    for routes with one,
  - the same two clients against a do-nothing server on loopback of each kind (a thread of
    this process, or a process of its own; a fixed response): the difference is the
    project's own share of a loopback call. A server process's CPU per call is shown too.
Then B concurrent aiohttp calls at 50 ms through the loopback process (``--thread``: and
the thread), once connections are open: the simulated waits' own error (the answer written
minus the request parsed plus the wait; p50, p99, max), the calls' latency and the server's
CPU per call. Then a storm of S users (``--storm S``, 1,000 by default) on an ASGI app
calling the route with aiohttp: the simulated waits' error as the storm reports it. The
machine's load average is printed beside each. Nothing leaves the
machine: every host is under ``.invalid`` or is 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import requests

from pytest_concurrency import Upstream
from pytest_concurrency._probes.noise import _sleep_overshoots_ms
from pytest_concurrency._simio import wait_recorder
from pytest_concurrency._simio.egress import EgressGuard
from pytest_concurrency._simio.loopback import ALIAS, LoopbackUpstream
from pytest_concurrency._simio.loopserver import LoopbackProcess

URL = "http://model.invalid/x"
_FIXED = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n"
_FIXED += b'{"ok":true}'


def best_us(call: Callable[[], Any], calls: int, rounds: int) -> float:
    """Best of *rounds* runs of *calls* sequential calls: microseconds per call."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return min(times)


def best_async_us(call: Callable[[], Any], calls: int, rounds: int) -> float:
    async def run() -> float:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(calls):
                await call()
            times.append((time.perf_counter() - start) / calls * 1e6)
        return min(times)

    return asyncio.run(run())


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        uvloop: Any = importlib.import_module("uvloop")
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


@contextlib.contextmanager
def do_nothing_server() -> Iterator[str]:
    """A keep-alive server on 127.0.0.1 answering every request with a fixed response."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(_FIXED)
                await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        state["port"] = server.sockets[0].getsockname()[1]
        state["stop"] = asyncio.Event()
        ready.set()
        await state["stop"].wait()
        server.close()

    loop = _new_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield f"http://127.0.0.1:{state['port']}/x"
    finally:
        loop.call_soon_threadsafe(state["stop"].set)
        thread.join(5)


class _Served:
    """A loopback server for the benchmark: its process (0 for a thread) and its collect."""

    def __init__(self, server: LoopbackProcess | LoopbackUpstream) -> None:
        self.server = server
        self.pid = server.pid if isinstance(server, LoopbackProcess) and server.pid else 0

    def collect(self) -> None:
        if isinstance(self.server, LoopbackProcess):
            self.server.collect()


@contextlib.contextmanager
def loopback(upstream: Upstream, process: bool = True) -> Iterator[_Served]:
    """The upstream served on loopback, by a process of its own or a thread of this one."""
    server: LoopbackProcess | LoopbackUpstream
    if process:
        server = LoopbackProcess(upstream).start()
    else:
        server = LoopbackUpstream(lambda: [upstream]).start()
    try:
        with EgressGuard(serve=upstream.http_hosts, serve_port=server.port, alias=ALIAS):
            yield _Served(server)
    finally:
        server.stop()


_BARE_CHILD = """
import asyncio, sys
try:
    import uvloop
    loop = uvloop.new_event_loop()
except ImportError:
    loop = asyncio.new_event_loop()
FIXED = FIXED_RESPONSE


class Bare(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.pending = b""

    def data_received(self, data):
        self.pending += data
        count = self.pending.count(b"\\r\\n\\r\\n")
        if count:
            self.pending = self.pending.rsplit(b"\\r\\n\\r\\n", 1)[1]
            self.transport.write(FIXED * count)


server = loop.run_until_complete(loop.create_server(Bare, "127.0.0.1", 0))
print(server.sockets[0].getsockname()[1], flush=True)
loop.add_reader(sys.stdin.fileno(), loop.stop)  # the end of its input ends it
loop.run_forever()
""".replace("FIXED_RESPONSE", repr(_FIXED))


@contextlib.contextmanager
def do_nothing_process() -> Iterator[tuple[str, int]]:
    """A do-nothing server (a fixed response per request head, an ``asyncio.Protocol``) in a
    process of its own; yields its URL and pid."""
    child = subprocess.Popen(
        [sys.executable, "-c", _BARE_CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        yield f"http://127.0.0.1:{port}/x", child.pid
    finally:
        assert child.stdin is not None
        child.stdin.close()  # its end of input: it exits
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
        if child.stdout is not None:
            child.stdout.close()


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process *pid* has used so far, from /proc."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_call(calls: int, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Microseconds per call for each client and server, and the server process's CPU
    microseconds per call where it has a process of its own."""
    figures: dict[str, float] = {}
    cpu: dict[str, float] = {}
    with Upstream() as upstream:
        upstream.route(URL, json={"ok": True})
        with httpx.Client() as client:
            figures["httpx, in-process"] = best_us(lambda: client.get(URL), calls, rounds)
        try:
            httpx2: Any = importlib.import_module("httpx2")
        except ImportError:
            pass
        else:
            with httpx2.Client() as client2:
                figures["httpx2, in-process"] = best_us(lambda: client2.get(URL), calls, rounds)
    try:
        aiohttp: Any = importlib.import_module("aiohttp")
    except ImportError:
        aiohttp = None

    def requests_us(url: str) -> float:
        with requests.Session() as session:
            return best_us(lambda: session.get(url), calls, rounds)

    def aiohttp_us(url: str) -> float:
        async def run() -> float:
            async with aiohttp.ClientSession() as session:

                async def one() -> None:
                    async with session.get(url) as response:
                        await response.read()

                times = []
                for _ in range(rounds):
                    start = time.perf_counter()
                    for _ in range(calls):
                        await one()
                    times.append((time.perf_counter() - start) / calls * 1e6)
                return min(times)

        return asyncio.run(run())

    clients: list[tuple[str, Callable[[str], float]]] = [("requests", requests_us)]
    if aiohttp is not None:
        clients.append(("aiohttp", aiohttp_us))
    for name, timed in clients:
        for process in (False, True):
            where = "loopback process" if process else "loopback thread"
            with Upstream() as upstream:
                upstream.route(URL, json={"ok": True})
                with loopback(upstream, process) as server:
                    before = _cpu_s(server.pid) if server.pid else 0.0
                    figures[f"{name}, {where}"] = timed(URL)
                    if server.pid:
                        used = _cpu_s(server.pid) - before
                        cpu[f"{name}, {where}"] = used / (calls * rounds) * 1e6
        with do_nothing_server() as bare:
            figures[f"{name}, do-nothing thread"] = timed(bare)
        with do_nothing_process() as (bare, pid):
            before = _cpu_s(pid)
            figures[f"{name}, do-nothing process"] = timed(bare)
            cpu[f"{name}, do-nothing process"] = (_cpu_s(pid) - before) / (calls * rounds) * 1e6
    return figures, cpu


def burst(count: int, process: bool = True) -> str:
    """*count* concurrent aiohttp calls at 50 ms through the loopback path, once their
    connections are open: the waits' own error, the calls' latency, the server's CPU."""
    try:
        aiohttp: Any = importlib.import_module("aiohttp")
    except ImportError:
        return "burst: aiohttp is not installed"

    async def run(served: _Served) -> tuple[Any, list[float], float]:
        latencies: list[float] = []
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> None:
                start = time.perf_counter()
                async with session.get(URL) as response:
                    await response.read()
                latencies.append((time.perf_counter() - start) * 1000)

            await asyncio.gather(*(one() for _ in range(count)))  # open the connections
            served.collect()
            latencies.clear()
            before = _cpu_s(served.pid) if served.pid else 0.0
            wait_recorder.start()
            await asyncio.gather(*(one() for _ in range(count)))
            served.collect()
            used = (_cpu_s(served.pid) - before) if served.pid else 0.0
            return wait_recorder.stop(), sorted(latencies), used

    load = os.getloadavg()
    stall = max(_sleep_overshoots_ms())
    with Upstream() as upstream:
        upstream.route(URL, latency=50, json={"ok": True})
        with loopback(upstream, process) as served:
            report, latencies, used = asyncio.run(run(served))
    stall = max(stall, *_sleep_overshoots_ms())
    waits = report.async_waits
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    where = "a loopback process" if process else "the loopback thread"
    server_cpu = f"; server CPU {used / count * 1e6:.0f} µs/call" if process else ""
    return (
        f"{count:,} concurrent aiohttp calls at 50 ms through {where}: wait error "
        f"p50 {waits.p50_ms:.1f} ms, p99 {waits.p99_ms:.1f} ms, max {waits.max_ms:.1f} ms; "
        f"call latency p50 {p50:.1f} ms, p99 {p99:.1f} ms{server_cpu}; the longest a 1 ms "
        f"sleep overslept just before or after: {stall:.1f} ms (load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores)"
    )


SESSIONS: list[Any] = []


async def _aiohttp_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app whose every request awaits one model call on a session kept for the app."""
    aiohttp: Any = importlib.import_module("aiohttp")
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                connector = aiohttp.TCPConnector(limit=0)
                SESSIONS.append(aiohttp.ClientSession(connector=connector))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await SESSIONS.pop().close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    async with SESSIONS[-1].post(URL, json={}) as response:
        body = await response.read()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def storm(users: int, process: bool = True) -> str:
    """A storm of *users* (4 s, 1 s warm-up) on an app calling a 50 ms route with aiohttp:
    the simulated waits' error as the storm reports it (``simulated_waits``). A route with
    a handler is answered by the loopback thread, one without by the loopback process."""
    if importlib.util.find_spec("aiohttp") is None:
        return "storm: aiohttp is not installed"
    from pytest_concurrency._api import run_storm

    answer: dict[str, Any] = (
        {"json": {"ok": True}} if process else {"handler": lambda request: {"ok": True}}
    )
    load = os.getloadavg()
    with Upstream() as upstream:
        upstream.route(URL, latency=50, **answer)
        result = run_storm(
            _aiohttp_app, "POST", "/", users=users, duration=4, warmup=1, check=False
        )
    waits = result.extras["simulated_waits"]["async"]
    where = "a loopback process" if process else "the loopback thread"
    return (
        f"storm of {users:,} users, aiohttp at 50 ms through {where}: simulated wait error "
        f"p50 {waits['p50_ms']:.1f} ms, p99 {waits['p99_ms']:.1f} ms; "
        f"{result.throughput:,.0f} requests/s, latency p50 {result.latency.p50:.0f} ms "
        f"(load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--thread", action="store_true", help="also burst the loopback thread")
    parser.add_argument("--storm", type=int, default=1000, help="users of the storm (0: none)")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    figures, cpu = per_call(args.calls, args.rounds)
    base = figures["httpx, in-process"]
    for name, us in figures.items():
        server = f"  server CPU {cpu[name]:5.0f} µs/call" if name in cpu else ""
        print(f"{name:32s} {us:8.0f} µs/call  ({us / base:4.1f}× httpx in-process){server}")
    for client in ("requests", "aiohttp"):
        for kind in ("thread", "process"):
            served = figures.get(f"{client}, loopback {kind}")
            bare = figures.get(f"{client}, do-nothing {kind}")
            if served is not None and bare is not None:
                print(
                    f"{client}: the loopback {kind}'s own share {served - bare:,.0f} µs/call "
                    "(against a do-nothing server of the same kind)"
                )
    print(burst(args.burst, process=True))
    if args.thread:
        print(burst(args.burst, process=False))
    if args.storm:
        print(storm(args.storm, process=True))
        if args.thread:
            print(storm(args.storm, process=False))
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
