"""A loopback TCP proxy in front of a real service, with Toxiproxy's toxics.

A local PostgreSQL or Redis answers in a tenth of a millisecond; the production one is a
network hop away. ``upstream.proxy("127.0.0.1:5432", latency=20)`` listens on a free port
of 127.0.0.1 and relays every connection to the target, delaying each chunk of data by a
sample of the latency (server to client: ``latency``; client to server:
``upstream_latency``). Chunks keep their order and each is delayed from when it arrived,
as in Toxiproxy, so a request that makes *n* round trips on its connection waits *n* times
the latency. The other toxics: ``bandwidth`` (KB/s, 1 KB = 1,000 bytes, each way),
``timeout_rate`` (a fraction of connections hang: nothing passes, and the proxy closes them
after ``timeout_after``, or never), ``reset_rate`` (a fraction of connections are reset
with a TCP RST after ``reset_after``).

The app reaches the proxy at :attr:`Proxy.address`, or unchanged at the target's address:
during a storm the egress guard turns a connection to the target into one to the proxy
(except the proxy's own connections to the target).

Each proxy counts connections (``calls``), connections open (``in_flight``) and their peak,
bytes each way, hung and reset connections, and the wait of every delayed chunk. A
chunk's wait is charged to the request that waits for it (a ``proxy`` part of its
breakdown) through the app's connection: the egress guard knows the app's sockets
connected to a proxy by their local port, and which request last sent on each (a pooled
connection serves one request at a time, and a request sends before it waits for the
answer); the proxy, on a thread of its own, charges each delayed chunk of that connection
to that request. This holds where the app's sends are Python ``socket`` calls in the
request's context: blocking drivers in Python (PyMySQL, redis-py) and asyncio transports
on asyncio's own loop (asyncpg, redis.asyncio). A C library's sends (libpq under psycopg)
and uvloop's transports (libuv) never meet Python's ``socket``, so their waits show only
in the proxy's totals (the upstream table), not in a request's breakdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import numbers
import random
import socket
import struct
import threading
from array import array
from typing import Any

from .._errors import ConfigError
from .._metrics.percentile import quantile
from .._probes.attribution import charge_to
from .distributions import ConstantLatency, Latency, LatencyLike, _show, as_latency
from .egress import direct_connections, request_on

__all__ = ["Proxy"]

_READ = 65_536
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_QUEUE = 64
_EOF = b""


def _parse_target(target: Any, where: str) -> tuple[str, int]:
    if isinstance(target, tuple) and len(target) == 2:
        host, port = target
    elif isinstance(target, str):
        host, sep, port_text = target.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ConfigError(
                f"{where}: target={target!r} must be 'host:port', such as '127.0.0.1:5432'"
            )
        port = int(port_text)
    else:
        raise ConfigError(f"{where}: target={target!r} must be 'host:port' or a (host, port) tuple")
    if not isinstance(host, str) or not host.strip("[]"):
        raise ConfigError(f"{where}: target={target!r} has no host")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"{where}: target={target!r} must have a port between 1 and 65535")
    return host.strip("[]"), port


def _rate(name: str, value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{where}: {name}={value!r} must be a fraction (0.0-1.0)")
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"{where}: {name}={_show(value)} must be between 0.0 and 1.0")
    return rate


def _bandwidth(name: str, value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0:
        raise ConfigError(f"{where}: {name}={value!r} must be a positive number of KB/s or None")
    return float(value) * 1000.0


def _aliases(host: str) -> set[str]:
    """The spellings a connection to *host* may arrive with."""
    name = host.lower()
    if name in ("localhost", "localhost."):
        return {"localhost", "127.0.0.1", "::1"}
    try:
        return {str(ipaddress.ip_address(name))}
    except ValueError:
        return {name}


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of *target*, with toxics; create with
    ``Upstream.proxy``. It listens from creation and serves until :meth:`close`."""

    def __init__(
        self,
        target: str | tuple[str, int],
        *,
        name: str | None = None,
        latency: LatencyLike = None,
        upstream_latency: LatencyLike = None,
        bandwidth: float | None = None,
        upstream_bandwidth: float | None = None,
        timeout_rate: float = 0.0,
        timeout_after: LatencyLike = None,
        reset_rate: float = 0.0,
        reset_after: LatencyLike = None,
        seed: int | None = None,
    ) -> None:
        where = f"upstream.proxy({target!r})"
        self.target = _parse_target(target, where)
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(f"{where}: name={name!r} must be a non-empty string")
        host, port = self.target
        shown_host = f"[{host}]" if ":" in host else host
        self.label = name if name is not None else f"tcp://{shown_host}:{port}"
        self.latency: Latency = as_latency(latency, where=f"{where}: ")
        self.upstream_latency: Latency = as_latency(
            upstream_latency, name="upstream_latency", where=f"{where}: "
        )
        self.bandwidth = _bandwidth("bandwidth", bandwidth, where)
        self.upstream_bandwidth = _bandwidth("upstream_bandwidth", upstream_bandwidth, where)
        self.timeout_rate = _rate("timeout_rate", timeout_rate, where)
        self.reset_rate = _rate("reset_rate", reset_rate, where)
        if self.timeout_rate + self.reset_rate > 1.0:
            raise ConfigError(
                f"{where}: timeout_rate={_show(timeout_rate)} + reset_rate={_show(reset_rate)} "
                "must not exceed 1.0"
            )
        self.timeout_after: Latency | None = (
            None
            if timeout_after is None
            else as_latency(timeout_after, name="timeout_after", where=f"{where}: ")
        )
        self.reset_after: Latency = as_latency(reset_after, name="reset_after", where=f"{where}: ")
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.calls = 0
        """Connections accepted since the last reset."""
        self.in_flight = 0
        """Connections open right now."""
        self.max_in_flight = 0
        """The most connections open at once."""
        self.bytes_up = 0
        """Bytes relayed from the app to the target."""
        self.bytes_down = 0
        """Bytes relayed from the target to the app."""
        self.chunks_up = 0
        """Reads relayed from the app to the target (about one per request it sends)."""
        self.chunks_down = 0
        """Reads relayed from the target to the app (about one per round trip)."""
        self.timeouts = 0
        """Connections hung by ``timeout_rate``."""
        self.resets = 0
        """Connections reset by ``reset_rate``."""
        self.errors = 0
        """Connections the target refused or dropped."""
        self._waits_us: array[int] = array("q")

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._sock.bind(("127.0.0.1", 0))
            self._sock.listen(1024)
        except OSError:
            self._sock.close()
            raise
        self.address: tuple[str, int] = ("127.0.0.1", self._sock.getsockname()[1])
        """Where the app connects to reach the target through the proxy."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._start()

    # -- where it stands

    @property
    def host_port(self) -> str:
        """The proxy's address as ``'127.0.0.1:port'`` (for a DSN)."""
        return f"{self.address[0]}:{self.address[1]}"

    @property
    def redirects(self) -> dict[tuple[str, int], tuple[str, int]]:
        """The target's addresses, each mapped to the proxy's (the egress guard's hook)."""
        host, port = self.target
        return {(alias, port): self.address for alias in _aliases(host)}

    @property
    def running(self) -> bool:
        """Whether the proxy's thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    # -- starting and stopping

    def _start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            direct_connections()  # the proxy's own connections go to the target itself
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._main(ready))
            except BaseException as exc:  # reported to the caller if it came before ready
                failure.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="storm-latency-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(_START_TIMEOUT) or failure:
            self.close()
            raise RuntimeError(f"the latency proxy did not start: {failure or 'timeout'}")

    async def _main(self, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._serve, sock=self._sock)
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            server.close()
            for transport in list(self._transports):
                transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), _STOP_TIMEOUT)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Stop serving, drop every connection and join the thread (a no-op when closed)."""
        loop, stopped, thread = self._loop, self._stopped, self._thread
        if loop is not None and stopped is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(stopped.set)
        if thread is not None and thread is not threading.current_thread():
            thread.join(_STOP_TIMEOUT + 1)
        self._thread = None
        self._sock.close()

    # -- one connection

    def _enter(self) -> tuple[bool, bool]:
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            draw = self._rng.random() if self.timeout_rate or self.reset_rate else 1.0
            hang = draw < self.timeout_rate
            reset = not hang and draw < self.timeout_rate + self.reset_rate
            if hang:
                self.timeouts += 1
            if reset:
                self.resets += 1
        return hang, reset

    def _exit(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _sample(self, latency: Latency) -> float:
        with self._lock:
            return latency.sample(self._rng)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._transports.add(writer.transport)
        hang, reset = self._enter()
        target_writer: asyncio.StreamWriter | None = None
        try:
            if hang:
                await self._hang(reader)
                return
            try:
                target_reader, target_writer = await asyncio.open_connection(*self.target)
            except OSError:
                with self._lock:
                    self.errors += 1
                return
            self._transports.add(target_writer.transport)
            peer = writer.get_extra_info("peername")
            client = int(peer[1]) if isinstance(peer, tuple) and len(peer) > 1 else None
            pipes = [
                asyncio.ensure_future(
                    self._pipe(
                        reader,
                        target_writer,
                        self.upstream_latency,
                        self.upstream_bandwidth,
                        up=True,
                        client=client,
                    )
                ),
                asyncio.ensure_future(
                    self._pipe(
                        target_reader, writer, self.latency, self.bandwidth, up=False, client=client
                    )
                ),
            ]
            if reset:
                await asyncio.sleep(self._sample(self.reset_after))
                _reset(writer)
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
                return
            done, pending = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            if any(p.exception() is not None for p in done if not p.cancelled()):
                for pipe in pending:
                    pipe.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                if not reset:
                    with self._lock:
                        self.errors += 1
        finally:
            self._exit()
            for w in (writer, target_writer):
                if w is not None:
                    self._transports.discard(w.transport)
                    w.close()

    async def _hang(self, reader: asyncio.StreamReader) -> None:
        """Nothing passes: read and drop what the app sends until closed (or timed out)."""

        async def swallow() -> None:
            while await reader.read(_READ):
                pass

        if self.timeout_after is None:
            with contextlib.suppress(ConnectionError):
                await swallow()
            return
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
            await asyncio.wait_for(swallow(), self._sample(self.timeout_after))

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        latency: Latency,
        rate: float | None,
        *,
        up: bool,
        client: int | None = None,
    ) -> None:
        """Relay one direction: each chunk leaves a sampled delay after it arrived, in order.

        A chunk's delay is charged to the request that last sent on the app's connection
        (from port *client*), when the app's own code sent it (see ``egress.request_on``).
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, float, bytes]] = asyncio.Queue(_QUEUE)
        delays = not (isinstance(latency, ConstantLatency) and latency.ms == 0)

        async def read() -> None:
            last_due = 0.0
            while True:
                data = await reader.read(_READ)
                now = loop.time()
                if data and delays:
                    last_due = max(last_due, now + self._sample(latency))
                else:
                    last_due = max(last_due, now)
                await queue.put((now, last_due, data))
                if not data:
                    return

        reading = asyncio.ensure_future(read())
        try:
            free_at = 0.0
            while True:
                arrived, due, data = await queue.get()
                if data is _EOF or not data:
                    if writer.can_write_eof():
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                    return
                if rate is not None:
                    free_at = max(free_at, loop.time(), due) + len(data) / rate
                    due = free_at
                pause = due - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                waited = loop.time() - arrived
                if (delays or rate is not None) and client is not None:
                    # Charged before the chunk leaves: once the app has it, the request
                    # may end and its breakdown be read.
                    charge_to(request_on(client), "proxy", self.label, waited)
                writer.write(data)
                with self._lock:
                    if up:
                        self.bytes_up += len(data)
                        self.chunks_up += 1
                    else:
                        self.bytes_down += len(data)
                        self.chunks_down += 1
                    if delays or rate is not None:
                        self._waits_us.append(round(waited * 1_000_000))
                await writer.drain()
        finally:
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading

    # -- figures

    def _reset(self) -> None:
        with self._lock:
            self.calls = self.timeouts = self.resets = self.errors = 0
            self.bytes_up = self.bytes_down = self.chunks_up = self.chunks_down = 0
            self.max_in_flight = self.in_flight
            self._waits_us = array("q")

    @property
    def waited_s(self) -> float:
        """Total time chunks spent delayed, in seconds."""
        return sum(self._waits_us) / 1_000_000

    def stats(self) -> dict[str, Any]:
        """The proxy's counts and the delay its chunks waited (ms), as a JSON-ready dict."""
        with self._lock:
            ordered = sorted(self._waits_us)
            counts = {
                "calls": self.calls,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "errors": self.errors,
                "timeouts": self.timeouts,
                "resets": self.resets,
                "bytes_up": self.bytes_up,
                "bytes_down": self.bytes_down,
                "chunks_up": self.chunks_up,
                "chunks_down": self.chunks_down,
            }
        return {
            "kind": "proxy",
            "target": f"{self.target[0]}:{self.target[1]}",
            "address": self.host_port,
            "latency": self.latency.describe(),
            "upstream_latency": self.upstream_latency.describe(),
            **counts,
            "chunks_delayed": len(ordered),
            "waited_ms_total": sum(ordered) / 1000.0,
            "waited_ms_mean": (sum(ordered) / len(ordered) / 1000.0) if ordered else 0.0,
            "waited_ms_p50": quantile(ordered, 0.5) / 1000.0 if ordered else 0.0,
            "waited_ms_p99": quantile(ordered, 0.99) / 1000.0 if ordered else 0.0,
            "waited_ms_max": ordered[-1] / 1000.0 if ordered else 0.0,
        }

    def __repr__(self) -> str:
        return f"<Proxy {self.label} at {self.host_port} {self.latency} calls={self.calls}>"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close the app's side with a TCP RST (SO_LINGER 0), as a peer that reset it."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
