"""Declared routes served over loopback by a process of their own, for every client but httpx.

The loopback upstream (``loopback``) answers from a thread of the storm's process, so each
answer costs the storm's own clients the interpreter lock: at 1,000 concurrent calls its
simulated waits came back 130 to 350 ms late. This server answers the same routes from a
child process started for the storm (:func:`main`, run by ``python -c``),
with an ``asyncio.Protocol`` per connection, httptools' parser when it is installed (the
``servers`` extra) or h11's, answers of static routes made once as bytes, and each wait a
timer (``loop.call_later``) rather than a task. The child declares the routes again from
their pickled arguments, so only routes without a ``handler`` are served this way: a
handler's code, and what it touches, live in the storm's process, where the thread answers
them. The child starts the generators the routes draw from where this process's stand (so
a seeded storm draws the same latencies), and each collect hands them back: this process
draws on from where the child stopped, as if it had drawn those latencies itself (unless it
drew from a generator meanwhile, whose own draws are kept).

Figures come back over a Unix socket pair: :meth:`LoopbackProcess.collect` (called at the end
of every round, and on stop) asks the child for what its routes counted since it last asked
(calls, errors, timeouts, waits, in-flight peaks, undeclared calls) and each simulated wait's
error, measured as the time its answer is written minus the time its wait began (when the
connection took up its request: one pipelined behind another waits from the other's answer); they are added to the storm process's ``Route`` objects and to
``wait_recorder``. The in-flight peak of a route answered both in-process and here is the
larger of the two peaks (a lower bound on their sum). The child ends when that socket
closes: on :meth:`LoopbackProcess.stop`, and on any end of the storm's process, killed
included (it is in a session of its own, so a Ctrl-C reaches only the storm, which stops it).

A route declared while the child runs (from the app's first request, from a hook) is sent to
it over the same socket, and answered once the child has it: a route the child can answer
by itself as above; any other (a handler's, or one whose latency its interpreter cannot
import) by a thread of the storm's process (``loopback``) started for it, to which the child
relays those calls, one connection each, so that their handler runs, and they are counted,
where the routes live.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import http
import importlib
import os
import pickle
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import unquote

from .._errors import StormError
from .loopback import LoopbackUpstream

__all__ = ["LoopbackProcess", "collect_live", "portable"]

_START_TIMEOUT = 30.0
_COLLECT_TIMEOUT = 10.0
_STOP_TIMEOUT = 3.0
_LENGTH = struct.Struct("!Q")
_COLLECT = b"c"
#: Followed by a length-prefixed pickle: a route to answer, or one to relay.
_DECLARE = b"d"
_PACKAGE = __name__.split(".", 1)[0]
#: The child's command (``-c``, not ``-m``: the package imports this module first). The
#: package's ``__init__`` (the whole engine, ≈ 0.3 s) is run only if something the child
#: unpickles asks the package for a name: the child needs ``_simio`` alone.
_CHILD = f"""
import importlib.util, sys, types
spec = importlib.util.find_spec({_PACKAGE!r})
package = types.ModuleType({_PACKAGE!r})
package.__path__ = list(spec.submodule_search_locations)
package.__file__ = spec.origin
package.__spec__ = spec


def __getattr__(name):
    if name.startswith("_"):  # a submodule: imported by itself
        raise AttributeError(name)
    del package.__dict__["__getattr__"]
    with open(spec.origin) as source:
        exec(compile(source.read(), spec.origin, "exec"), package.__dict__)
    return getattr(package, name)


package.__getattr__ = __getattr__
sys.modules[{_PACKAGE!r}] = package
from {__name__} import main
main(sys.argv[1:])
"""

_LIVE: list[LoopbackProcess] = []
_LIVE_LOCK = threading.Lock()


def portable(upstream: Any, *, tls: bool = False) -> bool:
    """Whether *upstream*'s routes can be answered by another process: none has a handler,
    every declaration pickles, and (with *tls*) the key can reach it in memory."""
    if tls and not hasattr(os, "memfd_create"):
        return False
    return _pickled(list(upstream.declarations)) is not None


def _pickled(declarations: list[dict[str, Any]]) -> bytes | None:
    """The declarations pickled for another process, or None when one cannot go (a handler,
    or a value that does not pickle)."""
    if any(d.get("handler") is not None for d in declarations):
        return None
    try:
        return pickle.dumps(declarations)
    except (pickle.PicklingError, AttributeError, TypeError):
        return None


def collect_live() -> None:
    """Bring back the figures of every running loopback process (a no-op when none runs)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for server in live:
        server.collect()


def _stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for server in live:
        server.stop()


atexit.register(_stop_all)


def _forget_in_child() -> None:
    # A process forked from the storm's (a shard) does not own the storm's loopback
    # processes: it must neither ask them for figures nor stop them, nor hold their
    # sockets open (each ends when the storm's process closes its end). The registry's
    # lock is made anew: a thread of the parent may have held it at the fork, and no
    # thread of the shard would ever release it.
    global _LIVE_LOCK  # noqa: PLW0603 - a lock of the shard's own, after a fork
    _LIVE_LOCK = threading.Lock()
    for server in _LIVE:
        control, server._control = server._control, None
        if control is not None:
            control.close()
    _LIVE.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _random_states(routes: Sequence[Any]) -> dict[str, Any]:
    """The states of the generators *routes* draw from: the process-wide one, and each
    route's own by its label (None for a route that draws from the process-wide one)."""
    return {
        "process": _process_rng().getstate(),
        "routes": {r.label: _route_state(r) for r in routes},
    }


def _route_state(route: Any) -> Any:
    """The state of *route*'s own generator; None when it draws from the process-wide one."""
    return None if route._rng is _process_rng() else route._rng.getstate()


def _process_rng() -> Any:
    from .waits import _default_rng as rng

    return rng


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the loopback upstream process has gone")
        data += chunk
    return bytes(data)


def _receive(sock: socket.socket) -> bytes:
    (size,) = _LENGTH.unpack(_receive_exactly(sock, _LENGTH.size))
    return _receive_exactly(sock, size)


# ---------------------------------------------------------------------- the storm's side


class LoopbackProcess:
    """The routes of *upstream* served on 127.0.0.1 by a child process; the same interface
    as ``LoopbackUpstream`` (:meth:`start`, :meth:`stop`, ``port``, ``tls_port``), plus
    :meth:`collect`. ``tls_pem`` (a key and certificate chain) serves ``https://`` routes on
    a second port."""

    def __init__(self, upstream: Any, *, tls_pem: bytes | None = None) -> None:
        self._upstream = upstream
        self._tls_pem = tls_pem
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._lock = threading.Lock()
        self.port = 0
        self.tls_port: int | None = None
        self.pid: int | None = None
        self._owner = os.getpid()
        #: The generators' states the child last drew on from (given, or reported).
        self._random: dict[str, Any] = {}
        #: Which exchange failed and why, once one has: its answer may still come, in whole
        #: or in part, so what the control socket reads next is no longer the next one's.
        self._failed: str | None = None
        #: The thread answering routes declared while the child ran that it cannot answer
        #: itself (started for the first of them); the child relays their calls to it.
        self._relayed: LoopbackUpstream | None = None

    def start(self) -> LoopbackProcess:
        """Start the child, hand it the routes, and wait until it listens; return self."""
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C reaches the storm, which stops this
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._control = ours
        self.pid = self._process.pid
        with _LIVE_LOCK:
            _LIVE.append(self)
        try:
            ours.settimeout(_START_TIMEOUT)
            self._random = _random_states(self._upstream.routes)
            setup = {
                "declarations": list(self._upstream.declarations),
                "random": self._random,
                "tls_pem": self._tls_pem,
            }
            _send(ours, pickle.dumps(setup))
            ready = pickle.loads(_receive(ours))  # from the child this process started
            if "error" in ready:
                raise RuntimeError(ready["error"])
        except BaseException as exc:
            with self._lock:  # no figures to ask a process that never started for
                self._control = None
            ours.close()
            self.stop()
            if not isinstance(exc, Exception):
                raise  # a Ctrl-C (or an exit) is not a failed start
            raise StormError(f"the loopback upstream process did not start: {exc}") from exc
        self.port = int(ready["port"])
        self.tls_port = ready.get("tls_port")
        self._upstream._watch(self._declared)
        return self

    def collect(self) -> None:
        """Add what the child counted since the last collect to the routes and the recorder."""
        from .waits import wait_recorder

        figures = self._exchange(_COLLECT, "collect", "gave no figures")
        if figures is None:
            return
        routes = {route.label: route for route in self._upstream.routes}
        for label, counts in figures["routes"].items():
            route = routes.get(label)
            if route is not None:
                route._merge(counts)
        self._upstream._merge_undeclared(figures["undeclared_calls"], figures["undeclared"])
        wait_recorder.merge_async(figures["waits"])
        self._draw_on(figures["random"])

    def _exchange(self, message: bytes, kind: str, failing: str) -> Any:
        """Send *message* (a *kind*) to the child and read its answer (None when no child
        runs here); a StormError saying the child *failing* when the socket fails."""
        with self._lock:
            control = self._control
            if control is None or os.getpid() != self._owner:
                return None
            if self._failed is not None:
                raise StormError(
                    f"the loopback upstream process {failing}: an earlier {self._failed} "
                    "and its answer may still be on the way, so answers can no longer be "
                    "told apart"
                )
            try:
                control.settimeout(_COLLECT_TIMEOUT)
                control.sendall(message)
                return pickle.loads(_receive(control))
            except (OSError, pickle.UnpicklingError) as exc:
                self._failed = f"{kind} failed ({str(exc) or type(exc).__name__})"
                raise StormError(f"the loopback upstream process {failing}: {exc}") from exc

    def _declared(self, route: Any, declaration: dict[str, Any]) -> None:
        """Hand the child a route declared while it runs, before the caller can call it:
        to answer itself, or (a handler's, one it cannot load) to relay to a thread here."""
        if os.getpid() != self._owner:
            return
        pickled = _pickled([declaration])
        if pickled is not None:
            state = _route_state(route)
            answer = self._declare({"declarations": pickled, "random": state})
            if answer is None:
                return  # no child runs here (it has stopped)
            if "error" not in answer:
                self._random["routes"][route.label] = state
                return
        relayed = self._relay()
        self._declare(
            {
                "relay": (route.url_prefix, route.method),
                "port": relayed.port,
                "tls_port": relayed.tls_port,
            }
        )

    def _declare(self, message: dict[str, Any]) -> Any:
        payload = pickle.dumps(message)
        framed = _DECLARE + _LENGTH.pack(len(payload)) + payload
        return self._exchange(framed, "route declaration", "could not take up a route")

    def _relay(self) -> LoopbackUpstream:
        """The thread answering the routes the child relays (started on first use)."""
        with self._lock:
            relayed = self._relayed
            if relayed is None:
                tls = _tls_context(self._tls_pem) if self._tls_pem is not None else None
                relayed = LoopbackUpstream(lambda: [self._upstream], tls=tls).start()
                self._relayed = relayed
            return relayed

    def _draw_on(self, drawn: dict[str, Any]) -> None:
        """Take up the generators where the child's stopped, each that this process has not
        drawn from since the child took it up (else this process's own draws are kept)."""
        rng = _process_rng()
        given = self._random
        if rng.getstate() == given["process"]:
            rng.setstate(drawn["process"])
        for route in self._upstream.routes:
            before = given["routes"].get(route.label)
            after = drawn["routes"].get(route.label)
            if before is not None and after is not None and route._rng.getstate() == before:
                route._rng.setstate(after)
        self._random = drawn

    def stop(self) -> None:
        """Collect the last figures, end the child (its socket's close) and reap it."""
        with _LIVE_LOCK:
            if self in _LIVE:
                _LIVE.remove(self)
        if os.getpid() != self._owner:
            return  # a forked copy: the storm's process stops it
        self._upstream._unwatch(self._declared)
        process = self._process
        if process is not None and process.poll() is None and self._control is not None:
            with contextlib.suppress(StormError):
                self.collect()
        with self._lock:
            control, self._control = self._control, None
        if control is not None:
            control.close()
        try:
            if process is not None:
                try:
                    process.wait(_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(_STOP_TIMEOUT)
            self._process = None
        finally:
            with self._lock:
                relayed, self._relayed = self._relayed, None
            if relayed is not None:
                relayed.stop()


# ---------------------------------------------------------------------- the child's side


class _NoTimeout:
    """What a route's plan reads of a request: a server cannot know the client's timeout."""

    def __init__(self) -> None:
        self.extensions: dict[str, Any] = {}


_NO_TIMEOUT = _NoTimeout()


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


def _head(status: int, headers: Sequence[tuple[str, str]], close: bool = False) -> bytes:
    lines = [_status_line(status)]
    lines += [f"{k}: {v}\r\n".encode("latin-1") for k, v in headers]
    if close:
        lines.append(b"connection: close\r\n")
    return b"".join(lines) + b"\r\n"


def _plain(status: int, text: str) -> tuple[bytes, bytes]:
    body = text.encode("utf-8", "replace")
    headers = [("content-type", "text/plain; charset=utf-8"), ("content-length", str(len(body)))]
    return _head(status, headers), body


class _Answer:
    """One route's answers as bytes, made once."""

    def __init__(self, route: Any) -> None:
        from .upstream import _ERROR_BODY, _ERROR_STATUS

        self.route = route
        self.chunks: tuple[bytes, ...] | None = route._chunks
        if self.chunks is not None:
            self.head = _head(route.status, route._stream_headers)
        else:
            self.head = _head(route.status, route._headers)
        self.body: bytes = route._body
        self.error_head = _head(_ERROR_STATUS, [("content-length", str(len(_ERROR_BODY)))])
        self.error_body = _ERROR_BODY


class _Relay:
    """Where the calls of a route the child relays go: the storm process's thread's ports."""

    def __init__(self, port: int, tls_port: int | None) -> None:
        self.port = port
        self.tls_port = tls_port


#: Request headers the relay sets itself (one connection per call, the body as received).
_HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"te", b"upgrade")
)


def _split_host(value: str, default: int) -> tuple[str, int]:
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = value.partition(":")
    return host.lower(), int(port) if port.isdigit() else default


class _Server:
    """The child's routes, its figures since the last collect, and its connections."""

    def __init__(self, declarations: list[dict[str, Any]]) -> None:
        from .upstream import Upstream

        self.upstream = Upstream()
        for declaration in declarations:
            self.upstream.route(**declaration)
        self.answers = {id(r): _Answer(r) for r in self.upstream.routes}
        #: Routes declared here only to be relayed, by id: the ports of the thread answering
        #: them in the storm's process (plain, TLS).
        self.relayed: dict[int, _Relay] = {}
        self.waits: list[tuple[int, int, float]] = []
        self.connections: set[_Connection] = set()

    def declare(self, message: dict[str, Any]) -> dict[str, Any]:
        """Take up a route declared while the storm runs: to answer, or to relay."""
        try:
            if "relay" in message:
                url_prefix, method = message["relay"]
                route = self.upstream.route(url_prefix, method=method)
                self.relayed[id(route)] = _Relay(message["port"], message["tls_port"])
                return {"ok": True}
            (declaration,) = pickle.loads(message["declarations"])
            route = self.upstream.route(**declaration)
        except Exception as exc:  # a latency this interpreter cannot import, say
            return {"error": f"{type(exc).__name__}: {exc}"}
        if message["random"] is not None:
            route._rng.setstate(message["random"])
        self.answers[id(route)] = _Answer(route)
        return {"ok": True}

    def figures(self) -> dict[str, Any]:
        """What was counted since the last call, then forgotten."""
        upstream = self.upstream
        # A relayed route's calls are counted where the thread answering them runs.
        answered = [route for route in upstream.routes if id(route) not in self.relayed]
        figures = {
            "routes": {
                route.label: {
                    "calls": route.calls,
                    "errors": route.errors,
                    "timeouts": route.timeouts,
                    "in_flight": route.in_flight,
                    "max_in_flight": route.max_in_flight,
                    "waits_us": list(route._waits_us),
                }
                for route in answered
            },
            "waits": self.waits,
            "undeclared_calls": upstream.undeclared_calls,
            "undeclared": list(upstream.undeclared),
            "random": _random_states(answered),
        }
        self.waits = []
        upstream.reset()  # routes' counts and undeclared calls (calls in flight stay)
        return figures

    def match(self, scheme: str, method: str, host: str, target: str) -> Any:
        """The route answering (or the thread it is relayed to), or the 502 (head, body)
        naming why none does."""
        from .upstream import _DEFAULT_PORTS

        # Decoded, as httpx's ``URL.path`` that routes are matched on in-process (and
        # returned as it is when it has no escape).
        path = unquote(target.partition("?")[0])
        name, port = _split_host(host, _DEFAULT_PORTS[scheme])
        routes = self.upstream._routes.get((scheme, name, port))
        if routes is not None:
            for route in routes:
                if route._matches(method, path):
                    return self.relayed.get(id(route)) or self.answers[id(route)]
        import httpx

        try:
            request = httpx.Request(method, f"{scheme}://{host}{target}")
            problem = str(self.upstream._undeclared(request, routes))
        except Exception as exc:  # a target httpx cannot read: still a 502 that says so
            problem = f"{method} {target} on {host!r} was not answered: {exc}"
        return _plain(502, problem)


class _Parser:
    """Requests from one connection's bytes: ``(method, target, host, keep_alive)`` each."""

    def __init__(self, done: Callable[[str, str, str, bool], None]) -> None:
        self._done = done
        self._url = b""
        self._host = ""
        #: The headers and body of the request being parsed (whole when ``done`` is called).
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.failed = False
        self._impl: Any
        try:
            httptools: Any = importlib.import_module("httptools")
        except ImportError:
            self._impl = None
            self._h11: Any = importlib.import_module("h11")
            self._conn = self._h11.Connection(self._h11.SERVER)
        else:
            self._httptools = httptools
            self._impl = httptools.HttpRequestParser(self)

    # httptools' callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._host = ""
        self.headers = []
        self.body = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if name.lower() == b"host":
            self._host = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        impl = self._impl
        self._done(
            impl.get_method().decode("ascii"),
            self._url.decode("latin-1"),
            self._host,
            bool(impl.should_keep_alive()),
        )

    def feed(self, data: bytes) -> None:
        if self._impl is not None:
            try:
                self._impl.feed_data(data)
            except self._httptools.HttpParserUpgrade:
                self.failed = True
            except self._httptools.HttpParserError:
                self.failed = True
            return
        self._feed_h11(data)

    def _feed_h11(self, data: bytes) -> None:
        h11 = self._h11
        self._conn.receive_data(data)
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError:
                self.failed = True
                return
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                self._url = event.target
                self.headers = list(event.headers)
                self.body = b""
                self._host = next(
                    (v.decode("latin-1") for k, v in event.headers if k == b"host"), ""
                )
                close = any(k == b"connection" and b"close" in v.lower() for k, v in event.headers)
                self._keep = not close and event.http_version == b"1.1"
                self._method = event.method.decode("ascii")
            elif isinstance(event, h11.Data):
                self.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self._done(self._method, self._url.decode("latin-1"), self._host, self._keep)
            elif event is h11.PAUSED:
                # Parsed only: a fresh connection state per request, fed what is left.
                rest, closed = self._conn.trailing_data
                self._conn = h11.Connection(h11.SERVER)
                if closed:
                    return
                self._conn.receive_data(rest)
            elif isinstance(event, h11.ConnectionClosed):
                return


class _Connection(asyncio.Protocol):
    """One client connection: parse requests, answer each after its route's wait, in order."""

    def __init__(self, server: _Server, scheme: str) -> None:
        self._server = server
        self._scheme = scheme
        self._transport: asyncio.Transport | None = None
        self._parser = _Parser(self._request)
        self._queue: deque[tuple[str, str, str, bool, list[tuple[bytes, bytes]], bytes]] = deque()
        self._busy = False
        self._holding = False
        self._timers: list[asyncio.TimerHandle] = []
        self._route: Any = None
        self._relaying: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        if self._route is not None:  # a call cut off while waiting or streaming
            self._route._exit()
            self._route = None
        if self._relaying is not None:  # the client gave up on a relayed call
            self._relaying.cancel()
            self._relaying = None
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._holding:
            return  # a simulated timeout: no answer, whatever the client sends
        self._parser.feed(data)
        if self._parser.failed and self._transport is not None:
            self._transport.close()

    def _request(self, method: str, target: str, host: str, keep: bool) -> None:
        parser = self._parser
        self._queue.append((method, target, host, keep, parser.headers, parser.body))
        if not self._busy:
            self._next()

    def _next(self) -> None:
        transport = self._transport
        if not self._queue or transport is None:
            self._busy = False
            return
        self._busy = True
        method, target, host, keep, headers, body = self._queue.popleft()
        answer = self._server.match(self._scheme, method, host, target)
        if isinstance(answer, tuple):
            transport.write(answer[0] + answer[1])
            self._finish(keep)
            return
        if isinstance(answer, _Relay):
            request = _relayed_request(method, target, headers, body)
            self._relaying = asyncio.ensure_future(self._relay(answer, host, request))
            return
        route = answer.route
        route._enter()
        self._route = route
        delay, times_out, fails = route._plan(_NO_TIMEOUT)
        started = time.perf_counter()  # not when it was parsed: it may have queued since
        loop = asyncio.get_running_loop()
        self._timers = [
            loop.call_later(
                delay, self._answer, answer, method, keep, started, delay, times_out, fails
            )
        ]

    def _record(self, requested: float, started: float) -> float:
        """The wait's own error, from its start to now (the answer being written)."""
        end = time.perf_counter()
        waited = end - started
        self._server.waits.append(
            (round((waited - requested) * 1_000_000), round(requested * 1_000_000), end)
        )
        return waited

    def _early(self, started: float, delay: float, callback: Any, *args: Any) -> bool:
        """Whether the timer of a wait fired before *delay* had passed since *started*; if
        so, *callback* is set to run for the rest. uvloop's timers count whole milliseconds
        of a clock read at the loop's last turn: one may fire up to 1 ms early."""
        left = started + delay - time.perf_counter()
        if left <= 0:
            return False
        self._timers = [asyncio.get_running_loop().call_later(left, callback, *args)]
        return True

    def _answer(
        self,
        answer: _Answer,
        method: str,
        keep: bool,
        started: float,
        delay: float,
        times_out: bool,
        fails: bool,
    ) -> None:
        again = (answer, method, keep, started, delay, times_out, fails)
        if self._early(started, delay, self._answer, *again):
            return
        transport = self._transport
        route = answer.route
        waited = self._record(delay, started)
        route._waits_us.append(round(waited * 1_000_000))
        if transport is None:
            return
        if times_out:
            route._count_timeout()
            route._exit()
            self._route = None
            self._holding = True  # held open, unanswered, until the client gives up
            return
        head = method == "HEAD"
        if fails:
            route._count_error()
            transport.write(answer.error_head + (b"" if head else answer.error_body))
        elif answer.chunks is None:
            transport.write(answer.head + (b"" if head else answer.body))
        elif head or not answer.chunks:
            transport.write(answer.head + (b"" if head else b"0\r\n\r\n"))
        else:
            transport.write(answer.head + _chunk(answer.chunks[0]))
            self._stream(answer, 1, keep)
            return
        route._exit()
        self._route = None
        self._finish(keep)

    def _stream(self, answer: _Answer, index: int, keep: bool) -> None:
        transport = self._transport
        chunks = answer.chunks
        assert chunks is not None
        if transport is None:
            return
        if index >= len(chunks):
            transport.write(b"0\r\n\r\n")
            answer.route._exit()
            self._route = None
            self._finish(keep)
            return
        route = answer.route
        delay = route.chunk_latency.sample(route._rng)
        started = time.perf_counter()

        def send() -> None:
            if self._early(started, delay, send):
                return
            self._record(delay, started)
            if self._transport is not None:
                self._transport.write(_chunk(chunks[index]))
                self._stream(answer, index + 1, keep)

        self._timers = [asyncio.get_running_loop().call_later(delay, send)]

    async def _relay(self, relay: _Relay, host: str, request: bytes) -> None:
        """Pass a call to the thread answering its route in the storm's process, and its
        answer back as it comes; then close the connection, as the answer says."""
        context: ssl.SSLContext | None = None
        port: int | None = relay.port
        if self._scheme == "https":
            port = relay.tls_port
            # The storm's own thread on loopback, holding a certificate of the session CA.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            if port is None:
                raise ConnectionError("no port answers this scheme")
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                port,
                ssl=context,
                server_hostname=_split_host(host, 0)[0] if context is not None else None,
            )
        except OSError as exc:
            if self._transport is not None:
                head, body = _plain(502, f"the relay to the storm's process failed: {exc}")
                self._transport.write(head + body)
                self._transport.close()
            return
        try:
            writer.write(request)
            while data := await reader.read(65_536):
                if self._transport is None:
                    return
                self._transport.write(data)
        except OSError:
            pass
        finally:
            writer.transport.abort()
            self._relaying = None
        if self._transport is not None:
            self._transport.close()

    def _finish(self, keep: bool) -> None:
        self._timers = []
        if not keep and self._transport is not None:
            self._transport.close()
            return
        self._next()


def _relayed_request(
    method: str, target: str, headers: Sequence[tuple[bytes, bytes]], body: bytes
) -> bytes:
    """A call as the thread in the storm's process is sent it: on a connection of its own
    (``connection: close``, which its answer repeats to the client), the body as received."""
    lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
    lines += [k + b": " + v + b"\r\n" for k, v in headers if k.lower() not in _HOP_BY_HOP]
    lines.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    return b"".join(lines) + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def _tls_context(pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(["http/1.1"])
    # Loaded from memory: the key is never written to disk.
    fd = os.memfd_create("pytest-storm-tls")
    try:
        os.write(fd, pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return context


def _control_reader(
    control: socket.socket, server: _Server, ended: asyncio.Future[None]
) -> Callable[[], None]:
    """What reads the storm's messages on *control*: collects and routes, each answered in
    turn; *ended* is set when the storm's process closes its end."""
    loop = asyncio.get_running_loop()
    pending = bytearray()

    def on_control() -> None:
        try:
            data = control.recv(65_536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(control.fileno())
            if not ended.done():
                ended.set_result(None)
            return
        pending.extend(data)
        while pending:
            if pending[:1] == _COLLECT:
                del pending[:1]
                answer: Any = server.figures()
            else:  # a route: its length, then its message
                header = 1 + _LENGTH.size
                if len(pending) < header:
                    return
                (size,) = _LENGTH.unpack(pending[1:header])
                if len(pending) < header + size:
                    return
                message = pickle.loads(bytes(pending[header : header + size]))
                del pending[: header + size]
                answer = server.declare(message)
            control.setblocking(True)
            try:
                _send(control, pickle.dumps(answer))
            finally:
                control.setblocking(False)

    return on_control


async def _serve(control: socket.socket) -> None:
    from .waits import _default_rng

    loop = asyncio.get_running_loop()
    try:
        setup = pickle.loads(_receive(control))  # from the process that started this one
        states = setup["random"]
        _default_rng.setstate(states["process"])
        server = _Server(setup["declarations"])
        for route in server.upstream.routes:
            state = states["routes"].get(route.label)
            if state is not None:
                route._rng.setstate(state)
        plain = await loop.create_server(
            lambda: _Connection(server, "http"), "127.0.0.1", 0, backlog=4096
        )
        ready: dict[str, Any] = {"port": plain.sockets[0].getsockname()[1]}
        secure = None
        if setup["tls_pem"] is not None:
            secure = await loop.create_server(
                lambda: _Connection(server, "https"),
                "127.0.0.1",
                0,
                backlog=4096,
                ssl=_tls_context(setup["tls_pem"]),
            )
            ready["tls_port"] = secure.sockets[0].getsockname()[1]
    except Exception as exc:
        _send(control, pickle.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return
    _send(control, pickle.dumps(ready))
    ended = loop.create_future()
    control.setblocking(False)

    on_control = _control_reader(control, server, ended)
    loop.add_reader(control.fileno(), on_control)
    try:
        await ended
    finally:
        plain.close()
        if secure is not None:
            secure.close()
        for connection in list(server.connections):
            if connection._transport is not None:
                connection._transport.abort()


def main(argv: Sequence[str] | None = None) -> None:
    """The child: serve the routes sent over the socket numbered ``argv[0]`` until it closes."""
    args = sys.argv[1:] if argv is None else list(argv)
    from .loopback import _new_loop

    control = socket.socket(fileno=int(args[0]))
    loop = _new_loop()
    try:
        loop.run_until_complete(_serve(control))
    finally:
        control.close()
        loop.close()
