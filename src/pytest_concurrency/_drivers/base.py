"""What a driver is: the protocol side of a storm, turning a request into a response.

Drivers know nothing of pytest, of budgets or of the load model. The engine's
schedule decides who sends what and when; a driver only carries one request out and
says when the first body byte came back. Two kinds plug into the engine:

- an :class:`AsyncDriver` runs each request on the caller's task, on the engine's
  event loop (the in-process ASGI driver; an HTTP client for real servers);
- a pool executor runs requests on threads of its own and follows the same schedule
  from those threads (the in-process WSGI pool, where a hop between an event loop
  and a thread per request would cost more than the request).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol

import anyio.abc

from .._headers import content_length
from .._workload import Request

__all__ = [
    "AsyncDriver",
    "BadHeaders",
    "BadStatus",
    "BodyBeforeStart",
    "BodyNotBytes",
    "ContentLengthMismatch",
    "Exchange",
    "HopByHopHeader",
    "IncompleteResponse",
    "InvalidHeader",
    "MessageAfterResponse",
    "NoStartResponse",
    "ProtocolViolation",
    "Slot",
    "StartedTwice",
    "UnknownMessage",
    "UnsolicitedResponse",
]


class ProtocolViolation(Exception):
    """The app broke its side of the ASGI or WSGI protocol; recorded under its own kind."""


class BodyBeforeStart(ProtocolViolation):
    """ASGI: a response body before ``http.response.start``."""


class StartedTwice(ProtocolViolation):
    """ASGI: a second ``http.response.start``; WSGI: ``start_response`` called twice
    without ``exc_info``."""


class BodyNotBytes(ProtocolViolation):
    """A body chunk that is not bytes (ASGI ``body``, a WSGI iterable's item)."""


class BadStatus(ProtocolViolation):
    """A status that is not an int from 100 to 599 (ASGI), or not "NNN reason" (WSGI)."""


class BadHeaders(ProtocolViolation):
    """Response headers of the wrong shape or type."""


class InvalidHeader(BadHeaders):
    """A response header a real server refuses to send: a name that is not a token, a value
    with CR, LF, NUL or another control (WSGI: or outside latin-1), a content-length that is
    not a number or conflicts with another."""


class HopByHopHeader(BadHeaders):
    """WSGI: a hop-by-hop header (``Connection``, ``Keep-Alive``, ``Transfer-Encoding``, …),
    which PEP 3333 leaves to the server."""


class ContentLengthMismatch(ProtocolViolation):
    """A response body longer or shorter than its ``content-length``."""


class MessageAfterResponse(ProtocolViolation):
    """ASGI: a message after the response was complete."""


class UnknownMessage(ProtocolViolation):
    """ASGI: a message type the http scope does not know."""


class IncompleteResponse(ProtocolViolation):
    """ASGI: the app returned after ``http.response.start`` without finishing the body."""


class NoStartResponse(ProtocolViolation):
    """WSGI: the app returned (or yielded a chunk) without calling ``start_response``."""


class UnsolicitedResponse(ProtocolViolation):
    """HTTP client: the server sent bytes with no request outstanding (a response nobody
    asked for); the connection is failed rather than reading them as the next answer."""


class Exchange(Protocol):
    """The outcome of one request: its status (0 if none was sent) and first-byte time."""

    status: int
    #: ``perf_counter()`` when the first body byte came back (the end, for an empty body).
    first_byte: float
    #: Response headers and body chunks when the slot asked to capture them (checks,
    #: cookies) or the status was an error; None otherwise.
    headers: Any
    body: list[bytes] | None


class Slot(Protocol):
    """A virtual user's (or open-model connection's) slot, living across its requests.

    A driver sets ``exchange`` before the app runs to an object with a ``disconnect()``
    method, which the engine calls when the request times out; it may keep per-user
    state such as a keep-alive connection on other attributes of its own.
    """

    exchange: Any


class AsyncDriver(Protocol):
    """A driver whose requests run on the engine's event loop."""

    def describe(self) -> str:
        """What serves the requests, in the field's words (for example "event loop (asyncio)")."""

    async def startup(self, group: anyio.abc.TaskGroup, timeout: float) -> None:
        """Prepare before the first request (lifespan startup, a connection check)."""

    async def shutdown(self, timeout: float) -> None:
        """Release everything after the last request."""

    def call(self, index: int, slot: Slot) -> Coroutine[Any, Any, Exchange]:
        """Send request spec *index* of the storm's mix and consume the whole response."""

    def call_request(self, request: Request, slot: Slot) -> Coroutine[Any, Any, Exchange]:
        """Send a request built on the fly (templated requests)."""


class CheckedHeaders:
    """Response header lists already checked, and their declared content-length (-1: none).

    An app sends a handful of distinct lists; past :attr:`KEPT` of them, the cache starts
    afresh.
    """

    KEPT = 256

    def __init__(self) -> None:
        self._known: dict[tuple[Any, ...], int] = {}
        #: The lists checked so far (as tuples) and their declared length, for a caller
        #: that looks a list up itself (one dict lookup, no call per response).
        self.known = self._known

    def lookup(self, headers: Any) -> tuple[tuple[Any, ...] | None, int | None]:
        """The cache key of *headers* (None: unhashable, checked each time) and their
        declared length if they were checked before."""
        try:
            key = tuple(headers)
            return key, self._known.get(key)
        except TypeError:
            return None, None

    def remember(self, key: tuple[Any, ...] | None, lengths: list[bytes]) -> int:
        """The declared length of checked headers whose content-length values are *lengths*;
        raises :class:`InvalidHeader` for a bad or conflicting one."""
        length = None
        if lengths:
            try:
                length = content_length(lengths)
            except ValueError as exc:
                raise InvalidHeader(str(exc)) from None
        declared = -1 if length is None else length
        if key is not None:
            if len(self._known) >= self.KEPT:
                self._known.clear()  # lists that differ each time: start afresh
            self._known[key] = declared
        return declared
