"""In-process ASGI driver: prebuilt scopes, receive/send, lifespan, streaming bodies, TTFB.

Nothing here knows about pytest. One :class:`AsgiDriver` serves one storm: scopes
are built once per request spec (from an :class:`httpx.Request`) and copied per
request; :meth:`AsgiDriver.call` runs one request on the caller's task, without
any thread hop or extra task.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.lowlevel
import httpx

from .. import _clock as clock
from .._apps import as_asgi3
from .._errors import StormError
from .._headers import RESPONSE_VALUE_BAD, TOKEN_BYTES, response_header_fault
from .._workload import Request, checked_user_headers
from .base import (
    BadHeaders,
    BadStatus,
    BodyBeforeStart,
    BodyNotBytes,
    CheckedHeaders,
    ContentLengthMismatch,
    IncompleteResponse,
    InvalidHeader,
    MessageAfterResponse,
    ProtocolViolation,
    StartedTwice,
    UnknownMessage,
)

__all__ = ["AsgiDriver", "Exchange", "build_scope", "loop_name"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ASGI = {"version": "3.0", "spec_version": "2.3"}
_CLIENT = ("127.0.0.1", 50000)
_SERVER = ("testserver", 80)


def loop_name() -> str:
    """The event loop running in this thread, in the words of a server line."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # another backend (trio)
        return "event loop (trio)"
    module = type(loop).__module__.split(".")[0]
    return "event loop (uvloop)" if module == "uvloop" else "event loop (asyncio)"


def build_scope(request: httpx.Request) -> tuple[dict[str, Any], list[tuple[bytes, bytes]], bytes]:
    """HTTP scope template, header list and body of *request*, encoded once."""
    body = request.read()
    url = request.url
    raw_path = url.raw_path
    path_part, _, _ = raw_path.partition(b"?")
    headers = [(key.lower(), value) for key, value in request.headers.raw]
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": _ASGI,
        "http_version": "1.1",
        "method": request.method,
        "scheme": url.scheme,
        "path": unquote(path_part.decode("ascii")),
        "raw_path": path_part,
        "query_string": url.query,
        "root_path": "",
        "headers": headers,
        "client": _CLIENT,
        "server": _SERVER,
        "extensions": {},
    }
    return scope, headers, body


#: A streamed body gives the loop a turn every this many chunks, so that a body that never
#: ends still meets its timeout (a real server's writes wait for the socket the same way).
_CHUNKS_PER_TURN = 16


#: Body chunks kept as a sample of an error response (the report shows the first ones).
_SAMPLE_CHUNKS = 4

#: Response header lists already checked, with their declared content-length.
_CHECKED_HEADERS = CheckedHeaders()


def response_headers(headers: Any) -> int:
    """Check an ASGI response's headers as a real server does; return their content-length.

    -1 when none is declared. Raises :class:`BadHeaders` for the wrong shape and
    :class:`InvalidHeader` for what uvicorn and h11 refuse to write.
    """
    if not headers:
        return -1
    key, declared = _CHECKED_HEADERS.lookup(headers)
    if declared is not None:
        return declared
    lengths = []
    fullmatch, search = TOKEN_BYTES.fullmatch, RESPONSE_VALUE_BAD.search
    for header in headers:
        if len(header) != 2 or type(header[0]) is not bytes or type(header[1]) is not bytes:
            raise BadHeaders(
                f"http.response.start headers must be [name, value] pairs of bytes, not {header!r}"
            )
        name, value = header
        if not fullmatch(name) or search(value):
            raise InvalidHeader(response_header_fault(name, value) or repr(header))
        if len(name) == 14 and name.lower() == b"content-length":
            lengths.append(value)
    return _CHECKED_HEADERS.remember(key, lengths)


class Exchange:
    """One request/response exchange: the receive/send pair handed to the app.

    ``send`` holds the app to the ASGI HTTP spec (message order, types): a violation
    raises :class:`ProtocolViolation` in the app, as a server would, and is recorded by
    its kind. ``receive`` answers ``http.disconnect`` once the response is complete or
    the client has gone (its timeout), like a server.
    """

    __slots__ = (
        "_body",
        "_capture",
        "_chunks",
        "_closed",
        "_declared",
        "_gone",
        "_head",
        "_length",
        "_sent",
        "body",
        "done",
        "first_byte",
        "headers",
        "status",
        "violation",
    )

    def __init__(self, body: bytes, capture: bool = False, head: bool = False) -> None:
        self._body = body
        self._capture = capture
        self._head = head
        #: Body bytes still owed to the declared content-length; -1 when none is enforced.
        self._length = -1
        #: Response headers and body chunks, kept when asked (checks, cookies) or when the
        #: status is an error (a sample for the report); None otherwise.
        self.headers: Any = None
        self.body: list[bytes] | None = None
        self._sent = False
        self._gone = False
        self._closed: anyio.Event | None = None
        self._chunks = 0
        self.status = 0
        self.first_byte = 0.0
        self.done = False
        self.violation: ProtocolViolation | None = None

    def _broken(self, violation: ProtocolViolation) -> ProtocolViolation:
        # Kept as well as raised: an app that swallows the error still broke the protocol.
        if self.violation is None:
            self.violation = violation
        return violation

    async def receive(self) -> Message:
        """First call: the request body; later calls wait for the end of the exchange."""
        if not self._sent and not self._gone:
            self._sent = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        # Apps such as Starlette's StreamingResponse listen for a disconnect while they
        # send; like a server, answer only once the response is complete or the client
        # has gone (its timeout).
        if not self._gone and not self.done:
            if self._closed is None:
                self._closed = anyio.Event()
            await self._closed.wait()
        else:
            # An app that keeps asking after the end still lets the loop run (and its
            # deadline be enforced), rather than spinning on answers that never wait.
            await anyio.lowlevel.checkpoint()
        return {"type": "http.disconnect"}

    def disconnect(self) -> None:
        """The client gave up (timeout): pending and later receive() calls say so."""
        self._gone = True
        if self._closed is not None:
            self._closed.set()

    async def send(self, message: Message) -> None:
        """Consume the app's response messages chunk by chunk, checking them."""
        kind = message.get("type")
        if kind == "http.response.body":
            if not self.status:
                raise self._broken(
                    BodyBeforeStart("http.response.body sent before http.response.start")
                )
            if self.done:
                raise self._broken(
                    MessageAfterResponse("http.response.body sent after the response was complete")
                )
            body = message.get("body", b"")
            if type(body) is not bytes and not isinstance(body, bytearray | memoryview):
                raise self._broken(
                    BodyNotBytes(
                        f"http.response.body 'body' must be bytes, not {type(body).__name__}"
                    )
                )
            more = message.get("more_body", False)
            if self._length >= 0:
                self._owe(len(body), more)
            kept = self.body
            if kept is not None and body and (self._capture or len(kept) < _SAMPLE_CHUNKS):
                kept.append(bytes(body))
            # First body byte, or the end of an empty body.
            if not self.first_byte and (body or not more):
                self.first_byte = clock.now()
            if not more:
                self.done = True
                if self._closed is not None:
                    self._closed.set()
            else:
                self._chunks += 1
                if self._chunks % _CHUNKS_PER_TURN == 0:
                    await anyio.lowlevel.checkpoint()
        elif kind == "http.response.start":
            if self.status:
                raise self._broken(StartedTwice("http.response.start sent twice"))
            status = message.get("status")
            if type(status) is not int or not 100 <= status <= 599:
                raise self._broken(
                    BadStatus(
                        f"http.response.start 'status' must be an int from 100 to 599, not {status!r}"
                    )
                )
            try:
                headers = message.get("headers")
                declared = response_headers(headers) if headers else -1
            except BadHeaders as exc:
                raise self._broken(exc) from None
            if declared >= 0 and status >= 200 and status not in (204, 304) and not self._head:
                # HEAD, 1xx, 204 and 304 have no body, whatever length they declare.
                self._length = self._declared = declared
            self.status = status
            if self._capture or status >= 400:
                self.headers = headers or ()
                self.body = []
        elif self._gone:
            return  # a server drops what a gone client cannot receive
        else:
            raise self._broken(
                UnknownMessage(f"unexpected ASGI message type {kind!r} on an http scope")
            )

    def _owe(self, size: int, more: bool) -> None:
        """Count *size* body bytes against the declared content-length, as uvicorn does."""
        left = self._length - size
        if left < 0 or (left and not more):
            declared = self._declared
            sent = declared - left
            self._length = -1
            raise self._broken(
                ContentLengthMismatch(
                    f"the body is {'longer' if left < 0 else 'shorter'} than its "
                    f"content-length: {declared} declared, {sent}{' and more' if more else ''} sent"
                )
            )
        self._length = left

    def close(self) -> None:
        """Release any receive() still waiting (the client has gone)."""
        if self._closed is not None:
            self._closed.set()


class AsgiDriver:
    """Runs requests of a fixed set of specs against one ASGI app, in the caller's task."""

    def __init__(self, app: Any, requests: list[Request], *, lifespan: str = "auto") -> None:
        self.app: ASGIApp = as_asgi3(app)
        self._templates = [build_scope(spec.to_httpx()) for spec in requests]
        self._lifespan = lifespan
        self._state: dict[str, Any] | None = None
        self._startup_done = anyio.Event()
        self._shutdown_requested = anyio.Event()
        self._shutdown_done = anyio.Event()
        self._startup_error: str | None = None
        self._shutdown_error: str | None = None
        self._lifespan_supported = False

    def describe(self) -> str:
        """The event loop that serves the app in-process."""
        return loop_name()

    def call(self, index: int, holder: Any = None) -> Coroutine[Any, Any, Exchange]:
        """Send request spec *index* to the app and consume the whole response.

        *holder*, when given, gets the exchange as its ``exchange`` attribute before the
        app runs, so that a timeout can tell the app that the client has gone.
        """
        # The coroutine itself, not one awaiting it: one frame less per request.
        return self.call_prepared(self._templates[index], holder)

    async def call_request(self, request: Request, holder: Any = None) -> Exchange:
        """Send a request built on the fly (templated requests pay for encoding it).

        A header that could not be sent fails the request here, inside the coroutine, so
        that it is counted as the request's failure and the app never sees it.
        """
        return await self.call_prepared(build_scope(request.checked_httpx()), holder)

    async def call_prepared(
        self, prepared: tuple[dict[str, Any], list[tuple[bytes, bytes]], bytes], holder: Any = None
    ) -> Exchange:
        """Send a prepared (scope template, headers, body) request."""
        scope_template, headers, body = prepared
        scope = scope_template.copy()
        scope["headers"] = headers.copy()
        if self._state is not None:
            scope["state"] = self._state.copy()
        capture = False
        if holder is not None:
            try:
                user, capture = holder.user, holder.capture
            except AttributeError:  # a holder of the caller's own, without users
                user, capture = None, False
            if user is not None and (user.headers or user.cookies):
                scope["headers"].extend(
                    (k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in checked_user_headers(user.header_pairs())
                )
        exchange = Exchange(body, capture, scope_template["method"] == "HEAD")
        if holder is not None:
            holder.exchange = exchange
        try:
            await self.app(scope, exchange.receive, exchange.send)
        finally:
            # exchange.close() written out: every request passes here.
            closed = exchange._closed
            if closed is not None:
                closed.set()
        if exchange.violation is not None:
            raise exchange.violation
        if exchange.status and not exchange.done and not exchange._gone:
            raise IncompleteResponse(
                "the app returned after http.response.start without the last "
                "http.response.body (more_body=False)"
            )
        return exchange

    # -- lifespan -------------------------------------------------------------------------

    async def startup(self, task_group: anyio.abc.TaskGroup, timeout: float) -> None:
        """Run lifespan startup (once per storm); raise :class:`StormError` if it fails."""
        if self._lifespan == "off":
            return
        self._state = {}
        task_group.start_soon(self._lifespan_main)
        with anyio.move_on_after(timeout) as scope:
            await self._startup_done.wait()
        if scope.cancelled_caught:
            raise StormError(f"the app's lifespan startup did not complete within {timeout:g} s")
        if self._startup_error is not None:
            raise StormError(f"the app's lifespan startup failed: {_lead(self._startup_error)}")
        if not self._lifespan_supported:
            self._state = None
            if self._lifespan == "on":
                raise StormError(
                    "lifespan='on' but the app does not support the ASGI lifespan protocol"
                )

    async def shutdown(self, timeout: float) -> None:
        """Run lifespan shutdown; raise :class:`StormError` if the app reports a failure."""
        if not self._lifespan_supported:
            return
        self._shutdown_requested.set()
        with anyio.move_on_after(timeout):
            await self._shutdown_done.wait()
        if self._shutdown_error is not None:
            raise StormError(f"the app's lifespan shutdown failed: {_lead(self._shutdown_error)}")

    async def _lifespan_main(self) -> None:
        scope = {"type": "lifespan", "asgi": _ASGI, "state": self._state}
        started = False

        async def receive() -> Message:
            nonlocal started
            if not started:
                started = True
                return {"type": "lifespan.startup"}
            await self._shutdown_requested.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                self._lifespan_supported = True
                self._startup_done.set()
            elif kind == "lifespan.startup.failed":
                self._lifespan_supported = True
                self._startup_error = message.get("message") or "lifespan.startup.failed"
                self._startup_done.set()
            elif kind == "lifespan.shutdown.complete":
                self._shutdown_done.set()
            elif kind == "lifespan.shutdown.failed":
                self._shutdown_error = message.get("message") or "lifespan.shutdown.failed"
                self._shutdown_done.set()

        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            if self._lifespan_supported and not self._startup_done.is_set():
                self._startup_error = f"{type(exc).__name__}: {exc}"
            elif self._lifespan_supported and not self._shutdown_done.is_set():
                self._shutdown_error = f"{type(exc).__name__}: {exc}"
            # An app that raises on a lifespan scope before answering does not support
            # lifespan (Django does this); like uvicorn's "auto", carry on without it.
        finally:
            self._startup_done.set()
            self._shutdown_done.set()


#: The line of a formatted traceback that names the exception (``RuntimeError: …``), as
#: printed inside an exception group too (``| RuntimeError: …``).
_RAISED = re.compile(
    r"^[\s|]*((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Failure)"
    r"(?:: .*)?)$"
)


def _lead(message: str) -> str:
    """A lifespan failure's message, led by the exception it ends with when the framework
    sent a whole traceback (Litestar, Starlette do): the cause is on the first line then,
    not under a screenful of frames."""
    lines = message.strip().splitlines()
    if len(lines) < 2:
        return message
    for line in reversed(lines):
        found = _RAISED.match(line)
        if found:
            return f"{found.group(1)}\n{message}"
    return message
