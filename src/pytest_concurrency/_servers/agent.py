"""Inside a server's worker process: the probes, started and stopped by the storm's process.

:func:`wrap` puts a thin ASGI middleware around the app a server is handed. On the
first call it sees in a process (lifespan, or the first request when the server runs
no lifespan) it notes the running event loop and starts a daemon thread that connects
to the control socket the storm's process listens on. Over that connection the storm
says when a round's window opens and closes; the thread starts the same
:class:`LoopMonitor` and :class:`ThreadPoolProbe` as an in-process storm on the server's
loop (``asyncio.run_coroutine_threadsafe``) and sends their figures back as JSON.

Between windows nothing runs but the middleware's one comparison per call; the thread
sleeps in a blocking read, so it takes no interpreter lock from the server either.

Messages are JSON objects, one a line. The worker sends ``{"hello": {...}}`` once, then
``{"started": n}`` / ``{"report": n, "loop_lag": ..., "thread_pools": [...],
"attribution": ...}`` or
``{"failed": n, "error": "..."}``; the storm sends ``{"op": "start"|"stop", "round": n}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
import traceback
from typing import Any

__all__ = ["ENV", "SERVER_INFRASTRUCTURE", "ProbeMiddleware", "wrap"]

#: Environment variable naming the control socket of the storm's process.
ENV = "PYTEST_STORM_PROBES"
#: Server packages never blamed for a stall (on top of the loop monitor's own list).
SERVER_INFRASTRUCTURE = frozenset(
    # The bootstrap runs as __main__ (python -m), so do multiprocessing's spawned workers:
    # their frames sit below every callback of a server that runs its loop itself.
    {"__main__", "granian", "gunicorn", "httptools", "wsproto", "click", "multiprocessing"}
)
#: Same threshold as an in-process storm's monitor.
THRESHOLD_MS = 5.0


def wrap(app: Any) -> Any:
    """*app* behind the probe middleware when the storm asked for probes, else *app* itself."""
    path = os.environ.get(ENV)
    if not path:
        return app
    from .._apps import as_asgi3

    return ProbeMiddleware(as_asgi3(app), path)


class ProbeMiddleware:
    """ASGI middleware that starts this process's probe agent on its first call.

    While a window is open it also opens a ledger per HTTP request and keeps the request's
    time in the app and its waits, for the breakdown of the window's requests.
    """

    def __init__(self, app: Any, path: str) -> None:
        self.app = app
        self.path = path
        # Per process: gunicorn imports the app in its master and forks the workers.
        self._pid = 0
        self._agent: _Agent | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._agent = _Agent(self.path, asyncio.get_running_loop())
            self._agent.start()
        book = self._agent.requests if self._agent is not None else None
        if book is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await book.serve(self.app, scope, receive, send)


class _Requests:
    """The requests one window served in this process: their time in the app and waits."""

    def __init__(self, progress: list[float] | None = None) -> None:
        from .._metrics.records import Recorder

        #: The loop monitor's progress cell: each step of a request writes its end there.
        self.progress = progress
        self.origin = time.perf_counter()
        self.rec = Recorder()
        self.labels: list[str] = []
        self._label_index: dict[str, int] = {}

    async def serve(self, app: Any, scope: Any, receive: Any, send: Any) -> None:
        from .._probes.attribution import OwnSteps, ledger

        status = [0]
        # When the last byte of the response went out: the client's request ends there,
        # however long the app's coroutine runs on (a framework's teardown that waits for
        # the loop, a background task), so its time in the app ends there too.
        answered: list[float] = []

        async def sending(message: Any) -> None:
            kind = message.get("type")
            if kind == "http.response.start":
                status[0] = int(message.get("status") or 0)
            await send(message)
            if kind == "http.response.body" and not message.get("more_body", False):
                answered.append(time.perf_counter())

        with ledger() as book:
            started = time.perf_counter()
            try:
                await OwnSteps(app(scope, receive, sending), book, self.progress)
            finally:
                ended = answered[0] if answered else time.perf_counter()
                self._record(scope, started, ended - started, status[0], book)

    def _record(self, scope: Any, started: float, took: float, status: int, book: Any) -> None:
        rec = self.rec
        label = f"{scope.get('method', '?')} {scope.get('path', '?')}"
        index = self._label_index.get(label)
        if index is None:
            index = self._label_index[label] = len(self.labels)
            self.labels.append(label)
        rec.start.append(int((started - self.origin) * 1e6))
        rec.latency.append(int(took * 1e6))
        rec.ttfb.append(-1)
        rec.queue.append(-1)
        rec.status.append(status)
        rec.endpoint.append(min(index, 65535))
        rec.error.append(0)
        if book.entries:
            rec.add_waits(book.entries, self.origin)

    def breakdown(self, stalls: list[tuple[float, float]]) -> dict[str, Any] | None:
        """The breakdown of the window's requests (their time in the app), as plain data."""
        from array import array

        from .._metrics.breakdown import attribute

        rec = self.rec
        found = attribute(
            rec,
            array("I", range(len(rec))),
            origin=self.origin,
            stalls=stalls,
            pool=None,
            labels=self.labels,
            measure_from_us=0,
        )
        return found.to_dict() if found is not None else None


def _loop_kind(loop: asyncio.AbstractEventLoop) -> str:
    module = type(loop).__module__.partition(".")[0]
    return "uvloop" if module == "uvloop" else module or "asyncio"


class _Agent:
    """The thread that talks to the storm's process and runs the probes on the loop."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self.loop = loop
        self._probes: tuple[Any, Any, Any] | None = None
        #: The open window's requests (None between windows: nothing is kept then).
        self.requests: _Requests | None = None

    def start(self) -> None:
        threading.Thread(target=self._run, name="pytest-storm probe agent", daemon=True).start()

    def _run(self) -> None:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.path)
        except OSError as exc:
            # The storm ended before this worker started: nothing to report to.
            print(f"pytest-storm: probe channel {self.path}: {exc}", file=sys.stderr)
            return
        with sock, sock.makefile("rb") as lines:
            self._send(sock, {"hello": {"pid": os.getpid(), "loop": _loop_kind(self.loop)}})
            for line in lines:
                message = json.loads(line)
                number = message.get("round")
                try:
                    if message.get("op") == "start":
                        self._call(self._start())
                        self._send(sock, {"started": number})
                    elif message.get("op") == "stop":
                        figures = self._call(self._stop())
                        self._send(sock, {"report": number, **figures})
                except Exception as exc:
                    detail = "".join(traceback.format_exception_only(exc)).strip()
                    self._send(sock, {"failed": number, "error": detail})
        # The storm's process closed the channel: no window stays open.
        if self._probes is not None and not self.loop.is_closed():
            self._call(self._stop())

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    @staticmethod
    def _send(sock: socket.socket, message: dict[str, Any]) -> None:
        sock.sendall(json.dumps(message).encode() + b"\n")

    async def _start(self) -> None:
        from .._probes.connpools import ConnectionPoolProbe
        from .._probes.loop import LoopMonitor
        from .._probes.pools import ThreadPoolProbe

        if self._probes is not None:
            await self._stop()
        connections = ConnectionPoolProbe().start()
        monitor = LoopMonitor(threshold_ms=THRESHOLD_MS, infrastructure=SERVER_INFRASTRUCTURE)
        probe = ThreadPoolProbe()
        try:
            await monitor.start()
            try:
                await probe.start()
            except BaseException:
                await monitor.stop()
                raise
        except BaseException:
            connections.stop()
            raise
        self._probes = (monitor, probe, connections)
        self.requests = _Requests(monitor.progress)

    async def _stop(self) -> dict[str, Any]:
        if self._probes is None:
            raise RuntimeError("no probe window was open in this worker")
        monitor, probe, connections = self._probes
        self._probes = None
        requests, self.requests = self.requests, None
        try:
            try:
                pools = await probe.stop()
            finally:
                lag = await monitor.stop()
        finally:
            held = connections.stop()
        return {
            "loop_lag": lag.to_dict(histogram=True),
            "thread_pools": [pool.to_dict() for pool in pools],
            "connection_pools": [pool.to_dict() for pool in held],
            "attribution": requests.breakdown(monitor.stall_spans()) if requests else None,
        }
