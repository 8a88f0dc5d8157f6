"""Small raw ASGI and WSGI apps whose behaviour the storm figures can be checked against."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import anyio

Scope = dict[str, Any]


def asgi_sleep(seconds: float) -> Callable[..., Any]:
    """ASGI app that awaits *seconds* of simulated I/O per request."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await anyio.sleep(seconds)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def asgi_blocking(seconds: float) -> Callable[..., Any]:
    """ASGI app whose `async def` handler calls time.sleep (blocks the event loop)."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        time.sleep(seconds)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def asgi_hello(scope: Scope, receive: Any, send: Any) -> None:
    """Minimal ASGI app: 200 with a short body, no I/O."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def asgi_cpu(loops: int) -> Callable[..., Any]:
    """ASGI app that spends *loops* additions of Python per request (CPU-bound, ≈ 1 ms at 20,000)."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        total = 0
        for i in range(loops):
            total += i
        await asgi_hello(scope, receive, send)

    return app


def wsgi_sleep(seconds: float) -> Callable[..., Iterable[bytes]]:
    """WSGI app that blocks its worker for *seconds* per request."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        time.sleep(seconds)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def wsgi_hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Minimal WSGI app."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


class ClosingBody:
    """WSGI response iterable that records that the server called close()."""

    closed = 0

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        type(self).closed += 1


async def asgi_routes(scope: Scope, receive: Any, send: Any) -> None:
    """ASGI app for real-server tests: ``/`` hello, ``/echo`` body size, ``/stream`` chunks, ``/slow``, ``/close``."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    headers: list[tuple[bytes, bytes]] = []
    if path == "/echo":
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        payload = b'{"received": %d}' % len(body)
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(3):
            await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
            await anyio.sleep(0.1)
        await send({"type": "http.response.body", "body": b""})
        return
    elif path == "/slow":
        await anyio.sleep(2.0)
        payload = b"slow"
    elif path == "/close":
        headers.append((b"connection", b"close"))
        payload = b"bye"
    elif path == "/empty":
        payload = b""
    else:
        payload = b"hello"
    headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def wsgi_routes(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """WSGI app for real-server tests: ``/`` hello, ``/echo`` body size, ``/stream`` a generator."""
    path = environ["PATH_INFO"]
    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"received": %d}' % len(body)]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def chunks() -> Iterator[bytes]:
            for _ in range(3):
                yield b"x" * 1000
                time.sleep(0.1)

        return chunks()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


#: Module-level apps a real server can import by name (``tests.apps:io_asgi`` …).
io_asgi = asgi_sleep(0.05)
blocking_asgi = asgi_blocking(0.05)
io_wsgi = wsgi_sleep(0.05)
