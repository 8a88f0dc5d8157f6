"""Latency middleware: a simulated wait in front of any ASGI or WSGI app."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, TypeAlias

from .._apps import as_asgi3, detect_interface
from .distributions import Latency, LatencyLike, as_latency
from .waits import _default_rng, _wait_async, _wait_blocking

#: What the middleware's waits are charged to, in a request's breakdown.
_MIDDLEWARE = "latency middleware"

__all__ = ["ASGILatencyMiddleware", "WSGILatencyMiddleware", "with_latency"]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
WSGIApp: TypeAlias = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _middleware_repr(app: object, before: Latency, after: Latency | None, extra: str) -> str:
    after_text = f", after={after}" if after is not None else ""
    return f"with_latency({app!r}, {before}{after_text}{extra})"


class ASGILatencyMiddleware:
    """An ASGI app that waits before each HTTP request reaches the wrapped app.

    The ``after`` wait holds the app's final body message, so the client sees the response
    complete only after it, as with WSGI (where the server sends the body after the app
    returns). Lifespan and websocket scopes pass through untouched.
    """

    def __init__(
        self,
        app: Any,
        latency: Latency,
        *,
        after: Latency | None = None,
        blocking: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.app: ASGIApp = as_asgi3(app)
        self.__wrapped__ = app
        self.latency = latency
        self.after = after
        self.blocking = blocking
        self._rng = rng

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wait, then call the app (and wait ``after`` before its final body message)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rng = _default_rng if self._rng is None else self._rng
        if self.blocking:
            # Deliberately stalls the event loop: the mistake this option demonstrates.
            _wait_blocking(self.latency.sample(rng), _MIDDLEWARE)
        else:
            await _wait_async(self.latency.sample(rng), _MIDDLEWARE)
        after = self.after
        if after is None:
            await self.app(scope, receive, send)
            return
        blocking = self.blocking

        async def send_after(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                if blocking:
                    _wait_blocking(after.sample(rng), _MIDDLEWARE)
                else:
                    await _wait_async(after.sample(rng), _MIDDLEWARE)
            await send(message)

        await self.app(scope, receive, send_after)

    def __repr__(self) -> str:
        extra = ", blocking=True" if self.blocking else ""
        return _middleware_repr(self.__wrapped__, self.latency, self.after, extra)


class WSGILatencyMiddleware:
    """A WSGI app that blocks its worker thread before (and ``after``) the wrapped app."""

    def __init__(
        self,
        app: WSGIApp,
        latency: Latency,
        *,
        after: Latency | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.app = app
        self.__wrapped__ = app
        self.latency = latency
        self.after = after
        self._rng = rng

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """Block for one wait, call the app, then block ``after`` before handing back the body."""
        rng = _default_rng if self._rng is None else self._rng
        _wait_blocking(self.latency.sample(rng), _MIDDLEWARE)
        body = self.app(environ, start_response)
        if self.after is not None:
            _wait_blocking(self.after.sample(rng), _MIDDLEWARE)
        return body

    def __repr__(self) -> str:
        return _middleware_repr(self.__wrapped__, self.latency, self.after, "")


def with_latency(
    app: Any,
    latency: LatencyLike,
    *,
    blocking: bool = False,
    after: LatencyLike = None,
    seed: int | None = None,
) -> ASGILatencyMiddleware | WSGILatencyMiddleware:
    """Wrap an ASGI or WSGI app so every HTTP request first waits a sampled latency.

    ASGI apps wait with ``anyio.sleep``, or with ``time.sleep`` on the event loop when
    ``blocking=True`` (to show what a blocking call in async code does). WSGI apps always
    block their worker thread. ``seed`` gives the wrapper its own generator.
    """
    before = as_latency(latency)
    after_latency = None if after is None else as_latency(after, name="after")
    rng = None if seed is None else random.Random(seed)
    if detect_interface(app) == "asgi":
        return ASGILatencyMiddleware(app, before, after=after_latency, blocking=blocking, rng=rng)
    return WSGILatencyMiddleware(app, before, after=after_latency, rng=rng)
