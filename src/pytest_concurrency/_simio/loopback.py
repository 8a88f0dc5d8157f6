"""Declared upstream routes served over real HTTP on loopback, for every client but httpx.

httpx and httpx2 are answered in-process by their transports. Every other client (aiohttp,
requests and urllib3, ``urllib.request``, anything on sockets) opens a real connection, so
during a storm the declared hosts resolve to :data:`ALIAS`, a loopback address no service
uses, and the egress guard turns a connection to it into one to this server on 127.0.0.1.
The server reads the host from the ``Host`` header and answers from the same ``Route``
objects as the in-process path (same waits on its own event loop, same counts), with h11
(httpx's own HTTP/1.1 parser) for the protocol. ``https://`` routes are answered on a
second port over TLS, with a certificate for their hosts from the session's throwaway CA
(``tls``), which the egress guard has the clients trust. A route's ``timeout_rate`` call is held
open without an answer until the client gives up; a path no route matches on a declared
host gets a 502 naming the routes, and is counted as undeclared.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any

import h11
import httpx

__all__ = ["ALIAS", "LoopbackUpstream"]

#: What a declared host resolves to during a storm: loopback, and used by nothing else.
ALIAS = "127.77.0.1"
_READ = 65_536
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (less CPU per request), else asyncio's."""
    try:
        uvloop: Any = importlib.import_module("uvloop")  # optional: the servers extra
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class LoopbackUpstream:
    """A real HTTP/1.1 server on 127.0.0.1 answering the routes of the installed upstreams.

    ``upstreams()`` gives the installed upstreams, newest last (the newest answers, as
    in-process); start it with :meth:`start` and stop it on every exit with :meth:`stop`.
    """

    def __init__(
        self, upstreams: Callable[[], Sequence[Any]], *, tls: ssl.SSLContext | None = None
    ) -> None:
        self._upstreams = upstreams
        self._tls = tls
        self._tls_server: asyncio.Server | None = None
        self._closing = False
        self.tls_port: int | None = None
        """The port answering ``https://`` routes over TLS (when started with a context)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopped: asyncio.Event | None = None
        self.port = 0

    def start(self) -> LoopbackUpstream:
        """Listen on 127.0.0.1 (a free port) from a thread of its own; return self."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = _new_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._main(ready))
            except BaseException as exc:  # reported to start() if it came before ready
                failure.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="storm-loopback-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(_START_TIMEOUT) or failure:
            self.stop()
            raise RuntimeError(
                f"the loopback upstream server did not start: {failure or 'timeout'}"
            )
        return self

    async def _main(self, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(
            functools.partial(self._serve, scheme="http"), "127.0.0.1", 0
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self._tls is not None:
            # TLS is started on each accepted connection (in _serve), so a connection still
            # in its handshake is one of ``_writers`` and is dropped with them on stop.
            self._tls_server = await asyncio.start_server(
                functools.partial(self._serve, scheme="https"), "127.0.0.1", 0, ssl=self._tls
            )
            self.tls_port = self._tls_server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            self._server.close()
            if self._tls_server is not None:
                self._tls_server.close()
            self._closing = True
            for writer in list(self._writers):
                # Aborted, not closed: a TLS close would wait on the client's close_notify.
                writer.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), _STOP_TIMEOUT)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """Close the server and every connection, and join its thread (a no-op when stopped)."""
        loop, stopped, thread = self._loop, self._stopped, self._thread
        if loop is not None and stopped is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(stopped.set)
        if thread is not None:
            thread.join(_STOP_TIMEOUT + 1)
        self._thread = None

    # -- one connection

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, scheme: str
    ) -> None:
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._next_request(conn, reader, scheme)
                if request is None:
                    return
                answered = await self._answer(conn, reader, writer, request)
                if not answered or conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            self._writers.discard(writer)
            if self._closing:
                writer.transport.abort()
            else:
                writer.close()

    async def _next_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, scheme: str = "http"
    ) -> httpx.Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(_READ)
                conn.receive_data(data)  # b"" is the client's end of the connection
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers]
                host = next((v for k, v in headers if k.lower() == "host"), "")
                target = head.target.decode("latin-1")
                return httpx.Request(
                    head.method.decode("ascii"),
                    f"{scheme}://{host}{target}",
                    headers=headers,
                    content=bytes(body),
                )
            else:  # ConnectionClosed, or anything unexpected
                return None

    async def _answer(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: httpx.Request,
    ) -> bool:
        upstreams = self._upstreams()
        if not upstreams:
            await self._send(conn, writer, 502, [], [b"no upstream is installed"])
            return True
        try:
            route = upstreams[-1]._match(request)
        except httpx.TransportError as exc:
            await self._send(conn, writer, 502, [], [str(exc).encode("utf-8")])
            return True
        try:
            response = await route._handle_async(request)
        except httpx.TimeoutException:
            # No answer: hold the connection until the client gives up on it.
            with contextlib.suppress(ConnectionError):
                while await reader.read(_READ):
                    pass
            return False
        except Exception as exc:  # the route's handler failed: a 500 that names it
            message = f"handler of {route.label} raised {type(exc).__name__}: {exc}"
            await self._send(conn, writer, 500, [], [message.encode("utf-8", "replace")])
            return True
        headers = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("connection", "keep-alive")
        ]
        stream = response.stream
        # One write per response where the body is at hand: every write is a send(2), and
        # each send hands the interpreter lock to the client's thread and waits to get it back.
        streamed = not isinstance(stream, httpx.ByteStream)
        head = request.method == "HEAD"  # the headers of a GET, and no body
        pending = conn.send(h11.Response(status_code=response.status_code, headers=headers))
        try:
            async for chunk in stream:
                if chunk and not head:
                    pending += conn.send(h11.Data(data=chunk))
                if streamed:
                    writer.write(pending)
                    pending = b""
                    await writer.drain()
            writer.write(pending + conn.send(h11.EndOfMessage()))
            await writer.drain()
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        return True

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        status: int,
        headers: list[tuple[str, str]],
        body: list[bytes],
    ) -> None:
        content = b"".join(body)
        head = [
            *headers,
            ("content-type", "text/plain; charset=utf-8"),
            ("content-length", str(len(content))),
        ]
        writer.write(
            conn.send(h11.Response(status_code=status, headers=head))
            + conn.send(h11.Data(data=content))
            + conn.send(h11.EndOfMessage())
        )
        await writer.drain()
