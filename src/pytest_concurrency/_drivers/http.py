"""HTTP/1.1 client driver for real servers: one keep-alive connection per virtual user.

Requests are encoded to raw bytes once per spec (with :class:`httpx.Request`, like the
in-process drivers); each virtual user owns one connection, an :class:`asyncio.Protocol`
whose responses are parsed by ``httptools`` (llhttp, in C). ``benchmarks/http_client.py``
measured, against a one-worker uvicorn with 100 connections, about 35 µs of client CPU per
request for this design, about the same with asyncio streams (the protocol keeps the
first-byte time in the parser's callback, without a reader task's wake-ups) and about
150 µs with h11 parsing in pure Python.

The driver's first connection resolves the host through asyncio; every later one (each
user's, and a new one per request on a server that closes every connection, as
gunicorn's sync workers do) goes straight to the address it reached, on a plain
non-blocking socket (:class:`_Wire`) in an epoll set
of the driver's own that the loop watches as one file (:class:`_Poller`), reading into
one preallocated buffer. Per request that is the system calls a C client makes (socket,
setsockopt, connect, epoll_ctl, send, recv, close) and no asyncio transport, handle or
selector key; ``benchmarks/reconnect.py --baseline`` measures it against wrk and against
another checkout. The same path serves every loop (asyncio's and uvloop's).
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import select
import socket
from collections.abc import Coroutine
from threading import get_ident
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import anyio
import anyio.abc
import httptools

from .._errors import ConfigError, StormError
from .._workload import Request, checked_user_headers
from .base import AsyncDriver, UnsolicitedResponse

__all__ = ["Exchange", "HttpDriver", "encode_request"]


#: Body chunks kept as a sample of an error response.
_SAMPLE_CHUNKS = 4


class ServerClosed(ConnectionResetError):
    """The server closed the connection before the response was complete."""


def encode_request(request: Request, host: str) -> tuple[bytes, bool]:
    """Raw HTTP/1.1 bytes of *request* for *host* (``Host`` header value), and whether it is HEAD.

    Raises :class:`~.._workload.InvalidRequestHeader` for a header that cannot be sent as it
    is (CR, LF or NUL in it, a name that is not a token): it is never written raw.
    """
    built = request.checked_httpx()
    body = built.read()
    method = built.method.encode("ascii")
    head = [method, b" ", built.url.raw_path, b" HTTP/1.1\r\nHost: ", host.encode("idna"), b"\r\n"]
    for key, value in built.headers.raw:
        if key.lower() != b"host":
            head += [key, b": ", value, b"\r\n"]
    head.append(b"\r\n")
    return b"".join(head) + body, built.method == "HEAD"


class Exchange:
    """One request/response on a connection: status, first-byte time, body size."""

    __slots__ = ("_conn", "body", "capture", "first_byte", "headers", "nbytes", "status")

    def __init__(self, conn: _Connection, capture: bool = False) -> None:
        self._conn = conn
        self.status = 0
        self.first_byte = 0.0
        self.nbytes = 0
        self.capture = capture
        #: Headers and body chunks, kept when asked (checks, cookies) or for an error status.
        self.headers: list[tuple[bytes, bytes]] | None = [] if capture else None
        self.body: list[bytes] | None = [] if capture else None

    def disconnect(self) -> None:
        """The client gave up (timeout): drop the connection; the user's next call reconnects."""
        self._conn.abort()


class _Transport(Protocol):
    """What a connection needs of its transport."""

    def write(self, data: bytes) -> None: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...


class _Poller:
    """The reconnect path's sockets in one epoll set of their own, which the loop watches as
    one file: a connection costs one ``epoll_ctl`` to add (its close takes it out), never
    the loop's own per-file bookkeeping (a handle, a selector key, two ``epoll_ctl``).

    Where there is no epoll (not Linux), each socket is given to the loop's own reader.
    """

    __slots__ = ("_epoll", "_fd", "_thread", "_wires", "loop", "view")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._thread = get_ident()
        #: What each socket reads into, handed on at once: ``recv(n)`` would allocate n
        #: bytes per call (for 256 KiB, about 10 µs: more than the rest of the read).
        self.view = memoryview(bytearray(_READ))
        self._wires: dict[int, _Wire] = {}
        self._epoll = select.epoll() if _EPOLL else None
        self._fd = -1
        if self._epoll is not None:
            self._fd = self._epoll.fileno()
            loop.add_reader(self._fd, self._ready)

    def current(self) -> bool:
        """Whether its loop is the one running here (without asyncio's own question,
        which costs a system call: getpid)."""
        return self._thread == get_ident() and self.loop.is_running()

    def watch(self, fd: int, wire: _Wire) -> None:
        """Read *fd* for *wire* from now on."""
        if self._epoll is None:
            self.loop.add_reader(fd, wire.readable)
            return
        self._epoll.register(fd, _IN)
        self._wires[fd] = wire

    def writing(self, fd: int, wire: _Wire, on: bool) -> None:
        """Wait (or stop waiting) for *fd* to take more bytes."""
        if self._epoll is None:
            if on:
                self.loop.add_writer(fd, wire.writable)
            else:
                self.loop.remove_writer(fd)
            return
        self._epoll.modify(fd, _IN | _OUT if on else _IN)

    def forget(self, fd: int) -> None:
        """*fd* is about to be closed (which takes it out of the epoll set)."""
        if self._epoll is None:
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
            return
        self._wires.pop(fd, None)

    def _ready(self) -> None:
        wires = self._wires
        for fd, events in self._epoll.poll(0):  # type: ignore[union-attr]
            wire = wires.get(fd)
            if wire is None:
                continue
            if events & _OUT:
                wire.writable()
            if events & ~_OUT and not wire.closed:
                wire.readable()

    def close(self) -> None:
        """Stop watching (every socket has been closed or is abandoned)."""
        if self._epoll is not None and not self._epoll.closed:
            self.loop.remove_reader(self._fd)
            self._epoll.close()
        self._wires.clear()


_EPOLL = hasattr(select, "epoll")
#: A socket made non-blocking as it is created (Linux), one system call fewer.
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_STREAM = socket.SOCK_STREAM | _NONBLOCK
_READ = 262144
_IN = getattr(select, "EPOLLIN", 1)
_OUT = getattr(select, "EPOLLOUT", 4)


class _Wire:
    """A connected non-blocking socket read through a :class:`_Poller`: the part of an
    asyncio transport that one request at a time needs, without its per-connection
    futures, callbacks and buffers.

    A server that closes every connection (gunicorn's sync workers) makes the client
    connect once per request; this is where that cost goes. Writes go straight to the
    socket (the rest, if the kernel took only part, waits for the socket to be writable);
    reads are handed to the protocol. The end of the connection is reported to the
    protocol on the next pass of the loop, as asyncio does, unless nothing waits on it
    (the client closing it once its response is in): then it is marked closed at once.
    """

    __slots__ = ("_fd", "_pending", "_poller", "_protocol", "_sock", "closed")

    def __init__(self, poller: _Poller, sock: _socket.socket, protocol: _Connection) -> None:
        self._poller = poller
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self.closed = False
        self._pending = b""
        protocol.connection_made(self)  # type: ignore[arg-type]
        poller.watch(self._fd, self)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self._pending:
            self._pending += data
            return
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0  # still connecting, or a full buffer
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:  # what some systems say while connecting
                self._lose(exc)
                return
            sent = 0
        if sent < len(data):
            self._pending = data[sent:]
            self._poller.writing(self._fd, self, True)

    def writable(self) -> None:
        if not self._pending:
            return
        try:
            sent = self._sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        self._pending = self._pending[sent:]
        if not self._pending:
            self._poller.writing(self._fd, self, False)

    def readable(self) -> None:
        view = self._poller.view
        try:
            size = self._sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        if size:
            # The parser copies what it keeps: the buffer is the next read's.
            self._protocol.data_received(view[:size])  # type: ignore[arg-type]
        else:
            self._protocol.eof_received()
            self._lose(None)

    def abort(self) -> None:
        self._lose(None)

    def close(self) -> None:
        # One request at a time: a request still being written is abandoned with it.
        self._lose(None)

    def _lose(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self._poller.forget(self._fd)
        self._pending = b""
        self._sock.close()
        protocol = self._protocol
        if exc is None and protocol.idle():
            protocol.closed = True  # what connection_lost would do, with nothing waiting
        else:
            self._poller.loop.call_soon(protocol.connection_lost, exc)


class _Connection(asyncio.Protocol):
    """One client connection; one request in flight at a time."""

    __slots__ = (
        "closed",
        "exchange",
        "fault",
        "head",
        "interim",
        "keep_alive",
        "loop",
        "parser",
        "received",
        "stray",
        "transport",
        "used",
        "waiter",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        #: The loop it runs on, when known (asking asyncio costs a system call, getpid).
        self.loop = loop
        self.transport: _Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.exchange: Exchange | None = None
        self.closed = False
        self.keep_alive = True
        self.used = 0
        self.head = False
        self.received = False
        #: The response being read is interim (1xx but 101): the final one follows.
        self.interim = False
        #: A message began with no request outstanding.
        self.stray = False
        #: Why the connection failed between requests; raised for the next request on it.
        self.fault: UnsolicitedResponse | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:
            self._unsolicited(f"{len(data)} bytes ({bytes(data[:40])!r})")
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # 101 Switching Protocols: the exchange is over, and HTTP on this connection
            # with it (upgrades are the WebSocket driver's business).
            self.keep_alive = False
            self.exchange = None
            return
        except httptools.HttpParserError as exc:
            if self.exchange is None:  # after the response asked for was complete
                self._unsolicited(f"bytes that are not HTTP ({exc})")
                return
            self._fail(exc)
            self.abort()
            return
        if self.stray:
            self._unsolicited("a second response after the one asked for")

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange = self.exchange
        if exchange is not None and exchange.status and exc is None and not self.keep_alive:
            # A response delimited by the end of the connection (no length, not chunked).
            self._complete()
            return
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(
                exc if exc is not None else ServerClosed("the server closed the connection")
            )

    def idle(self) -> bool:
        """No request waits on this connection: its end has nobody to tell."""
        return self.exchange is None and (self.waiter is None or self.waiter.done())

    def _unsolicited(self, what: str) -> None:
        """Bytes with no request outstanding: fail the connection, never read them as an answer."""
        if self.fault is None:
            self.fault = UnsolicitedResponse(
                f"the server sent {what} with no request outstanding: a response nobody asked "
                "for; the connection was closed"
            )
        self.abort()

    # -- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.exchange is None:
            self.stray = True

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.headers is not None:
            code = self.parser.get_status_code()
            if code >= 200 or code == 101:  # an interim response's headers are not kept
                exchange.headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            # 100 Continue, 103 Early Hints: interim, kept apart from the final response
            # that follows on the same connection (as h11 does).
            self.interim = True
            return
        exchange.status = status
        if exchange.status >= 400 and exchange.body is None:
            exchange.headers, exchange.body = [], []
        self.keep_alive = self.parser.should_keep_alive()
        if self.head:
            # llhttp cannot be told that a HEAD response has no body: start afresh.
            self.parser = httptools.HttpResponseParser(self)
            self._complete()

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            if not exchange.first_byte:
                exchange.first_byte = perf_counter()
            exchange.nbytes += len(body)
            kept = exchange.body
            if kept is not None and (exchange.capture or len(kept) < _SAMPLE_CHUNKS):
                kept.append(bytes(body))

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.keep_alive = self.parser.should_keep_alive()
        self._complete()

    # -- client side ----------------------------------------------------------------------

    def _complete(self) -> None:
        exchange = self.exchange
        if exchange is not None and not exchange.first_byte:
            exchange.first_byte = perf_counter()
        self.exchange = None
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def send(self, raw: bytes, exchange: Exchange, head: bool) -> asyncio.Future[None]:
        """Write *raw*; the future returned is done once the whole response has been read."""
        transport = self.transport
        if transport is None or self.closed:
            raise ServerClosed("the connection is closed")
        self.exchange = exchange
        self.head = head
        self.received = False
        self.used += 1
        waiter = self.waiter = (self.loop or asyncio.get_running_loop()).create_future()
        transport.write(raw)
        return waiter

    def abort(self) -> None:
        """Close at once (RST), dropping whatever is in flight."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close after flushing (FIN)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpDriver:
    """Sends a storm's requests to a server at *base_url* over HTTP/1.1, one connection per user.

    ``holder`` is the virtual user's slot: its connection lives on ``holder.conn``
    (opened lazily, reopened after a timeout or a ``Connection: close``) and each
    request's :class:`Exchange` is put on ``holder.exchange`` before it is sent, so that
    a timeout can call ``holder.exchange.disconnect()``.
    """

    def __init__(
        self, base_url: str, requests: list[Request], *, server: str | None = None
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(
                f"server={base_url!r} must be an http:// URL of a server root, such as "
                "'http://127.0.0.1:8000'"
            )
        self.host = parts.hostname
        self.port = parts.port or 80
        self._host_header = parts.netloc
        self._templates = [encode_request(spec, self._host_header) for spec in requests]
        self._connections: set[_Connection] = set()
        #: The (family, address) the first connection reached: later ones go straight there.
        self._address: tuple[int, Any] | None = None
        #: The reconnect path's sockets, watched as one file by the loop that runs them.
        self._poller: _Poller | None = None
        #: New connections go to that address on a plain socket (:class:`_Wire`).
        self._wired = False
        self._server = server
        self.base_url = base_url

    def describe(self) -> str:
        """What serves the requests: the server's description (when given) and its URL."""
        if self._server:
            return f"{self._server}, over loopback HTTP"
        return f"server at {self.base_url}, over loopback HTTP"

    async def _connect(self) -> _Connection:
        if self._wired:
            return self._reconnect()
        loop = asyncio.get_running_loop()
        transport, conn = await loop.create_connection(_Connection, self.host, self.port)
        if self._address is None:
            # The first connection resolves the host and tries each of its addresses.
            sock = transport.get_extra_info("socket")
            self._address = (sock.family, sock.getpeername())
            # uvloop's transports are C: its loop keeps connections that last (keep-alive)
            # until the server closes one after its response (then each request connects).
            self._wired = not type(loop).__module__.startswith("uvloop")
        self._connections.add(conn)
        return conn

    def _reconnect(self) -> _Connection:
        """A new connection to the address the first one reached, without asyncio's
        transport (see :class:`_Wire`)."""
        poller = self._poller
        if poller is None or not poller.current():
            if poller is not None:
                poller.close()
            poller = self._poller = _Poller(asyncio.get_running_loop())
        family, address = self._address  # type: ignore[misc]
        conn = self._open(poller, family, address)
        self._connections.add(conn)
        return conn

    @staticmethod
    def _open(poller: _Poller, family: int, address: Any) -> _Connection:
        """A non-blocking connection to *address*: on loopback the handshake is done by the
        time the request is written, and a connection that fails reports it to the
        request's waiter.

        The address is the one the first connection reached, through the egress guard
        (which checked it and applied any redirect); the socket is the C one beneath
        :class:`socket.socket`, without its Python wrapper's cost per connection.
        """
        sock = _socket.socket(family, _STREAM)
        try:
            if not _NONBLOCK:
                sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(address)
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, f"connect to {address!r}: {errno.errorcode.get(code, code)}")
            conn = _Connection(poller.loop)
            _Wire(poller, sock, conn)
        except BaseException:
            sock.close()
            raise
        return conn

    async def startup(self, group: anyio.abc.TaskGroup, timeout: float) -> None:
        """Check that the server accepts a connection within *timeout* seconds."""
        try:
            with anyio.fail_after(timeout):
                conn = await self._connect()
        except (OSError, TimeoutError) as exc:
            raise StormError(
                f"server {self.host}:{self.port} did not accept a connection within "
                f"{timeout:g} s: {exc!r}"
            ) from exc
        conn.close()
        self._connections.discard(conn)

    async def shutdown(self, timeout: float) -> None:
        """Close every connection."""
        for conn in self._connections:
            conn.close()
        self._connections.clear()
        if self._poller is not None:
            self._poller.close()
            self._poller = None
        await anyio.sleep(0)

    def call(self, index: int, holder: Any) -> Coroutine[Any, Any, Exchange]:
        """Send prebuilt request spec *index* and read the whole response."""
        raw, head = self._templates[index]
        return self._send(raw, head, holder)

    async def call_request(self, request: Request, holder: Any) -> Exchange:
        """Send a request built on the fly (templated requests pay for encoding it)."""
        raw, head = encode_request(request, self._host_header)
        return await self._send(raw, head, holder)

    async def _send(self, raw: bytes, head: bool, holder: Any) -> Exchange:
        conn: _Connection | None = getattr(holder, "conn", None)
        if conn is not None and conn.fault is not None:
            # The server broke the protocol between requests: this request, which those
            # bytes would have answered, fails as a protocol error; the next one reconnects.
            self._drop(conn, holder)
            raise conn.fault
        if conn is None or conn.closed:
            conn = self._reconnect() if self._wired else await self._connect()
            if holder is not None:
                holder.conn = conn
        capture = getattr(holder, "capture", False)
        user = getattr(holder, "user", None)
        if user is not None and (user.headers or user.cookies):
            # The user's own headers and cookies go just before the blank line.
            end = raw.index(b"\r\n\r\n") + 2
            pairs = checked_user_headers(user.header_pairs())
            extra = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in pairs)
            raw = raw[:end] + extra + raw[end:]
        try:
            exchange = Exchange(conn, capture)
            if holder is not None:
                holder.exchange = exchange  # for a timeout to reach
            await conn.send(raw, exchange, head)
        except ServerClosed:
            self._connections.discard(conn)
            if conn.used == 1 or conn.received:
                raise
            # An idle keep-alive connection the server had closed: retry once, as clients do.
            conn = await self._connect()
            if holder is not None:
                holder.conn = conn
            try:
                exchange = Exchange(conn, capture)
                if holder is not None:
                    holder.exchange = exchange
                await conn.send(raw, exchange, head)
            except BaseException:
                self._drop(conn, holder)
                raise
        except BaseException:
            # Cancelled (timeout) or failed mid-response: the connection cannot be reused.
            self._drop(conn, holder)
            raise
        if not conn.keep_alive:
            self._wired = True  # the server closes after its response: plain sockets from now
            self._drop(conn, holder)
        elif holder is None:
            self._drop(conn, holder)
        return exchange

    def _drop(self, conn: _Connection, holder: Any) -> None:
        conn.abort() if conn.exchange is not None else conn.close()
        self._connections.discard(conn)
        if holder is not None and getattr(holder, "conn", None) is conn:
            holder.conn = None


if TYPE_CHECKING:
    _conforms: type[AsyncDriver] = HttpDriver
