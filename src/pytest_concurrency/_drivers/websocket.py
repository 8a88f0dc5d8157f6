"""In-process ASGI WebSocket driver: handshake, frames both ways, closes with codes.

Nothing here knows about pytest or the load model. It runs on asyncio. A :class:`WebSocketDriver` opens
connections; a :class:`WebSocketConnection` sends and receives messages on one of
them. :class:`AsgiWebSocketDriver` runs each connection's app coroutine as a task on
the caller's event loop, holding the app to the ASGI WebSocket spec (asgiref, spec
2.3 with the ``websocket.http.response`` denial extension): a message the spec does
not allow raises a :class:`~.base.ProtocolViolation` in the app, as a server would,
and is kept on the connection so that the engine records it by kind.

:class:`SocketWebSocketDriver` is the same two protocols over a real socket: the
``websockets`` client against a server on loopback.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter, deque
from collections.abc import Callable, Coroutine, MutableMapping
from time import perf_counter
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from .._probes.attribution import OwnSteps, current
from .._tasks import ABANDON_GRACE, TaskSet
from .._workload import Request
from .asgi import ASGIApp, AsgiDriver, build_scope
from .base import ProtocolViolation, UnknownMessage

__all__ = [
    "AcceptedTwice",
    "AsgiWebSocketDriver",
    "BadFrame",
    "ClientDisconnected",
    "ConnectionClosed",
    "ConnectionCounts",
    "DenialWithoutExtension",
    "Handshake",
    "InProcessConnection",
    "MessageAfterClose",
    "NoHandshake",
    "SendBeforeAccept",
    "SocketConnection",
    "SocketWebSocketDriver",
    "WebSocketConnection",
    "WebSocketDriver",
]

Message = MutableMapping[str, Any]
#: One WebSocket message: text (str) or binary (bytes).
Data = str | bytes
#: Called with each message the server sends and the ``perf_counter()`` time it arrived.
OnMessage = Callable[[Data, float], None]

#: Close code of a connection that ended without a close frame (a client that gave up).
ABNORMAL_CLOSURE = 1006
#: Close code a server sends when the app raised after the handshake.
INTERNAL_ERROR = 1011
NORMAL_CLOSURE = 1000
#: HTTP status of a handshake the app refused with ``websocket.close`` (the spec's 403).
HANDSHAKE_REFUSED = 403
#: HTTP status of a handshake the app never answered before it returned or raised.
HANDSHAKE_FAILED = 500


class SendBeforeAccept(ProtocolViolation):
    """``websocket.send`` before ``websocket.accept``."""


class AcceptedTwice(ProtocolViolation):
    """A second ``websocket.accept``, or an accept after the handshake was refused."""


class BadFrame(ProtocolViolation):
    """``websocket.send`` without exactly one of ``bytes`` (bytes) and ``text`` (str)."""


class MessageAfterClose(ProtocolViolation):
    """A message after the app's own ``websocket.close`` (or after its denial response)."""


class DenialWithoutExtension(ProtocolViolation):
    """``websocket.http.response.*`` out of place: after the handshake, or malformed."""


class NoHandshake(ProtocolViolation):
    """The app returned without accepting or refusing the handshake."""


class ClientDisconnected(OSError):
    """The client has gone: what the spec has ``send()`` raise on a closed connection."""


class ConnectionClosed(Exception):
    """The connection closed while the client waited on it (by the server, or a timeout)."""

    def __init__(self, code: int, reason: str = "", *, by_server: bool = True) -> None:
        side = "server" if by_server else "client"
        super().__init__(
            f"the {side} closed the connection with code {code}"
            + (f" ({reason})" if reason else "")
        )
        self.code = code
        self.reason = reason
        self.by_server = by_server


class Handshake:
    """How the opening handshake ended: accepted (status 101) or refused (an HTTP status)."""

    __slots__ = ("accepted", "close_code", "done", "status", "subprotocol")

    def __init__(self) -> None:
        self.accepted = False
        self.status = 0  # 0 while undecided
        self.subprotocol: str | None = None
        #: The code of a ``websocket.close`` that refused the handshake.
        self.close_code: int | None = None
        self.done = 0.0


class WebSocketConnection(Protocol):
    """One client connection, open or refused, as the engine sees it."""

    handshake: Handshake
    #: Messages the server sent go here instead of the inbox when set (listeners of a room).
    on_message: OnMessage | None

    @property
    def open(self) -> bool:
        """True between an accepted handshake and a close from either side."""

    @property
    def close_code(self) -> int | None:
        """The code the connection closed with, None while it is open."""

    @property
    def failure(self) -> BaseException | None:
        """Why the server side failed: a protocol violation or the app's own exception."""

    async def send(self, data: Data) -> None:
        """Send one message; :class:`ConnectionClosed` when the connection is closed."""

    async def receive(self) -> Data:
        """The next message from the server; :class:`ConnectionClosed` once it closed."""

    def drain(self) -> int:
        """Discard messages received and not yet read; return how many there were."""

    def disconnect(self, code: int = ABNORMAL_CLOSURE) -> None:
        """Leave now (a timeout): the server learns the client has gone."""


class WebSocketDriver(Protocol):
    """Opens WebSocket connections to one app; lives for one round of a storm."""

    def describe(self) -> str:
        """What serves the connections, in the field's words."""

    async def startup(self, group: anyio.abc.TaskGroup, timeout: float) -> None:
        """Prepare before the first connection (lifespan startup)."""

    async def shutdown(self, timeout: float) -> None:
        """Close every connection still open and release everything."""

    @property
    def counts(self) -> ConnectionCounts:
        """Handshakes, connections open (now and at the peak), closes and their codes."""

    async def connect(self, timeout: float) -> WebSocketConnection:
        """Open a connection; it comes back refused (``handshake.accepted`` False) or open.

        A handshake undecided after *timeout* seconds raises :class:`TimeoutError`.
        """


class _State(enum.Enum):
    CONNECTING = 0
    DENYING = 1  # the app is sending an HTTP denial response
    OPEN = 2
    CLOSED = 3


class ConnectionCounts:
    """What happened to a driver's connections: handshakes, connections open, closes."""

    __slots__ = ("accepted", "close_codes", "disconnects", "open", "peak", "refused")

    def __init__(self) -> None:
        self.accepted = 0
        self.refused = 0
        self.open = 0
        self.peak = 0
        #: Closes by the server after the handshake (not the client's own at the end).
        self.disconnects = 0
        #: Close codes the server sent, refused handshakes included.
        self.close_codes: Counter[int] = Counter()


class _ClientSide:
    """What both kinds of connection give the client: an inbox of the other side's
    messages, woken with a bare future, and the close the client sees."""

    __slots__ = (
        "_client_wake",
        "_close_code",
        "_counts",
        "_inbox",
        "_loop",
        "by_server",
        "close_reason",
        "handshake",
        "on_message",
    )

    def __init__(self, counts: ConnectionCounts) -> None:
        self._counts = counts
        self._inbox: deque[Data] = deque()
        # Bare futures: a round trip wakes two tasks, and anyio's Event costs twice as much.
        self._loop = asyncio.get_running_loop()
        self._client_wake: asyncio.Future[None] | None = None
        self._close_code: int | None = None
        self.close_reason = ""
        self.by_server = False
        self.handshake = Handshake()
        self.on_message: OnMessage | None = None

    def _is_closed(self) -> bool:
        raise NotImplementedError

    async def receive(self) -> Data:
        """The next message the other side sent; :class:`ConnectionClosed` once closed."""
        inbox = self._inbox
        while not inbox:
            if self._is_closed():
                raise self._closed()
            wake = self._client_wake = self._loop.create_future()
            await wake
        return inbox.popleft()

    def drain(self) -> int:
        """Discard messages received and not yet read; return how many there were."""
        count = len(self._inbox)
        self._inbox.clear()
        return count

    def _closed(self) -> ConnectionClosed:
        code = self._close_code if self._close_code is not None else ABNORMAL_CLOSURE
        return ConnectionClosed(code, self.close_reason, by_server=self.by_server)

    def _wake_client(self) -> None:
        wake = self._client_wake
        if wake is not None:
            self._client_wake = None
            if not wake.done():
                wake.set_result(None)


class InProcessConnection(_ClientSide):
    """One WebSocket connection to an in-process ASGI app: the app's receive/send and the
    client's side, both on the caller's event loop."""

    __slots__ = (
        "_app_wake",
        "_state",
        "_to_app",
        "app_done",
        "app_error",
        "violation",
    )

    def __init__(self, counts: ConnectionCounts) -> None:
        super().__init__(counts)
        self._state = _State.CONNECTING
        self._to_app: deque[Message] = deque([{"type": "websocket.connect"}])
        self._app_wake: asyncio.Future[None] | None = None
        self.violation: ProtocolViolation | None = None
        self.app_error: BaseException | None = None
        self.app_done = anyio.Event()

    # -- the client's side ----------------------------------------------------------------

    @property
    def open(self) -> bool:
        """True between an accepted handshake and a close from either side."""
        return self._state is _State.OPEN

    @property
    def close_code(self) -> int | None:
        """The code the connection closed with, None while it is open or connecting."""
        return self._close_code if self._state is _State.CLOSED else None

    @property
    def failure(self) -> BaseException | None:
        """A protocol violation of the app, else the exception the app raised, if any."""
        return self.violation or self.app_error

    async def send(self, data: Data) -> None:
        """Queue one message for the app (text for str, binary for bytes)."""
        if self._state is not _State.OPEN:
            raise self._closed()
        if isinstance(data, str):
            self._to_app.append({"type": "websocket.receive", "text": data})
        else:
            self._to_app.append({"type": "websocket.receive", "bytes": bytes(data)})
        self._wake_app()

    def _is_closed(self) -> bool:
        return self._state is _State.CLOSED

    def disconnect(self, code: int = ABNORMAL_CLOSURE) -> None:
        """The client leaves: the app's next receive() is ``websocket.disconnect``."""
        state = self._state
        if state is _State.CLOSED:
            return
        if state is _State.OPEN:
            self._counts.open -= 1
        self._state = _State.CLOSED
        self._close_code = code
        self.by_server = False
        self._to_app.append({"type": "websocket.disconnect", "code": code, "reason": ""})
        self._wake_app()
        self._wake_client()

    def _wake_app(self) -> None:
        wake = self._app_wake
        if wake is not None:
            self._app_wake = None
            if not wake.done():
                wake.set_result(None)

    # -- the app's side -------------------------------------------------------------------

    async def app_receive(self) -> Message:
        """The app's ``receive``: connect first, then the client's messages, then disconnect."""
        queue = self._to_app
        while not queue:
            if self._state is _State.CLOSED:
                # After the close, every receive() says so: an app never waits forever,
                # and one that keeps asking still lets the loop run.
                await anyio.lowlevel.checkpoint()
                return {
                    "type": "websocket.disconnect",
                    "code": self._close_code or NORMAL_CLOSURE,
                    "reason": self.close_reason,
                }
            wake = self._app_wake = self._loop.create_future()
            await wake
        return queue.popleft()

    def _broken(self, violation: ProtocolViolation) -> ProtocolViolation:
        # Kept as well as raised: an app that swallows the error still broke the protocol.
        if self.violation is None:
            self.violation = violation
        return violation

    async def app_send(self, message: Message) -> None:
        """The app's ``send``: each message checked against the state of the connection."""
        kind = message.get("type")
        state = self._state
        if kind == "websocket.send":
            if state is _State.OPEN:
                self._deliver(message)
            elif state is _State.CLOSED and not self.by_server:
                raise ClientDisconnected(f"the client has gone (close code {self._close_code})")
            elif state is _State.CLOSED:
                raise self._broken(
                    MessageAfterClose("websocket.send after the app's own websocket.close")
                )
            else:
                raise self._broken(SendBeforeAccept("websocket.send before websocket.accept"))
        elif kind == "websocket.accept":
            if state is not _State.CONNECTING:
                raise self._broken(
                    AcceptedTwice(f"websocket.accept on a connection already {state.name.lower()}")
                )
            self._accept(message)
        elif kind == "websocket.close":
            if state is _State.CONNECTING:
                self._refuse(HANDSHAKE_REFUSED, message)
            elif state is _State.OPEN:
                self._server_close(message.get("code") or NORMAL_CLOSURE, message)
            elif state is _State.CLOSED and not self.by_server:
                raise ClientDisconnected(f"the client has gone (close code {self._close_code})")
            else:
                raise self._broken(MessageAfterClose("websocket.close sent twice"))
        elif kind == "websocket.http.response.start":
            status = message.get("status")
            if state is not _State.CONNECTING:
                raise self._broken(
                    DenialWithoutExtension(
                        "websocket.http.response.start is only allowed before the handshake"
                    )
                )
            if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
                raise self._broken(
                    DenialWithoutExtension(
                        f"websocket.http.response.start 'status' must be an int from 100 to 599, "
                        f"not {status!r}"
                    )
                )
            self._state = _State.DENYING
            self.handshake.status = status
        elif kind == "websocket.http.response.body":
            if state is not _State.DENYING:
                raise self._broken(
                    DenialWithoutExtension(
                        "websocket.http.response.body without websocket.http.response.start"
                    )
                )
            if not message.get("more_body", False):
                self._refuse(self.handshake.status, None)
        elif state is _State.CLOSED and not self.by_server:
            raise ClientDisconnected(f"the client has gone (close code {self._close_code})")
        else:
            raise self._broken(
                UnknownMessage(f"unexpected ASGI message type {kind!r} on a websocket scope")
            )

    def _deliver(self, message: Message) -> None:
        text = message.get("text")
        data: Any = message.get("bytes")
        if text is not None and data is None:
            if not isinstance(text, str):
                raise self._broken(
                    BadFrame(f"websocket.send 'text' must be str, not {type(text).__name__}")
                )
            data = text
        elif data is not None and text is None:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise self._broken(
                    BadFrame(f"websocket.send 'bytes' must be bytes, not {type(data).__name__}")
                )
            data = bytes(data)
        else:
            raise self._broken(
                BadFrame("websocket.send must carry exactly one of 'bytes' and 'text'")
            )
        callback = self.on_message
        if callback is not None:
            callback(data, perf_counter())
        else:
            self._inbox.append(data)
            self._wake_client()

    def _accept(self, message: Message) -> None:
        handshake = self.handshake
        handshake.accepted = True
        handshake.status = 101
        handshake.subprotocol = message.get("subprotocol")
        handshake.done = perf_counter()
        self._state = _State.OPEN
        counts = self._counts
        counts.accepted += 1
        counts.open += 1
        counts.peak = max(counts.peak, counts.open)
        self._wake_client()

    def _refuse(self, status: int, message: Message | None) -> None:
        handshake = self.handshake
        handshake.status = status
        handshake.done = perf_counter()
        if message is not None:
            handshake.close_code = message.get("code") or NORMAL_CLOSURE
            self.close_reason = message.get("reason") or ""
        self._state = _State.CLOSED
        self._close_code = handshake.close_code
        self.by_server = True
        counts = self._counts
        counts.refused += 1
        if handshake.close_code is not None:
            counts.close_codes[handshake.close_code] += 1
        self._wake_client()

    def _server_close(self, code: int, message: Message | None) -> None:
        counts = self._counts
        counts.open -= 1
        counts.disconnects += 1
        counts.close_codes[code] += 1
        self._state = _State.CLOSED
        self._close_code = code
        self.close_reason = (message or {}).get("reason") or ""
        self.by_server = True
        self._wake_client()

    def app_ended(self, error: BaseException | None) -> None:
        """The app returned (or raised): a server closes what the app left open."""
        if error is not None and not isinstance(error, ClientDisconnected):
            self.app_error = error
        state = self._state
        if state is _State.OPEN:
            self._server_close(INTERNAL_ERROR if error is not None else NORMAL_CLOSURE, None)
        elif state is not _State.CLOSED:
            if error is None and self.violation is None:
                self.violation = NoHandshake(
                    "the app returned without websocket.accept or websocket.close"
                )
            self._refuse(HANDSHAKE_FAILED, None)
        self.app_done.set()


class AsgiWebSocketDriver:
    """Opens WebSocket connections to an in-process ASGI app on the caller's event loop."""

    def __init__(
        self,
        app: Any,
        request: Request,
        *,
        subprotocols: tuple[str, ...] = (),
        lifespan: str = "auto",
    ) -> None:
        # Lifespan (and its state, copied into every scope) as for HTTP requests.
        self._http = AsgiDriver(app, [], lifespan=lifespan)
        self.app: ASGIApp = self._http.app
        self._scope = _websocket_scope(request, subprotocols)
        self._counts = ConnectionCounts()
        self._connections: set[InProcessConnection] = set()
        self._apps: TaskSet | None = None
        #: App tasks abandoned because they went on after being cancelled at shutdown.
        self.abandoned = 0
        #: Keep the app's long steps on each connection as its messages' own service, in
        #: the ledger its task inherits from the user that opened it.
        self.own_steps = False

    def describe(self) -> str:
        """The event loop that serves the connections in-process."""
        return f"{self._http.describe()}, WebSocket"

    @property
    def counts(self) -> ConnectionCounts:
        """Handshakes, connections open (now and at the peak), closes and their codes."""
        return self._counts

    async def startup(self, group: anyio.abc.TaskGroup, timeout: float) -> None:
        """Run lifespan startup (in *group*); each connection's app runs as a task of its
        own, which shutdown cancels and, if the app will not end, abandons."""
        self._apps = TaskSet()
        await self._http.startup(group, timeout)

    async def shutdown(self, timeout: float) -> None:
        """Close every connection (code 1000), give the apps a moment to return, run
        lifespan shutdown; an app still running after that is cancelled."""
        for conn in list(self._connections):
            conn.disconnect(NORMAL_CLOSURE)
        with anyio.move_on_after(min(timeout, 1.0)):
            for conn in list(self._connections):
                await conn.app_done.wait()
        if self._apps is not None:
            await self._apps.stop(ABANDON_GRACE)
            self.abandoned += self._apps.abandoned
        await self._http.shutdown(timeout)

    async def connect(self, timeout: float) -> InProcessConnection:
        """Start the app on a new connection and wait for its answer to the handshake."""
        apps = self._apps
        if apps is None:
            raise RuntimeError("connect() before startup()")
        conn = InProcessConnection(self._counts)
        self._connections.add(conn)
        apps.spawn(self._serve(conn))
        wake = conn._client_wake = conn._loop.create_future()
        with anyio.move_on_after(timeout):
            await wake
        if not conn.handshake.status or conn._state is _State.DENYING:
            conn.disconnect(ABNORMAL_CLOSURE)
            raise TimeoutError(f"the app did not answer the handshake within {timeout * 1000:g} ms")
        return conn

    async def _serve(self, conn: InProcessConnection) -> None:
        scope = self._scope.copy()
        scope["headers"] = list(self._scope["headers"])
        state = self._http._state
        if state is not None:
            scope["state"] = state.copy()
        error: BaseException | None = None
        try:
            served = self.app(scope, conn.app_receive, conn.app_send)
            book = current() if self.own_steps else None
            if book is not None and isinstance(served, Coroutine):
                await OwnSteps(served, book)
            else:
                await served
        except Exception as exc:
            error = exc
        finally:
            conn.app_ended(error)
            self._connections.discard(conn)


def _websocket_scope(request: Request, subprotocols: tuple[str, ...]) -> dict[str, Any]:
    """The websocket scope template of *request* (path, query string, headers)."""
    scope, headers, _ = build_scope(request.to_httpx())
    scope["type"] = "websocket"
    scope["scheme"] = "ws"
    scope.pop("method", None)
    # What a browser's handshake carries; the key is any base64 of 16 bytes.
    headers = [
        (name, value)
        for name, value in headers
        if name not in (b"content-length", b"connection", b"accept-encoding")
    ]
    headers.extend(
        [
            (b"connection", b"Upgrade"),
            (b"upgrade", b"websocket"),
            (b"sec-websocket-version", b"13"),
            (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        ]
    )
    if subprotocols:
        headers.append((b"sec-websocket-protocol", ", ".join(subprotocols).encode("latin-1")))
    scope["headers"] = headers
    scope["subprotocols"] = list(subprotocols)
    scope["extensions"] = {"websocket.http.response": {}}
    return scope


# -- a client over a real socket ------------------------------------------------------------


class SocketConnection(_ClientSide):
    """One WebSocket connection to a real server, with the ``websockets`` library.

    A reader task per connection hands each message to ``on_message`` or the inbox, the
    way the in-process connection does, and notes who closed the connection and how.
    """

    __slots__ = (
        "_leaving",
        "_open",
        "_ws",
        "failure",
        "reader",
    )

    def __init__(self, counts: ConnectionCounts) -> None:
        super().__init__(counts)
        self._ws: Any = None
        self._open = False
        self._leaving = False
        self.failure: BaseException | None = None
        self.reader = anyio.CancelScope()

    @property
    def open(self) -> bool:
        """True between an accepted handshake and a close from either side."""
        return self._open

    @property
    def close_code(self) -> int | None:
        """The code the connection closed with, None while it is open."""
        return None if self._open else self._close_code

    async def send(self, data: Data) -> None:
        """Send one message (a text frame for str, binary for bytes)."""
        if not self._open:
            raise self._closed()
        try:
            await self._ws.send(data)
        except Exception as exc:
            self._ended(exc)
            raise self._closed() from exc

    def _is_closed(self) -> bool:
        return not self._open

    def disconnect(self, code: int = ABNORMAL_CLOSURE) -> None:
        """Leave now: a closing handshake with *code*, or a dropped socket for 1006."""
        if not self._open:
            return
        self._leaving = True
        self._set_closed(code, by_server=False)
        ws = self._ws
        if code == ABNORMAL_CLOSURE:
            ws.transport.abort()  # 1006 is never sent: the client just goes
        else:
            self._loop.create_task(ws.close(code))

    async def aclose(self, code: int, timeout: float) -> None:
        """Close with *code* and wait (up to *timeout*) for the server's answer."""
        if self._open:
            self._leaving = True
            self._set_closed(code, by_server=False)
        with anyio.move_on_after(timeout):
            await self._ws.close(code)
        self.reader.cancel()

    def _set_closed(self, code: int, *, by_server: bool) -> None:
        if self._open:
            self._counts.open -= 1
        self._open = False
        self._close_code = code
        self.by_server = by_server
        self._wake_client()

    def _ended(self, error: BaseException | None) -> None:
        if not self._open or self._leaving:
            return
        ws = self._ws
        code = ws.close_code if ws.close_code is not None else ABNORMAL_CLOSURE
        self.close_reason = ws.close_reason or ""
        counts = self._counts
        counts.disconnects += 1
        counts.close_codes[code] += 1
        self._set_closed(code, by_server=True)

    async def read(self) -> None:
        """The reader task: every message the server sends, until the connection closes."""
        error: BaseException | None = None
        with self.reader:
            try:
                async for data in self._ws:
                    callback = self.on_message
                    if callback is not None:
                        callback(data, perf_counter())
                        continue
                    self._inbox.append(data)
                    wake = self._client_wake
                    if wake is not None:
                        self._client_wake = None
                        if not wake.done():
                            wake.set_result(None)
            except Exception as exc:  # ConnectionClosedError and socket errors
                error = exc
        self._ended(error)


class SocketWebSocketDriver:
    """Opens WebSocket connections to a real server on loopback (the ``websockets`` client)."""

    def __init__(
        self,
        url: str,
        request: Request,
        *,
        subprotocols: tuple[str, ...] = (),
        served_by: str | None = None,
    ) -> None:
        built = request.to_httpx()
        base = url.rstrip("/").replace("http://", "ws://", 1)
        self.uri = base + built.url.raw_path.decode("ascii")
        self._headers = [
            (key.decode("latin-1"), value.decode("latin-1"))
            for key, value in built.headers.raw
            if key.lower() not in (b"host", b"content-length", b"accept-encoding", b"connection")
        ]
        self._subprotocols = subprotocols
        self._served_by = served_by or f"server at {url}"
        self._counts = ConnectionCounts()
        self._connections: set[SocketConnection] = set()
        self._group: anyio.abc.TaskGroup | None = None

    def describe(self) -> str:
        """The server that holds the connections."""
        return f"{self._served_by}, WebSocket"

    @property
    def counts(self) -> ConnectionCounts:
        """Handshakes, connections open (now and at the peak), closes and their codes."""
        return self._counts

    async def startup(self, group: anyio.abc.TaskGroup, timeout: float) -> None:
        """Remember the task group that runs the connections' readers."""
        self._group = group

    async def shutdown(self, timeout: float) -> None:
        """Close every connection (code 1000), waiting a moment for the server's answers."""
        connections = list(self._connections)
        if connections:
            async with anyio.create_task_group() as group:
                for conn in connections:
                    group.start_soon(conn.aclose, NORMAL_CLOSURE, min(timeout, 1.0))

    async def connect(self, timeout: float) -> SocketConnection:
        """Open a connection; refused (``handshake.accepted`` False) or open."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus
        from websockets.typing import Subprotocol

        group = self._group
        if group is None:
            raise RuntimeError("connect() before startup()")
        conn = SocketConnection(self._counts)
        handshake = conn.handshake
        try:
            with anyio.fail_after(timeout):
                ws = await connect(
                    self.uri,
                    subprotocols=[Subprotocol(p) for p in self._subprotocols] or None,
                    additional_headers=self._headers or None,
                    compression=None,
                    proxy=None,
                    open_timeout=None,
                    ping_interval=None,
                    max_size=None,
                )
        except TimeoutError:
            raise TimeoutError(
                f"the server did not answer the handshake within {timeout * 1000:g} ms"
            ) from None
        except InvalidStatus as exc:
            handshake.status = exc.response.status_code
            handshake.done = perf_counter()
            self._counts.refused += 1
            return conn
        except Exception as exc:  # refused socket, a malformed handshake
            conn.failure = exc
            handshake.status = HANDSHAKE_FAILED
            handshake.done = perf_counter()
            self._counts.refused += 1
            return conn
        handshake.accepted = True
        handshake.status = 101
        handshake.subprotocol = ws.subprotocol
        handshake.done = perf_counter()
        conn._ws = ws
        conn._open = True
        counts = self._counts
        counts.accepted += 1
        counts.open += 1
        counts.peak = max(counts.peak, counts.open)
        self._connections.add(conn)
        group.start_soon(conn.read)
        return conn
