"""What a simulated upstream call costs, per client, and how late its waits come back.

    python benchmarks/upstream_clients.py [--calls N] [--rounds R] [--burst B]

Per call (µs, best of R rounds of N sequential calls, zero latency, one keep-alive
connection), in one run so the ratios hold on a noisy machine:
  - httpx.Client and httpx2.Client answered in-process by the transport patch,
  - requests.Session and aiohttp.ClientSession answered by the loopback upstream (a real
    HTTP/1.1 server on 127.0.0.1, reached through the egress guard's name resolution),
  - the same two clients against a do-nothing server on loopback (same kind of event loop,
    a fixed response): the difference is the project's own share of a loopback call.
Then B concurrent aiohttp calls at 50 ms through the loopback path, once connections are
open: the simulated waits' own error (actual minus requested, p50 and p99) and the calls'
latency. Nothing leaves the machine: every host is under ``.invalid`` or is 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import requests

from pytest_concurrency import Upstream
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


@contextlib.contextmanager
def loopback(upstream: Upstream, process: bool = True) -> Iterator[Callable[[], None]]:
    """The upstream served on loopback (by a process of its own, or a thread of this one);
    yields what brings its figures back."""
    server: LoopbackProcess | LoopbackUpstream
    if process:
        server = LoopbackProcess(upstream).start()
        collect = server.collect
    else:
        server = LoopbackUpstream(lambda: [upstream]).start()

        def collect() -> None:
            pass

    try:
        with EgressGuard(serve=upstream.http_hosts, serve_port=server.port, alias=ALIAS):
            yield collect
    finally:
        server.stop()


def per_call(calls: int, rounds: int) -> dict[str, float]:
    figures: dict[str, float] = {}
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
        with loopback(upstream), requests.Session() as session:
            figures["requests, loopback upstream"] = best_us(
                lambda: session.get(URL), calls, rounds
            )
    with do_nothing_server() as bare, requests.Session() as session:
        figures["requests, do-nothing server"] = best_us(lambda: session.get(bare), calls, rounds)
    try:
        aiohttp: Any = importlib.import_module("aiohttp")
    except ImportError:
        return figures

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

    with Upstream() as upstream:
        upstream.route(URL, json={"ok": True})
        with loopback(upstream):
            figures["aiohttp, loopback upstream"] = aiohttp_us(URL)
    with do_nothing_server() as bare:
        figures["aiohttp, do-nothing server"] = aiohttp_us(bare)
    return figures


def burst(count: int, process: bool = True) -> str:
    try:
        aiohttp: Any = importlib.import_module("aiohttp")
    except ImportError:
        return "burst: aiohttp is not installed"

    async def run(collect: Callable[[], None]) -> tuple[Any, list[float]]:
        latencies: list[float] = []
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> None:
                start = time.perf_counter()
                async with session.get(URL) as response:
                    await response.read()
                latencies.append((time.perf_counter() - start) * 1000)

            await asyncio.gather(*(one() for _ in range(count)))  # open the connections
            collect()
            latencies.clear()
            wait_recorder.start()
            await asyncio.gather(*(one() for _ in range(count)))
            collect()
            return wait_recorder.stop(), sorted(latencies)

    load = os.getloadavg()[0]
    with Upstream() as upstream:
        upstream.route(URL, latency=50, json={"ok": True})
        with loopback(upstream, process) as collect:
            report, latencies = asyncio.run(run(collect))
    waits = report.async_waits
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    where = "a loopback process" if process else "the loopback thread"
    return (
        f"{count:,} concurrent aiohttp calls at 50 ms through {where}: wait error "
        f"p50 {waits.p50_ms:.1f} ms, p99 {waits.p99_ms:.1f} ms, max {waits.max_ms:.1f} ms; "
        f"call latency p50 {p50:.1f} ms, p99 {p99:.1f} ms (load average before: {load:.2f}, "
        f"{os.cpu_count()} cores)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--thread", action="store_true", help="also burst the loopback thread")
    args = parser.parse_args()
    figures = per_call(args.calls, args.rounds)
    base = figures["httpx, in-process"]
    for name, us in figures.items():
        print(f"{name:32s} {us:8.0f} µs/call  ({us / base:4.1f}× httpx in-process)")
    for client in ("requests", "aiohttp"):
        served = figures.get(f"{client}, loopback upstream")
        bare = figures.get(f"{client}, do-nothing server")
        if served is not None and bare is not None:
            print(f"{client}: the loopback upstream's own share {served - bare:,.0f} µs/call")
    print(burst(args.burst, process=True))
    if args.thread:
        print(burst(args.burst, process=False))


if __name__ == "__main__":
    main()
