"""The storm's end of the probe channel: open and close a round's window in every worker.

A Unix socket in a directory this process owns; each worker process of the server
connects to it once (see :mod:`.agent`). A connection per process is what makes each
worker reachable: an HTTP request reaches whichever worker the kernel hands it to, a
file would have to be polled, while a connection is told at once and its end says the
worker has gone. Opening a window waits until every expected worker has connected and
started its probes, so that no request of the round is sent before they run; closing
it collects each worker's figures. A worker that has gone, fails or misses the deadline
is named in :attr:`ProbeReport.missing`, and the round's figures are then not measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import selectors
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .._model.extras import ServerProbes
from .._model.probes import ConnectionPoolUsage, LoopLag, PoolUsage, merge_loop_lags
from .._model.result import Attribution

__all__ = ["ProbeChannel", "ProbeReport"]

#: Seconds to wait for every worker to connect and start its probes.
OPEN_TIMEOUT = 10.0
#: Seconds to wait for the figures once the round ended: a worker whose loop is still
#: held by queued blocking calls answers once they are done.
CLOSE_TIMEOUT = 30.0


@dataclass
class _Worker:
    conn: socket.socket
    pid: int | None = None
    loop: str = "?"
    buffer: bytes = b""
    gone: bool = False
    started: int = -1
    reports: dict[int, dict[str, Any]] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"pid {self.pid}" if self.pid is not None else "a worker"


@dataclass
class ProbeReport:
    """One round's figures from the server's worker processes, or why there are none."""

    where: str
    loop_lags: dict[int, LoopLag] = field(default_factory=dict)
    pools: dict[int, list[PoolUsage]] = field(default_factory=dict)
    connections: dict[int, list[ConnectionPoolUsage]] = field(default_factory=dict)
    #: Each worker's breakdown of the requests it served in the window (time in the app).
    attributions: dict[int, Attribution] = field(default_factory=dict)
    #: Worker (``pid 123``, or how many never connected) -> why it gave no figures.
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when every worker reported."""
        return bool(self.loop_lags) and not self.missing

    @property
    def reason(self) -> str | None:
        """Why the figures are not measured (None when they are)."""
        if self.complete:
            return None
        if not self.missing:
            return "no worker process reported"
        return "; ".join(f"{who} {why}" for who, why in self.missing.items())

    @property
    def loop_lag(self) -> LoopLag | None:
        """The workers' loop lag merged (None unless every worker reported)."""
        return merge_loop_lags(list(self.loop_lags.values())) if self.complete else None

    @property
    def thread_pools(self) -> list[PoolUsage]:
        """Every worker's pools, named by worker when there are several."""
        if not self.complete:
            return []
        if len(self.pools) == 1:
            return next(iter(self.pools.values()))
        return [
            dataclasses.replace(pool, name=f"{pool.name} (worker pid {pid})")
            for pid, usages in sorted(self.pools.items())
            for pool in usages
        ]

    @property
    def attribution(self) -> Attribution | None:
        """The workers' breakdowns merged (None unless every worker reported)."""
        if not self.complete or not self.attributions:
            return None
        return Attribution.merged(list(self.attributions.values()), side="server")

    @property
    def connection_pools(self) -> list[ConnectionPoolUsage]:
        """Every worker's connection pools, named by worker when there are several."""
        if not self.complete:
            return []
        if len(self.connections) == 1:
            return next(iter(self.connections.values()))
        return [
            dataclasses.replace(pool, name=f"{pool.name} (worker pid {pid})")
            for pid, usages in sorted(self.connections.items())
            for pool in usages
        ]

    def record(self) -> ServerProbes:
        """Whether the probes measured, and why not, as a result keeps it."""
        return ServerProbes(
            where=self.where,
            workers=tuple(sorted(self.loop_lags)),
            measured=self.complete,
            missing=dict(self.missing),
            reason=self.reason,
        )


class ProbeChannel:
    """Listens for the workers of one server; opens and closes probe windows in all of them.

    *expected* is how many worker processes the server runs the app in; *server* names
    them in reports (``uvicorn``). Methods block, and are called from one thread at a time.
    """

    def __init__(self, server: str, expected: int) -> None:
        self.server = server
        self.expected = expected
        self._dir = tempfile.mkdtemp(prefix="pytest-storm-probes-")
        self.path = os.path.join(self._dir, "control.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._workers: list[_Worker] = []
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._round = 0
        self._members: list[_Worker] = []
        self._missing: dict[str, str] = {}
        self._thread = threading.Thread(
            target=self._serve, name="pytest-storm probe channel", daemon=True
        )
        self._thread.start()

    # -- the window ------------------------------------------------------------------------

    def open_window(self, timeout: float = OPEN_TIMEOUT) -> None:
        """Start the probes in every worker; return once all have started or *timeout* passed."""
        self._round += 1
        number = self._round
        deadline = time.monotonic() + timeout
        with self._changed:
            self._changed.wait_for(
                lambda: len(self._live()) >= self.expected, max(0.0, deadline - time.monotonic())
            )
            members = self._live()
        self._missing = {}
        unconnected = self.expected - len(members)
        if unconnected > 0:
            self._missing[f"{unconnected} of {self.expected} worker(s)"] = (
                f"never connected to the probe channel within {timeout:g} s (the server "
                "called the app in fewer processes than it was started with)"
            )
        for worker in members:
            self._send(worker, {"op": "start", "round": number})
        with self._changed:
            self._changed.wait_for(
                lambda: all(w.gone or w.started == number or number in w.failures for w in members),
                max(0.0, deadline - time.monotonic()),
            )
            self._members = []
            for worker in members:
                if worker.started == number:
                    self._members.append(worker)
                else:
                    self._missing[worker.name] = _absence(worker, number, "start its probes")

    def close_window(self, timeout: float = CLOSE_TIMEOUT) -> ProbeReport:
        """Stop the probes of the open window and collect every worker's figures."""
        number = self._round
        members, self._members = self._members, []
        for worker in members:
            self._send(worker, {"op": "stop", "round": number})
        deadline = time.monotonic() + timeout
        with self._changed:
            self._changed.wait_for(
                lambda: all(w.gone or number in w.reports or number in w.failures for w in members),
                max(0.0, deadline - time.monotonic()),
            )
        report = ProbeReport(self.describe(members), missing=dict(self._missing))
        for worker in members:
            figures = worker.reports.pop(number, None)
            if figures is None or worker.pid is None:
                report.missing[worker.name] = _absence(worker, number, "send its figures", timeout)
                continue
            report.loop_lags[worker.pid] = LoopLag.from_dict(figures["loop_lag"])
            if figures.get("attribution"):
                report.attributions[worker.pid] = Attribution.from_dict(figures["attribution"])
            report.pools[worker.pid] = [
                PoolUsage.from_dict(pool) for pool in figures.get("thread_pools") or []
            ]
            report.connections[worker.pid] = [
                ConnectionPoolUsage.from_dict(pool)
                for pool in figures.get("connection_pools") or []
            ]
        return report

    @property
    def window_open(self) -> bool:
        """True between an :meth:`open_window` that started probes and its :meth:`close_window`."""
        return bool(self._members)

    def worker_pids(self) -> list[int]:
        """Process ids of the workers connected now."""
        with self._changed:
            return [w.pid for w in self._live() if w.pid is not None]

    def describe(self, workers: list[_Worker] | None = None) -> str:
        """``inside the uvicorn worker process (pid 123, uvloop)``."""
        workers = self._live() if workers is None else workers
        if not workers:
            return f"inside the {self.server} worker processes (none reported)"
        pids = ", ".join(str(w.pid) for w in workers)
        loops = sorted({w.loop for w in workers})
        plural = "es" if len(workers) != 1 else ""
        pid = "pids" if len(workers) != 1 else "pid"
        return (
            f"inside the {self.server} worker process{plural} ({pid} {pids}, "
            f"{'/'.join(loops)} event loop)"
        )

    def close(self) -> None:
        """Stop listening and drop every connection (the agents stop their probes)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join(2.0)
        with self._changed:
            workers = list(self._workers)
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.close()
        with contextlib.suppress(OSError):
            self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- the connections -------------------------------------------------------------------

    def _live(self) -> list[_Worker]:
        return [w for w in self._workers if not w.gone and w.pid is not None]

    def _send(self, worker: _Worker, message: dict[str, Any]) -> None:
        try:
            worker.conn.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            with self._changed:
                worker.gone = True
                self._changed.notify_all()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, None)
        try:
            while not self._closed.is_set():
                for key, _ in selector.select(timeout=0.1):
                    if key.data is None:
                        self._accept(selector)
                    else:
                        self._read(selector, key.data)
        finally:
            selector.close()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, OSError):
            return
        conn.setblocking(True)
        worker = _Worker(conn)
        with self._changed:
            self._workers.append(worker)
        selector.register(conn, selectors.EVENT_READ, worker)

    def _read(self, selector: selectors.BaseSelector, worker: _Worker) -> None:
        try:
            data = worker.conn.recv(1 << 16)
        except OSError:
            data = b""
        with self._changed:
            if not data:
                worker.gone = True
                selector.unregister(worker.conn)
                self._changed.notify_all()
                return
            worker.buffer += data
            *lines, worker.buffer = worker.buffer.split(b"\n")
            for line in lines:
                self._handle(worker, json.loads(line))
            self._changed.notify_all()

    @staticmethod
    def _handle(worker: _Worker, message: dict[str, Any]) -> None:
        if "hello" in message:
            worker.pid = int(message["hello"]["pid"])
            worker.loop = str(message["hello"].get("loop", "?"))
        elif "started" in message:
            worker.started = int(message["started"])
        elif "report" in message:
            worker.reports[int(message["report"])] = message
        elif "failed" in message:
            worker.failures[int(message["failed"])] = str(message.get("error"))


def _absence(worker: _Worker, number: int, what: str, timeout: float | None = None) -> str:
    if number in worker.failures:
        return f"could not {what}: {worker.failures[number]}"
    if worker.gone:
        return f"stopped before it could {what} (its connection closed: the process exited or was killed)"
    wait = f" within {timeout:g} s" if timeout is not None else ""
    return f"did not {what}{wait} (its event loop was still held)"
