"""Connection-pool probe: where requests queue for a database or HTTP connection.

``ConnectionPoolProbe`` wraps, through the patch registry and only while it runs, the
checkout, return and connect of the pools apps use: SQLAlchemy's ``QueuePool`` (and the
async engine's ``AsyncAdaptedQueuePool``), asyncpg's ``Pool``, psycopg_pool's
``ConnectionPool`` and ``AsyncConnectionPool``, Django's database connections (one per
thread, opened by ``connect``), and the connection pools of httpx and httpx2 clients
(httpcore's, sized by ``Limits(max_connections=...)``; a simulated upstream answers
without them, so only calls to real servers on loopback go through them) and aiohttp's
connector (``TCPConnector(limit=...)``, through its tracing signals; aiohttp reaches a
simulated upstream over real connections). Each pool met during the storm gets a gauge, kept by
events rather than samples so that it works the same under a loop and under threads:
connections in use (the peak and the time-weighted mean), the time with every connection
taken and a request waiting (saturation), each checkout's wait for a connection and each
connection's opening time.

Each wait is also charged to the request that waited (``attribution.charge``: ``pool`` for
the wait for a connection, ``connect`` for opening one), from the request's own code path.

Only libraries the app has already imported are watched (the probe imports none of them
itself, so starting it costs no import); one imported after the probe started is not.
"""

from __future__ import annotations

import functools
import sys
import threading
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from time import perf_counter
from typing import Any

from .._metrics import new_histogram, record_many
from .._model.probes import ConnectionPoolUsage
from ._common import _percentiles_ms
from .attribution import charge
from .patches import Patch, remove_all, wrap

__all__ = ["ConnectionPoolProbe"]

#: A checkout that waited longer than this for a connection counts as one that waited.
WAITED_AFTER_MS = 1.0

_FIX = {
    "SQLAlchemy": "raise pool_size (or max_overflow), or hold the connection for less time",
    "asyncpg": "raise the pool's max_size, or hold the connection for less time",
    "psycopg_pool": "raise the pool's max_size, or hold the connection for less time",
    "httpx": "raise httpx.Limits(max_connections=...) on the client, or make fewer calls",
    "httpx2": "raise httpx2.Limits(max_connections=...) on the client, or make fewer calls",
    "aiohttp": "raise the connector's limit (aiohttp.TCPConnector(limit=...)), or make fewer calls",
    "Django": (
        "set CONN_MAX_AGE (persistent connections) so a request does not open its own, "
        "or use a connection pool"
    ),
}


class _Gauge:
    """One pool's figures, kept by its checkout, return and connect events."""

    def __init__(self, name: str, library: str, size: int | None, in_use: int, now: float) -> None:
        self.name = name
        self.library = library
        self.size = size
        self.lock = threading.Lock()
        self.in_use = max(0, in_use)
        self.waiting = 0
        self.handoffs = 0  # returned connections promised to a waiter
        self.peak = self.in_use
        self.last = now
        self.busy_s = 0.0
        self.full_s = 0.0
        self.saturated_s = 0.0
        self.waits: array[int] = array("q")
        self.connects: array[int] = array("q")
        self.reused = 0  # requests served on a connection an earlier one opened (Django)
        #: Reads the connections in use from the pool itself, when it can tell (httpcore's
        #: pool can, and retries a request on another connection: counting is not enough).
        self.reader: Callable[[], int] | None = None

    def _read(self) -> None:
        if self.reader is not None:
            self.in_use = self.reader()
            self.handoffs = 0
            self.peak = max(self.peak, self.in_use)

    def _advance(self, now: float) -> None:
        # Called with the lock held: the time since the last event had the state it had.
        span = now - self.last
        if span > 0:
            self.busy_s += self.in_use * span
            if self.size is not None and self.in_use >= self.size:
                self.full_s += span
                if self.waiting > 0:
                    self.saturated_s += span
        self.last = now

    def queue(self, now: float) -> None:
        with self.lock:
            self._advance(now)
            self.waiting += 1
            self._read()

    def give_up(self, now: float) -> None:
        with self.lock:
            self._advance(now)
            self.waiting -= 1

    def take(self, now: float, waited: float, queued: bool = True) -> None:
        with self.lock:
            self._advance(now)
            if queued:
                self.waiting -= 1
            if self.reader is not None:
                self._read()
            elif self.handoffs > 0:
                self.handoffs -= 1
            else:
                self.in_use += 1
                self.peak = max(self.peak, self.in_use)
            self.waits.append(int(waited * 1e6))

    def give_back(self, now: float) -> None:
        with self.lock:
            self._advance(now)
            if self.reader is not None:
                self._read()
            elif self.waiting > self.handoffs:
                # A waiter gets this connection: the pool stays as full until it takes it.
                self.handoffs += 1
            elif self.in_use > 0:
                self.in_use -= 1

    def opened(self, seconds: float) -> None:
        with self.lock:
            self.connects.append(int(seconds * 1e6))

    def usage(self, started: float, stopped: float) -> ConnectionPoolUsage:
        with self.lock:
            self._advance(stopped)
            waits, connects = self.waits, self.connects
        duration = max(stopped - started, 1e-9)
        p50 = p99 = connect_p50 = None
        if waits:
            histogram = new_histogram()
            record_many(histogram, waits)
            p50, p99 = _percentiles_ms(histogram, 50.0, 99.0)
        if connects:
            histogram = new_histogram()
            record_many(histogram, connects)
            connect_p50 = _percentiles_ms(histogram, 50.0)[0]
        threshold = int(WAITED_AFTER_MS * 1000)
        return ConnectionPoolUsage(
            name=self.name,
            library=self.library,
            size=self.size,
            peak_in_use=self.peak,
            mean_in_use=self.busy_s / duration,
            full=min(1.0, self.full_s / duration),
            saturation=min(1.0, self.saturated_s / duration),
            checkouts=len(waits),
            waited=sum(1 for w in waits if w > threshold),
            wait_p50_ms=p50,
            wait_p99_ms=p99,
            connects=len(connects),
            connect_s=sum(connects) / 1e6,
            connect_p50_ms=connect_p50,
            duration_s=stopped - started,
            fix=_FIX.get(self.library, ""),
            reused=self.reused,
        )


class _Live:
    """The running probes; the tuple is replaced, never changed, so readers see a whole one."""

    probes: tuple[ConnectionPoolProbe, ...] = ()


_LIVE = _Live()
_LOCK = threading.Lock()

# Seconds spent opening connections inside the checkout that is running in this context
# (the wait for a connection excludes them). One list per checkout, set by the checkout.
_OPENING: ContextVar[list[float] | None] = ContextVar("pytest_storm_opening", default=None)


def _gauges(pool: Any, describe: Callable[[Any], tuple[str, str, int | None, int]]) -> list[_Gauge]:
    """The gauge of *pool* in each running probe (made on first sight)."""
    found = []
    for probe in _LIVE.probes:
        gauge = probe._pools.get(id(pool))
        if gauge is None:
            gauge = probe._add(pool, describe)
        found.append(gauge)
    return found


@contextmanager
def _checkout(gauges: list[_Gauge]) -> Iterator[None]:
    """Time one checkout: the wait for a connection, opening one excluded."""
    opening: list[float] = []
    token = _OPENING.set(opening)
    queued = perf_counter()
    for gauge in gauges:
        gauge.queue(queued)
    try:
        yield
    except BaseException:
        now = perf_counter()
        for gauge in gauges:
            gauge.give_up(now)
        raise
    finally:
        _OPENING.reset(token)
    now = perf_counter()
    waited = max(0.0, now - queued - sum(opening))
    for gauge in gauges:
        gauge.take(now, waited)
    if gauges:
        charge("pool", gauges[0].name, waited)


def _returned(gauges: list[_Gauge]) -> None:
    now = perf_counter()
    for gauge in gauges:
        gauge.give_back(now)


def _connected(gauges: list[_Gauge], seconds: float) -> None:
    opening = _OPENING.get()
    if opening is not None:
        opening.append(seconds)
    for gauge in gauges:
        gauge.opened(seconds)
    if gauges:
        charge("connect", gauges[0].name, seconds)


# -- SQLAlchemy -------------------------------------------------------------------------------


def _sqlalchemy_pool(pool: Any) -> tuple[str, str, int | None, int]:
    dialect = getattr(pool, "_dialect", None)
    engine = getattr(dialect, "name", None)
    driver = getattr(dialect, "driver", None)
    url = f"{engine}+{driver}" if isinstance(engine, str) and isinstance(driver, str) else "engine"
    overflow = int(getattr(pool, "_max_overflow", 0))
    size = None if overflow < 0 else int(pool.size()) + overflow
    return f"SQLAlchemy pool ({url})", "SQLAlchemy", size, int(pool.checkedout())


_IN_GET: ContextVar[bool] = ContextVar("pytest_storm_sqlalchemy_get", default=False)


def _sqlalchemy_do_get(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(original)
    def _do_get(self: Any) -> Any:
        # QueuePool._do_get calls itself when it lost a race for an overflow slot.
        if not _LIVE.probes or _IN_GET.get():
            return original(self)
        token = _IN_GET.set(True)
        try:
            with _checkout(_gauges(self, _sqlalchemy_pool)):
                return original(self)
        finally:
            _IN_GET.reset(token)

    return _do_get


def _sqlalchemy_return(original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    @functools.wraps(original)
    def _do_return_conn(self: Any, record: Any) -> Any:
        if _LIVE.probes:
            _returned(_gauges(self, _sqlalchemy_pool))
        return original(self, record)

    return _do_return_conn


def _sqlalchemy_connect(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(original)
    def connect(self: Any) -> Any:
        if not _LIVE.probes:
            return original(self)
        started = perf_counter()
        try:
            return original(self)
        finally:
            pool = getattr(self, "_ConnectionRecord__pool", None)
            if pool is not None and hasattr(pool, "_max_overflow"):
                _connected(_gauges(pool, _sqlalchemy_pool), perf_counter() - started)

    return connect


def _loaded(*names: str) -> bool:
    """True when the app has imported one of these packages: the probe imports none itself."""
    return any(name in sys.modules for name in names)


def _patch_sqlalchemy() -> list[Patch]:
    if not _loaded("sqlalchemy.pool"):
        return []
    try:
        from sqlalchemy.pool import QueuePool
        from sqlalchemy.pool.base import _ConnectionRecord
    except ImportError:
        return []
    return [
        wrap(QueuePool, "_do_get", _sqlalchemy_do_get),
        wrap(QueuePool, "_do_return_conn", _sqlalchemy_return),
        wrap(_ConnectionRecord, "_ConnectionRecord__connect", _sqlalchemy_connect),
    ]


# -- asyncpg ------------------------------------------------------------------------------------


def _asyncpg_pool(pool: Any) -> tuple[str, str, int | None, int]:
    size = int(pool._maxsize)
    free = pool._queue.qsize() if getattr(pool, "_queue", None) is not None else size
    return "asyncpg pool", "asyncpg", size, size - free


def _asyncpg_acquire(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def _acquire(self: Any, timeout: Any) -> Any:
        if not _LIVE.probes:
            return await original(self, timeout)
        with _checkout(_gauges(self, _asyncpg_pool)):
            return await original(self, timeout)

    return _acquire


def _asyncpg_release(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(original)
    def _release(self: Any) -> Any:
        if _LIVE.probes and self._in_use is not None:
            _returned(_gauges(self._pool, _asyncpg_pool))
        return original(self)

    return _release


def _asyncpg_connect(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def _get_new_connection(self: Any) -> Any:
        if not _LIVE.probes:
            return await original(self)
        started = perf_counter()
        try:
            return await original(self)
        finally:
            _connected(_gauges(self, _asyncpg_pool), perf_counter() - started)

    return _get_new_connection


def _patch_asyncpg() -> list[Patch]:
    if not _loaded("asyncpg"):
        return []
    try:
        from asyncpg.pool import Pool, PoolConnectionHolder
    except ImportError:
        return []
    return [
        wrap(Pool, "_acquire", _asyncpg_acquire),
        wrap(PoolConnectionHolder, "_release", _asyncpg_release),
        wrap(Pool, "_get_new_connection", _asyncpg_connect),
    ]


# -- psycopg_pool -------------------------------------------------------------------------------


def _psycopg_pool(pool: Any) -> tuple[str, str, int | None, int]:
    stats = pool.get_stats()
    in_use = int(stats.get("pool_size", 0)) - int(stats.get("pool_available", 0))
    return f"psycopg_pool {pool.name}", "psycopg_pool", int(pool.max_size), in_use


def _psycopg_getconn(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def getconn(self: Any, timeout: float | None = None) -> Any:
        if not _LIVE.probes:
            return original(self, timeout)
        with _checkout(_gauges(self, _psycopg_pool)):
            return original(self, timeout)

    return getconn


def _psycopg_agetconn(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def getconn(self: Any, timeout: float | None = None) -> Any:
        if not _LIVE.probes:
            return await original(self, timeout)
        with _checkout(_gauges(self, _psycopg_pool)):
            return await original(self, timeout)

    return getconn


def _psycopg_putconn(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def putconn(self: Any, conn: Any) -> Any:
        if _LIVE.probes:
            _returned(_gauges(self, _psycopg_pool))
        return original(self, conn)

    return putconn


def _psycopg_aputconn(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def putconn(self: Any, conn: Any) -> Any:
        if _LIVE.probes:
            _returned(_gauges(self, _psycopg_pool))
        return await original(self, conn)

    return putconn


def _psycopg_connect(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _connect(self: Any, timeout: float | None = None) -> Any:
        if not _LIVE.probes:
            return original(self, timeout)
        started = perf_counter()
        try:
            return original(self, timeout)
        finally:
            _connected(_gauges(self, _psycopg_pool), perf_counter() - started)

    return _connect


def _psycopg_aconnect(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def _connect(self: Any, timeout: float | None = None) -> Any:
        if not _LIVE.probes:
            return await original(self, timeout)
        started = perf_counter()
        try:
            return await original(self, timeout)
        finally:
            _connected(_gauges(self, _psycopg_pool), perf_counter() - started)

    return _connect


def _patch_psycopg_pool() -> list[Patch]:
    if not _loaded("psycopg_pool"):
        return []
    try:
        from psycopg_pool import AsyncConnectionPool, ConnectionPool
    except ImportError:
        return []
    return [
        wrap(ConnectionPool, "getconn", _psycopg_getconn),
        wrap(ConnectionPool, "putconn", _psycopg_putconn),
        wrap(ConnectionPool, "_connect", _psycopg_connect),
        wrap(AsyncConnectionPool, "getconn", _psycopg_agetconn),
        wrap(AsyncConnectionPool, "putconn", _psycopg_aputconn),
        wrap(AsyncConnectionPool, "_connect", _psycopg_aconnect),
    ]


# -- Django -------------------------------------------------------------------------------------

# Django keeps one connection object per alias and thread: the gauge is per alias.
_DJANGO_ALIASES: dict[str, object] = {}
# The connection objects (by id) whose connection the running request has used already:
# a request starts and ends with ``close_if_unusable_or_obsolete`` (Django's request
# signals), which closes a connection past CONN_MAX_AGE and keeps the others.
_DJANGO_TAKEN: set[int] = set()
# True inside ``close_if_unusable_or_obsolete``, which looks at the connection itself.
_DJANGO_EDGE: ContextVar[bool] = ContextVar("pytest_storm_django_edge", default=False)


def _django_key(wrapper: Any) -> object:
    alias = str(getattr(wrapper, "alias", "default"))
    with _LOCK:
        return _DJANGO_ALIASES.setdefault(alias, object())


def _django_describe(wrapper: Any) -> Callable[[Any], tuple[str, str, int | None, int]]:
    def describe(_key: Any) -> tuple[str, str, int | None, int]:
        alias = getattr(wrapper, "alias", "default")
        vendor = getattr(wrapper, "vendor", "database")
        return f"Django database {alias!r} ({vendor})", "Django", None, 0

    return describe


def _django_connect(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(original)
    def connect(self: Any) -> Any:
        if not _LIVE.probes:
            return original(self)
        gauges = _gauges(_django_key(self), _django_describe(self))
        with _LOCK:  # opened for this request (its own set-up queries too): not a reuse
            _DJANGO_TAKEN.add(id(self))
        started = perf_counter()
        result = original(self)
        now = perf_counter()
        _connected(gauges, now - started)
        for gauge in gauges:
            # Opening is the checkout of a connection nobody shares: no wait to record.
            with gauge.lock:
                gauge._advance(now)
                gauge.in_use += 1
                gauge.peak = max(gauge.peak, gauge.in_use)
        return result

    return connect


def _django_close(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(original)
    def close(self: Any) -> Any:
        was_open = getattr(self, "connection", None) is not None
        try:
            return original(self)
        finally:
            if _LIVE.probes and was_open and getattr(self, "connection", None) is None:
                now = perf_counter()
                for gauge in _gauges(_django_key(self), _django_describe(self)):
                    with gauge.lock:
                        gauge._advance(now)
                        gauge.in_use = max(0, gauge.in_use - 1)

    return close


def _django_ensure(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(original)
    def ensure_connection(self: Any) -> Any:
        # Every query passes here: once the request has used its connection, no lock.
        if (
            _LIVE.probes
            and id(self) not in _DJANGO_TAKEN
            and not _DJANGO_EDGE.get()
            and getattr(self, "connection", None) is not None
        ):
            with _LOCK:
                first = id(self) not in _DJANGO_TAKEN
                _DJANGO_TAKEN.add(id(self))
            if first:  # this request's first use of a connection an earlier one opened
                for gauge in _gauges(_django_key(self), _django_describe(self)):
                    with gauge.lock:
                        gauge.reused += 1
        return original(self)

    return ensure_connection


def _django_request_edge(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(original)
    def close_if_unusable_or_obsolete(self: Any) -> Any:
        token = _DJANGO_EDGE.set(True)  # its own look at the connection is no request's use
        try:
            return original(self)
        finally:
            _DJANGO_EDGE.reset(token)
            with _LOCK:
                _DJANGO_TAKEN.discard(id(self))

    return close_if_unusable_or_obsolete


def _patch_django() -> list[Patch]:
    # Django imports its database layer at the first query: its use of django.db is enough.
    if not _loaded("django.db"):
        return []
    try:
        from django.db.backends.base.base import BaseDatabaseWrapper
    except ImportError:
        return []
    return [
        wrap(BaseDatabaseWrapper, "connect", _django_connect),
        wrap(BaseDatabaseWrapper, "close", _django_close),
        wrap(BaseDatabaseWrapper, "ensure_connection", _django_ensure),
        wrap(BaseDatabaseWrapper, "close_if_unusable_or_obsolete", _django_request_edge),
    ]


# -- httpx's connection pool (httpcore, and httpcore2 under httpx2) ------------------------------

# The gauges of the HTTP pool whose request runs in this context: the wait for a connection
# and the connect happen further down the same request's call.
_HTTP: ContextVar[list[_Gauge] | None] = ContextVar("pytest_storm_http_pool", default=None)
# When the request running in this context started waiting for a connection (None: it is
# not waiting). httpcore may hand a request a busy connection and retry it: the wait lasts
# until it gets one it can use.
_HTTP_SINCE: ContextVar[list[float | None] | None] = ContextVar(
    "pytest_storm_http_since", default=None
)


def _http_describe(library: str) -> Callable[[Any], tuple[str, str, int | None, int]]:
    def describe(pool: Any) -> tuple[str, str, int | None, int]:
        size = getattr(pool, "_max_connections", None)
        limit = int(size) if isinstance(size, int) else None
        shown = f"max_connections={limit}" if limit is not None else "no connection limit"
        return f"{library} client pool ({shown})", library, limit, _http_in_use(pool)

    return describe


def _http_in_use(pool: Any) -> int:
    # A connection that is not idle is connecting or carrying a request. (Requests can be
    # assigned to a busy connection and retried: their count says nothing.)
    connections = list(getattr(pool, "_connections", ()))
    return sum(1 for c in connections if not c.is_idle())


def _http_gauges(
    pool: Any, describe: Callable[[Any], tuple[str, str, int | None, int]]
) -> list[_Gauge]:
    gauges = _gauges(pool, describe)
    for gauge in gauges:
        if gauge.reader is None:
            gauge.reader = functools.partial(_http_in_use, pool)
    return gauges


def _http_handle(
    library: str, is_async: bool
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    describe = _http_describe(library)

    def factory(original: Callable[..., Any]) -> Callable[..., Any]:
        if is_async:

            @functools.wraps(original)
            async def handle_async_request(self: Any, request: Any) -> Any:
                if not _LIVE.probes:
                    return await original(self, request)
                gauges = _http_gauges(self, describe)
                token = _HTTP.set(gauges)
                since: list[float | None] = [None, None, 0.0]
                waiting = _HTTP_SINCE.set(since)
                try:
                    return await original(self, request)
                finally:
                    _HTTP.reset(token)
                    _HTTP_SINCE.reset(waiting)
                    _gave_up(gauges, since)

            return handle_async_request

        @functools.wraps(original)
        def handle_request(self: Any, request: Any) -> Any:
            if not _LIVE.probes:
                return original(self, request)
            gauges = _http_gauges(self, describe)
            token = _HTTP.set(gauges)
            since: list[float | None] = [None, None, 0.0]
            waiting = _HTTP_SINCE.set(since)
            try:
                return original(self, request)
            finally:
                _HTTP.reset(token)
                _HTTP_SINCE.reset(waiting)
                _gave_up(gauges, since)

        return handle_request

    return factory


def _http_wait(is_async: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def factory(original: Callable[..., Any]) -> Callable[..., Any]:
        if is_async:

            @functools.wraps(original)
            async def wait_for_connection(self: Any, timeout: float | None = None) -> Any:
                gauges = _HTTP.get() if _LIVE.probes else None
                if not gauges:
                    return await original(self, timeout)
                with _taking(gauges, self):
                    return await original(self, timeout)

            return wait_for_connection

        @functools.wraps(original)
        def wait_for_connection_sync(self: Any, timeout: float | None = None) -> Any:
            gauges = _HTTP.get() if _LIVE.probes else None
            if not gauges:
                return original(self, timeout)
            with _taking(gauges, self):
                return original(self, timeout)

        return wait_for_connection_sync

    return factory


def _gave_up(gauges: list[_Gauge], since: list[float | None]) -> None:
    if since[0] is not None:  # failed or cancelled while waiting
        since[0] = None
        now = perf_counter()
        for gauge in gauges:
            gauge.give_up(now)


@contextmanager
def _taking(gauges: list[_Gauge], request: Any) -> Iterator[None]:
    """A request about to wait for a connection of an HTTP pool: from now, when none is free.

    The wait ends when the request sends on a connection (``_sending``): httpcore may hand
    several waiters the same freed connection and retry the ones that lose it.
    """
    since = _HTTP_SINCE.get()
    if since is not None and since[0] is None and request.connection is None:
        since[0] = started = perf_counter()
        for gauge in gauges:
            gauge.queue(started)
    yield


def _sent() -> None:
    """The request running here sends on its connection: its wait for one is over."""
    gauges, since = _HTTP.get(), _HTTP_SINCE.get()
    if not gauges or since is None or since[1] is not None:
        return
    now = perf_counter()
    queued_at, since[0] = since[0], None
    waited = max(0.0, now - queued_at - (since[2] or 0.0)) if queued_at is not None else 0.0
    since[1] = now  # taken: a retried send is the same checkout
    for gauge in gauges:
        gauge.take(now, waited, queued=queued_at is not None)
    charge("pool", gauges[0].name, waited)


def _http_sending(is_async: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def factory(original: Callable[..., Any]) -> Callable[..., Any]:
        if is_async:

            @functools.wraps(original)
            async def _send_request_headers(self: Any, request: Any) -> Any:
                if _LIVE.probes:
                    _sent()
                return await original(self, request)

            return _send_request_headers

        @functools.wraps(original)
        def _send_request_headers_sync(self: Any, request: Any) -> Any:
            if _LIVE.probes:
                _sent()
            return original(self, request)

        return _send_request_headers_sync

    return factory


def _http_close(library: str, is_async: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    describe = _http_describe(library)

    def factory(original: Callable[..., Any]) -> Callable[..., Any]:
        if is_async:

            @functools.wraps(original)
            async def aclose(self: Any) -> Any:
                try:
                    return await original(self)
                finally:
                    if _LIVE.probes:  # the pool now says who holds what
                        _returned(_http_gauges(self._pool, describe))

            return aclose

        @functools.wraps(original)
        def close(self: Any) -> Any:
            try:
                return original(self)
            finally:
                if _LIVE.probes:
                    _returned(_http_gauges(self._pool, describe))

        return close

    return factory


def _http_connect(is_async: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def factory(original: Callable[..., Any]) -> Callable[..., Any]:
        if is_async:

            @functools.wraps(original)
            async def _connect(self: Any, request: Any) -> Any:
                gauges = _HTTP.get() if _LIVE.probes else None
                if not gauges:
                    return await original(self, request)
                started = perf_counter()
                try:
                    return await original(self, request)
                finally:
                    _http_opened(gauges, perf_counter() - started)

            return _connect

        @functools.wraps(original)
        def _connect_sync(self: Any, request: Any) -> Any:
            gauges = _HTTP.get() if _LIVE.probes else None
            if not gauges:
                return original(self, request)
            started = perf_counter()
            try:
                return original(self, request)
            finally:
                _http_opened(gauges, perf_counter() - started)

        return _connect_sync

    return factory


def _http_opened(gauges: list[_Gauge], seconds: float) -> None:
    since = _HTTP_SINCE.get()
    if since is not None:
        since[2] = (since[2] or 0.0) + seconds  # opening is not waiting
    _connected(gauges, seconds)


def _patch_http_clients() -> list[Patch]:
    import importlib

    patches: list[Patch] = []
    for core, library in (("httpcore", "httpx"), ("httpcore2", "httpx2")):
        if not _loaded(core):
            continue
        for flavour, is_async in (("_async", True), ("_sync", False)):
            try:
                pools = importlib.import_module(f"{core}.{flavour}.connection_pool")
                connection = importlib.import_module(f"{core}.{flavour}.connection")
                http11 = importlib.import_module(f"{core}.{flavour}.http11")
            except ImportError:
                continue
            prefix = "Async" if is_async else ""
            pool = getattr(pools, f"{prefix}ConnectionPool", None)
            request = getattr(pools, f"{prefix}PoolRequest", None)
            stream = getattr(pools, "PoolByteStream", None)
            http = getattr(connection, f"{prefix}HTTPConnection", None)
            h11 = getattr(http11, f"{prefix}HTTP11Connection", None)
            handle = "handle_async_request" if is_async else "handle_request"
            close = "aclose" if is_async else "close"
            if None in (pool, request, stream, http, h11):
                continue  # another layout than the one these wrappers know
            patches.append(wrap(pool, handle, _http_handle(library, is_async)))
            patches.append(wrap(request, "wait_for_connection", _http_wait(is_async)))
            patches.append(wrap(stream, close, _http_close(library, is_async)))
            patches.append(wrap(http, "_connect", _http_connect(is_async)))
            patches.append(wrap(h11, "_send_request_headers", _http_sending(is_async)))
    return patches


# -- aiohttp's connector ------------------------------------------------------------------------

# aiohttp's connector says when a request queues for a connection slot, opens a connection
# or reuses one through its tracing signals (``TraceConfig``): the probe adds one trace of
# its own to each ``connect`` of a connector, and reads the connections in use (those
# carrying a request or being opened) from the connector. A connection's release has no
# signal: ``Connection.release`` and ``close`` are watched for it.
_AIOHTTP_TRACE: list[Any] = []  # the probe's frozen TraceConfig, made at the first patch


def _aiohttp_describe(connector: Any) -> tuple[str, str, int | None, int]:
    limit = int(getattr(connector, "limit", 0) or 0)
    per_host = int(getattr(connector, "limit_per_host", 0) or 0)
    shown = f"limit={limit}" if limit else "no connection limit"
    if per_host:
        shown += f", limit_per_host={per_host}"
    kind = type(connector).__name__
    return f"aiohttp {kind} pool ({shown})", "aiohttp", limit or None, _aiohttp_in_use(connector)


def _aiohttp_in_use(connector: Any) -> int:
    return len(getattr(connector, "_acquired", ()))


def _aiohttp_gauges(connector: Any) -> list[_Gauge]:
    gauges = _gauges(connector, _aiohttp_describe)
    for gauge in gauges:
        if gauge.reader is None:
            gauge.reader = functools.partial(_aiohttp_in_use, connector)
    return gauges


class _AiohttpCheckout:
    """One ``connect`` of a connector, told apart by its tracing signals."""

    __slots__ = ("gauges", "opening", "queued", "taken")

    def __init__(self, gauges: list[_Gauge]) -> None:
        self.gauges = gauges
        self.queued: float | None = None  # waiting for a slot since
        self.taken = False
        self.opening: float | None = None

    def queue(self) -> None:
        # The connector may wake a waiter that then loses the slot and queues again: one wait.
        if self.queued is None and not self.taken:
            self.queued = now = perf_counter()
            for gauge in self.gauges:
                gauge.queue(now)

    def take(self) -> None:
        if self.taken:
            return
        self.taken = True
        now = perf_counter()
        queued_at, self.queued = self.queued, None
        waited = now - queued_at if queued_at is not None else 0.0
        for gauge in self.gauges:
            gauge.take(now, waited, queued=queued_at is not None)
        if self.gauges:  # none when the probes stopped while the request was on its way
            charge("pool", self.gauges[0].name, waited)

    def give_up(self) -> None:
        if self.queued is not None:
            self.queued = None
            now = perf_counter()
            for gauge in self.gauges:
                gauge.give_up(now)
        elif self.taken:  # a connection slot taken, then the open failed: it is free again
            _returned(self.gauges)


def _checkout_of(context: Any) -> _AiohttpCheckout | None:
    checkout = getattr(context, "trace_request_ctx", None)
    return checkout if isinstance(checkout, _AiohttpCheckout) else None


async def _aiohttp_queued(_session: Any, context: Any, _params: Any) -> None:
    checkout = _checkout_of(context)
    if checkout is not None:
        checkout.queue()


async def _aiohttp_reused(_session: Any, context: Any, _params: Any) -> None:
    checkout = _checkout_of(context)
    if checkout is not None:
        checkout.take()


async def _aiohttp_create_start(_session: Any, context: Any, _params: Any) -> None:
    checkout = _checkout_of(context)
    if checkout is not None:
        checkout.take()
        checkout.opening = perf_counter()


async def _aiohttp_create_end(_session: Any, context: Any, _params: Any) -> None:
    checkout = _checkout_of(context)
    if checkout is not None and checkout.opening is not None:
        opened, checkout.opening = perf_counter() - checkout.opening, None
        _connected(checkout.gauges, opened)


def _aiohttp_trace_config() -> Any:
    if not _AIOHTTP_TRACE:
        from aiohttp import TraceConfig

        config = TraceConfig()
        config.on_connection_queued_start.append(_aiohttp_queued)
        config.on_connection_reuseconn.append(_aiohttp_reused)
        config.on_connection_create_start.append(_aiohttp_create_start)
        config.on_connection_create_end.append(_aiohttp_create_end)
        config.freeze()
        _AIOHTTP_TRACE.append(config)
    return _AIOHTTP_TRACE[0]


def _aiohttp_connect(trace: Callable[[Any, Any, Any], Any]) -> Callable[..., Any]:
    config = _aiohttp_trace_config()

    def factory(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        async def connect(self: Any, req: Any, traces: Any, timeout: Any) -> Any:
            if not _LIVE.probes:
                return await original(self, req, traces, timeout)
            checkout = _AiohttpCheckout(_aiohttp_gauges(self))
            ours = trace(None, config, config.trace_config_ctx(trace_request_ctx=checkout))
            try:
                return await original(self, req, [*traces, ours], timeout)
            except BaseException:
                checkout.give_up()
                raise

        return connect

    return factory


def _aiohttp_release(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(original)
    def release(self: Any) -> Any:
        held = _LIVE.probes and getattr(self, "_protocol", None) is not None
        try:
            return original(self)
        finally:
            if held:
                _returned(_aiohttp_gauges(self._connector))

    return release


def _patch_aiohttp() -> list[Patch]:
    if not _loaded("aiohttp"):
        return []
    try:
        from aiohttp.connector import BaseConnector, Connection
        from aiohttp.tracing import Trace
    except ImportError:
        return []
    return [
        wrap(BaseConnector, "connect", _aiohttp_connect(Trace)),
        wrap(Connection, "release", _aiohttp_release),
        wrap(Connection, "close", _aiohttp_release),
    ]


# -- the probe ----------------------------------------------------------------------------------


class ConnectionPoolProbe:
    """Watches the app's connection pools during a storm (``with ConnectionPoolProbe() as p:``).

    ``probe.result`` lists a :class:`ConnectionPoolUsage` per pool used while it ran.
    Works in threads and on a loop alike; probes nest (each keeps its own gauges).
    """

    def __init__(self) -> None:
        self._pools: dict[int, _Gauge] = {}
        self._keep: list[Any] = []  # the pools themselves: an id stays theirs while we run
        self._names: set[str] = set()
        self._patches: list[Patch] = []
        self._started = 0.0
        self._result: list[ConnectionPoolUsage] | None = None

    @property
    def result(self) -> list[ConnectionPoolUsage]:
        """Usage of each pool used during the storm, once the probe has stopped."""
        if self._result is None:
            raise RuntimeError("the ConnectionPoolProbe has not been stopped yet")
        return self._result

    def _add(
        self, pool: Any, describe: Callable[[Any], tuple[str, str, int | None, int]]
    ) -> _Gauge:
        name, library, size, in_use = describe(pool)
        with _LOCK:
            gauge = self._pools.get(id(pool))
            if gauge is not None:
                return gauge
            shown, n = name, 1
            while shown in self._names:
                n += 1
                shown = f"{name} #{n}"
            self._names.add(shown)
            gauge = _Gauge(shown, library, size, in_use, perf_counter())
            self._keep.append(pool)
            self._pools[id(pool)] = gauge
            return gauge

    def start(self) -> ConnectionPoolProbe:
        """Install the wrappers (the first probe does) and start counting."""
        if self._started:
            raise RuntimeError("a ConnectionPoolProbe can be started once")
        self._started = perf_counter()
        try:
            for install in (
                _patch_sqlalchemy,
                _patch_asyncpg,
                _patch_psycopg_pool,
                _patch_django,
                _patch_http_clients,
                _patch_aiohttp,
            ):
                self._patches.extend(install())
        except BaseException:
            remove_all(self._patches)
            raise
        with _LOCK:
            _LIVE.probes = (*_LIVE.probes, self)
        return self

    def stop(self) -> list[ConnectionPoolUsage]:
        """Stop counting, take the wrappers off and fold each pool's figures."""
        if self._result is not None:
            return self._result
        stopped = perf_counter()
        with _LOCK:
            _LIVE.probes = tuple(p for p in _LIVE.probes if p is not self)
            if not _LIVE.probes:
                _DJANGO_TAKEN.clear()  # ids of objects that may not outlive the storm
        try:
            remove_all(self._patches)
        finally:
            self._patches = []
            usages = [g.usage(self._started, stopped) for g in self._pools.values()]
            self._result = [u for u in usages if u.used]
            self._keep = []
        return self._result

    def __enter__(self) -> ConnectionPoolProbe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> ConnectionPoolProbe:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
