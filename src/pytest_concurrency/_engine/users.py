"""Virtual users with state, and checks on their responses.

A closed-model user is a :class:`User`: its ``index``, a ``state`` dict of its own, a
cookie jar (``Set-Cookie`` honoured, sent back on every later request) and default
headers. An ``on_start(user)`` hook runs once per user before the round starts — a
login, typically — through the same driver as the storm; its requests are recorded
apart (``result.on_start``), not mixed into the storm's figures. Request
factories receive the user itself as their first argument: it is also the user's
index (an ``int``), so ``factory(user, iteration)`` may read ``user.state``.

The user's request methods return a :class:`Response` (``status``, ``headers``,
``json()``, ``text``).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from http.cookies import CookieError, SimpleCookie
from typing import Any

from .._checks import Response
from .._workload import Request

__all__ = ["AsyncUser", "SyncUser", "User", "is_async_hook"]


class User(int):
    """One virtual user: its index (the int itself), ``state``, ``cookies`` and ``headers``."""

    state: dict[str, Any]
    cookies: dict[str, str]
    headers: dict[str, str]
    #: True once its ``on_start`` hook failed: the user sends nothing.
    start_failed: bool
    _call: Any

    def __new__(cls, index: int, call: Any = None) -> User:
        user = super().__new__(cls, index)
        user.state = {}
        user.cookies = {}
        user.headers = {}
        user.start_failed = False
        user._call = call
        return user

    @property
    def index(self) -> int:
        """The user's index, 0 … users − 1 across every shard of the storm."""
        return int(self)

    def header_pairs(self) -> list[tuple[str, str]]:
        """Headers this user adds to each request: its defaults and its cookies."""
        pairs = list(self.headers.items())
        if self.cookies:
            pairs.append(("cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items())))
        return pairs

    def absorb(self, headers: Iterable[tuple[str, str]]) -> None:
        """Keep the cookies a response sets (name and value; an expired one is dropped)."""
        for name, value in headers:
            if name.lower() != "set-cookie":
                continue
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value)
            except CookieError:
                continue
            for key, morsel in jar.items():
                if morsel["max-age"] in ("0", "-1") or (not morsel.value and morsel["expires"]):
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = morsel.value

    def _request(self, method: str, path: str, kwargs: dict[str, Any]) -> Request:
        request = Request(method=method.upper(), path=path, **kwargs)
        request.validate(f"user.{method.lower()}() in on_start")
        return request

    def __repr__(self) -> str:
        return f"<User {int(self)} state={self.state!r}>"


class SyncUser(User):
    """The user given to a plain ``def on_start(user)``: its request methods return responses."""

    def request(self, method: str, path: str, **kwargs: Any) -> Response:
        """Send one request through the storm's driver, as this user."""
        result: Response = self._call(self, self._request(method, path, kwargs))
        return result

    def get(self, path: str, **kwargs: Any) -> Response:
        """GET *path*."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Response:
        """POST *path*."""
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Response:
        """PUT *path*."""
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Response:
        """PATCH *path*."""
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Response:
        """DELETE *path*."""
        return self.request("DELETE", path, **kwargs)


class AsyncUser(User):
    """The user given to an ``async def on_start(user)``: its request methods are awaited."""

    async def request(self, method: str, path: str, **kwargs: Any) -> Response:
        """Send one request through the storm's driver, as this user."""
        result: Response = await self._call(self, self._request(method, path, kwargs))
        return result

    async def get(self, path: str, **kwargs: Any) -> Response:
        """GET *path*."""
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Response:
        """POST *path*."""
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> Response:
        """PUT *path*."""
        return await self.request("PUT", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> Response:
        """PATCH *path*."""
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Response:
        """DELETE *path*."""
        return await self.request("DELETE", path, **kwargs)


def is_async_hook(hook: Callable[..., Any]) -> bool:
    """True for ``async def`` start hooks (and callables whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


StartHook = Callable[[Any], Any] | Callable[[Any], Awaitable[Any]]
