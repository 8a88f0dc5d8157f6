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
