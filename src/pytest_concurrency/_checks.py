"""Checks on responses, and the response a check (or a start hook) sees.

``checks=`` on a storm or on one request of a mix: an expected status or set of
statuses, or a callable on the :class:`Response` that returns False or raises. A failed
check counts as a failed request, under the kind ``CheckFailed`` with the first message
and a sample of the body.

A check is judged, never assumed: one that returns anything but True, False or None, or
raises (``SystemExit`` too), or takes longer than the request's timeout, fails. An
``async def`` check is awaited by async drivers; the in-process WSGI pool, whose threads
run no event loop, refuses it before load.
"""

from __future__ import annotations

import inspect
import json as jsonlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from time import perf_counter
from typing import Any

import anyio

from ._errors import ConfigError

__all__ = [
    "NO_CHECKS",
    "SAMPLE_BYTES",
    "Checks",
    "Response",
    "Samples",
    "headers_text",
    "is_async_callable",
    "parse_checks",
]

#: Bytes of a body kept as a sample with a failure.
SAMPLE_BYTES = 1000


class Response:
    """A response as a check or a start hook sees it: status, headers, body."""

    __slots__ = ("content", "headers", "status")

    def __init__(self, status: int, headers: Iterable[tuple[str, str]], content: bytes) -> None:
        self.status = status
        self.headers = _Headers(headers)
        self.content = content

    @property
    def status_code(self) -> int:
        """The status, by httpx's and requests' name."""
        return self.status

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return jsonlib.loads(self.content)

    @property
    def ok(self) -> bool:
        """True for a status below 400."""
        return self.status < 400

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.content):,} bytes>"


class _Headers(dict[str, str]):
    """Response headers, looked up case-insensitively (repeated headers joined by ", ")."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        super().__init__()
        self.raw: list[tuple[str, str]] = []
        for name, value in pairs:
            self.raw.append((name, value))
            key = name.lower()
            super().__setitem__(key, f"{self[key]}, {value}" if key in self else value)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)

    def get(self, key: str, default: Any = None) -> Any:
        """The header's value, or *default*."""
        return super().get(key.lower(), default)


@dataclass(frozen=True)
class Checks:
    """Expected statuses and callables that judge a response."""

    statuses: frozenset[int] | None = None
    funcs: tuple[tuple[str, Callable[[Response], Any]], ...] = ()

    @property
    def needs_body(self) -> bool:
        """True when a callable will look at the response."""
        return bool(self.funcs)

    def __bool__(self) -> bool:
        return self.statuses is not None or bool(self.funcs)

    @cached_property
    def awaits(self) -> bool:
        """True when a check is an ``async def`` (only an async driver can await it)."""
        return any(is_async_callable(func) for _, func in self.funcs)

    def judge(self, response: Response, deadline: float = math.inf) -> str | None:
        """None when the response passes; otherwise the first failure, in words.

        A check that raises (``SystemExit`` too), returns anything but True, False or None,
        returns an awaitable nobody awaits, or takes longer than *deadline* seconds fails.
        """
        failure = self._statuses_failure(response)
        if failure is not None:
            return failure
        for name, func in self.funcs:
            began = perf_counter()
            try:
                verdict = func(response)
            except (Exception, SystemExit) as exc:
                return f"{name} raised {type(exc).__name__}: {exc}"
            if inspect.isawaitable(verdict):
                _close(verdict)
                return (
                    f"{name} returned {type(verdict).__name__} (an async check) where nothing "
                    "awaits it: the in-process WSGI pool runs no event loop; make it a plain def"
                )
            failure = _verdict_failure(name, verdict, perf_counter() - began, deadline)
            if failure is not None:
                return failure
        return None

    async def ajudge(self, response: Response, deadline: float = math.inf) -> str | None:
        """:meth:`judge` for an async driver: awaitable checks are awaited within *deadline*."""
        failure = self._statuses_failure(response)
        if failure is not None:
            return failure
        for name, func in self.funcs:
            began = perf_counter()
            try:
                verdict = func(response)
                if inspect.isawaitable(verdict):
                    pending = verdict
                    with anyio.move_on_after(max(0.0, began + deadline - perf_counter())) as scope:
                        verdict = await pending
                    if scope.cancelled_caught:
                        _close(pending)
                        return f"check {name} was still running at its {deadline:g} s deadline"
            except (Exception, SystemExit) as exc:
                return f"{name} raised {type(exc).__name__}: {exc}"
            failure = _verdict_failure(name, verdict, perf_counter() - began, deadline)
            if failure is not None:
                return failure
        return None

    def _statuses_failure(self, response: Response) -> str | None:
        if self.statuses is not None and response.status not in self.statuses:
            wanted = ", ".join(str(s) for s in sorted(self.statuses))
            return f"status {response.status}, expected {wanted}"
        return None

    def merged(self, other: Checks) -> Checks:
        """These checks and *other*'s (a request's own checks on top of the storm's)."""
        if not other:
            return self
        if not self:
            return other
        statuses = other.statuses if other.statuses is not None else self.statuses
        return Checks(statuses, self.funcs + other.funcs)


NO_CHECKS = Checks()


def is_async_callable(func: Any) -> bool:
    """True for an ``async def`` (or an object whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def _close(awaitable: Any) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()  # never awaited: no "coroutine was never awaited" warning later


def _verdict_failure(name: str, verdict: Any, took: float, deadline: float) -> str | None:
    if took > deadline:
        return f"check {name} blocked for {took:.1f} s past its {deadline:g} s deadline"
    if type(verdict).__name__ == "bool_":  # numpy's bool: a verdict all the same
        verdict = bool(verdict)
    if verdict is False:
        return f"{name} returned False"
    if verdict is True or verdict is None:
        return None
    if inspect.isgenerator(verdict):
        verdict.close()
    # A truthy object is no verdict: a generator, a response, a string would all pass.
    return f"{name} returned {type(verdict).__name__}, not True, False or None"


def _check_callable(item: Any, value: Any, origin: str) -> None:
    """Refuse a check that could never judge: a generator function, or the wrong arity."""
    call = getattr(item, "__call__", None)  # noqa: B004 - the object's own __call__
    target = item if inspect.isfunction(item) or not inspect.ismethod(call) else call
    if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
        raise ConfigError(
            f"checks={value!r} (from {origin}): {item!r} is a generator function, which "
            "judges nothing; make it a def (or async def) returning True, False or None"
        )
    try:
        signature = inspect.signature(item)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(object())
    except TypeError:
        raise ConfigError(
            f"checks={value!r} (from {origin}): {item!r} must take one argument, the "
            f"response (its signature is {signature})"
        ) from None


def parse_checks(value: Any, origin: str) -> Checks:
    """``checks=``: a status, a set of statuses, a callable, or a list of those."""
    if value is None:
        return NO_CHECKS
    items = list(value) if isinstance(value, list | tuple) else [value]
    statuses: set[int] | None = None
    funcs: list[tuple[str, Callable[[Response], Any]]] = []
    for item in items:
        if isinstance(item, bool):
            raise ConfigError(f"checks={value!r} (from {origin}): {item!r} is not a check")
        if isinstance(item, int):
            statuses = (statuses or set()) | {item}
        elif isinstance(item, set | frozenset) and all(
            isinstance(s, int) and not isinstance(s, bool) for s in item
        ):
            statuses = (statuses or set()) | set(item)
        elif callable(item):
            _check_callable(item, value, origin)
            funcs.append((getattr(item, "__name__", repr(item)), item))
        else:
            raise ConfigError(
                f"checks={value!r} (from {origin}) must be a status, a set of statuses, a "
                "callable taking the response, or a list of those"
            )
    for status in statuses or ():
        if not 100 <= status <= 599:
            raise ConfigError(f"checks={value!r} (from {origin}): {status} is not an HTTP status")
    return Checks(frozenset(statuses) if statuses is not None else None, tuple(funcs))


@dataclass
class Samples:
    """One body per failing status code and per failed check, kept for the failure report."""

    by_status: dict[int, str] = field(default_factory=dict)

    def keep(self, status: int, body: bytes) -> None:
        """Keep *body* as the sample of *status* unless one is kept already."""
        if status not in self.by_status:
            self.by_status[status] = body[:SAMPLE_BYTES].decode("utf-8", "replace")


def headers_text(pairs: Iterable[tuple[Any, Any]] | Mapping[str, str]) -> list[tuple[str, str]]:
    """Response headers as text pairs (ASGI sends bytes)."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return [
        (
            k.decode("latin-1") if isinstance(k, bytes) else k,
            v.decode("latin-1") if isinstance(v, bytes) else v,
        )
        for k, v in items
    ]
