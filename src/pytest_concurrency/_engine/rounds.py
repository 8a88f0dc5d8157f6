"""One round of a storm: choose the driver, run the schedule with it, fold the records.

This is the one place where a plan meets a driver. An async driver (in-process ASGI;
an HTTP client for real servers) runs under :class:`AsyncRunner` on an event loop,
with the loop-lag monitor and thread-pool probe around it; the in-process WSGI pool
runs the same :class:`Schedule` from its own threads. Both fold into a
:class:`StormResult` through :func:`fold`.
"""

from __future__ import annotations

import inspect
import threading
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread

from .. import _clock as clock
from .._apps import as_asgi3
from .._checks import Response, headers_text
from .._drivers.asgi import AsgiDriver
from .._drivers.base import AsyncDriver
from .._drivers.websocket import WebSocketDriver
from .._drivers.wsgi import WsgiDriver, WsgiPool, request_environ
from .._errors import StormError
from .._metrics import ErrorBook, Recorder
from .._metrics.fold import PoolModel, RunFigures, fold
from .._metrics.percentile import quantile
from .._model.extras import Abandoned, ContentionFigures, StartHooks, VirtualClock
from .._model.probes import ConnectionPoolUsage, LoopLag, PoolUsage
from .._model.remarks import (
    abandoned_warning,
    contention_note,
    gil_note,
    harness_bound_remark,
)
from .._model.result import StormResult
from .._params import Layer, StormConfig
from .._probes.connpools import ConnectionPoolProbe
from .._probes.contention import CpuContention
from .._probes.loop import LoopMonitor
from .._probes.pools import ThreadPoolProbe
from .._tasks import ABANDON_GRACE
from .._workload import Request
from .inspect import Inspector
from .interrupts import app_interrupt
from .plan import LiveFigures, StormPlan, plan_storm
from .runner import AsyncRunner, Slot, running_loop
from .schedule import Schedule
from .users import AsyncUser, SyncUser, User, is_async_hook
from .virtual import metered, virtual_report

__all__ = [
    "RoundOutput",
    "execute_async",
    "execute_pool",
    "finish",
    "harness_cost_us",
    "run_async_round",
    "run_pool_round",
]

#: Loop-thread CPU share above which the event loop counts as saturated.
_SATURATED_CPU = 0.85
#: Share of their ready time the storm's threads waited for a CPU, from which a note says so.
_CONTENDED = 0.2
#: The first request is sent this long after the schedule is made.
_LEAD = 0.001


def async_driver(plan: StormPlan) -> AsyncDriver:
    """The async driver that serves *plan*: a real server over HTTP, or the app in-process."""
    if plan.url is not None:
        # httptools (the servers extra) is needed only to talk to a real server.
        from .._drivers.http import HttpDriver

        return HttpDriver(plan.url, list(plan.requests), server=plan.served_by)
    app = plan.app if plan.config.clock == "wall" else metered(as_asgi3(plan.app))
    return AsgiDriver(app, list(plan.requests), lifespan=plan.config.lifespan)


class StartRecords:
    """Requests made by ``on_start`` hooks, recorded apart from the storm's figures, and the
    hooks that failed (their users send nothing)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.hooks_failed: list[str] = []
        self.hook_errors: Counter[str] = Counter()
        self.example = ""
        self.left_running = 0
        self._lock = threading.Lock()

    def add(self, seconds: float, status: int, error: str | None = None) -> None:
        """One start-hook request."""
        with self._lock:
            self.latencies.append(seconds)
            if error is not None:
                self.errors[error] += 1
            else:
                self.statuses[status] += 1

    def fail(self, user: User, kind: str, message: str, example: str = "") -> None:
        """*user*'s hook failed: the user sends nothing."""
        user.start_failed = True
        with self._lock:
            self.hooks_failed.append(f"user {int(user)}: {message}")
            self.hook_errors[kind] += 1
            if not self.example:
                self.example = example or f"user {int(user)}: {message}"

    def judge(self, user: User, outcome: Any, error: BaseException | None, took: float) -> None:
        """Record how *user*'s hook ended: what it returned or raised, and how long it took."""
        if error is not None:
            if isinstance(error, KeyboardInterrupt) and not app_interrupt(error):
                raise error
            example = "".join(traceback.format_exception(error))
            self.fail(user, type(error).__name__, f"{type(error).__name__}: {error}", example)
        elif inspect.isawaitable(outcome) or inspect.isgenerator(outcome):
            close = getattr(outcome, "close", None)
            if close is not None:
                close()
            what = type(outcome).__name__
            self.fail(
                user,
                "NotRun",
                f"on_start returned a {what} instead of running: nothing of it ran "
                "(make it a plain def, or an async def the storm awaits)",
            )
        elif took > self.deadline:
            self.fail(
                user,
                "HookDeadline",
                f"on_start hook blocked for {took:.1f} s past its {self.deadline:g} s deadline "
                "(timeout_ms)",
            )

    def record(self, users: int) -> StartHooks:
        """The hooks' figures, for ``result.on_start``."""
        ordered = sorted(self.latencies)
        count = len(ordered)
        return StartHooks(
            users=users,
            requests=count,
            failed=sum(self.errors.values())
            + sum(n for status, n in self.statuses.items() if status >= 400),
            status_counts=dict(self.statuses),
            errors=dict(self.errors),
            hooks_failed=tuple(self.hooks_failed[:5]),
            hooks_failed_count=len(self.hooks_failed),
            hook_errors=dict(self.hook_errors),
            example=self.example,
            deadline_s=self.deadline,
            left_running=self.left_running,
            p50_ms=quantile(ordered, 0.5) * 1000 if count else None,
            p99_ms=quantile(ordered, 0.99) * 1000 if count else None,
        )


#: Start hooks that run at once (a login storm before the storm would distort nothing
#: measured, but thousands at once would only queue).
_START_CONCURRENCY = 64


#: Said of a start hook's thread past its deadline: Python cannot stop a thread.
_LEFT_RUNNING = "; its thread cannot be stopped and ends when the hook returns"


def _hook_deadline(plan: StormPlan) -> float:
    """How long one user's ``on_start`` may take: one request's timeout."""
    return plan.config.timeout_ms / 1000


async def _start_users_async(
    plan: StormPlan, driver: AsyncDriver, count: int
) -> tuple[list[User], StartRecords]:
    """Run ``on_start`` for *count* users through *driver*, before the round."""
    hook = plan.on_start
    records = StartRecords(_hook_deadline(plan))
    first = plan.config.first_user

    async def send(user: User, request: Request) -> Response:
        slot = Slot(int(user), user, capture=True)
        started = clock.now()
        try:
            exchange = await driver.call_request(request, slot)
        except Exception as exc:
            records.add(clock.now() - started, 0, type(exc).__name__)
            raise
        headers = headers_text(exchange.headers or ())
        user.absorb(headers)
        records.add(clock.now() - started, exchange.status)
        return Response(exchange.status, headers, b"".join(exchange.body or ()))

    if is_async_hook(hook):
        users: list[User] = [AsyncUser(first + uid, send) for uid in range(count)]
    else:

        def send_sync(user: User, request: Request) -> Response:
            return anyio.from_thread.run(send, user, request)

        users = [SyncUser(first + uid, send_sync) for uid in range(count)]
    limiter = anyio.Semaphore(_START_CONCURRENCY)
    deadline = records.deadline

    async def start(user: User) -> None:
        async with limiter:
            began = clock.now()
            outcome: Any = None
            error: BaseException | None = None
            with anyio.move_on_after(deadline) as scope:
                try:
                    if is_async_hook(hook):
                        outcome = await hook(user)
                    else:
                        # A thread blocked past the deadline cannot be stopped: the user
                        # fails at the deadline and the thread is left to end on its own.
                        outcome = await anyio.to_thread.run_sync(hook, user, abandon_on_cancel=True)
                except anyio.get_cancelled_exc_class():
                    raise
                except BaseException as exc:
                    error = exc
            if scope.cancelled_caught:
                left = "" if is_async_hook(hook) else _LEFT_RUNNING
                records.left_running += bool(left)
                records.fail(
                    user,
                    "HookDeadline",
                    f"on_start hook was still running at its {deadline:g} s deadline "
                    f"(timeout_ms){left}",
                )
                return
            records.judge(user, outcome, error, clock.now() - began)

    async with anyio.create_task_group() as group:
        for user in users:
            group.start_soon(start, user)
    return users, records


def _start_users_sync(
    plan: StormPlan, driver: WsgiDriver, count: int
) -> tuple[list[User], StartRecords]:
    """Run ``on_start`` for *count* users of the WSGI pool, up to 64 at once in threads of
    their own, each within its deadline, before the round."""
    hook = plan.on_start
    records = StartRecords(_hook_deadline(plan))
    first = plan.config.first_user

    def send(user: User, request: Request) -> Response:
        started = perf_counter()
        try:
            status, _, headers, chunks = driver.call_as(request_environ(request), user, True)
        except Exception as exc:
            records.add(perf_counter() - started, 0, type(exc).__name__)
            raise
        pairs = headers_text(headers or ())
        user.absorb(pairs)
        records.add(perf_counter() - started, status)
        return Response(status, pairs, b"".join(chunks or ()))

    async def send_async(user: User, request: Request) -> Response:
        return send(user, request)

    asynchronous = is_async_hook(hook)
    users: list[User] = [
        AsyncUser(first + uid, send_async) if asynchronous else SyncUser(first + uid, send)
        for uid in range(count)
    ]
    finished: dict[int, float] = {}
    claim = threading.Lock()

    def settle(user: User, took: float) -> bool:
        """True for the first to settle *user*'s hook: its thread, or the deadline."""
        with claim:
            if int(user) in finished:
                return False
            finished[int(user)] = took
            return True

    def start(user: User) -> None:
        began = perf_counter()
        outcome: Any = None
        error: BaseException | None = None
        try:
            outcome = anyio.run(hook, user) if asynchronous else hook(user)
        except BaseException as exc:
            error = exc
        took = perf_counter() - began
        if settle(user, took):
            records.judge(user, outcome, error, took)

    deadline = records.deadline
    for wave in range(0, count, _START_CONCURRENCY):
        threads = [
            (user, threading.Thread(target=start, args=(user,), name="storm-on-start", daemon=True))
            for user in users[wave : wave + _START_CONCURRENCY]
        ]
        began = perf_counter()
        for _, thread in threads:
            thread.start()
        for user, thread in threads:
            thread.join(max(0.0, began + deadline - perf_counter()))
            if thread.is_alive() and settle(user, -1.0):
                # A thread cannot be stopped: the user fails now; the thread, a daemon,
                # ends when the hook returns.
                records.left_running += 1
                records.fail(
                    user,
                    "HookDeadline",
                    f"on_start hook was still running at its {deadline:g} s deadline "
                    f"(timeout_ms){_LEFT_RUNNING}",
                )
    return users, records


async def _soon() -> float:
    return clock.now() + _LEAD


#: When the first request of a round is due; called once the driver is ready, so that
#: start-up (lifespan, a shard's start) stays out of the round.
AsyncOrigin = Callable[[], Awaitable[float]]
#: Makes the runner of a round from its schedule and live recorders (a WebSocket round
#: runs its own subclass of :class:`AsyncRunner` with its own driver).
RunnerFactory = Callable[[Schedule, list[Recorder] | None], AsyncRunner]


@dataclass
class RoundOutput:
    """One round's raw figures and probe results, before folding (picklable for shards)."""

    figures: RunFigures
    server: str
    pool: PoolModel | None = None
    loop_lag: LoopLag | None = None
    thread_pools: list[PoolUsage] = field(default_factory=list)
    connection_pools: list[ConnectionPoolUsage] = field(default_factory=list)
    stuck_threads: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: What the round noticed beside its figures (see :class:`StormResult`'s records).
    on_start: StartHooks | None = None
    samples: dict[int, str] | None = None
    clock: VirtualClock | None = None
    #: The virtual clock's notes, for the result's notes.
    clock_notes: list[str] = field(default_factory=list)
    abandoned: Abandoned | None = None
    cpu_contention: ContentionFigures | None = None

    @property
    def cpu_share(self) -> float | None:
        """Share of one core the executing thread(s) used during the round."""
        figures = self.figures
        return figures.cpu / figures.wall if figures.wall > 0 else None


def _round_remarks(
    output: RoundOutput,
    runner: AsyncRunner,
    driver: AsyncDriver | WebSocketDriver,
    config: StormConfig,
) -> None:
    """Put a finished async round's error-body samples, virtual clock and abandoned tasks
    on *output*, with the warnings they call for."""
    if runner.inspector.samples.by_status:
        output.samples = dict(runner.inspector.samples.by_status)
    if config.clock == "virtual":
        output.clock, output.clock_notes, warnings = virtual_report()
        output.warnings.extend(warnings)
    abandoned = runner.tasks.abandoned + getattr(driver, "abandoned", 0)
    if abandoned:
        output.abandoned = Abandoned(abandoned, ABANDON_GRACE)
        output.warnings.append(abandoned_warning(abandoned, ABANDON_GRACE))


async def _started_users(
    plan: StormPlan, http: AsyncDriver | None
) -> tuple[list[User] | None, StartHooks | None]:
    """The users of an HTTP round with start hooks, their hooks run; (None, None) without."""
    if plan.on_start is None or http is None:
        return None, None
    count = Schedule(plan.config, 0.0).users
    users, started = await _start_users_async(plan, http, count)
    return users, started.record(count)


def _runner(
    plan: StormPlan,
    schedule: Schedule,
    recorders: list[Recorder] | None,
    http: AsyncDriver | None,
    users: list[User] | None,
    factory: RunnerFactory | None,
) -> AsyncRunner:
    """The runner of an async round: *factory*'s, else the HTTP driver's."""
    if factory is not None:
        return factory(schedule, recorders)
    if http is None:
        raise StormError("a driver given to execute_async() needs its runner_factory")
    return AsyncRunner(
        schedule, http, plan.mix, recorders=recorders, users=users, checks=plan.checks
    )


async def execute_async(
    plan: StormPlan,
    live: LiveFigures | None = None,
    origin: AsyncOrigin = _soon,
    *,
    driver: AsyncDriver | WebSocketDriver | None = None,
    runner_factory: RunnerFactory | None = None,
) -> RoundOutput:
    """Run one round with the plan's async driver (or *driver* and the runner that
    *runner_factory* makes for it) on the running event loop."""
    config = plan.config
    http: AsyncDriver | None = None
    if driver is None:
        http = driver = async_driver(plan)
    timeout = config.timeout_ms / 1000
    on_start: StartHooks | None = None
    contended: ContentionFigures | None = None
    runner: AsyncRunner | None = None
    failure: StormError | None = None
    figures: RunFigures | None = None
    monitor: LoopMonitor | None = None
    probe: ThreadPoolProbe | None = None
    connections: ConnectionPoolProbe | None = None
    async with anyio.create_task_group() as lifespan_group:
        try:
            await driver.startup(lifespan_group, timeout=max(timeout, 10.0))
            # Lifespan is not monitored: only the storm itself.
            users, on_start = await _started_users(plan, http)
            async with AsyncExitStack() as stack:
                # In-process only: behind a real server these would watch the client
                # (storm.py runs the same probes inside the server's workers instead).
                # A virtual loop never lags (it charges the app's work to its clock), and
                # the pool probe would watch threads a virtual round refuses.
                # The connection-pool probe starts first: installing its wrappers is
                # not the app's time on the loop.
                if plan.url is None and config.clock == "wall":
                    connections = await stack.enter_async_context(ConnectionPoolProbe())
                if running_loop() is not None and plan.url is None and config.clock == "wall":
                    monitor = await stack.enter_async_context(LoopMonitor(threshold_ms=5.0))
                    probe = await stack.enter_async_context(ThreadPoolProbe())
                schedule = Schedule(config, await origin())
                recorders = live.recorders if live is not None else None
                runner = _runner(plan, schedule, recorders, http, users, runner_factory)
                runner.own_steps = monitor is not None
                if live is not None:
                    live.in_flight = lambda: len(runner.slots)
                contention = CpuContention().start() if config.clock == "wall" else None
                figures = await runner.run()
                contended = _contention(contention)
        except StormError as exc:
            # Raised after the task group, so that callers see the error itself rather
            # than an exception group.
            failure = exc
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await driver.shutdown(timeout=max(timeout, 10.0))
                except StormError as exc:
                    failure = failure or exc
            lifespan_group.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if figures is None or runner is None:  # pragma: no cover - the group re-raises the rest
        raise StormError("the storm ended without figures")
    if monitor is not None:
        figures.stalls = monitor.stall_spans()
    output = RoundOutput(
        figures,
        driver.describe(),
        loop_lag=monitor.result if monitor is not None else None,
        thread_pools=list(probe.result or []) if probe is not None else [],
        connection_pools=list(connections.result) if connections is not None else [],
        on_start=on_start,
        cpu_contention=contended,
    )
    _round_remarks(output, runner, driver, config)
    return output


async def run_async_round(plan: StormPlan, live: LiveFigures | None = None) -> StormResult:
    """Run one round with the plan's async driver and fold it into a result."""
    output = await execute_async(plan, live)
    result = finish(plan, output)
    if plan.config.clock == "virtual":
        # The loop thread's CPU over virtual seconds says nothing about saturation.
        result.loop_cpu_share = None
        result.notes.extend(output.clock_notes)
    if result.loop_cpu_share is not None and result.loop_cpu_share >= _SATURATED_CPU:
        await _warn_harness_bound(result, output.figures.cpu)
    return result


def execute_pool(
    plan: StormPlan, live: LiveFigures | None = None, origin: Callable[[], float] | None = None
) -> RoundOutput:
    """Run one round on the in-process WSGI pool (blocks the calling thread)."""
    config = plan.config
    driver = WsgiDriver(plan.app, list(plan.requests))
    pool = WsgiPool(driver, workers=config.workers, threads=config.threads)
    book = ErrorBook()
    build = None
    if plan.mix.factory is not None:
        lock = threading.Lock()
        mix = plan.mix

        def build_request(user: int, iteration: int) -> tuple[int, Request]:
            request = mix.build(user, iteration)
            with lock:
                return mix.intern(request.label), request

        build = build_request
    on_start: StartHooks | None = None
    users: list[User] | None = None
    if plan.on_start is not None:
        count = Schedule(config, 0.0).users
        users, started = _start_users_sync(plan, driver, count)
        on_start = started.record(count)
    inspector = Inspector(
        book, plan.mix, plan.checks, users is not None, deadline=config.timeout_ms / 1000
    )
    schedule = Schedule(config, origin() if origin is not None else perf_counter() + _LEAD)
    wall_before = perf_counter()
    contention = CpuContention().start()
    with ConnectionPoolProbe() as connections:
        run = pool.run(
            schedule,
            pick=plan.mix.picker(),
            book=book,
            build=build,
            live=live.recorders if live is not None else None,
            users=users,
            inspector=inspector,
            watch=contention.watch,
        )
    contended = _contention(contention)
    wall = perf_counter() - wall_before
    figures = RunFigures(
        Recorder.merge(run.recorders),
        book,
        schedule.window,
        run.cpu_seconds,
        wall,
        schedule.dropped,
        [],
        schedule.profile,
    )
    description = pool.describe()
    return RoundOutput(
        figures,
        description,
        pool=PoolModel(description, pool.size),
        connection_pools=connections.result,
        stuck_threads=run.stuck_threads,
        on_start=on_start,
        samples=dict(inspector.samples.by_status) if inspector.samples.by_status else None,
        cpu_contention=contended,
    )


def _contention(contention: CpuContention | None) -> ContentionFigures | None:
    measured = contention.stop() if contention is not None else None
    return measured.record() if measured is not None else None


def run_pool_round(plan: StormPlan, live: LiveFigures | None = None) -> StormResult:
    """Run one round on the in-process WSGI pool and fold it into a result."""
    return finish(plan, execute_pool(plan, live))


def finish(plan: StormPlan, output: RoundOutput) -> StormResult:
    """Fold a round's output into a result and add what the round itself noticed."""
    figures = output.figures
    if output.stuck_threads:
        raise StormError(
            f"{len(output.stuck_threads)} worker thread(s) were still running the app (or a "
            "check on its response) "
            f"{plan.config.timeout_ms / 1000:g} s (timeout_ms) and a 2 s grace after they "
            f"picked their request ({', '.join(output.stuck_threads[:4])}): a handler that "
            "never returns? "
            "Lower its wait or raise timeout_ms"
        )
    result = fold(plan, figures, server=output.server, pool=output.pool)
    result.loop_lag = output.loop_lag
    result.thread_pools = list(output.thread_pools)
    result.connection_pools = list(output.connection_pools)
    result.loop_cpu_share = output.cpu_share
    result.warnings.extend(output.warnings)
    result.on_start = output.on_start
    result.samples = output.samples
    result.clock = output.clock
    result.abandoned = output.abandoned
    result.cpu_contention = contention = output.cpu_contention
    if (
        contention is not None
        and contention.wait_share is not None
        and contention.wait_share >= _CONTENDED
    ):
        result.notes.append(contention_note(contention.wait_share, contention.wait_s or 0.0))
    busy = result.loop_cpu_share
    if output.pool is not None and busy is not None and busy >= _SATURATED_CPU:
        result.notes.append(gil_note(busy))
    return result


# -- harness self-measurement --------------------------------------------------------------

_HARNESS_COST: dict[str, float] = {}


async def _null_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def harness_cost_us() -> float:
    """CPU µs the storm engine itself spends per request (measured once per process)."""
    if "asgi" not in _HARNESS_COST:
        plan = plan_storm(
            _null_app, "GET", "/", layers=[Layer("calibration", {"users": 100, "requests": 5000})]
        )
        driver = AsgiDriver(_null_app, list(plan.requests), lifespan="off")
        schedule = Schedule(plan.config, perf_counter() + _LEAD)
        figures = await AsyncRunner(schedule, driver, plan.mix).run()
        _HARNESS_COST["asgi"] = figures.cpu / max(1, len(figures.rec)) * 1e6
    return _HARNESS_COST["asgi"]


async def _warn_harness_bound(result: StormResult, loop_cpu: float) -> None:
    cost = await harness_cost_us()
    # Requests discarded by warm-up also cost the loop: count everything that was sent.
    sent = result.requests + result.discarded
    share = min(1.0, sent * cost / 1e6 / loop_cpu) if loop_cpu > 0 else 0.0
    result.harness_share = share
    busy = result.loop_cpu_share or 0.0
    (result.warnings if share >= 0.5 else result.notes).append(
        harness_bound_remark(busy, share, cost)
    )
