"""In-process WSGI driver and its executor, the bounded worker pool that models a WSGI server.

The pool is ``workers × threads`` OS threads taking requests from one FIFO queue,
the socket backlog of a gunicorn-like server. A closed-model user is a token in
that queue: the thread that completes a user's request puts the user's next
request back itself, so no request crosses between an event loop and a thread.
Each request records its queue wait (intended send → picked by a thread) and its
service time (picked → response fully consumed).
"""

from __future__ import annotations

import heapq
import io
import os
import sys
import threading
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from queue import SimpleQueue
from struct import Struct
from time import perf_counter, process_time, sleep
from typing import TYPE_CHECKING, Any

import httpx
from werkzeug.test import EnvironBuilder

from .._checks import NO_CHECKS
from .._errors import StormError
from .._headers import HOP_BY_HOP, TOKEN, WSGI_VALUE_BAD, wsgi_header_fault
from .._metrics import STATUS_EXCEPTION, STATUS_TIMEOUT, ErrorBook, Recorder
from .._metrics.records import LiveRecords
from .._probes.attribution import Ledger, bind
from .._probes.attribution import attributing as attribution_on
from .._workload import Request, checked_user_headers
from .base import (
    BadHeaders,
    BadStatus,
    BodyNotBytes,
    CheckedHeaders,
    ContentLengthMismatch,
    HopByHopHeader,
    InvalidHeader,
    NoStartResponse,
    StartedTwice,
)

if TYPE_CHECKING:
    from .._engine.schedule import Schedule

__all__ = ["PoolRun", "WsgiDriver", "WsgiPool", "build_environ"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


#: Body chunks kept as a sample of an error response.
_SAMPLE_CHUNKS = 4
#: Seconds past one request timeout after which a request-count storm with no completion
#: is given up.
_STALL_GRACE = 2.0


class _NullErrors(io.StringIO):
    """``wsgi.errors`` that keeps nothing: storms must not fill memory with app logging."""

    def write(self, s: str) -> int:
        return len(s)


_ERRORS = _NullErrors()


def request_environ(request: Request) -> tuple[dict[str, Any], bytes]:
    """The (environ template, body) of a request built on the fly, its headers checked."""
    return build_environ(request.checked_httpx())


def build_environ(request: httpx.Request) -> tuple[dict[str, Any], bytes]:
    """WSGI environ template (built by werkzeug) and body of *request*, encoded once."""
    body = request.read()
    url = request.url
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
    builder = EnvironBuilder(
        path=url.path,
        base_url="http://testserver",
        query_string=url.query.decode("ascii"),
        method=request.method,
        headers=headers,
        data=body,
    )
    try:
        environ = builder.get_environ()
    finally:
        builder.close()
    environ["wsgi.errors"] = _ERRORS
    environ["wsgi.multithread"] = True
    environ["REMOTE_ADDR"] = "127.0.0.1"
    environ["REMOTE_PORT"] = "50000"
    return environ, body


#: Status lines already checked, and their codes: an app sends a handful of them.
_STATUS_CODES: dict[str, int] = {}
_STATUS_CODES_KEPT = 256


def _status_code(status: object) -> int:
    """The code of a ``"NNN reason"`` status line; :class:`BadStatus` for anything else."""
    code = status[:3] if type(status) is str and len(status) > 3 else ""
    if not code.isdigit():
        raise BadStatus(f"start_response status must be a str such as '200 OK', not {status!r}")
    if type(status) is str and len(_STATUS_CODES) < _STATUS_CODES_KEPT:
        _STATUS_CODES[status] = int(code)
    return int(code)


#: Response header lists already checked, with their declared content-length.
_CHECKED_HEADERS = CheckedHeaders()
_KNOWN_HEADERS = _CHECKED_HEADERS.known


def response_headers(headers: Any) -> int:
    """Check a WSGI app's headers as gunicorn and PEP 3333 do; return their content-length.

    -1 when none is declared. Raises :class:`BadHeaders` for the wrong shape,
    :class:`InvalidHeader` for what gunicorn refuses to write and :class:`HopByHopHeader`
    for a header PEP 3333 leaves to the server.
    """
    if type(headers) is not list:
        raise BadHeaders(f"start_response headers must be a list, not {headers!r}")
    if not headers:
        return -1
    key, declared = _CHECKED_HEADERS.lookup(headers)
    if declared is not None:
        return declared
    lengths = []
    fullmatch, search = TOKEN.fullmatch, WSGI_VALUE_BAD.search
    for header in headers:
        if (
            type(header) is not tuple
            or len(header) != 2
            or type(header[0]) is not str
            or type(header[1]) is not str
        ):
            raise BadHeaders(f"start_response headers must be (str, str) tuples, not {header!r}")
        name, value = header
        if not fullmatch(name) or search(value):
            raise InvalidHeader(wsgi_header_fault(name, value) or repr(header))
        lower = name.lower()
        if lower in HOP_BY_HOP:
            raise HopByHopHeader(
                f"hop-by-hop header {name!r} from a WSGI app: PEP 3333 leaves it to the server"
            )
        if lower == "content-length":
            lengths.append(value.encode("latin-1"))
    return _CHECKED_HEADERS.remember(key, lengths)


class _StartResponse:
    """``start_response`` held to PEP 3333: once per response unless ``exc_info`` replaces
    headers not yet sent; a status "NNN reason"; headers as (str, str) pairs that a real
    server would send.

    A worker thread keeps one and :meth:`reset` s it before each request (cheaper than a
    new object per request). The app is given :attr:`call`, the bound :meth:`start`: an
    instance's ``__call__`` costs twice a bound method's call. The body has been sent once
    :attr:`first_byte` is set (the instant of its first byte).
    """

    __slots__ = ("call", "first_byte", "headers", "length", "status", "writer", "written")

    def __init__(self) -> None:
        self.status = 0
        self.first_byte = 0.0
        self.headers: list[tuple[str, str]] = []
        #: The declared content-length (-1: none) and the bytes given to ``write()``.
        self.length = -1
        self.written = 0
        # Bound once: a bound method made per response is an allocation per response.
        self.call: Callable[..., Callable[[bytes], Any]] = self.start
        self.writer: Callable[[bytes], None] = self.write

    def reset(self) -> None:
        """Ready for the next response (what :meth:`start` does not set itself)."""
        self.status = 0
        self.first_byte = 0.0

    def start(self, status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], Any]:
        """``start_response(status, headers, exc_info=None)``."""
        if exc_info is not None:
            if self.first_byte:
                raise exc_info[1].with_traceback(exc_info[2])
        elif self.status:
            raise StartedTwice("start_response called twice without exc_info")
        code = _STATUS_CODES.get(status) if type(status) is str else None
        if code is None:
            code = _status_code(status)
        if headers and type(headers) is list:
            try:
                self.length = _KNOWN_HEADERS[tuple(headers)]  # checked before
            except (KeyError, TypeError):
                self.length = response_headers(headers)
        else:
            self.length = -1 if type(headers) is list else response_headers(headers)
        self.status = code
        self.headers = headers
        self.written = 0
        return self.writer

    __call__ = start

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` callable: the body sent before the iterable's."""
        if not isinstance(data, bytes):
            raise BodyNotBytes(f"write() takes bytes, not {type(data).__name__}")
        if data:
            self.written += len(data)
            if not self.first_byte:
                self.first_byte = perf_counter()


def respond(
    app: WSGIApp, environ: dict[str, Any], start_response: _StartResponse, keep: bool
) -> list[bytes] | None:
    """Call *app* and consume its whole response, holding it to PEP 3333.

    The status, first-byte instant and headers are left on *start_response*; the body chunks
    are returned when *keep* or when the status is an error (a sample), else None. Raises
    :class:`ProtocolViolation` where the app breaks PEP 3333 (a chunk that is not bytes, no
    ``start_response`` before the body, ``start_response`` twice, a body that is not as long
    as its content-length).
    """
    result = app(environ, start_response.call)
    chunks: list[bytes] | None = None
    size = 0
    try:
        for chunk in result:
            if type(chunk) is not bytes and not isinstance(chunk, bytes):
                raise BodyNotBytes(
                    f"the response iterable yielded {type(chunk).__name__}, not bytes"
                )
            if chunk:
                size += len(chunk)
                if not start_response.first_byte:
                    if not start_response.status:
                        raise NoStartResponse("a body chunk came before start_response")
                    start_response.first_byte = perf_counter()
                    if keep or start_response.status >= 400:
                        chunks = []
                if chunks is not None and (keep or len(chunks) < _SAMPLE_CHUNKS):
                    chunks.append(chunk)
    finally:
        # A list has no close(); any other iterable may (a generator, a file wrapper).
        if type(result) is not list:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    status = start_response.status
    if not status:
        raise NoStartResponse("the app returned without calling start_response")
    declared = start_response.length
    if declared >= 0:
        size += start_response.written
        if (
            size != declared
            and status >= 200
            and status not in (204, 304)
            and environ["REQUEST_METHOD"] != "HEAD"
        ):
            raise ContentLengthMismatch(
                f"the body is {'longer' if size > declared else 'shorter'} than its "
                f"content-length: {declared} declared, {size} sent"
            )
    if chunks is None and (keep or status >= 400):
        return []
    return chunks


def user_template(template: dict[str, Any], user: Any) -> dict[str, Any]:
    """*template* with *user*'s headers and cookies added (itself when it has none)."""
    if user is None or not (user.headers or user.cookies):
        return template
    template = template.copy()
    for name, value in checked_user_headers(user.header_pairs()):
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        template[key] = value
    return template


class WsgiDriver:
    """Calls a WSGI app with prebuilt environs and consumes the whole response."""

    def __init__(self, app: WSGIApp, requests: list[Request]) -> None:
        self.app = app
        self.templates = [build_environ(spec.to_httpx()) for spec in requests]

    def call_as(
        self, prepared: tuple[dict[str, Any], bytes], user: Any = None, capture: bool = False
    ) -> tuple[int, float, list[tuple[str, str]] | None, list[bytes] | None]:
        """Run a prepared request as *user* (its headers and cookies added); keep the headers
        and body when *capture* or when the status is an error.

        Returns (status, first byte, headers or None, body chunks or None). Raises
        :class:`ProtocolViolation` where the app breaks PEP 3333 (see :func:`respond`).
        """
        template, body = prepared
        environ = user_template(template, user).copy()
        environ["wsgi.input"] = io.BytesIO(body)
        start_response = _StartResponse()
        chunks = respond(self.app, environ, start_response, capture)
        first = start_response.first_byte or perf_counter()
        if chunks is not None:
            return start_response.status, first, start_response.headers, chunks
        return start_response.status, first, None, None


def _where(thread: threading.Thread) -> str:
    """*thread*'s name and the innermost function of the app (or of a check) it is in."""
    frame = sys._current_frames().get(thread.ident or 0)
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    while frame is not None:
        code = frame.f_code
        if not code.co_filename.startswith((package, os.path.dirname(threading.__file__))):
            where = f"{code.co_name}() at {os.path.basename(code.co_filename)}:{frame.f_lineno}"
            return f"{thread.name} in {where}"
        frame = frame.f_back
    return thread.name


class _Expired(Exception):
    """A queued request whose client gave up before a worker picked it."""


class _Tape:
    """One worker thread's records as its per-request path takes them.

    One row of :data:`ROW` per request in ``raw``: four ``perf_counter()`` instants
    (intended send, picked by the thread, first body byte or 0.0, finished) and one code
    (status, endpoint index << 16, error kind << 32). Packing a row is one call and one
    in-place append per request, where appending to typed arrays converts each value
    apart and a :class:`Recorder`'s seven integer records take several conversions each.
    :meth:`into` writes those records after the round, off the per-request path.
    """

    __slots__ = ("raw",)

    #: A request's row: four doubles and a signed 64-bit code, native order, no padding.
    ROW = Struct("=ddddq")
    pack = ROW.pack
    SIZE = ROW.size

    def __init__(self) -> None:
        self.raw = bytearray()

    def add(self, intended: float, picked: float, first: float, finished: float, code: int) -> None:
        """Record one request (the per-request path packs its row inline instead)."""
        self.raw += self.pack(intended, picked, first, finished, code)

    @staticmethod
    def _columns(
        raw: bytes | bytearray,
    ) -> tuple[list[float], list[float], list[float], list[float], list[int]]:
        """The intended, picked, first-byte and finished instants of rows *raw*, and codes."""
        floats, ints = array("d"), array("q")
        floats.frombytes(raw)
        ints.frombytes(raw)
        values = floats.tolist()
        return values[0::5], values[1::5], values[2::5], values[3::5], ints[4::5].tolist()

    def tail(self, count: int) -> tuple[int, list[int], list[int]]:
        """Requests recorded so far, and the latencies (µs) and statuses of the last *count*
        (read from another thread while the worker appends whole rows: length first, then
        one slice, a copy)."""
        size = self.SIZE
        n = len(self.raw) // size
        rows = self.raw[max(0, n - count) * size : n * size]
        intended, _, _, finished, codes = self._columns(rows)
        latencies = [int((f - i) * 1e6) for i, f in zip(intended, finished, strict=True)]
        return n, latencies, [code & 0xFFFF for code in codes]

    def into(self, rec: Recorder, origin: float, timeout: float) -> None:
        """Append this tape's requests to *rec* as integer µs from *origin*; a latency is
        capped at *timeout*, the client's deadline, and a queue wait at the latency."""
        intended, picked, first, finished, codes = self._columns(self.raw)
        latency = [min(f - i, timeout) for i, f in zip(intended, finished, strict=True)]
        rec.start.fromlist([int((i - origin) * 1e6) for i in intended])
        rec.latency.fromlist([int(x * 1e6) for x in latency])
        rec.ttfb.fromlist(
            [int((b - i) * 1e6) if b else -1 for i, b in zip(intended, first, strict=True)]
        )
        rec.queue.fromlist(
            [int(min(p - i, x) * 1e6) for i, p, x in zip(intended, picked, latency, strict=True)]
        )
        rec.status.fromlist([code & 0xFFFF for code in codes])
        rec.endpoint.fromlist([(code >> 16) & 0xFFFF for code in codes])
        rec.error.fromlist([code >> 32 for code in codes])


@dataclass
class PoolRun:
    """What a pool run produced: records per thread and how the run ended."""

    recorders: list[Recorder]
    stuck_threads: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0


class WsgiPool:
    """``workers × threads`` threads serving a round's schedule from one FIFO backlog.

    The pool is the WSGI driver's executor: it follows the engine's :class:`Schedule`
    from its own threads, so a closed-model user costs no hop between an event loop
    and a thread per request.
    """

    def __init__(self, driver: WsgiDriver, *, workers: int, threads: int) -> None:
        self.driver = driver
        self.workers = workers
        self.threads = threads
        self.size = workers * threads

    def describe(self) -> str:
        """The server model, in gunicorn's words."""
        if self.threads == 1:
            return f"{self.workers} sync worker{'s' if self.workers != 1 else ''}"
        return f"{self.workers} worker{'s' if self.workers != 1 else ''} × {self.threads} threads"

    def run(
        self,
        schedule: Schedule,
        *,
        pick: Callable[[], int],
        book: ErrorBook,
        build: Callable[[int, int], tuple[int, Request]] | None = None,
        live: list[LiveRecords] | None = None,
        users: list[Any] | None = None,
        inspector: Any,
        watch: Callable[[Callable[..., None]], Callable[..., None]] | None = None,
    ) -> PoolRun:
        """Serve the round's schedule; join every thread before returning.

        Times are ``perf_counter()`` values. Closed model: users sent before their
        intended time (think time, stages, staggered starts) wait in one timer thread;
        otherwise the thread that completes a user's request puts its next one straight
        back in the backlog. Open model: a dispatcher thread puts arrivals in the backlog
        on schedule, dropping those that find ``max_in_flight`` requests out.
        *build(user, iteration)* makes templated requests. Requests run as their user
        (stateful *users*); the *inspector* looks at the responses it asks to keep.
        *watch* wraps each thread's target (a probe that reads the thread at its start and end).
        """
        state = _PoolRound(
            self, schedule, pick=pick, book=book, build=build, users=users, inspector=inspector
        )
        if live is not None:
            live.extend(state.tapes)  # read (lengths and tails only) by a progress line
        cpu_before = process_time()
        state.start(watch)
        population = state.first_sends()
        interrupted = stalled = False
        try:
            stalled = state.wait(population)
        except BaseException:
            interrupted = True
            raise
        finally:
            stuck = state.stop(interrupted=interrupted, stalled=stalled)
        cpu = process_time() - cpu_before
        if state.failures:
            raise state.failures[0]
        for tape, rec in zip(state.tapes, state.recorders, strict=True):
            tape.into(rec, schedule.origin, schedule.timeout)
        return PoolRun(state.recorders, stuck, cpu)


class _PoolRound:
    """One round of a :class:`WsgiPool`: what its threads share, and each thread's loop.

    The threads share plain lists (no lock on the per-request path: each thread writes
    only its own slot); a worker binds what it reads to locals once, before its loop.
    """

    def __init__(
        self,
        pool: WsgiPool,
        schedule: Schedule,
        *,
        pick: Callable[[], int],
        book: ErrorBook,
        build: Callable[[int, int], tuple[int, Request]] | None,
        users: list[Any] | None,
        inspector: Any,
    ) -> None:
        self.pool = pool
        self.schedule = schedule
        self.pick = pick
        self.book = book
        self.build = build
        self.users = users
        self.inspector = inspector
        self.backlog: SimpleQueue[tuple[float, int] | None] = SimpleQueue()
        self.stop_event = threading.Event()
        # A plain list read is cheaper than Event.is_set() on the per-request path.
        self.halt = [False]
        self.timers: list[tuple[float, int]] = []
        self.timer_cv = threading.Condition()
        self.timed_out_kind = book.kind(None, ErrorBook.TIMEOUT)
        self.recorders = [Recorder() for _ in range(pool.size)]
        # A request is done once its row is on its thread's tape (see :meth:`done`).
        self.tapes = [_Tape() for _ in range(pool.size)]
        # When each thread picked the request it is serving (0.0 when idle): a handler is
        # judged stuck from its own deadline, not from the storm's.
        self.busy_since = [0.0] * pool.size
        # One counter per thread (no lock): a user retires when the schedule has no next
        # send for it; the run is over when every user has retired.
        self.retired = [0] * pool.size
        self.dispatched = [0, 0]  # arrivals put in the backlog; 1 once the dispatcher is done
        self.iterations: dict[int, int] = {}
        self.failures: list[BaseException] = []
        self.attributing = attribution_on()
        self.helpers: list[threading.Thread] = []
        self.workers: list[threading.Thread] = []

    def done(self) -> int:
        """Requests completed so far, every thread's (read while they append)."""
        return sum(len(tape.raw) for tape in self.tapes) // _Tape.SIZE

    def fail(self, exc: BaseException) -> None:
        self.failures.append(exc)
        self.halt[0] = True

    def later(self, when: float, user: int) -> None:
        with self.timer_cv:
            heapq.heappush(self.timers, (when, user))
            self.timer_cv.notify()

    def timer_main(self) -> None:
        timers, backlog, stop = self.timers, self.backlog, self.stop_event
        with self.timer_cv:
            while not stop.is_set():
                if not timers:
                    self.timer_cv.wait(0.05)
                    continue
                when, user = timers[0]
                wait = when - perf_counter()
                if wait > 0:
                    self.timer_cv.wait(min(wait, 0.05))
                    continue
                heapq.heappop(timers)
                backlog.put((when, user))

    def dispatcher_main(self) -> None:
        schedule, dispatched, done = self.schedule, self.dispatched, self.done
        try:
            for at in schedule.arrivals():
                wait = at - perf_counter()
                if wait > 0 and self.stop_event.wait(wait):
                    return
                if not schedule.take():
                    return
                # In flight: put in the backlog and not yet completed.
                if schedule.admits_arrival(at, dispatched[0] - done()):
                    dispatched[0] += 1
                    self.backlog.put((at, -1))
        finally:
            dispatched[1] = 1

    # long: the pool's hot loop, kept whole on purpose (below).
    # One frame per thread serves every request: the per-request path (pick, call, check,
    # record, next send) stays in this one loop over locals, since a call per request is
    # a measurable share of a do-nothing app's cost.
    def worker_main(self, slot: int) -> None:  # noqa: PLR0915
        tape = self.tapes[slot]
        raw, pack, row_size = tape.raw, tape.pack, tape.SIZE
        add_waits = self.recorders[slot].add_waits
        schedule, inspector, book = self.schedule, self.inspector, self.book
        backlog, halt, build, pick, users = (
            self.backlog,
            self.halt,
            self.build,
            self.pick,
            self.users,
        )
        get, put = backlog.get, backlog.put
        driver = self.pool.driver
        app, templates = driver.app, driver.templates
        picking = build is None and len(templates) > 1
        capture, judges = inspector.capture, inspector.judges
        checks_for, look = inspector.checks_for, inspector.look
        window = schedule.window
        origin, timeout, next_send = schedule.origin, schedule.timeout, schedule.next_send
        # The schedule's rules, inlined on the per-request path where they are trivial: no
        # request count to spend, no think time or stages between a user's requests.
        counted = window.total is not None
        issued, limit = schedule.counter, window.total or 0
        plain = not schedule.thinks and not schedule.profile.varies
        stop_at = window.stop_at
        timed_out_kind = self.timed_out_kind
        retired, busy_since = self.retired, self.busy_since
        iterations, fail, later = self.iterations, self.fail, self.later
        # One ledger per thread, emptied after each request: the waits the app's code
        # charges while this thread serves a request are that request's.
        waits = Ledger()
        if self.attributing:
            bind(waits)
        entries = waits.entries
        start_response = _StartResponse()
        new_input = io.BytesIO
        checks = NO_CHECKS
        keep = capture
        index = 0
        # One request for every send: its template, body and checks, read once.
        fixed = build is None and len(templates) == 1
        if fixed:
            template, body = templates[0]
            if judges:
                checks = checks_for(0)
        while True:
            item = get()
            if item is None:
                return
            intended, user = item
            picked = perf_counter()
            # Requests meant to be sent before the end are still served (the backlog
            # drains, as a real server's would); later ones are not sent.
            if halt[0] or (counted and user >= 0 and next(issued) >= limit):
                retired[slot] += 1
                continue
            error = 0
            if build is None:
                if picking:
                    index = pick()
            else:
                iteration = iterations.get(user, 0)
                iterations[user] = iteration + 1
                try:
                    index, request = build(user, iteration)
                except BaseException as exc:  # the storm's own input failed: stop it
                    fail(exc)
                    return
            try:
                # Its client gave up while it queued: late, it is a timeout, and not served.
                if picked - intended >= timeout:
                    raise _Expired
                if fixed:
                    pass
                elif build is None:
                    template, body = templates[index]
                    if judges:
                        checks = checks_for(index)
                else:
                    template, body = request_environ(request)
                    # A request made mid-storm brings its own checks.
                    checks = checks_for(index, request)
                    keep = capture or checks.needs_body
                if users is not None and user >= 0:
                    person = users[user]
                    environ = user_template(template, person).copy()
                else:
                    person = None
                    environ = template.copy()
                environ["wsgi.input"] = new_input(body)
                start_response.status = 0
                start_response.first_byte = 0.0
                busy_since[slot] = picked
                chunks = respond(app, environ, start_response, keep)
                status = start_response.status
                first_byte = start_response.first_byte or perf_counter()
                if chunks is not None:
                    # Kept for the checks, or an error status: a sample body for the report.
                    error = look(person, index, checks, status, start_response.headers, chunks)
                elif checks is not NO_CHECKS and checks:
                    error = look(person, index, checks, status, None, None)
            except _Expired:
                status, first_byte, error = STATUS_TIMEOUT, 0.0, timed_out_kind
            except Exception as exc:
                status, first_byte, error = STATUS_EXCEPTION, 0.0, book.kind(exc)
            except (SystemExit, KeyboardInterrupt) as exc:
                # Raised by the app in a worker thread (a real Ctrl-C reaches the main
                # thread only): the app's failure, recorded like any other.
                status, first_byte, error = STATUS_EXCEPTION, 0.0, book.kind(exc)
            busy_since[slot] = 0.0
            finished = perf_counter()
            # The client gave up at its deadline; the worker stayed busy until now (unless
            # a check held it, which is named as the failure). The tape caps the latency.
            if finished - intended > timeout and not inspector.check_failed(error):
                status, error = STATUS_TIMEOUT, timed_out_kind
            # The code is the status alone for the first endpoint and no error (no shifts).
            code = status | index << 16 | error << 32 if index or error else status
            raw += pack(intended, picked, first_byte, finished, code)
            if entries:
                add_waits(entries, origin, len(raw) // row_size - 1)
                entries.clear()
            if user < 0:
                continue
            if plain:
                # The next send is this completion, until the stop.
                if finished < stop_at and not halt[0]:
                    put((finished, user))
                else:
                    retired[slot] += 1
                continue
            try:
                again = next_send(user, finished)
            except BaseException as exc:  # a think-time sampler that failed
                fail(exc)
                return
            if again is None or halt[0]:
                retired[slot] += 1
            elif again > finished:
                later(again, user)
            else:
                put((again, user))

    def start(self, watch: Callable[[Callable[..., None]], Callable[..., None]] | None) -> None:
        """Start the timer, the dispatcher (open model) and the workers; on a refusal, stop
        those that started and raise :class:`StormError`."""

        def watched(target: Callable[..., None]) -> Callable[..., None]:
            return watch(target) if watch is not None else target

        pool = self.pool
        timer = threading.Thread(
            target=watched(self.timer_main), name="storm-wsgi-timer", daemon=True
        )
        self.helpers = [timer]
        if self.schedule.open:
            self.helpers.append(
                threading.Thread(
                    target=watched(self.dispatcher_main), name="storm-wsgi-arrivals", daemon=True
                )
            )
        self.workers = [
            threading.Thread(
                target=watched(self.worker_main),
                args=(slot,),
                name=f"storm-wsgi-{slot}",
                daemon=True,
            )
            for slot in range(pool.size)
        ]
        started: list[threading.Thread] = []
        try:
            for thread in [*self.helpers, *self.workers]:
                thread.start()
                started.append(thread)
        except RuntimeError as exc:
            # The machine would not give the pool all its threads (a thread limit, memory
            # for their stacks): stop those that started, so that none outlives the storm.
            self._stop_started(started)
            running = sum(1 for t in started if t in self.workers)
            raise StormError(
                f"the WSGI pool could start only {running:,} of its {pool.size:,} threads "
                f"(workers={pool.workers} × threads={pool.threads}): {exc}; lower workers= "
                "or threads=, or raise the machine's limit on threads"
            ) from exc

    def _stop_started(self, started: list[threading.Thread]) -> None:
        self.stop_event.set()
        for _ in range(len(self.workers)):
            self.backlog.put(None)
        with self.timer_cv:
            self.timer_cv.notify_all()
        for thread in started:
            thread.join(5.0)

    def first_sends(self) -> int:
        """Put each user's first send in the backlog (or the timer's heap); the users sent."""
        users = self.users
        # A user whose on_start failed sends nothing.
        first_sends = [
            (user, when)
            for user, when in self.schedule.first_sends()
            if users is None or not getattr(users[user], "start_failed", False)
        ]
        now = perf_counter()
        for user, when in first_sends:
            if when <= now:
                self.backlog.put((when, user))
            else:
                self.later(when, user)
        return len(first_sends)

    def wait(self, population: int) -> bool:
        """Wait for the round's end (deadline, users retired, requests spent, a failure);
        True when it ended because nothing completed for a whole timeout."""
        schedule, done, failures = self.schedule, self.done, self.failures
        deadline = schedule.window.deadline
        total = schedule.window.total
        # A request-count storm has no stop time: it also ends once nothing has completed
        # for a whole timeout while requests wait (a handler that never returns).
        stall_limit = schedule.timeout + _STALL_GRACE
        completed, progress_at = 0, perf_counter()
        while perf_counter() < deadline and not failures:
            if schedule.open:
                if self.dispatched[1] and done() >= self.dispatched[0]:
                    return False
            elif sum(self.retired) >= population:
                return False
            if total is not None:
                now_done = done()
                if now_done >= total:
                    return False
                now = perf_counter()
                if now_done != completed:
                    completed, progress_at = now_done, now
                elif now - progress_at > stall_limit:
                    return True
            sleep(0.005)
        return False

    def stop(self, *, interrupted: bool, stalled: bool) -> list[str]:
        """Stop every thread; the threads (and where they were) still running past their
        deadline."""
        self.halt[0] = True
        self.stop_event.set()
        for _ in self.workers:
            self.backlog.put(None)
        with self.timer_cv:
            self.timer_cv.notify_all()
        stuck: list[str] = []
        # Interrupted (Ctrl-C): do not wait for handlers; the threads are daemons.
        # Otherwise a handler still running is waited for until its own deadline (its
        # request's timeout and a grace from when it was picked): one still running
        # then never returns in time, whatever the storm's own end.
        ended = perf_counter()
        timeout = self.schedule.timeout
        for slot, thread in [*enumerate(self.workers), *((-1, t) for t in self.helpers)]:
            if interrupted:
                until = ended + 0.2
            elif stalled:
                until = ended + 1.0
            else:
                since = self.busy_since[slot] if slot >= 0 else 0.0
                until = since + timeout + _STALL_GRACE if since else ended + 1.0
            thread.join(max(0.05, until - perf_counter()))
            if thread.is_alive():
                stuck.append(_where(thread))
        return stuck
