"""Carry a round's schedule out with any async driver: users and arrivals as tasks on one loop.

The timing rule: a request's latency counts from its *intended* send time — for a
closed-model user, the moment its previous response completed plus think time; for
an open-model arrival, its scheduled instant — never from when the user's code
happened to run. In-process, the users share the event loop (and the GIL) with the
app, so a handler that blocks the loop also stops the users from sending; a clock
started when a user resumes would hide the queue that real clients would see. Each
user also yields to the loop before it sends, so users interleave first come, first
served, like clients queued on a socket.

Timeouts cost nothing per request: one monitor task scans the requests in flight a
few times per timeout, tells a driver whose request ran out of time that its client
has gone (``disconnect()``), cancels it shortly after, and puts a fresh user in its
place so a closed model keeps its population.

Users are plain asyncio tasks, not children of a task group, so that one the app will
not let go of can be abandoned: a request cancelled once (as a server cancels it) whose
app swallows ``CancelledError`` and goes on is closed after a grace period — its
coroutine gets ``GeneratorExit`` at its ``await``, as a killed worker's would end — and
counted, and the round ends on time whatever the app does with cancellation.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Coroutine, Generator
from time import perf_counter
from typing import Any

import anyio
import anyio.lowlevel

from .. import _clock as clock
from .._checks import NO_CHECKS, Checks
from .._drivers.base import AsyncDriver
from .._metrics import STATUS_EXCEPTION, STATUS_TIMEOUT, ErrorBook
from .._metrics.fold import RunFigures
from .._metrics.records import LiveRecords, RawRecords
from .._probes.attribution import LONG_STEP, Ledger, OwnSteps, attributing, bind
from .._tasks import ABANDON_GRACE, TaskSet
from .._workload import RequestMix
from .inspect import Inspector
from .interrupts import app_interrupt
from .schedule import Schedule
from .users import User

__all__ = ["AsyncRunner", "Slot", "running_loop"]

#: Arrivals sent behind schedule between two turns given to the rest of the loop.
_LATE_PER_TURN = 64
#: After a timeout, how long the app may take to notice the disconnect before it is cancelled.
_DISCONNECT_GRACE = 0.02


async def sleep_until(at: float) -> None:
    """Return at *at* on the engine's clock, never before it.

    A loop's timers may fire early against ``perf_counter``: uvloop's (libuv's) count in
    whole milliseconds from a time read once per pass of the loop. A request sent before
    its intended time would read a latency shorter than its own, below zero on a fast
    server, and the next one would fall before the round's start and out of the count.
    """
    while (delay := at - clock.now()) > 0:
        await anyio.sleep(delay)


class Slot:
    """One virtual user's (or open-model connection's) slot: its request in flight, if any."""

    __slots__ = (
        "abandon_at",
        "book",
        "cancel_at",
        "capture",
        "conn",
        "exchange",
        "index",
        "since",
        "steps",
        "task",
        "timed_out",
        "uid",
        "user",
    )

    def __init__(self, uid: int = 0, user: User | None = None, capture: bool = False) -> None:
        self.uid = uid
        self.user = user
        self.capture = capture  # keep headers and body (checks, cookies)
        self.since = 0.0  # intended send time of the request in flight, 0.0 when idle
        self.index = 0  # endpoint of the request in flight
        self.timed_out = False
        self.cancel_at = 0.0
        self.abandon_at = 0.0
        self.exchange: Any = None
        self.conn: Any = None  # a driver's per-user state (a keep-alive connection)
        self.task: asyncio.Task[None] | None = None
        #: The waits of the request in flight (bound to the user's task on its first request).
        self.book: Ledger | None = None
        #: The wrapper that times the steps of its requests (kept from one to the next).
        self.steps: OwnSteps | None = None


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None under another backend (trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _checkpoint(_: float) -> None:
    await anyio.lowlevel.checkpoint()


@types.coroutine
def _turn(_: float) -> Generator[None, None, None]:
    """Give the others ready on an asyncio loop their turn: what ``asyncio.sleep(0)`` does
    (a bare yield, which the task answers by scheduling itself again), in one frame
    rather than two."""
    yield


class AsyncRunner:
    """Executes a :class:`Schedule` with an :class:`AsyncDriver` on the running loop."""

    def __init__(
        self,
        schedule: Schedule,
        driver: AsyncDriver,
        mix: RequestMix,
        *,
        recorders: list[LiveRecords] | None = None,
        users: list[User] | None = None,
        checks: Checks = NO_CHECKS,
    ) -> None:
        self.schedule = schedule
        self.users = users
        self.driver = driver
        self.mix = mix
        self.timeout = schedule.timeout
        #: The round's records, in seconds until the round ends (``RawRecords.recorder``).
        self.rec = rec = RawRecords()
        self.origin = schedule.origin
        # Bound once: recording is on every request's path.
        self._appends = (
            rec.start.append,
            rec.latency.append,
            rec.first.append,
            rec.status.append,
            rec.endpoint.append,
            rec.error.append,
        )
        if recorders is not None:
            recorders.append(self.rec)  # read (lengths and tails only) by a live line
        self.book = ErrorBook()
        self.timeout_kind = self.book.kind(None, ErrorBook.TIMEOUT)
        self.inspector = Inspector(
            self.book, mix, checks, users is not None, deadline=schedule.timeout
        )
        self.capture = self.inspector.capture
        self.judges = self.inspector.judges
        self.pick = mix.picker()
        # Looked up once: every request's path reads them.
        self.prepared = mix.factory is None
        self.single = len(mix.requests) <= 1
        self.slots: set[Slot] = set()
        self.alive = 0
        self.in_flight: list[tuple[float, int]] = []
        self.yield_now: Any = _turn if running_loop() is not None else _checkpoint
        self.iterations: dict[int, int] = {}
        self.arrivals_done = False
        #: Users, arrivals and the monitor: a request whose app ignores its cancellation
        #: is abandoned (``tasks.abandoned`` counts them).
        self.tasks = TaskSet()
        #: Charge each request's waits to it; keep its long steps of its own code too
        #: (set while a loop monitor runs).
        self.attributing = attributing()
        self.own_steps = False
        #: The loop monitor's progress cell, which each step kept writes its end to.
        self.progress: list[float] | None = None

    # -- recording --------------------------------------------------------------------

    def record(
        self, intended: float, latency: float, first: float, status: int, error: int, index: int
    ) -> None:
        start, latency_, first_, status_, endpoint, error_ = self._appends
        start(intended)
        latency_(latency)
        first_(first)
        status_(status)
        endpoint(index)
        error_(error)

    def record_timeout(self, slot: Slot, intended: float) -> None:
        self.record(intended, self.timeout, 0.0, STATUS_TIMEOUT, self.timeout_kind, slot.index)

    def bind_ledger(self, slot: Slot) -> Ledger:
        """Open the ledger of *slot*'s user: its task keeps one, charged with the waits of
        each of its requests in turn."""
        book = slot.book = Ledger()
        bind(book)
        return book

    def past_timeout(self, status: int, error: int, first: float) -> tuple[int, int, float, float]:
        """Status, error, latency and first byte of a request that completed past its timeout."""
        if self.inspector.check_failed(error):
            return status, error, self.timeout, first  # a check held it: named as such
        return STATUS_TIMEOUT, self.timeout_kind, self.timeout, 0.0

    def built(self, slot: Slot, user: int) -> tuple[int, Checks, Coroutine[Any, Any, Any]]:
        """The endpoint, checks and call of a request the mix's factory builds for *user*."""
        iteration = self.iterations.get(user, 0)
        self.iterations[user] = iteration + 1
        request = self.mix.build(slot.user if slot.user is not None else user, iteration)
        index = self.mix.intern(request.label)
        checks = self.inspector.checks_for(index, request)
        if checks.needs_body:
            slot.capture = True  # a request made mid-storm brings its own checks
        return index, checks, self.driver.call_request(request, slot)

    async def judged(
        self, slot: Slot, index: int, checks: Checks, exchange: Any
    ) -> tuple[int, int]:
        """Status and error of a response that came back: none, or one to look at."""
        status = exchange.status
        if not status:
            return STATUS_EXCEPTION, self.book.kind(None, "NoResponse")
        if checks.awaits:
            # The response is in: an async check is held to its own deadline, not the
            # request's timeout (which would record it as a timeout, unnamed).
            slot.since = 0.0
            seen = self.inspector.seen(slot.user, status, exchange.headers, exchange.body)
            return status, await self.inspector.ajudged(index, checks, seen)
        if exchange.headers is not None:
            return status, self.inspector.look(
                slot.user, index, checks, status, exchange.headers, exchange.body
            )
        return status, self.inspector.look(None, index, checks, status, None, None)

    async def serve(self, slot: Slot, intended: float, user: int) -> float:
        """Send one request and record it; return when it completed (a runner of another
        kind serves its own way)."""
        return await self.requests(slot, intended, user)

    # long: every request's path, one call per user; each call split out of it is a share
    # of what the engine adds to a request.
    async def requests(  # noqa: PLR0915
        self, slot: Slot, intended: float, user: int, *, closed: bool = False
    ) -> float:
        """Send one request and record it; return when it completed.

        *closed*: go on as a closed-model user whose first request is due and has had its
        turn, with each next one: when it is due, after a turn given to the others, while
        the schedule hands out requests. Return when the last completed (or the user timed
        out: ``slot.timed_out``).

        Every request's path: what it reads is read once, and calls are written out rather
        than made (each one is a share of what the engine adds to a request).
        """
        prepared, single, judges, pick = self.prepared, self.single, self.judges, self.pick
        inspector, errors, call_of = self.inspector, self.book, self.driver.call
        timeout, attributing, own_steps = self.timeout, self.attributing, self.own_steps
        start, latency_, first_, status_, endpoint, error_ = self._appends
        schedule = self.schedule
        counter, limit = schedule.counter, schedule.window.total
        stop_at = schedule.window.stop_at
        # schedule.next_send() written out for the common case (no think time, no stages).
        plain = not schedule.thinks and not schedule.profile.varies
        yield_now = self.yield_now
        while True:
            if prepared:
                index = 0 if single else pick()
                checks = inspector.checks_for(index) if judges else NO_CHECKS
                call = call_of(index, slot)
            else:
                index, checks, call = self.built(slot, user)
            slot.index = index
            if clock.now() - intended >= timeout:
                # The client gave up before the loop let it send.
                call.close()
                self.record_timeout(slot, intended)
                done = intended + timeout
            else:
                slot.since = intended
                book = slot.book
                if book is None:
                    if attributing:
                        book = self.bind_ledger(slot)
                elif book.entries:
                    book.entries.clear()
                error = 0
                try:
                    if book is None or not own_steps:
                        exchange = await call
                    else:
                        # The request's steps are timed (see OwnSteps). Its first step runs
                        # here: most requests complete in it, and need no wrapper.
                        steps = slot.steps
                        if steps is None:
                            steps = slot.steps = OwnSteps(call, book, self.progress)
                        progress = steps.progress
                        began = perf_counter()
                        try:
                            yielded = call.send(None)
                        except StopIteration as returned:
                            exchange = returned.value
                            suspended = False
                        else:
                            suspended = True
                        finally:
                            progress[0] = ended = perf_counter()
                            if ended - began >= LONG_STEP:
                                steps.own(began, ended - began)
                        if suspended:
                            # It waits for something: the wrapper hands the loop what it
                            # awaits and times each of its later steps.
                            steps.resume(call, yielded)
                            exchange = await steps
                except Exception as exc:
                    status, first, error = STATUS_EXCEPTION, 0.0, errors.kind(exc)
                except (SystemExit, KeyboardInterrupt) as exc:
                    # The app's own exit or interrupt is the app's failure; a real Ctrl-C
                    # is not.
                    if not app_interrupt(exc):
                        raise
                    status, first, error = STATUS_EXCEPTION, 0.0, errors.kind(exc)
                else:
                    status, first = exchange.status, exchange.first_byte
                    if not status or checks is not NO_CHECKS or exchange.headers is not None:
                        status, error = await self.judged(slot, index, checks, exchange)
                done = clock.now()
                slot.since = 0.0
                if slot.timed_out:
                    return done  # the monitor counted it at its deadline
                latency = done - intended
                if latency >= timeout:
                    status, error, latency, first = self.past_timeout(status, error, first)
                # self.record() written out.
                start(intended)
                latency_(latency)
                first_(first)
                status_(status)
                endpoint(index)
                error_(error)
                if book is not None and book.entries:
                    self.rec.add_waits(book.entries, self.origin)
            if not closed:
                return done
            # The user's next request, as user() below decides it.
            following = (
                (done if done < stop_at else None) if plain else schedule.next_send(user, done)
            )
            if following is None:
                return done
            intended = following
            if intended > done:  # not back to back: think time, a stage
                await sleep_until(intended)
            await yield_now(0)
            if limit is not None and next(counter) >= limit:
                return done

    # -- closed model -------------------------------------------------------------------

    async def user(self, uid: int, intended: float | None, slot: Slot) -> None:
        schedule = self.schedule
        next_send, serve, yield_now = schedule.next_send, self.serve, self.yield_now
        # One request after another in requests() itself (one call per user, not per
        # request), unless a runner of another kind serves its own way.
        whole = type(self).serve is AsyncRunner.serve
        try:
            done = 0.0
            while intended is not None:
                if intended > done:  # not back to back: think time, a stagger, a stage
                    await sleep_until(intended)
                await yield_now(0)
                if not schedule.take():
                    break
                if whole:
                    await self.requests(slot, intended, uid, closed=True)
                    return
                done = await serve(slot, intended, uid)
                if slot.timed_out:
                    return
                intended = next_send(uid, done)
        finally:
            self.slots.discard(slot)
            self.alive -= 1

    def spawn_user(self, uid: int, intended: float | None) -> None:
        slot = Slot(uid, self.users[uid] if self.users is not None else None, self.capture)
        self.slots.add(slot)
        self.alive += 1
        slot.task = self.tasks.spawn(self.user(uid, intended, slot))

    # -- open model ---------------------------------------------------------------------

    async def connection(
        self, first: float, slot: Slot, idle: list[asyncio.Future[float | None]]
    ) -> None:
        loop = asyncio.get_running_loop()
        intended: float | None = first
        serve = self.requests if type(self).serve is AsyncRunner.serve else self.serve
        try:
            while intended is not None:
                await serve(slot, intended, -1)
                if slot.timed_out or self.arrivals_done:
                    return
                waiter: asyncio.Future[float | None] = loop.create_future()
                idle.append(waiter)
                intended = await waiter
        finally:
            self.slots.discard(slot)
            self.alive -= 1

    async def arrivals(self) -> None:
        schedule = self.schedule
        idle: list[asyncio.Future[float | None]] = []
        try:
            late = 0
            for at in schedule.arrivals():
                if at > clock.now():
                    await sleep_until(at)
                else:
                    # Behind schedule: still give the connections a turn now and then.
                    late += 1
                    if late % _LATE_PER_TURN == 0:
                        await anyio.lowlevel.checkpoint()
                if not schedule.take():
                    break
                # Late arrivals keep their scheduled time: if the loop was blocked, the
                # requests that should have arrived meanwhile are sent now but timed from
                # their schedule (no coordinated omission).
                while idle and idle[-1].done():  # cancelled connection
                    idle.pop()
                if idle:
                    idle.pop().set_result(at)
                elif schedule.admits_arrival(at, len(self.slots)):
                    slot = Slot(-1, None, self.capture)
                    self.slots.add(slot)
                    self.alive += 1
                    slot.task = self.tasks.spawn(self.connection(at, slot, idle))
        finally:
            # Connections still busy will see the flag; idle ones are woken to leave.
            self.arrivals_done = True
            for waiter in idle:
                if not waiter.done():
                    waiter.set_result(None)
            self.alive -= 1

    # -- timeouts and sampling ----------------------------------------------------------

    async def monitor(self) -> None:
        timeout = self.timeout
        tick = min(0.05, timeout / 4)
        schedule = self.schedule
        while self.alive > 0:
            await anyio.sleep(tick)
            now = clock.now()
            busy = 0
            for slot in list(self.slots):
                started = slot.since
                if started:
                    busy += 1
                if slot.timed_out:
                    if slot.cancel_at and now >= slot.cancel_at:
                        slot.cancel_at = 0.0
                        slot.abandon_at = now + ABANDON_GRACE
                        if slot.task is not None:
                            slot.task.cancel()
                    elif slot.abandon_at and now >= slot.abandon_at:
                        slot.abandon_at = 0.0
                        if slot.task is not None:
                            self.tasks.abandon(slot.task)
                elif started and now - started >= timeout:
                    # The client gives up at its deadline: the app is told (http.disconnect)
                    # and, if it does not finish soon after, cancelled as a server would.
                    slot.timed_out = True
                    slot.since = 0.0
                    slot.cancel_at = now + _DISCONNECT_GRACE
                    self.record_timeout(slot, started)
                    if slot.exchange is not None:
                        slot.exchange.disconnect()
                    if not schedule.open:
                        # A fresh user takes the place of the one that timed out, so the
                        # closed model keeps its population.
                        again = schedule.next_send(slot.uid, started + timeout)
                        self.spawn_user(slot.uid, again)
            self.in_flight.append((now, busy))

    async def run(self) -> RunFigures:
        """Run the round to its end (or its deadline); return the records and figures."""
        schedule = self.schedule
        window = schedule.window
        cpu_before = time.thread_time()
        wall_before = clock.now()
        tasks = self.tasks
        hard = anyio.CancelScope()
        try:
            with anyio.move_on_after(max(0.0, window.deadline - clock.now())) as hard:
                if schedule.open:
                    self.alive += 1
                    tasks.spawn(self.arrivals())
                else:
                    users = self.users
                    for uid, first in schedule.first_sends():
                        if users is not None and users[uid].start_failed:
                            continue  # its on_start failed: the user sends nothing
                        self.spawn_user(uid, first)
                tasks.spawn(self.monitor())
                await tasks.wait()
        finally:
            # Whatever ended the round (its end, its deadline, a failure, a cancellation
            # from outside), no task of it outlives it.
            if hard.cancelled_caught:
                for slot in self.slots:
                    if slot.since:
                        self.record_timeout(slot, slot.since)
            await tasks.stop(ABANDON_GRACE)
        if tasks.failure is not None:
            # The storm's own input failed (a request factory, a think-time sampler), or
            # the engine did: raise that error itself.
            raise tasks.failure
        cpu = time.thread_time() - cpu_before
        wall = clock.now() - wall_before
        return RunFigures(
            self.rec.recorder(self.origin),
            self.book,
            window,
            cpu,
            wall,
            schedule.dropped,
            self.in_flight,
            schedule.profile,
        )
