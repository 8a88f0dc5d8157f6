"""Client CPU per request of the HTTP/1.1 driver against a real server, next to peers.

    python benchmarks/http_client.py [--seconds S] [--connections N]

A one-worker uvicorn serves a trivial endpoint on loopback; N virtual users each own one
keep-alive connection and send requests back to back for S seconds. For each client the
script reports requests per second and the client's own CPU time per request (µs):
  - HttpDriver (asyncio.Protocol + httptools), the driver itself,
  - asyncio streams + httptools, and asyncio.Protocol + h11 (the alternatives it beat),
  - httpx.AsyncClient (one pool of N connections),
  - Locust's FastHttpUser in one process (if installed; marginal CPU of a longer run),
  - wrk (if installed; requests per second only, as the reference of a C client).
The server, not the client, limits the rate on a small machine, so the ratio that
matters is client CPU per request; rps ratios show how close each client drives the server.
Without ``sniffio`` installed, httpcore retries ``import sniffio`` on every request, which
makes httpx look slower still; install it for a fair httpx figure.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import h11
import httptools
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.apps import asgi_hello  # noqa: E402

from pytest_concurrency import ConcurrencyWarning, run_storm  # noqa: E402
from pytest_concurrency._drivers.http import HttpDriver, encode_request  # noqa: E402
from pytest_concurrency._servers import ServerSpec, serve  # noqa: E402
from pytest_concurrency._workload import Request  # noqa: E402

Send = Callable[[int], Awaitable[int]]


class Holder:
    conn: Any = None
    exchange: Any = None


async def drive(
    make_user: Callable[[], Awaitable[Send]], users: int, seconds: float
) -> tuple[int, float, float]:
    """Run *users* loops for *seconds*; return (requests, wall seconds, client CPU seconds)."""
    senders = [await make_user() for _ in range(users)]
    for send in senders:  # warm every connection up
        await send(0)
    count = 0
    stop = False

    async def loop(send: Send) -> None:
        nonlocal count
        while not stop:
            status = await send(0)
            if status != 200:
                raise RuntimeError(f"status {status}")
            count += 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    tasks = [asyncio.create_task(loop(s)) for s in senders]
    await asyncio.sleep(seconds)
    stop = True
    await asyncio.gather(*tasks)
    return count, time.perf_counter() - t0, time.process_time() - cpu0


def driver_client(url: str) -> Callable[[], Awaitable[Send]]:
    driver = HttpDriver(url, [Request(path="/")])

    async def make() -> Send:
        holder = Holder()

        async def send(_: int) -> int:
            return (await driver.call(0, holder)).status

        return send

    return make


def streams_client(url: str) -> Callable[[], Awaitable[Send]]:
    host, port = url.removeprefix("http://").split(":")
    raw, _ = encode_request(Request(path="/"), f"{host}:{port}")

    async def make() -> Send:
        reader, writer = await asyncio.open_connection(host, int(port))

        class State:
            done = False
            status = 0

            def on_headers_complete(self) -> None:
                self.status = parser.get_status_code()

            def on_message_complete(self) -> None:
                self.done = True

        state = State()
        parser = httptools.HttpResponseParser(state)

        async def send(_: int) -> int:
            state.done = False
            writer.write(raw)
            while not state.done:
                parser.feed_data(await reader.read(65536))
            return state.status

        return send

    return make


def h11_client(url: str) -> Callable[[], Awaitable[Send]]:
    host, port = url.removeprefix("http://").split(":")

    class Proto(asyncio.Protocol):
        def __init__(self) -> None:
            self.conn = h11.Connection(h11.CLIENT)
            self.waiter: asyncio.Future[int] | None = None
            self.status = 0

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.conn.receive_data(data)
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    return
                if isinstance(event, h11.Response):
                    self.status = event.status_code
                elif isinstance(event, h11.EndOfMessage):
                    self.conn.start_next_cycle()
                    assert self.waiter is not None
                    self.waiter.set_result(self.status)
                    return

    async def make() -> Send:
        _, proto = await asyncio.get_running_loop().create_connection(Proto, host, int(port))

        async def send(_: int) -> int:
            proto.waiter = asyncio.get_running_loop().create_future()
            data = proto.conn.send(
                h11.Request(method="GET", target="/", headers=[("Host", f"{host}:{port}")])
            )
            data += proto.conn.send(h11.EndOfMessage())
            proto.transport.write(data)
            return await proto.waiter

        return send

    return make


def httpx_client(url: str, users: int) -> Callable[[], Awaitable[Send]]:
    client = httpx.AsyncClient(
        base_url=url, limits=httpx.Limits(max_connections=users, max_keepalive_connections=users)
    )

    async def make() -> Send:
        async def send(_: int) -> int:
            return (await client.get("/")).status_code

        return send

    return make


def run_wrk(url: str, users: int, seconds: float) -> float | None:
    if shutil.which("wrk") is None:
        return None
    out = subprocess.run(
        ["wrk", "-t1", f"-c{users}", f"-d{max(1, round(seconds))}s", url + "/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    return None


def run_locust_fast(url: str, users: int, seconds: float) -> tuple[float, float] | None:
    """Locust's FastHttpUser in one process: (rps, client CPU µs per request), marginal.

    Locust's start-up costs CPU of its own, so two runs (short and long) are subtracted:
    the extra CPU over the extra requests is what a request costs the generator.
    """
    from pytest_concurrency._locust import build_locustfile, locust_available, run_locust

    if not locust_available():
        return None
    locustfile = build_locustfile([Request("GET", "/")], users=users, duration=seconds)
    figures = []
    for length in (1.0, 1.0 + seconds):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        run = run_locust(locustfile, url, users=users, duration=length, spawn_rate=users * 10)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        figures.append((sum(e.requests for e in run.entries), cpu))
    (short_n, short_cpu), (long_n, long_cpu) = figures
    extra = max(1, long_n - short_n)
    return extra / seconds, (long_cpu - short_cpu) / extra * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=3, help="rounds of the paired comparison")
    args = parser.parse_args()
    spec = ServerSpec("uvicorn", "tests.apps:asgi_hello", cwd=str(ROOT))
    with serve(spec) as server:
        print(
            f"server: {server.describe()} at {server.url}; {args.connections} connections, {args.seconds:g} s each"
        )
        print(f"{'client':<34} {'rps':>8} {'client CPU µs/req':>18}")
        results: dict[str, float] = {}
        clients: list[tuple[str, Callable[[], Callable[[], Awaitable[Send]]]]] = [
            ("HttpDriver (Protocol + httptools)", lambda: driver_client(server.url)),
            ("streams + httptools", lambda: streams_client(server.url)),
            ("Protocol + h11", lambda: h11_client(server.url)),
            ("httpx.AsyncClient", lambda: httpx_client(server.url, args.connections)),
        ]
        for name, factory in clients:
            count, wall, cpu = asyncio.run(drive(factory(), args.connections, args.seconds))
            results[name] = count / wall
            print(f"{name:<34} {count / wall:>8,.0f} {cpu / count * 1e6:>18.1f}")
        locust = run_locust_fast(server.url, args.connections, args.seconds)
        if locust is not None:
            rps, cpu_us = locust
            results["Locust FastHttpUser"] = rps
            print(f"{'Locust FastHttpUser (1 process)':<34} {rps:>8,.0f} {cpu_us:>18.1f}")
            driver_rps = results["HttpDriver (Protocol + httptools)"]
            print(f"  (the HttpDriver's rps is {driver_rps / rps:.2f}× Locust's)")
        wrk = run_wrk(server.url, args.connections, args.seconds)
        if wrk is not None:
            print(f"{'wrk -t1 (C)':<34} {wrk:>8,.0f} {'-':>18}")
            for name, rps in results.items():
                print(f"  {name}: {rps / wrk:.2f} × wrk's rps")
            paired(server.url, args.connections, args.seconds, args.pairs)


def storm_rps(url: str, users: int, seconds: float) -> float:
    """Requests per second of a whole storm (engine + HttpDriver) against *url*."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConcurrencyWarning)
        result = run_storm(
            asgi_hello, "GET", "/", server=url, users=users, duration=seconds, warmup=0.5
        )
    return result.throughput


def paired(url: str, users: int, seconds: float, pairs: int) -> None:
    """The driver and a whole storm against wrk, back to back (alternating which goes
    first), so that load from other jobs on the machine falls on both sides of a ratio."""
    print(f"paired with wrk, {pairs} rounds (ratio of each round; median and range):")
    ratios: dict[str, list[float]] = {"HttpDriver": [], "storm (engine + HttpDriver)": []}
    for i in range(pairs):
        for name, values in ratios.items():
            if name == "HttpDriver":
                ours = lambda: _driver_rps(url, users, seconds)  # noqa: E731
            else:
                ours = lambda: storm_rps(url, users, seconds)  # noqa: E731
            if i % 2 == 0:
                mine, theirs = ours(), run_wrk(url, users, seconds)
            else:
                theirs, mine = run_wrk(url, users, seconds), ours()
            if theirs:
                values.append(mine / theirs)
    for name, values in ratios.items():
        if values:
            print(
                f"  {name}: {statistics.median(values):.2f} × wrk's rps "
                f"({min(values):.2f}–{max(values):.2f})"
            )


def _driver_rps(url: str, users: int, seconds: float) -> float:
    count, wall, _ = asyncio.run(drive(driver_client(url), users, seconds))
    return count / wall


if __name__ == "__main__":
    main()
