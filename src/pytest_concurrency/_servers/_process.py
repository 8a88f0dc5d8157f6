"""Server processes on loopback: spec, start (free port, readiness), describe, stop, registry."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Literal

from .._errors import ConfigError, StormError
from .._optional import installed, require
from . import agent
from ._target import PATH_ENV
from .channel import ProbeChannel

__all__ = [
    "SERVER_KINDS",
    "RunningServer",
    "ServerSpec",
    "live_servers",
    "max_workers",
    "serve",
]

ServerKind = Literal["uvicorn", "hypercorn", "granian", "gunicorn"]
SERVER_KINDS: tuple[ServerKind, ...] = ("uvicorn", "hypercorn", "granian", "gunicorn")

#: Seconds between SIGTERM to the process group and SIGKILL.
STOP_GRACE = 3.0
_TAIL_LINES = 20
_PORT_ATTEMPTS = 3
#: Pending connections the handed-over socket queues before the server accepts them.
_BACKLOG = 2048
#: Servers that take a listening socket from us (uvicorn, hypercorn and gunicorn take a
#: file descriptor); granian binds its own port, checked once it answers.
_FD_KINDS = ("uvicorn", "hypercorn", "gunicorn")
#: Worker processes per core a server may be given: past a few per core they only queue for
#: the CPU, and a typo (workers=1000) would fork-bomb the machine.
WORKERS_PER_CORE = 4
#: Worker processes allowed whatever the core count (a small machine still compares 1 to 8).
_MIN_WORKER_CAP = 8
#: Threads in one server's whole pool (workers × threads).
MAX_SERVER_THREADS = 4096


def cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def max_workers() -> int:
    """Most worker processes a server may be given on this machine."""
    return max(_MIN_WORKER_CAP, WORKERS_PER_CORE * cores())


@dataclass(frozen=True)
class ServerSpec:
    """Which server runs which app, how many workers and threads, from which directory and path."""

    kind: ServerKind
    app: str
    interface: Literal["asgi", "wsgi"] = "asgi"
    workers: int = 1
    threads: int = 1
    cwd: str = field(default_factory=os.getcwd)
    sys_path: tuple[str, ...] = field(default_factory=lambda: tuple(sys.path))
    env: Mapping[str, str] = field(default_factory=dict)
    setup: str | None = None
    #: Run the loop monitor and thread-pool probe inside each worker (ASGI apps only).
    probes: bool = False

    def validate(self, origin: str = "server=", pool_origin: str | None = None) -> None:
        """Raise :class:`ConfigError` for a spec that cannot start, before anything runs.

        *pool_origin* is where ``workers`` and ``threads`` came from, when not *origin*.
        """
        if self.kind not in SERVER_KINDS:
            raise ConfigError(
                f"server={self.kind!r} (from {origin}) must be one of {', '.join(SERVER_KINDS)} "
                "or a loopback URL such as 'http://127.0.0.1:8000'"
            )
        require(tuple(_modules_needed(self)), "servers", f"server={self.kind!r} (from {origin})")
        module, sep, attr = self.app.partition(":")
        if not sep or not module or not attr:
            raise ConfigError(
                f"app={self.app!r} (from {origin}) must be an import string 'module:attr' "
                "that the server process can import"
            )
        if self.interface not in ("asgi", "wsgi"):
            raise ConfigError(
                f"interface={self.interface!r} (from {origin}) must be 'asgi' or 'wsgi'"
            )
        for name in ("workers", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} (from {origin}) must be a whole number ≥ 1")
        if self.workers > (cap := max_workers()):
            raise ConfigError(
                f"workers={self.workers} (from {pool_origin or origin}) is more than {cap} "
                "worker processes, "
                f"the most for a server here ({WORKERS_PER_CORE} × {cores()} cores, at least "
                f"{_MIN_WORKER_CAP}): past a few per core, workers only queue for the CPU"
            )
        if self.workers * self.threads > MAX_SERVER_THREADS:
            raise ConfigError(
                f"workers={self.workers} × threads={self.threads} (from {pool_origin or origin}) is "
                f"{self.workers * self.threads:,} threads, more than the {MAX_SERVER_THREADS:,} "
                "a server may be given"
            )
        if self.threads > 1 and self.kind in ("uvicorn", "hypercorn"):
            raise ConfigError(
                f"threads={self.threads} (from {origin}) has no meaning for {self.kind}; "
                "use gunicorn (gthread workers) or granian for a WSGI thread pool"
            )

    def describe(self) -> str:
        """One line for reports, e.g. ``gunicorn, 2 workers × 4 threads (gthread)``."""
        workers = f"{self.workers} worker{'s' if self.workers != 1 else ''}"
        if self.kind == "uvicorn":
            loop = "uvloop" if installed("uvloop") else "asyncio"
            http = "httptools" if installed("httptools") else "h11"
            wsgi = ", WSGI" if self.interface == "wsgi" else ""
            return f"uvicorn, {workers} ({loop}, {http}{wsgi})"
        if self.kind == "gunicorn":
            if self.interface == "asgi":
                return f"gunicorn + uvicorn worker, {workers}"
            if self.threads > 1:
                return f"gunicorn, {workers} × {self.threads} threads (gthread)"
            return f"gunicorn, {self.workers} sync worker{'s' if self.workers != 1 else ''}"
        if self.kind == "granian":
            threads = f" × {self.threads} threads" if self.interface == "wsgi" else ""
            return f"granian, {workers}{threads} ({self.interface.upper()})"
        return f"hypercorn, {workers} ({self.interface.upper()})"


def _modules_needed(spec: ServerSpec) -> list[str]:
    # httptools parses the responses on the storm's side (the HTTP client driver).
    needed = [spec.kind, "psutil", "httptools"]
    if spec.kind == "gunicorn" and spec.interface == "asgi":
        needed.append("uvicorn")
    return needed


class RunningServer:
    """A server process group started by :func:`serve`: its URL, its processes, its stop."""

    def __init__(
        self,
        spec: ServerSpec,
        process: subprocess.Popen[bytes],
        port: int,
        log: IO[bytes],
        probes: ProbeChannel | None = None,
    ):
        self.spec = spec
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        #: The channel to the probes inside the workers (``spec.probes`` and an ASGI app).
        self.probes = probes
        self._log = log
        self._stopped = False
        self._lock = threading.Lock()

    def describe(self) -> str:
        """What runs, e.g. ``uvicorn, 1 worker (uvloop, httptools)``."""
        return self.spec.describe()

    def pids(self) -> list[int]:
        """The server's whole process tree, leader first (empty once it has stopped)."""
        import psutil

        try:
            leader = psutil.Process(self.process.pid)
            if leader.status() == psutil.STATUS_ZOMBIE:
                return []
            return [leader.pid, *(child.pid for child in leader.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def stderr_tail(self, lines: int = _TAIL_LINES) -> str:
        """The last *lines* lines the server wrote to stderr and stdout."""
        try:
            self._log.flush()
            self._log.seek(0)
            text = self._log.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    @property
    def alive(self) -> bool:
        """True while the leader runs."""
        return self.process.poll() is None

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM to the process group, SIGKILL after *grace* seconds; reap; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            _stop_group(self.process, grace)
        finally:
            _registry.discard(self)
            if self.probes is not None:
                self.probes.close()
            with contextlib.suppress(OSError):
                self._log.close()

    def __repr__(self) -> str:
        return f"<RunningServer {self.describe()} at {self.url} pid={self.process.pid}>"


def _stop_group(process: subprocess.Popen[bytes], grace: float) -> None:
    group = process.pid  # the leader of a new session leads its own process group
    # Taken before the signal: once the leader has gone, its orphans no longer show as
    # its children, and whoever adopts them may never reap them.
    members = _tree(process.pid)
    deadline = time.monotonic() + grace
    try:
        # The leader first: a supervisor (uvicorn's, gunicorn's master) stops its own
        # workers in order. Workers that die under it instead make uvicorn's supervisor
        # wait out a health check on each before it looks at its own signal.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, signal.SIGTERM)
        if _wait_stopped(process, [], time.monotonic() + grace / 2) and not _any_running(members):
            return
        # Then the whole group: workers whose supervisor left without them, or a
        # supervisor that has not stopped them in half the grace.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGTERM)
        if _wait_stopped(process, members, deadline):
            return
    finally:
        # Whatever is left of the group (a worker that ignored SIGTERM, one started after
        # the snapshot, an interrupted wait) is killed; the leader is reaped so that no
        # zombie stays either.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)


def _wait_stopped(process: subprocess.Popen[bytes], members: list[int], deadline: float) -> bool:
    """Wait until the leader is reaped and no other member runs; False at *deadline*."""
    while True:
        if process.poll() is not None and not _any_running(members):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _tree(leader: int) -> list[int]:
    """The leader's descendants now (psutil, which every real server needs)."""
    import psutil

    try:
        return [child.pid for child in psutil.Process(leader).children(recursive=True)]
    except psutil.Error:
        return []


def _any_running(pids: list[int]) -> bool:
    """True while one of *pids* runs; a zombie has finished.

    ``os.killpg(group, 0)`` would count zombies too: an orphaned worker is adopted by
    PID 1 or a subreaper, which in a container may never reap it, and the stop would
    then wait out its whole grace period.
    """
    import psutil

    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            continue
    return False


class _Registry:
    """Servers still running, so that an interpreter exit stops them as a last resort."""

    def __init__(self) -> None:
        self._servers: list[RunningServer] = []
        self._lock = threading.Lock()
        self._hooked = False

    def add(self, server: RunningServer) -> None:
        with self._lock:
            self._servers.append(server)
            if not self._hooked:
                atexit.register(self.stop_all)
                self._hooked = True

    def discard(self, server: RunningServer) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._servers.remove(server)

    def list(self) -> list[RunningServer]:
        with self._lock:
            return list(self._servers)

    def stop_all(self) -> None:
        for server in reversed(self.list()):
            server.stop(grace=1.0)


_registry = _Registry()


def live_servers() -> list[RunningServer]:
    """Servers started by :func:`serve` and not stopped yet."""
    return _registry.list()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listener() -> socket.socket:
    """A socket listening on a free loopback port, to be handed to the server process.

    Bound here, the port can never be taken by another process between its choice and
    the server's bind: whatever answers on it is the server.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(_BACKLOG)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def _command(spec: ServerSpec, port: int, fd: int | None = None) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "pytest_concurrency._servers.bootstrap",
        "--kind",
        spec.kind,
        "--app",
        spec.app,
        "--interface",
        spec.interface,
        "--port",
        str(port),
        "--workers",
        str(spec.workers),
        "--threads",
        str(spec.threads),
        "--parent-pid",
        str(os.getpid()),
    ]
    if spec.setup:
        command += ["--setup", spec.setup]
    if fd is not None:
        command += ["--fd", str(fd)]
    return command


def _environment(spec: ServerSpec, probes: ProbeChannel | None = None) -> dict[str, str]:
    env = {**os.environ, **spec.env}
    if probes is not None:
        env[agent.ENV] = probes.path
    else:
        env.pop(agent.ENV, None)
    caller = [p or spec.cwd for p in spec.sys_path]
    env[PATH_ENV] = json.dumps(caller)
    # The bootstrap module itself must be importable before it can set sys.path up.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    previous = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([package_root] + ([previous] if previous else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(spec: ServerSpec, startup_timeout: float) -> RunningServer:
    last_error: StormError | None = None
    for _attempt in range(_PORT_ATTEMPTS):
        listener = _listener() if spec.kind in _FD_KINDS else None
        port = listener.getsockname()[1] if listener is not None else _free_port()
        # Closed by RunningServer.stop(); the server writes to it for its whole life.
        log = tempfile.TemporaryFile(prefix="pytest-storm-server-")  # noqa: SIM115
        # A WSGI app runs on the server's threads or processes with no event loop of its
        # own to watch, and none of the thread pools the probe knows.
        probes = (
            ProbeChannel(spec.kind, spec.workers)
            if spec.probes and spec.interface == "asgi"
            else None
        )
        try:
            fd = listener.fileno() if listener is not None else None
            process = subprocess.Popen(
                _command(spec, port, fd),
                cwd=spec.cwd,
                env=_environment(spec, probes),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(fd,) if fd is not None else (),
            )
        except BaseException:
            log.close()
            if probes is not None:
                probes.close()
            raise
        finally:
            # The server holds its own copy: once it has gone, the port is free again.
            if listener is not None:
                listener.close()
        server = RunningServer(spec, process, port, log, probes)
        _registry.add(server)
        try:
            _wait_ready(server, startup_timeout)
        except _PortTaken as exc:
            server.stop(grace=1.0)
            last_error = exc
            continue
        except StormError as exc:
            tail = server.stderr_tail()
            server.stop(grace=1.0)
            # Another process took the port between our probe and the server's bind.
            if "address already in use" in tail.lower() or "errno 98" in tail.lower():
                last_error = exc
                continue
            raise
        except BaseException:
            server.stop(grace=1.0)
            raise
        return server
    if last_error is None:  # pragma: no cover - the loop runs at least once
        raise StormError("no server was started")
    raise last_error


class _PortTaken(StormError):
    """Something other than the server answered on its port."""


def _wait_ready(server: RunningServer, timeout: float) -> None:
    """Return once the server itself answers on its port; raise StormError otherwise.

    The probe never sends the app a request (a slow ``/`` must not fail the start): it
    sends a request line no server accepts, which the server answers itself (400) or
    closes. The socket was handed to the server (uvicorn, hypercorn, gunicorn), so the
    answer is the server's; granian binds its own port, so its process must hold the
    listening socket before an answer counts.
    """
    name = server.describe()
    deadline = time.monotonic() + timeout
    while True:
        code = server.process.poll()
        if code is not None:
            raise StormError(
                f"server {name} for {server.spec.app} exited with code {code} before it "
                f"answered on {server.url}; its output ends with:\n{_indent(server.stderr_tail())}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StormError(
                f"server {name} for {server.spec.app} did not answer HTTP on {server.url} within "
                f"{timeout:g} s (startup_timeout); its output ends with:\n"
                f"{_indent(server.stderr_tail())}"
            )
        if _answers(server.port, min(remaining, 2.0)):
            if server.spec.kind in _FD_KINDS or _listens(server, wait=1.0):
                return
            raise _PortTaken(
                f"another process answered on {server.url} before {name} listened there"
            )
        time.sleep(0.05)


#: A request line no HTTP server accepts: answered by the server itself, never the app.
_PROBE = b"\x01 * HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def _answers(port: int, timeout: float) -> bool:
    """True once a connection to *port* is answered (any HTTP status) or closed by its peer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(_PROBE)
            reply = sock.recv(16)
            return reply == b"" or reply.startswith(b"HTTP/")
    except OSError:
        return False


def _listens(server: RunningServer, wait: float = 0.0) -> bool:
    """True when a process of the server's tree holds a listening socket on its port."""
    import psutil

    deadline = time.monotonic() + wait
    while True:
        for pid in server.pids():
            try:
                connections = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == server.port
                for c in connections
            ):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in (text or "(nothing)").splitlines())


@contextlib.contextmanager
def serve(spec: ServerSpec, *, startup_timeout: float = 30.0) -> Iterator[RunningServer]:
    """Start *spec* on 127.0.0.1, wait until it answers HTTP, and stop it on every exit path.

    Raises :class:`ConfigError` before anything starts when the server is not installed,
    and :class:`StormError` (with the tail of the server's stderr) when it exits or does
    not answer within *startup_timeout* seconds.
    """
    spec.validate()
    server = _start(spec, startup_timeout)
    try:
        yield server
    finally:
        server.stop()
