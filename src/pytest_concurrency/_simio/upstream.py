"""A fake of the hosts an app calls with ``httpx`` or ``httpx2``, answered in-process after
simulated latency.

``Upstream`` replaces ``HTTPTransport.handle_request`` and
``AsyncHTTPTransport.handle_async_request`` of httpx, and of httpx2 when it is installed
(httpx's successor keeps its transport interface; Starlette's TestClient and the OpenAI
SDK ride on it), as pytest-httpx does (respx patches the httpcore pools below them), so
clients the app built before the storm are answered too. Each library gets responses,
streams and errors of its own types. Calls through any other client meet the egress guard
during a storm (``egress``): refused before a name is looked up.
It is a small patch of its own, not a layer over either library, installed through the
probes' patch registry so that upstreams nest and come off in any order. Per call, best
of nine rounds of 10,000 sequential ``await client.get(...)`` with zero latency (CPython
3.11, httpx 0.28, 2 cores): ``httpx.MockTransport`` 80 µs, this module 92 µs (+12 µs, 10 of
them the ``anyio.sleep(0)`` checkpoint any real call makes), respx 0.23 172 µs (+92 µs;
221 µs with an async side effect that sleeps), pytest-httpx 0.36 181 µs (+101 µs). With
``httpx.Client`` this module adds nothing measurable (73 µs against 76 µs) and respx
costs 157 µs. Neither library picks an async or a blocking wait by itself (a user callback
must know which client called it), neither counts calls in flight, and pytest-httpx keeps
every request for the life of its fixture, so neither is a dependency.
"""

from __future__ import annotations

import json as jsonlib
import numbers
import os
import random
import threading
from array import array
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any

import httpx

from .._errors import ConfigError
from .._metrics.percentile import quantile
from .._probes.patches import PATCHES, Patch, patch, remove_all
from .distributions import Latency, LatencyLike, _show, as_latency
from .egress import loopback_serves
from .proxy import Proxy
from .waits import _default_rng, _wait_async, _wait_blocking

__all__ = ["INSTALLED", "Route", "UndeclaredUpstreamError", "Upstream"]

INSTALLED: list[Upstream] = []
"""Upstreams currently answering httpx calls, so that storms can report on them."""


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _template_segment(url_prefix: str) -> str | None:
    """The first path segment of *url_prefix* written as a template (``{id}``, ``<id>``,
    ``*``), which a literal prefix never matches: clients send the value, not the name."""
    _, _, rest = url_prefix.partition("://")
    path = rest[rest.find("/") :] if "/" in rest else ""
    for segment in path.split("/"):
        if segment in ("*", "**") or any(
            opening in segment and closing in segment for opening, closing in ("{}", "<>")
        ):
            return segment
    return None


_ERROR_STATUS = 503
_ERROR_BODY = b"simulated upstream error"


class UndeclaredUpstreamError(httpx.TransportError):
    """The app called a host (or path) that the running ``Upstream`` has no route for.

    Raised to httpx2 clients as a subclass that is also an ``httpx2.TransportError``.
    """


def _origin(url: Any) -> str:
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}"


def _body_from(value: Any, where: str) -> tuple[bytes, list[tuple[str, str]]]:
    if isinstance(value, bytes):
        return value, []
    if isinstance(value, str):
        return value.encode("utf-8"), [("content-type", "text/plain; charset=utf-8")]
    if isinstance(value, dict | list):
        body = jsonlib.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return body.encode("utf-8"), [("content-type", "application/json")]
    raise TypeError(
        f"{where} must give an httpx.Response, dict, list, str or bytes, got {type(value).__name__}"
    )


class _Chunks:
    """Streamed response body: chunks with a sampled wait between them."""

    def __init__(self, route: Route, chunks: tuple[bytes, ...], rng: random.Random) -> None:
        self._route = route
        self._chunks = chunks
        self._rng = rng
        self._open = True
        self._next = 0

    def _finish(self) -> None:
        # A streamed call stays in flight until its body ends or is closed.
        if self._open:
            self._open = False
            self._route._exit()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # A body is read once, as from a connection: iterating again (a client draining
        # what is left after it stopped early) goes on from the next chunk, not the first.
        latency = self._route.chunk_latency
        while self._next < len(self._chunks):
            index = self._next
            if index:
                await _wait_async(latency.sample(self._rng), self._route.label)
            self._next = index + 1
            yield self._chunks[index]
        # An abandoned iterator is not the end of the call: only the body's end or the
        # response's close (aclose below) takes it out of flight, as with a real connection.
        self._finish()

    async def aclose(self) -> None:
        self._finish()

    def __iter__(self) -> Iterator[bytes]:
        latency = self._route.chunk_latency
        while self._next < len(self._chunks):
            index = self._next
            if index:
                _wait_blocking(latency.sample(self._rng), self._route.label)
            self._next = index + 1
            yield self._chunks[index]
        self._finish()

    def close(self) -> None:
        self._finish()


class _Client:
    """The classes of one httpx-shaped client library (httpx, or its successor httpx2).

    httpx2 keeps httpx's transport interface, so one route answers both; each library's
    client checks that responses and streams are its own types, so each gets its own.
    """

    def __init__(self, module: Any, undeclared: type[Exception]) -> None:
        self.name: str = module.__name__
        self.module = module
        self.response: Any = module.Response
        self.byte_stream: Any = module.ByteStream
        self.read_timeout: Any = module.ReadTimeout
        self.undeclared: Callable[..., Exception] = undeclared
        self.async_chunks: type[_Chunks] = type(
            "_AsyncChunks", (_Chunks, module.AsyncByteStream), {"__module__": __name__}
        )
        self.sync_chunks: type[_Chunks] = type(
            "_SyncChunks", (_Chunks, module.SyncByteStream), {"__module__": __name__}
        )


_HTTPX = _Client(httpx, UndeclaredUpstreamError)
_LOADED: dict[str, _Client | None] = {}


def _httpx2() -> _Client | None:
    """httpx2's classes when it is installed (imported on first use), else None."""
    if "httpx2" not in _LOADED:
        try:
            import httpx2
        except ImportError:
            _LOADED["httpx2"] = None
        else:
            undeclared = type(
                "UndeclaredUpstreamError",
                (httpx2.TransportError, UndeclaredUpstreamError),
                {"__module__": __name__, "__doc__": UndeclaredUpstreamError.__doc__},
            )
            _LOADED["httpx2"] = _Client(httpx2, undeclared)
    return _LOADED["httpx2"]


def _other_response(value: Any) -> bool:
    """Whether *value* is a response of httpx or httpx2 (whichever client called)."""
    if isinstance(value, httpx.Response):
        return True
    loaded = _LOADED.get("httpx2")
    return loaded is not None and isinstance(value, loaded.response)


def _route_url(where: str, url_prefix: str) -> httpx.URL:
    url = httpx.URL(url_prefix)
    if url.scheme not in _DEFAULT_PORTS or not url.host:
        raise ConfigError(
            f"{where}: url_prefix must be an absolute http(s) URL such as "
            "'http://model-server/generate'"
        )
    if url.query:
        raise ConfigError(f"{where}: url_prefix must not have a query; routes match paths")
    template = _template_segment(url_prefix)
    if template is not None:
        prefix = url_prefix[: url_prefix.index(template)].rstrip("/")
        raise ConfigError(
            f"{where}: the path segment {template!r} looks like a path parameter or a "
            "wildcard, but routes match a literal path prefix (no templates): no call "
            f"would reach it; declare {prefix!r} to answer every call under it"
        )
    return url


def _check_answer(where: str, **answers: Any) -> None:
    """At most one way to answer (json, content, handler, stream); a handler is callable."""
    if len([name for name, value in answers.items() if value is not None]) > 1:
        raise ConfigError(f"{where}: give at most one of json, content, handler, stream")
    handler = answers.get("handler")
    if handler is not None and not callable(handler):
        raise ConfigError(f"{where}: handler={handler!r} is not callable")


def _check_faults(where: str, status: int, error_rate: float, timeout_rate: float) -> None:
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ConfigError(f"{where}: status={status!r} must be an HTTP status (100-599)")
    for name, rate in (("error_rate", error_rate), ("timeout_rate", timeout_rate)):
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
            raise ConfigError(f"{where}: {name}={rate!r} must be a fraction (0.0-1.0)")
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"{where}: {name}={_show(rate)} must be between 0.0 and 1.0")
    if error_rate + timeout_rate > 1.0:
        raise ConfigError(
            f"{where}: error_rate={_show(error_rate)} + timeout_rate={_show(timeout_rate)} "
            "must not exceed 1.0"
        )


class Route:
    """One declared upstream endpoint and what it has seen; create with ``Upstream.route``."""

    def __init__(
        self,
        url_prefix: str,
        *,
        method: str | None,
        latency: Latency,
        status: int,
        json: Any,
        content: str | bytes | None,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None,
        handler: Callable[[httpx.Request], Any] | None,
        stream: Sequence[bytes | str] | None,
        chunk_latency: Latency,
        error_rate: float,
        timeout_rate: float,
        rng: random.Random,
    ) -> None:
        where = f"upstream.route({url_prefix!r})"
        url = _route_url(where, url_prefix)
        _check_answer(where, json=json, content=content, handler=handler, stream=stream)
        _check_faults(where, status, error_rate, timeout_rate)

        self.url_prefix = url_prefix
        self.method = method.upper() if method is not None else None
        self.latency = latency
        self.chunk_latency = chunk_latency
        self.status = status
        self.error_rate = float(error_rate)
        self.timeout_rate = float(timeout_rate)
        self.handler = handler

        self._key = (url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme])
        path = url.path.rstrip("/")
        self._path = path
        self._path_dir = path + "/"
        self._rng = rng
        self._faults = error_rate > 0 or timeout_rate > 0
        self._timeout_cut = self.timeout_rate
        self._error_cut = self.timeout_rate + self.error_rate

        user_headers = list(httpx.Headers(headers).multi_items()) if headers else []
        user_names = {name.lower() for name, _ in user_headers}
        self._user_headers = user_headers
        self._chunks: tuple[bytes, ...] | None = None
        if stream is not None:
            self._chunks = tuple(c.encode("utf-8") if isinstance(c, str) else c for c in stream)
            if not all(isinstance(c, bytes) for c in self._chunks):
                raise ConfigError(f"{where}: stream chunks must be bytes or str")
            self._stream_headers = [("transfer-encoding", "chunked"), *user_headers]
        body, implied = (
            (b"", [])
            if json is None and content is None
            else (_body_from(json if json is not None else content, f"{where} json/content"))
        )
        self._body = body
        self._headers = [
            *(h for h in implied if h[0] not in user_names),
            ("content-length", str(len(body))),
            *user_headers,
        ]

        self._lock = threading.Lock()
        self.calls = 0
        """Calls answered or refused by this route since the last reset."""
        self.in_flight = 0
        """Calls waiting or streaming right now."""
        self.max_in_flight = 0
        """The most calls in flight at once."""
        self.errors = 0
        """Calls answered with a simulated 503."""
        self.timeouts = 0
        """Calls that raised ``httpx.ReadTimeout``."""
        self._waits_us: array[int] = array("q")
        # Calls in flight in a loopback upstream process when it last reported.
        self._remote_in_flight = 0

    @property
    def label(self) -> str:
        """``METHOD url_prefix``, or just the prefix when any method matches."""
        return f"{self.method} {self.url_prefix}" if self.method else self.url_prefix

    @property
    def waited_s(self) -> float:
        """Total time calls spent in their latency wait, in seconds."""
        return sum(self._waits_us) / 1_000_000

    def _matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        return not self._path or path == self._path or path.startswith(self._path_dir)

    def _enter(self) -> None:
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _exit(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _count_timeout(self) -> None:
        with self._lock:
            self.timeouts += 1

    def _count_error(self) -> None:
        with self._lock:
            self.errors += 1

    def _plan(self, request: Any) -> tuple[float, bool, bool]:
        """Decide (wait seconds, time out?, answer 503?) for one call."""
        rng = self._rng
        draw = rng.random() if self._faults else 1.0
        delay = self.latency.sample(rng)
        timeouts = request.extensions.get("timeout")
        read_timeout = timeouts.get("read") if isinstance(timeouts, dict) else None
        if draw < self._timeout_cut:
            # An unanswered call costs the client its whole read timeout.
            return (read_timeout if read_timeout is not None else delay), True, False
        if read_timeout is not None and delay > read_timeout:
            return read_timeout, True, False
        return delay, False, draw < self._error_cut

    def _timeout(self, client: _Client, request: Any, waited: float) -> Exception:
        self._count_timeout()
        return client.read_timeout(  # type: ignore[no-any-return]
            f"simulated read timeout after {waited * 1000:.1f} ms from {self.label}",
            request=request,
        )

    def _handler_response(self, client: _Client, value: Any) -> Any:
        if isinstance(value, client.response):
            return value
        if _other_response(value):
            # The other library's response: the same status, headers and body in this one's.
            value.read()
            return client.response(
                value.status_code,
                headers=value.headers.multi_items(),
                stream=client.byte_stream(value.content),
            )
        body, implied = _body_from(value, f"handler of {self.label}")
        names = {name.lower() for name, _ in self._user_headers}
        headers = [
            *(h for h in implied if h[0] not in names),
            ("content-length", str(len(body))),
            *self._user_headers,
        ]
        return client.response(self.status, headers=headers, stream=client.byte_stream(body))

    def _respond(self, client: _Client, stream_cls: type[_Chunks]) -> Any:
        if self._chunks is not None:
            return client.response(
                self.status,
                headers=self._stream_headers,
                stream=stream_cls(self, self._chunks, self._rng),
            )
        return client.response(
            self.status, headers=self._headers, stream=client.byte_stream(self._body)
        )

    def _error_response(self, client: _Client) -> Any:
        self._count_error()
        return client.response(
            _ERROR_STATUS,
            headers=[("content-length", str(len(_ERROR_BODY)))],
            stream=client.byte_stream(_ERROR_BODY),
        )

    async def _handle_async(self, request: Any, client: _Client = _HTTPX) -> Any:
        self._enter()
        streaming = False
        try:
            delay, times_out, fails = self._plan(request)
            waited = await _wait_async(delay, self.label)
            self._waits_us.append(round(waited * 1_000_000))
            if times_out:
                raise self._timeout(client, request, waited)
            if fails:
                return self._error_response(client)
            if self.handler is not None:
                await request.aread()
                value = self.handler(request)
                if isinstance(value, Awaitable):
                    value = await value
                return self._handler_response(client, value)
            streaming = self._chunks is not None
            return self._respond(client, client.async_chunks)
        finally:
            if not streaming:
                self._exit()

    def _handle_sync(self, request: Any, client: _Client = _HTTPX) -> Any:
        self._enter()
        streaming = False
        try:
            delay, times_out, fails = self._plan(request)
            waited = _wait_blocking(delay, self.label)
            self._waits_us.append(round(waited * 1_000_000))
            if times_out:
                raise self._timeout(client, request, waited)
            if fails:
                return self._error_response(client)
            if self.handler is not None:
                request.read()
                value = self.handler(request)
                if isinstance(value, Awaitable):
                    if isinstance(value, Coroutine):
                        value.close()  # never awaited; closing avoids a RuntimeWarning
                    raise TypeError(
                        f"handler of {self.label} returned an awaitable to a sync "
                        f"{client.name}.Client; use a plain function"
                    )
                return self._handler_response(client, value)
            streaming = self._chunks is not None
            return self._respond(client, client.sync_chunks)
        finally:
            if not streaming:
                self._exit()

    def _merge(self, counts: Mapping[str, Any]) -> None:
        """Add what another process's copy of this route counted since it last reported."""
        with self._lock:
            self.calls += counts["calls"]
            self.errors += counts["errors"]
            self.timeouts += counts["timeouts"]
            self._remote_in_flight = counts["in_flight"]
            self.max_in_flight = max(self.max_in_flight, counts["max_in_flight"])
            self._waits_us.extend(counts["waits_us"])

    def _reset(self) -> None:
        with self._lock:
            # Calls still in flight will leave through _exit(), so in_flight is kept.
            self.calls = self.errors = self.timeouts = 0
            self.max_in_flight = self.in_flight
            self._waits_us = array("q")

    def stats(self) -> dict[str, Any]:
        """The route's counts and the latency its calls waited (ms), as a JSON-ready dict."""
        ordered = sorted(self._waits_us)
        return {
            "latency": self.latency.describe(),
            "calls": self.calls,
            "in_flight": self.in_flight + self._remote_in_flight,
            "max_in_flight": self.max_in_flight,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "waited_ms_total": sum(ordered) / 1000.0,
            "waited_ms_mean": (sum(ordered) / len(ordered) / 1000.0) if ordered else 0.0,
            "waited_ms_p50": quantile(ordered, 0.5) / 1000.0 if ordered else 0.0,
            "waited_ms_p99": quantile(ordered, 0.99) / 1000.0 if ordered else 0.0,
            "waited_ms_max": ordered[-1] / 1000.0 if ordered else 0.0,
        }

    def __repr__(self) -> str:
        return f"<Route {self.label} {self.latency} calls={self.calls}>"


class Upstream:
    """In-process fake of the hosts an app calls with ``httpx`` or ``httpx2``; a context manager.

    While installed, every ``Client`` and ``AsyncClient`` of httpx and httpx2 using the
    default transport, including those created earlier, is answered from the declared
    routes after a sampled wait: ``anyio.sleep`` for async clients, ``time.sleep`` for sync
    ones. Nothing reaches the network; a call no route matches raises
    ``UndeclaredUpstreamError`` and is listed in ``undeclared``. Only httpx and httpx2 are
    intercepted (during a storm any other client is refused by the egress guard), and the
    client's connection-pool limits are not modelled (every call proceeds at once). A call
    whose wait would exceed the client's read timeout waits that timeout and raises the
    client's ``ReadTimeout``; a call picked by ``timeout_rate`` does the same (or waits one
    latency sample when the client has no
    read timeout). A 503 picked by ``error_rate`` comes after the usual latency.
    """

    def __init__(self, *, max_undeclared: int = 100) -> None:
        self._routes: dict[tuple[str, str, int], list[Route]] = {}
        self._patches: tuple[Patch, ...] = ()
        self._max_undeclared = max_undeclared
        self._lock = threading.Lock()
        self._undeclared_seen: set[str] = set()
        self.undeclared: list[str] = []
        """Distinct URLs called without a route (the first ``max_undeclared``)."""
        self.undeclared_calls = 0
        """How many calls had no route, including repeats."""
        self.declarations: list[dict[str, Any]] = []
        """Every ``route(...)`` call's arguments, in order."""
        self.proxies: list[Proxy] = []
        """Every latency proxy declared with ``proxy(...)``, in order."""
        # Told of each route declared from now on (a loopback server already serving this
        # upstream, a storm's egress guard): a route may be declared while a storm runs.
        self._watchers: tuple[Callable[[Route, dict[str, Any]], None], ...] = ()

    # -- declaring

    def route(
        self,
        url_prefix: str,
        *,
        method: str | None = None,
        latency: LatencyLike = None,
        status: int = 200,
        json: Any = None,
        content: str | bytes | None = None,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        handler: Callable[[httpx.Request], Any] | None = None,
        stream: Sequence[bytes | str] | None = None,
        chunk_latency: LatencyLike = None,
        error_rate: float = 0.0,
        timeout_rate: float = 0.0,
        seed: int | None = None,
    ) -> Route:
        """Declare an endpoint: calls to ``url_prefix`` (longest prefix wins) are answered here.

        ``handler(request)`` may return an ``httpx.Response``, a dict or list (JSON), str or
        bytes; ``stream`` sends its chunks with ``chunk_latency`` between them. A fraction
        ``error_rate`` of calls get a 503 and ``timeout_rate`` raise ``httpx.ReadTimeout``.
        A route declared while a storm runs is answered from then on, whatever the client.
        """
        new = Route(
            url_prefix,
            method=method,
            latency=as_latency(latency, where=f"upstream.route({url_prefix!r}): "),
            status=status,
            json=json,
            content=content,
            headers=headers,
            handler=handler,
            stream=stream,
            chunk_latency=as_latency(
                chunk_latency, name="chunk_latency", where=f"upstream.route({url_prefix!r}): "
            ),
            error_rate=error_rate,
            timeout_rate=timeout_rate,
            rng=_default_rng if seed is None else random.Random(seed),
        )
        existing = self._routes.get(new._key, [])
        for route in existing:
            if route._path == new._path and route.method == new.method:
                raise ConfigError(
                    f"upstream.route({url_prefix!r}, method={method!r}) is already declared"
                )
        # Most specific first: longer prefixes, then routes that name a method. A new list
        # replaces the old so threads answering calls never see one half-sorted.
        self._routes[new._key] = sorted(
            [*existing, new], key=lambda r: (-len(r._path), r.method is None)
        )
        # Kept as declared (once valid), so a real server's process can declare the same routes.
        self.declarations.append(
            {
                "url_prefix": url_prefix,
                "method": method,
                "latency": latency,
                "status": status,
                "json": json,
                "content": content,
                "headers": headers,
                "handler": handler,
                "stream": stream,
                "chunk_latency": chunk_latency,
                "error_rate": error_rate,
                "timeout_rate": timeout_rate,
                "seed": seed,
            }
        )
        for watcher in self._watchers:
            watcher(new, self.declarations[-1])
        return new

    def _watch(self, watcher: Callable[[Route, dict[str, Any]], None]) -> None:
        """Call *watcher* with each route declared from now on, and its declaration."""
        with self._lock:
            self._watchers = (*self._watchers, watcher)

    def _unwatch(self, watcher: Callable[[Route, dict[str, Any]], None]) -> None:
        """Stop telling *watcher* of new routes (a no-op when it was not told)."""
        with self._lock:
            self._watchers = tuple(w for w in self._watchers if w != watcher)

    def proxy(
        self,
        target: str | tuple[str, int],
        *,
        name: str | None = None,
        latency: LatencyLike = None,
        upstream_latency: LatencyLike = None,
        bandwidth: float | None = None,
        upstream_bandwidth: float | None = None,
        timeout_rate: float = 0.0,
        timeout_after: LatencyLike = None,
        reset_rate: float = 0.0,
        reset_after: LatencyLike = None,
        seed: int | None = None,
    ) -> Proxy:
        """Put a loopback TCP proxy with toxics in front of a real service at *target*
        (``"127.0.0.1:5432"``); it listens from now until this upstream is uninstalled.

        The app connects to the returned proxy's ``address``, or to *target* itself during a
        storm (the egress guard sends it to the proxy). ``latency`` delays each chunk from
        the service to the app, ``upstream_latency`` each chunk the other way (any latency
        distribution); ``bandwidth`` and ``upstream_bandwidth`` cap KB/s; a fraction
        ``timeout_rate`` of connections hang (closed after ``timeout_after``, or never) and
        ``reset_rate`` are reset after ``reset_after``. See ``_simio.proxy``.
        """
        new = Proxy(
            target,
            name=name,
            latency=latency,
            upstream_latency=upstream_latency,
            bandwidth=bandwidth,
            upstream_bandwidth=upstream_bandwidth,
            timeout_rate=timeout_rate,
            timeout_after=timeout_after,
            reset_rate=reset_rate,
            reset_after=reset_after,
            seed=seed,
        )
        if any(existing.label == new.label for existing in self.proxies):
            new.close()
            raise ConfigError(
                f"upstream.proxy({target!r}): a proxy named {new.label!r} is already declared; "
                "give this one another name="
            )
        self.proxies.append(new)
        return new

    @property
    def redirects(self) -> dict[tuple[str, int], tuple[str, int]]:
        """Every proxy's target addresses, each mapped to its proxy (the newest wins)."""
        return {key: to for proxy in self.proxies for key, to in proxy.redirects.items()}

    @property
    def routes(self) -> list[Route]:
        """Every declared route."""
        return [route for routes in self._routes.values() for route in routes]

    @property
    def hosts(self) -> set[str]:
        """The host names of the declared routes."""
        return {host for _, host, _ in self._routes}

    @property
    def http_hosts(self) -> set[str]:
        """The host names of the declared ``http://`` routes (a loopback server can answer them)."""
        return {host for scheme, host, _ in self._routes if scheme == "http"}

    @property
    def https_hosts(self) -> set[str]:
        """The host names of the declared ``https://`` routes."""
        return {host for scheme, host, _ in self._routes if scheme == "https"}

    @property
    def https_ports(self) -> set[int]:
        """The ports of the declared ``https://`` routes (443 unless named)."""
        return {port for scheme, _, port in self._routes if scheme == "https"}

    # -- installing

    @property
    def installed(self) -> bool:
        """Whether this upstream's patches of httpx's transports are in place."""
        return bool(self._patches)

    def install(self) -> None:
        """Patch the default transports of httpx (and httpx2, when installed) to answer
        from this upstream.

        Upstreams nest: the one installed last answers, and uninstalling them in any order
        leaves the one installed latest of those left (or the library itself) answering.
        """
        if self._patches:
            raise RuntimeError("this Upstream is already installed")
        clients = [_HTTPX]
        if (second := _httpx2()) is not None:
            clients.append(second)
        patches: list[Patch] = []
        try:
            for client in clients:
                sync, in_async = self._transports(client)
                module = client.module
                patches.append(patch(module.HTTPTransport, "handle_request", sync))
                patches.append(patch(module.AsyncHTTPTransport, "handle_async_request", in_async))
        except BaseException:
            remove_all(patches)
            raise
        self._patches = tuple(patches)
        INSTALLED.append(self)

    def _transports(
        self, client: _Client
    ) -> tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Coroutine[Any, Any, Any]]]:
        match = self._match
        # In a process forked after install (a storm's shard) the routes this process
        # serves on loopback are left to the real transport: the storm's process answers
        # them there and counts them with the rest.
        pid = os.getpid()
        real_sync = PATCHES.original(client.module.HTTPTransport, "handle_request")
        real_async = PATCHES.original(client.module.AsyncHTTPTransport, "handle_async_request")

        def handle_request(transport: Any, request: Any) -> Any:
            if os.getpid() != pid and loopback_serves(request.url.host, request.url.scheme):
                return real_sync(transport, request)
            return match(request, client)._handle_sync(request, client)

        async def handle_async_request(transport: Any, request: Any) -> Any:
            if os.getpid() != pid and loopback_serves(request.url.host, request.url.scheme):
                return await real_async(transport, request)
            return await match(request, client)._handle_async(request, client)

        return handle_request, handle_async_request

    def uninstall(self) -> None:
        """Take this upstream's patches off httpx's transports (a no-op when not installed)."""
        patches, self._patches = self._patches, ()
        if self in INSTALLED:
            INSTALLED.remove(self)
        try:
            for proxy in self.proxies:
                proxy.close()
        finally:
            remove_all(patches)

    def __enter__(self) -> Upstream:
        self.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()

    # -- answering

    def _match(self, request: Any, client: _Client = _HTTPX) -> Route:
        url = request.url
        scheme = url.scheme
        routes = self._routes.get((scheme, url.host, url.port or _DEFAULT_PORTS.get(scheme, 0)))
        if routes is not None:
            method, path = request.method, url.path
            for route in routes:
                if route._matches(method, path):
                    return route
        raise self._undeclared(request, routes, client)

    def _undeclared(
        self, request: Any, routes: list[Route] | None, client: _Client = _HTTPX
    ) -> Exception:
        url = str(request.url)
        with self._lock:
            self.undeclared_calls += 1
            self._remember_undeclared(url)
        origin = _origin(request.url)
        if routes is None:
            problem = f"undeclared upstream host {request.url.host!r}"
            suggestion = f"{origin}/"
        else:
            declared = ", ".join(route.label for route in routes)
            problem = f"no route for this path on {origin} (declared: {declared})"
            suggestion = f"{origin}{request.url.path}"
        return client.undeclared(
            f"{problem}: {request.method} {url} was not answered, and no network is used "
            f'during a storm; declare it with upstream.route("{suggestion}", latency=...)',
            request=request,
        )

    def _merge_undeclared(self, calls: int, urls: Sequence[str]) -> None:
        """Add the calls without a route that another process answered with a 502."""
        with self._lock:
            self.undeclared_calls += calls
            for url in urls:
                self._remember_undeclared(url)

    def _remember_undeclared(self, url: str) -> None:
        """Keep *url* among the first few distinct undeclared URLs (the lock held)."""
        if url not in self._undeclared_seen and len(self.undeclared) < self._max_undeclared:
            self._undeclared_seen.add(url)
            self.undeclared.append(url)

    # -- reporting

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-route figures keyed by route label (see ``Route.stats``), and each proxy's
        keyed by its label (see ``Proxy.stats``)."""
        figures = {route.label: route.stats() for route in self.routes}
        figures.update((proxy.label, proxy.stats()) for proxy in self.proxies)
        return figures

    def reset(self) -> None:
        """Zero every route's counts and forget undeclared calls."""
        for route in self.routes:
            route._reset()
        for proxy in self.proxies:
            proxy._reset()
        with self._lock:
            self.undeclared = []
            self._undeclared_seen = set()
            self.undeclared_calls = 0

    def __repr__(self) -> str:
        state = "installed" if self.installed else "not installed"
        return f"<Upstream {state}, {len(self.routes)} routes>"
