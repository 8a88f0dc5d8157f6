"""Run a workload against a driver, record every request, and fold the records into a result.

The timing rule: a request's latency counts from its *intended* send time — for a
closed-model user, the moment its previous response completed plus think time —
never from when the user's code happened to run. In-process, the users share the
event loop (and the GIL) with the app, so a handler that blocks the loop also stops
the users from sending; a clock started when a user resumes would hide the queue
that real clients would see. Each user also yields to the loop before it sends, so
users interleave first come, first served, like clients queued on a socket.
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, AsyncExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import anyio
import anyio.lowlevel

from ._apps import Interface, app_label, detect_interface
from ._asgi import AsgiDriver
from ._budget import evaluate, evaluate_endpoint
from ._errors import ConfigError, StormError
from ._metrics import (
    STATUS_EXCEPTION,
    STATUS_TIMEOUT,
    ErrorBook,
    LatencyStats,
    Moments,
    Recorder,
    latency_stats,
    new_histogram,
    record_many,
)
from ._params import Layer, StormConfig, resolve
from ._probes.loop import LoopMonitor
from ._probes.pools import ThreadPoolProbe
from ._result import EndpointStats, Knee, PoolStats, StormResult, TimelinePoint
from ._simio import INSTALLED as UPSTREAMS
from ._simio import seed_latency, wait_recorder
from ._workload import Profile, Request, RequestFactory, RequestMix, build_mix, start_offsets
from ._wsgi import WsgiDriver, WsgiPool

__all__ = ["LiveFigures", "Progress", "StormPlan", "plan_storm", "run_plan", "run_plan_async"]

#: Extra seconds a storm may run past its stop time plus one request timeout.
_GRACE = 2.0
#: Loop-thread CPU share above which the event loop counts as saturated.
_SATURATED_CPU = 0.85


@dataclass
class StormPlan:
    """A validated storm, ready to fire: nothing has been sent yet."""

    app: Any
    interface: Interface
    label: str
    app_name: str
    mix: RequestMix
    config: StormConfig

    @property
    def requests(self) -> Sequence[Request]:
        """The request specs of the mix."""
        return self.mix.requests


def plan_storm(
    app: Any,
    method: str | None = None,
    path: str | None = None,
    *,
    requests: Sequence[Request] | RequestFactory | None = None,
    layers: Sequence[Layer] = (),
    scale: tuple[float, str] | None = None,
) -> StormPlan:
    """Validate everything about a storm before any load is fired.

    *scale* is ``(factor, origin)``: users, rates and durations scaled for a quick run.
    """
    config = resolve(layers)
    if scale is not None and scale[0] != 1:
        config.scaled(*scale)
    mix = build_mix(method, path, requests, config.request_options, config.seed)
    if config.interface is not None:
        if not callable(app):
            detect_interface(app)  # raises the not-callable error
        interface: Interface = "asgi" if config.interface == "asgi" else "wsgi"
    else:
        interface = detect_interface(app)
    if mix.factory is not None:
        label = f"templated requests ({mix.labels[0] if mix.labels else '?'} …)"
    elif len(mix.requests) == 1:
        label = mix.requests[0].label
    else:
        label = f"mix of {len(mix.requests)} requests"
    return StormPlan(app, interface, config.name or label, app_label(app), mix, config)


class LiveFigures:
    """Figures of the storm in progress, for a live status line (read from another thread).

    Reads only lengths and the tail of the record arrays, which the storm appends to:
    cheap, and safe under the GIL.
    """

    def __init__(self, plan: StormPlan) -> None:
        self.plan = plan
        self.recorders: list[Recorder] = []
        self.started = perf_counter()
        self.in_flight: Callable[[], int] | None = None

    def snapshot(self) -> dict[str, Any]:
        """Elapsed seconds, requests, rps, p99 of the latest requests, in flight, errors."""
        elapsed = perf_counter() - self.started
        requests = errors = 0
        tail: list[int] = []
        for rec in list(self.recorders):
            n = len(rec.latency)
            requests += n
            start = max(0, n - 500)
            tail.extend(rec.latency[start:n])
            statuses = rec.status[start:n]
            errors += sum(1 for st in statuses if _failed(st, 0))
        tail.sort()
        figures: dict[str, Any] = {"elapsed": elapsed, "requests": requests, "errors": errors}
        if elapsed > 0:
            figures["rps"] = requests / elapsed
        if tail:
            figures["p99_ms"] = tail[int(0.99 * (len(tail) - 1))] / 1000
        if self.in_flight is not None:
            figures["in_flight"] = self.in_flight()
        return figures

    @property
    def expected_seconds(self) -> float | None:
        """How long the storm should take, when known."""
        config = self.plan.config
        if config.stages:
            return sum(seconds for seconds, _ in config.stages)
        if config.duration is not None:
            return config.duration + config.warmup
        return None


#: A progress line: called with the live figures, returns a context manager around the storm.
Progress = Callable[[LiveFigures], AbstractContextManager[Any]]


def run_plan(plan: StormPlan, progress: Progress | None = None) -> StormResult:
    """Fire the storm from synchronous code (no event loop may be running in this thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise ConfigError(
            "storm() was called inside a running event loop; in an async test use "
            "`await storm.arun(...)` instead"
        )
    rounds = []
    for _ in range(plan.config.rounds):
        with _round(plan, progress) as (live, attach):
            if plan.interface == "wsgi":
                rounds.append(attach(_run_wsgi(plan, live)))
            else:
                rounds.append(attach(anyio.run(_run_asgi, plan, live)))
    return _judge(plan, rounds)


async def run_plan_async(plan: StormPlan, progress: Progress | None = None) -> StormResult:
    """Fire the storm from async code: ASGI on the running loop, WSGI on a helper thread."""
    rounds = []
    for _ in range(plan.config.rounds):
        with _round(plan, progress) as (live, attach):
            if plan.interface == "wsgi":
                rounds.append(attach(await anyio.to_thread.run_sync(_run_wsgi, plan, live)))
            else:
                rounds.append(attach(await _run_asgi(plan, live)))
    return _judge(plan, rounds)


@contextmanager
def _round(
    plan: StormPlan, progress: Progress | None
) -> Iterator[tuple[LiveFigures, Callable[[StormResult], StormResult]]]:
    """Everything around one round of a storm: collector paused, simulated I/O, live line."""
    live = LiveFigures(plan)
    with (
        _collector(plan.config),
        _simulated_io(plan) as attach,
        progress(live) if progress is not None else nullcontext(),
    ):
        yield live, attach


def _judge(plan: StormPlan, rounds: list[StormResult]) -> StormResult:
    """Pick the round to report (median by p99 unless told otherwise) and judge its budgets."""
    config = plan.config
    if len(rounds) == 1:
        chosen = rounds[0]
    else:
        ordered = sorted(rounds, key=lambda r: (r.latency.p99, -r.throughput))
        if config.aggregate == "worst":
            chosen = ordered[-1]
        elif config.aggregate == "best":
            chosen = ordered[0]
        else:
            chosen = ordered[(len(ordered) - 1) // 2]
        chosen.rounds = [
            {
                "p50": r.latency.p50,
                "p99": r.latency.p99,
                "max": r.latency.max,
                "rps": r.throughput,
                "error_rate": r.error_rate,
            }
            for r in rounds
        ]
        p99s = [r.latency.p99 for r in rounds]
        rps = [r.throughput for r in rounds]
        chosen.warnings.append(
            f"{len(rounds)} rounds, judged on the {config.aggregate} one: p99 "
            f"{min(p99s):.1f}–{max(p99s):.1f} ms, {min(rps):,.0f}–{max(rps):,.0f} rps"
        )
    if config.scale is not None:
        chosen.warnings.append(
            f"load scaled ×{config.scale:g} for a quick run (--concurrency-scale); budgets unchanged"
        )
        chosen.extras["scale"] = config.scale
    chosen.verdicts = evaluate(chosen, config.budgets)
    for endpoint, budgets in config.endpoint_budgets.items():
        chosen.verdicts.extend(evaluate_endpoint(chosen, endpoint, budgets))
    if chosen.knee is not None:
        knee = chosen.knee
        load = (
            f"{knee.target:,.0f} {'rps' if chosen.model == 'open' else 'users'}"
            if knee.target is not None
            else "?"
        )
        chosen.warnings.append(
            f"knee: p99 broke at ≈{load} (second {knee.second}: {knee.p99:,.1f} ms against "
            f"{knee.calm_p99:,.1f} ms at low load)"
        )
    if chosen.dropped:
        chosen.warnings.append(
            f"{chosen.dropped:,} arrivals dropped: max_in_flight={config.max_in_flight:,} requests "
            "were already in flight"
        )
    return chosen


@contextmanager
def _simulated_io(plan: StormPlan) -> Iterator[Callable[[StormResult], StormResult]]:
    """Seed simulated latency, record the simulated waits' own error, snapshot upstreams."""
    if plan.config.seed is not None:
        seed_latency(plan.config.seed)
    before = {id(u): {k: v.get("calls", 0) for k, v in u.stats().items()} for u in UPSTREAMS}
    undeclared_before = {id(u): u.undeclared_calls for u in UPSTREAMS}
    wait_recorder.start()
    results: list[StormResult] = []

    def attach(result: StormResult) -> StormResult:
        results.append(result)
        return result

    try:
        yield attach
    finally:
        waits = wait_recorder.stop(results[0].window if results else None)
    for result in results:
        if waits.async_waits.count or waits.blocking_waits.count:
            result.extras["simulated_waits"] = waits.to_dict()
        routes: dict[str, Any] = {}
        for upstream in UPSTREAMS:
            for name, stats in upstream.stats().items():
                calls_before = before.get(id(upstream), {}).get(name, 0)
                routes[name] = {**stats, "calls_in_storm": stats.get("calls", 0) - calls_before}
            missed = upstream.undeclared_calls - undeclared_before.get(id(upstream), 0)
            if missed:
                hosts = ", ".join(upstream.undeclared[:5])
                result.warnings.append(
                    f"the app made {missed:,} call(s) to undeclared upstream hosts ({hosts}): "
                    "declare them with upstream.route(...)"
                )
        if routes:
            result.extras["upstream"] = routes


@contextmanager
def _collector(config: StormConfig) -> Any:
    # Past a few thousand in-flight requests, every full collection re-scans every live
    # coroutine and throughput collapses; pause the cyclic collector for the storm.
    if config.gc == "on" or not gc.isenabled():
        yield
        return
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


@dataclass
class _Window:
    origin: float
    measure_from: float
    stop_at: float
    total: int | None
    deadline: float


def _window(config: StormConfig, origin: float, profile: Profile) -> _Window:
    measure_from = origin + config.warmup
    timeout = config.timeout_ms / 1000
    if config.stages:
        # Stages set the whole run; warm-up, if any, is its first seconds.
        stop_at = origin + profile.end
        deadline = stop_at + timeout + _GRACE
        total = None
    elif config.duration is not None:
        stop_at = measure_from + config.duration
        deadline = stop_at + timeout + _GRACE
        total = None
    else:
        stop_at = math.inf
        total = (config.requests or 0) + config.warmup_requests
        deadline = origin + config.warmup + max(600.0, timeout * 10)
    return _Window(origin, measure_from, stop_at, total, deadline)


# -- ASGI: users as tasks on the event loop -----------------------------------------------


async def _run_asgi(plan: StormPlan, live: LiveFigures | None = None) -> StormResult:
    config = plan.config
    driver = AsgiDriver(plan.app, list(plan.requests), lifespan=config.lifespan)
    timeout = config.timeout_ms / 1000
    failure: StormError | None = None
    figures: _RunFigures | None = None
    monitor: LoopMonitor | None = None
    probe: ThreadPoolProbe | None = None
    async with anyio.create_task_group() as lifespan_group:
        try:
            await driver.startup(lifespan_group, timeout=max(timeout, 10.0))
            # Lifespan is not monitored: only the storm itself.
            async with AsyncExitStack() as stack:
                if _running_loop() is not None:  # asyncio only
                    monitor = await stack.enter_async_context(LoopMonitor(threshold_ms=5.0))
                    probe = await stack.enter_async_context(ThreadPoolProbe())
                figures = await _AsgiEngine(plan, driver, live=live).run()
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
    assert figures is not None
    result = _fold(plan, figures, server=_loop_name(), pool=None)
    result.loop_lag = monitor.result if monitor is not None else None
    result.thread_pools = list(probe.result or []) if probe is not None else []
    result.loop_cpu_share = figures.cpu / figures.wall if figures.wall > 0 else None
    if result.loop_cpu_share is not None and result.loop_cpu_share >= _SATURATED_CPU:
        await _warn_harness_bound(result, figures.cpu)
    return result


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # another backend (trio)
        return None


def _loop_name() -> str:
    loop = _running_loop()
    if loop is None:
        return "event loop (trio)"
    module = type(loop).__module__.split(".")[0]
    return "event loop (uvloop)" if module == "uvloop" else "event loop (asyncio)"


class _Flight:
    """One virtual user's (or open-model connection's) request in flight."""

    __slots__ = ("cancel_at", "exchange", "scope", "since", "timed_out", "uid")

    def __init__(self, uid: int = 0) -> None:
        self.uid = uid
        self.since = 0.0  # intended send time of the request in flight, 0.0 when idle
        self.timed_out = False
        self.cancel_at = 0.0
        self.exchange: Any = None
        self.scope = anyio.CancelScope()


@dataclass
class _RunFigures:
    """What a run measured besides the per-request records."""

    rec: Recorder
    book: ErrorBook
    window: _Window
    cpu: float
    wall: float
    dropped: list[float]
    in_flight: list[tuple[float, int]]
    profile: Profile | None


#: After a timeout, how long the app may take to notice the disconnect before it is cancelled.
_DISCONNECT_GRACE = 0.02


class _AsgiEngine:
    """Virtual users (closed model) or arrivals (open model) as tasks on the app's own loop."""

    def __init__(
        self,
        plan: StormPlan,
        driver: AsgiDriver,
        *,
        users: int | None = None,
        live: LiveFigures | None = None,
    ) -> None:
        config = plan.config
        self.plan = plan
        self.config = config
        self.driver = driver
        self.mix = plan.mix
        self.timeout = config.timeout_ms / 1000
        self.rec = Recorder()
        if live is not None:
            live.recorders.append(self.rec)
            live.in_flight = lambda: len(self.flights)
        self.book = ErrorBook()
        self.timeout_kind = self.book.kind(None, ErrorBook.TIMEOUT)
        self.pick = plan.mix.picker()
        self.think_rng = random.Random(config.seed)
        self.open = config.rate is not None
        self.profile = load_profile(config)
        self.users = users or (0 if self.open else max(config.users, math.ceil(self.profile.peak)))
        self.flights: set[_Flight] = set()
        self.issued = 0
        self.alive = 0
        self.dropped: list[float] = []
        self.in_flight: list[tuple[float, int]] = []
        self.origin = 0.0
        self.window: _Window | None = None
        self.yield_now: Any = asyncio.sleep if _running_loop() is not None else _checkpoint
        self.iterations: dict[int, int] = {}
        self.arrivals_done = False

    # -- recording --------------------------------------------------------------------

    def record(
        self, intended: float, latency: float, first: float, status: int, error: int, index: int
    ) -> None:
        rec, origin = self.rec, self.origin
        rec.start.append(int((intended - origin) * 1e6))
        rec.latency.append(int(latency * 1e6))
        rec.ttfb.append(int((first - intended) * 1e6) if first else -1)
        rec.queue.append(-1)
        rec.status.append(status)
        rec.endpoint.append(index)
        rec.error.append(error)

    def think(self) -> float:
        config = self.config
        if config.think is not None:
            return float(config.think.sample(self.think_rng))
        return config.think_ms / 1000

    async def serve(self, flight: _Flight, intended: float, user: int) -> float:
        """Send one request and record it; return when it completed."""
        mix = self.mix
        if mix.factory is None:
            index = self.pick()
            call = self.driver.call(index, flight)
        else:
            iteration = self.iterations.get(user, 0)
            self.iterations[user] = iteration + 1
            request = mix.build(user, iteration)
            index = mix.intern(request.label)
            call = self.driver.call_request(request, flight)
        if perf_counter() - intended >= self.timeout:
            # The client gave up before the loop let it send.
            call.close()
            self.record(intended, self.timeout, 0.0, STATUS_TIMEOUT, self.timeout_kind, index)
            return intended + self.timeout
        flight.since = intended
        error = 0
        try:
            exchange = await call
        except Exception as exc:
            status, first, error = STATUS_EXCEPTION, 0.0, self.book.kind(exc)
        else:
            status, first = exchange.status, exchange.first_byte
            if not status:
                status, error = STATUS_EXCEPTION, self.book.kind(None, "NoResponse")
        done = perf_counter()
        flight.since = 0.0
        if flight.timed_out:
            return done  # the monitor counted it at its deadline
        latency = done - intended
        if latency >= self.timeout:
            status, error, latency, first = STATUS_TIMEOUT, self.timeout_kind, self.timeout, 0.0
        self.record(intended, latency, first, status, error, index)
        return done

    # -- closed model -------------------------------------------------------------------

    async def user(self, uid: int, intended: float, flight: _Flight) -> None:
        window = self.window
        assert window is not None
        stop_at, total, origin = window.stop_at, window.total, self.origin
        profile = self.profile if self.profile.varies else None
        try:
            with flight.scope:
                delay = intended - perf_counter()
                if delay > 0:
                    await anyio.sleep(delay)
                while intended < stop_at:
                    if profile is not None and profile.value(intended - origin) <= uid:
                        # Fewer users wanted now: wait until the stages want this one again.
                        later = profile.next_above(uid, intended - origin)
                        if later is None or origin + later >= stop_at:
                            break
                        intended = origin + later
                        await anyio.sleep(max(0.0, intended - perf_counter()))
                        continue
                    await self.yield_now(0)
                    if total is not None:
                        if self.issued >= total:
                            break
                        self.issued += 1
                    done = await self.serve(flight, intended, uid)
                    if flight.timed_out:
                        return
                    pause = self.think()
                    intended = done + pause
                    if pause > 0:
                        await anyio.sleep(max(0.0, intended - perf_counter()))
        finally:
            self.flights.discard(flight)
            self.alive -= 1

    def spawn_user(self, group: anyio.abc.TaskGroup, uid: int, intended: float) -> None:
        flight = _Flight(uid)
        self.flights.add(flight)
        self.alive += 1
        group.start_soon(self.user, uid, intended, flight)

    # -- open model ---------------------------------------------------------------------

    async def connection(
        self, first: float, flight: _Flight, idle: list[asyncio.Future[float | None]]
    ) -> None:
        loop = asyncio.get_running_loop()
        intended: float | None = first
        try:
            with flight.scope:
                while intended is not None:
                    await self.serve(flight, intended, 0)
                    if flight.timed_out or self.arrivals_done:
                        return
                    waiter: asyncio.Future[float | None] = loop.create_future()
                    idle.append(waiter)
                    intended = await waiter
        finally:
            self.flights.discard(flight)
            self.alive -= 1

    async def arrivals(self, group: anyio.abc.TaskGroup) -> None:
        window = self.window
        assert window is not None
        config = self.config
        idle: list[asyncio.Future[float | None]] = []
        end = window.stop_at - self.origin
        rng = random.Random(config.seed)
        schedule = self.profile.arrivals(end, poisson=config.arrivals == "poisson", rng=rng)
        cap = config.max_in_flight
        total = window.total
        origin = self.origin
        try:
            for offset in schedule:
                at = origin + offset
                now = perf_counter()
                if at > now:
                    await anyio.sleep(at - now)
                if total is not None:
                    if self.issued >= total:
                        break
                    self.issued += 1
                # Late arrivals keep their scheduled time: if the loop was blocked, the
                # requests that should have arrived meanwhile are sent now but timed from
                # their schedule (no coordinated omission).
                while idle and idle[-1].done():  # cancelled connection
                    idle.pop()
                if idle:
                    idle.pop().set_result(at)
                elif len(self.flights) < cap:
                    flight = _Flight()
                    self.flights.add(flight)
                    self.alive += 1
                    group.start_soon(self.connection, at, flight, idle)
                else:
                    self.dropped.append(at)
        finally:
            # Connections still busy will see the flag; idle ones are woken to leave.
            self.arrivals_done = True
            for waiter in idle:
                if not waiter.done():
                    waiter.set_result(None)
            self.alive -= 1

    # -- timeouts and sampling ----------------------------------------------------------

    async def monitor(self, group: anyio.abc.TaskGroup) -> None:
        timeout = self.timeout
        tick = min(0.05, timeout / 4)
        think = self.config.think_ms / 1000
        while self.alive > 0:
            await anyio.sleep(tick)
            now = perf_counter()
            busy = 0
            for flight in list(self.flights):
                started = flight.since
                if started:
                    busy += 1
                if flight.timed_out:
                    if flight.cancel_at and now >= flight.cancel_at:
                        flight.cancel_at = 0.0
                        flight.scope.cancel()
                elif started and now - started >= timeout:
                    # The client gives up at its deadline: the app is told (http.disconnect)
                    # and, if it does not finish soon after, cancelled as a server would.
                    flight.timed_out = True
                    flight.since = 0.0
                    flight.cancel_at = now + _DISCONNECT_GRACE
                    self.record(started, timeout, 0.0, STATUS_TIMEOUT, self.timeout_kind, 0)
                    if flight.exchange is not None:
                        flight.exchange.disconnect()
                    if not self.open:
                        # A fresh user takes the place of the one that timed out, so the
                        # closed model keeps its population.
                        self.spawn_user(group, flight.uid, started + timeout + think)
            self.in_flight.append((now, busy))

    async def run(self) -> _RunFigures:
        self.origin = origin = perf_counter() + 0.001
        self.window = window = _window(self.config, origin, self.profile)
        cpu_before = time.thread_time()
        wall_before = perf_counter()
        with anyio.move_on_after(max(0.0, window.deadline - perf_counter())) as hard:
            async with anyio.create_task_group() as group:
                if self.open:
                    self.alive += 1
                    group.start_soon(self.arrivals, group)
                else:
                    offsets = start_offsets(self.users, 0.0)
                    for uid in range(self.users):
                        first = self.profile.next_above(uid, 0.0) if self.profile.varies else 0.0
                        if first is None:
                            continue
                        self.spawn_user(group, uid, origin + first + offsets[uid])
                group.start_soon(self.monitor, group)
        if hard.cancelled_caught:
            for flight in self.flights:
                if flight.since:
                    self.record(
                        flight.since, self.timeout, 0.0, STATUS_TIMEOUT, self.timeout_kind, 0
                    )
        cpu = time.thread_time() - cpu_before
        wall = perf_counter() - wall_before
        return _RunFigures(
            self.rec, self.book, window, cpu, wall, self.dropped, self.in_flight, self.profile
        )


def load_profile(config: StormConfig) -> Profile:
    """The target over time: users (closed model) or arrivals per second (open model)."""
    base = config.rate if config.rate is not None else float(config.users)
    if config.stages:
        return Profile.stages(base, config.stages)
    if config.ramp > 0:
        return Profile.ramp(base, config.ramp)
    return Profile.constant(base)


async def _checkpoint(_: float) -> None:
    await anyio.lowlevel.checkpoint()


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
        figures = await _AsgiEngine(plan, driver).run()
        _HARNESS_COST["asgi"] = figures.cpu / max(1, len(figures.rec)) * 1e6
    return _HARNESS_COST["asgi"]


async def _warn_harness_bound(result: StormResult, loop_cpu: float) -> None:
    cost = await harness_cost_us()
    # Requests discarded by warm-up also cost the loop: count everything that was sent.
    sent = result.requests + result.discarded
    share = min(1.0, sent * cost / 1e6 / loop_cpu) if loop_cpu > 0 else 0.0
    result.harness_share = share
    result.warnings.append(
        f"the event loop shared by the app and the load generator was busy "
        f"{result.loop_cpu_share:.0%} of the storm; the load generator itself took ≈{share:.0%} "
        f"of that (≈{cost:.0f} µs per request): latency includes queueing for the CPU, "
        f"so the app may do better than this on a server of its own"
    )


# -- WSGI: a pool of threads ---------------------------------------------------------------


def _run_wsgi(plan: StormPlan, live: LiveFigures | None = None) -> StormResult:
    config = plan.config
    driver = WsgiDriver(plan.app, list(plan.requests))
    pool = WsgiPool(driver, workers=config.workers, threads=config.threads)
    book = ErrorBook()
    profile = load_profile(config)
    origin = perf_counter() + 0.001
    window = _window(config, origin, profile)
    open_model = config.rate is not None
    think_rng = random.Random(config.seed)
    first_sends: list[float] = []
    if not open_model:
        for uid in range(max(config.users, math.ceil(profile.peak))):
            first = profile.next_above(uid, 0.0) if profile.varies else 0.0
            if first is not None:
                first_sends.append(origin + first)

    def think() -> float:
        if config.think is not None:
            return float(config.think.sample(think_rng))
        return config.think_ms / 1000

    def wanted(user: int, at: float) -> float | None:
        later = profile.next_above(user, at - origin)
        return None if later is None else origin + later

    build = None
    if plan.mix.factory is not None:
        lock = threading.Lock()
        mix = plan.mix

        def build_request(user: int, iteration: int) -> tuple[int, Request]:
            request = mix.build(user, iteration)
            with lock:
                return mix.intern(request.label), request

        build = build_request
    arrivals = None
    if open_model:
        end = window.stop_at - origin
        rng = random.Random(config.seed)
        arrivals = profile.arrivals(end, poisson=config.arrivals == "poisson", rng=rng)
    wall_before = perf_counter()
    run = pool.run(
        origin=origin,
        first_sends=first_sends,
        pick=plan.mix.picker(),
        book=book,
        stop_at=None if math.isinf(window.stop_at) else window.stop_at,
        total=window.total,
        think=think if config.think is not None or config.think_ms > 0 else None,
        timeout=config.timeout_ms / 1000,
        deadline=window.deadline,
        arrivals=arrivals,
        max_in_flight=config.max_in_flight,
        wanted=wanted if profile.varies and not open_model else None,
        build=build,
        live=live.recorders if live is not None else None,
    )
    wall = perf_counter() - wall_before
    figures = _RunFigures(
        Recorder.merge(run.recorders), book, window, run.cpu_seconds, wall, run.dropped, [], profile
    )
    result = _fold(plan, figures, server=pool.describe(), pool=pool)
    result.loop_cpu_share = run.cpu_seconds / wall if wall > 0 else None
    if run.stuck_threads:
        raise StormError(
            f"{len(run.stuck_threads)} worker thread(s) were still running the app "
            f"{window.deadline - window.stop_at:.1f} s after the storm's end "
            f"({', '.join(run.stuck_threads[:4])}): a handler that never returns? "
            "Lower its wait or raise timeout_ms"
        )
    if result.loop_cpu_share is not None and result.loop_cpu_share >= _SATURATED_CPU:
        result.warnings.append(
            f"the process used {result.loop_cpu_share:.0%} of a core during the storm: "
            "Python threads share one interpreter lock, so latency includes waiting for it"
        )
    return result


# -- folding records into a result ---------------------------------------------------------


def _failed(status: int, error: int) -> bool:
    """A request failed for its client: an exception, a timeout or a status >= 400."""
    return bool(error) or status >= 400 or status == STATUS_TIMEOUT


def _fold(
    plan: StormPlan, figures: _RunFigures, *, server: str, pool: WsgiPool | None
) -> StormResult:
    config = plan.config
    rec, book, window = figures.rec, figures.book, figures.window
    n = len(rec)
    starts = rec.start
    lats = rec.latency
    measure_from_us = int((window.measure_from - window.origin) * 1e6)
    keep = [i for i in range(n) if starts[i] >= measure_from_us]
    if config.warmup_requests:
        by_completion = sorted(keep, key=lambda i: starts[i] + lats[i])
        keep = sorted(by_completion[config.warmup_requests :])
    discarded = n - len(keep)

    latency_h, ttfb_h, queue_h, service_h = (new_histogram() for _ in range(4))
    latency_m = record_many(latency_h, (lats[i] for i in keep))
    ttfbs = rec.ttfb
    ttfb_m = record_many(ttfb_h, (ttfbs[i] for i in keep if ttfbs[i] >= 0))
    histograms = {"latency": latency_h, "ttfb": ttfb_h}
    queue_stats: LatencyStats | None = None
    service_stats: LatencyStats | None = None
    pool_stats: PoolStats | None = None
    queues = rec.queue
    statuses = rec.status
    if pool is not None:
        served = [i for i in keep if statuses[i] != STATUS_TIMEOUT]
        queue_m = record_many(queue_h, (queues[i] for i in keep))
        service_m = record_many(service_h, (lats[i] - queues[i] for i in served))
        histograms["queue_wait"] = queue_h
        histograms["service_time"] = service_h
        queue_stats = latency_stats(queue_h, queue_m)
        service_stats = latency_stats(service_h, service_m)

    status_counts: Counter[int] = Counter(statuses[i] for i in keep)
    timeouts = status_counts.pop(STATUS_TIMEOUT, 0)
    errors_idx = rec.error

    def failed_at(i: int) -> bool:
        return _failed(statuses[i], errors_idx[i])

    failed = sum(1 for i in keep if failed_at(i))
    errors = book.summaries(errors_idx[i] for i in keep)

    # Throughput: completions inside the measurement window over its length, whenever
    # the request was sent (a request sent during warm-up still used the window).
    if math.isinf(window.stop_at):
        if keep:
            first = min(starts[i] for i in keep)
            last = max(starts[i] + lats[i] for i in keep)
            duration = max(1e-6, (last - first) / 1e6)
        else:
            duration = 0.0
        completed = len(keep)
    else:
        duration = window.stop_at - window.measure_from
        stop_us = int((window.stop_at - window.origin) * 1e6)
        # A timed-out request did not complete for its client, whenever its worker finished.
        completed = sum(
            1
            for s, lat, st in zip(starts, lats, statuses, strict=True)
            if measure_from_us <= s + lat <= stop_us and st != STATUS_TIMEOUT
        )
    throughput = completed / duration if duration > 0 else 0.0

    endpoints: dict[str, EndpointStats] = {}
    labels = plan.mix.labels
    if len(labels) > 1 or plan.mix.factory is not None:
        ends = rec.endpoint
        chosen_by: dict[int, list[int]] = {}
        for i in keep:
            chosen_by.setdefault(ends[i], []).append(i)
        for index, label in enumerate(labels):
            chosen = chosen_by.get(index, [])
            h = new_histogram()
            moments = record_many(h, (lats[i] for i in chosen))
            bad = sum(1 for i in chosen if failed_at(i))
            rps = len(chosen) / duration if duration > 0 else 0.0
            endpoints[label] = EndpointStats(
                label, len(chosen), bad, latency_stats(h, moments), rps
            )
            histograms[f"latency:{label}"] = h

    busy_by_second: list[float] = []
    if pool is not None:
        pool_stats, busy_by_second = _pool_figures(rec, keep, window, pool, queue_stats, latency_m)

    dropped = [t for t in figures.dropped if t >= window.measure_from]
    profile = figures.profile
    timeline = _timeline(rec, keep, window, busy_by_second, dropped, figures.in_flight, profile)
    spec0 = plan.requests[0] if plan.requests else None
    single = spec0 is not None and len(plan.requests) == 1
    open_model = config.rate is not None
    result = StormResult(
        label=plan.label,
        app=plan.app_name,
        interface=plan.interface.upper(),
        server=server,
        method=spec0.method.upper() if single and spec0 is not None else "MIX",
        path=spec0.path if single and spec0 is not None else "*",
        users=config.users if not open_model else max((b for _, b in figures.in_flight), default=0),
        requests=len(keep),
        duration=duration,
        throughput=throughput,
        latency=latency_stats(latency_h, latency_m),
        ttfb=latency_stats(ttfb_h, ttfb_m),
        queue_wait=queue_stats,
        service_time=service_stats,
        status_counts=status_counts,
        errors=errors,
        failed=failed,
        timeouts=timeouts,
        pool=pool_stats,
        timeline=timeline,
        endpoints=endpoints,
        histograms=histograms,
        params=config.workload(),
        budgets=dict(config.budgets),
        discarded=discarded,
        window=(window.measure_from, window.stop_at if math.isfinite(window.stop_at) else math.inf),
        model="open" if open_model else "closed",
        rate=config.rate,
        dropped=len(dropped),
    )
    if profile is not None and profile.varies:
        result.knee = _knee(timeline)
    if not open_model and not config.stages and duration > 0:
        # Little's law: one round of every user takes users / throughput seconds.
        round_s = config.users / throughput if throughput > 0 else math.inf
        if round_s > duration:
            shown = f"≈{round_s:,.2f} s" if math.isfinite(round_s) else "longer than the storm"
            result.warnings.append(
                f"the measured window ({duration:.2f} s) is shorter than one round of users "
                f"({shown}: {config.users:,} users / {throughput:,.1f} rps): the figures describe "
                "a start-up transient; lengthen duration or warmup"
            )
    return result


def _knee(timeline: list[TimelinePoint]) -> Knee | None:
    """First second whose p99 is more than twice (and 10 ms above) the calm seconds' p99."""
    calm = [p.p99 for p in timeline[:3] if p.requests]
    if not calm or len(timeline) < 4:
        return None
    base = min(calm)
    for point in timeline[3:]:
        if point.requests and point.p99 > max(2 * base, base + 10):
            return Knee(point.second, point.target, point.p99, base)
    return None


def _pool_figures(
    rec: Recorder,
    keep: list[int],
    window: _Window,
    pool: WsgiPool,
    queue_stats: LatencyStats | None,
    latency_m: Moments,
) -> tuple[PoolStats, list[float]]:
    """Saturation (share of the window with every worker busy) and busy workers per second."""
    starts, lats, queues, statuses = rec.start, rec.latency, rec.queue, rec.status
    # Every served request, warm-up included, occupied a worker and may have waited for
    # one: use them all. Events: (time µs, change of busy workers, change of waiting requests).
    events: list[tuple[int, int, int]] = []
    for i in range(len(rec)):
        sent = starts[i]
        begin = sent + queues[i]
        if begin > sent:
            events.append((sent, 0, 1))
            events.append((begin, 0, -1))
        end = sent + lats[i] if statuses[i] != STATUS_TIMEOUT else begin
        if end > begin:
            events.append((begin, 1, 0))
            events.append((end, -1, 0))
    events.sort()
    lo = int((window.measure_from - window.origin) * 1e6)
    if math.isinf(window.stop_at):
        hi = max((starts[i] + lats[i] for i in keep), default=lo)
    else:
        hi = int((window.stop_at - window.origin) * 1e6)
    span = max(1, hi - lo)
    seconds = max(1, math.ceil(span / 1e6))
    busy_us = [0.0] * seconds
    saturated = 0
    busy_total = 0.0
    busy = waiting = 0
    prev = lo
    for at, d_busy, d_waiting in events:
        a, b = max(prev, lo), min(at, hi)
        if b > a and busy:
            busy_total += busy * (b - a)
            # Saturated: every worker busy and requests queued behind them.
            if busy >= pool.size and waiting > 0:
                saturated += b - a
            _spread(busy_us, a - lo, b - lo, busy)
        prev = max(prev, at)
        busy += d_busy
        waiting += d_waiting
    mean_queue = queue_stats.mean if queue_stats is not None else math.nan
    mean_latency = latency_m.mean / 1000
    share = mean_queue / mean_latency if mean_latency and not math.isnan(mean_latency) else math.nan
    stats = PoolStats(
        description=pool.describe(),
        size=pool.size,
        saturation=saturated / span,
        mean_busy=busy_total / span,
        mean_queue_ms=mean_queue,
        queue_share=share,
    )
    return stats, [b / 1e6 for b in busy_us]


def _spread(buckets: list[float], a: int, b: int, weight: int) -> None:
    """Add ``weight × (b − a)`` µs to per-second buckets, split at second boundaries."""
    while a < b:
        second = int(a // 1_000_000)
        if second >= len(buckets):
            return
        edge = min(b, (second + 1) * 1_000_000)
        buckets[second] += weight * (edge - a)
        a = edge


def _timeline(
    rec: Recorder,
    keep: list[int],
    window: _Window,
    busy: list[float],
    dropped: list[float],
    in_flight: list[tuple[float, int]],
    profile: Profile | None,
) -> list[TimelinePoint]:
    starts, lats, statuses, errors = rec.start, rec.latency, rec.status, rec.error
    lo = int((window.measure_from - window.origin) * 1e6)
    by_second: dict[int, list[int]] = {}
    bad: Counter[int] = Counter()
    for i in keep:
        second = max(0, (starts[i] + lats[i] - lo) // 1_000_000)
        by_second.setdefault(second, []).append(lats[i])
        if _failed(statuses[i], errors[i]):
            bad[second] += 1
    drops: Counter[int] = Counter(int(t - window.measure_from) for t in dropped)
    flight_sum: Counter[int] = Counter()
    flight_n: Counter[int] = Counter()
    for at, count in in_flight:
        second = int(at - window.measure_from)
        if second >= 0:
            flight_sum[second] += count
            flight_n[second] += 1
    offset = window.measure_from - window.origin
    points = []
    for second in sorted(set(by_second) | set(drops)):
        values = sorted(by_second.get(second, []))
        count = len(values)
        points.append(
            TimelinePoint(
                second=int(second),
                requests=count,
                errors=bad[second],
                p50=values[int(0.5 * (count - 1))] / 1000 if count else math.nan,
                p99=values[int(0.99 * (count - 1))] / 1000 if count else math.nan,
                max=values[-1] / 1000 if count else math.nan,
                busy_workers=busy[second] if second < len(busy) else None,
                target=profile.value(offset + second + 0.5) if profile is not None else None,
                dropped=drops[second],
                in_flight=flight_sum[second] / flight_n[second] if flight_n[second] else None,
            )
        )
    return points
