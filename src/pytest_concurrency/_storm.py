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
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import anyio
import anyio.lowlevel

from ._apps import Interface, app_label, detect_interface
from ._asgi import AsgiDriver
from ._budget import evaluate
from ._errors import ConfigError, StormError
from ._metrics import (
    STATUS_EXCEPTION,
    STATUS_TIMEOUT,
    ErrorBook,
    LatencyStats,
    Recorder,
    latency_stats,
    new_histogram,
    record_many,
)
from ._params import Layer, StormConfig, resolve
from ._result import EndpointStats, PoolStats, StormResult, TimelinePoint
from ._workload import Request, RequestMix, build_mix, start_offsets
from ._wsgi import WsgiDriver, WsgiPool

__all__ = ["StormPlan", "plan_storm", "run_plan", "run_plan_async"]

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
    requests: Sequence[Request] | None = None,
    layers: Sequence[Layer] = (),
) -> StormPlan:
    """Validate everything about a storm before any load is fired."""
    config = resolve(layers)
    mix = build_mix(method, path, requests, config.request_options, config.seed)
    if config.interface is not None:
        if not callable(app):
            detect_interface(app)  # raises the not-callable error
        interface: Interface = "asgi" if config.interface == "asgi" else "wsgi"
    else:
        interface = detect_interface(app)
    if len(mix.requests) == 1:
        label = mix.requests[0].label
    else:
        label = f"mix of {len(mix.requests)} requests"
    return StormPlan(app, interface, config.name or label, app_label(app), mix, config)


def run_plan(plan: StormPlan) -> StormResult:
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
    with _collector(plan.config):
        if plan.interface == "wsgi":
            return _run_wsgi(plan)
        return anyio.run(_run_asgi, plan)


async def run_plan_async(plan: StormPlan) -> StormResult:
    """Fire the storm from async code: ASGI on the running loop, WSGI on a helper thread."""
    with _collector(plan.config):
        if plan.interface == "wsgi":
            return await anyio.to_thread.run_sync(_run_wsgi, plan)
        return await _run_asgi(plan)


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


def _window(config: StormConfig, origin: float) -> _Window:
    measure_from = origin + config.warmup
    timeout = config.timeout_ms / 1000
    if config.duration is not None:
        stop_at = measure_from + config.duration
        deadline = stop_at + timeout + _GRACE
        total = None
    else:
        stop_at = math.inf
        total = (config.requests or 0) + config.warmup_requests
        deadline = origin + config.warmup + max(600.0, timeout * 10)
    return _Window(origin, measure_from, stop_at, total, deadline)


# -- ASGI: users as tasks on the event loop -----------------------------------------------


async def _run_asgi(plan: StormPlan) -> StormResult:
    config = plan.config
    driver = AsgiDriver(plan.app, list(plan.requests), lifespan=config.lifespan)
    timeout = config.timeout_ms / 1000
    failure: StormError | None = None
    async with anyio.create_task_group() as lifespan_group:
        try:
            await driver.startup(lifespan_group, timeout=max(timeout, 10.0))
            rec, book, window, cpu, wall = await _asgi_users(plan, driver)
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
    result = _fold(plan, rec, book, window, server=_loop_name(), pool=None)
    result.loop_cpu_share = cpu / wall if wall > 0 else None
    if result.loop_cpu_share is not None and result.loop_cpu_share >= _SATURATED_CPU:
        await _warn_harness_bound(result, cpu)
    result.verdicts = evaluate(result, plan.config.budgets)
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


async def _asgi_users(
    plan: StormPlan, driver: AsgiDriver, *, users_override: int | None = None
) -> tuple[Recorder, ErrorBook, _Window, float, float]:
    config = plan.config
    users = users_override or config.users
    timeout = config.timeout_ms / 1000
    think = config.think_ms / 1000
    rec = Recorder()
    book = ErrorBook()
    timeout_kind = book.kind(None, ErrorBook.TIMEOUT)
    pick = plan.mix.picker()
    call = driver.call
    kind = book.kind
    a_start, a_lat, a_ttfb = rec.start.append, rec.latency.append, rec.ttfb.append
    a_queue, a_status = rec.queue.append, rec.status.append
    a_end, a_err = rec.endpoint.append, rec.error.append
    yield_now = asyncio.sleep if _running_loop() is not None else _checkpoint

    origin = perf_counter() + 0.001
    window = _window(config, origin)
    stop_at, total = window.stop_at, window.total
    offsets = start_offsets(users, config.ramp)
    since = [0.0] * users  # intended send time of the request in flight, 0.0 when idle
    timed_out = [False] * users
    scopes: list[anyio.CancelScope | None] = [None] * users
    state = {"issued": 0, "alive": 0}

    def record(
        intended: float, latency: float, first: float, status: int, error: int, index: int
    ) -> None:
        a_start(int((intended - origin) * 1e6))
        a_lat(int(latency * 1e6))
        a_ttfb(int((first - intended) * 1e6) if first else -1)
        a_queue(-1)
        a_status(status)
        a_end(index)
        a_err(error)

    async def user(uid: int, intended: float) -> None:
        scope = anyio.CancelScope()
        scopes[uid] = scope
        timed_out[uid] = False
        try:
            with scope:
                delay = intended - perf_counter()
                if delay > 0:
                    await anyio.sleep(delay)
                while intended < stop_at:
                    await yield_now(0)
                    if total is not None:
                        if state["issued"] >= total:
                            break
                        state["issued"] += 1
                    index = pick()
                    if perf_counter() - intended >= timeout:
                        # The client gave up before the loop let it send.
                        record(intended, timeout, 0.0, STATUS_TIMEOUT, timeout_kind, index)
                        intended += timeout + think
                        continue
                    since[uid] = intended
                    error = 0
                    try:
                        exchange = await call(index)
                    except Exception as exc:
                        status, first, error = STATUS_EXCEPTION, 0.0, kind(exc)
                    else:
                        status, first = exchange.status, exchange.first_byte
                        if not status:
                            status, error = STATUS_EXCEPTION, kind(None, "NoResponse")
                    done = perf_counter()
                    since[uid] = 0.0
                    if timed_out[uid]:
                        return
                    latency = done - intended
                    if latency >= timeout:
                        status, error, latency, first = STATUS_TIMEOUT, timeout_kind, timeout, 0.0
                    record(intended, latency, first, status, error, index)
                    intended = done + think
                    if think > 0:
                        await anyio.sleep(think)
        finally:
            state["alive"] -= 1

    def spawn(group: anyio.abc.TaskGroup, uid: int, intended: float) -> None:
        state["alive"] += 1
        group.start_soon(user, uid, intended)

    async def monitor(group: anyio.abc.TaskGroup) -> None:
        tick = min(0.05, timeout / 4)
        while state["alive"] > 0:
            await anyio.sleep(tick)
            now = perf_counter()
            for uid in range(users):
                started = since[uid]
                if started and now - started >= timeout and not timed_out[uid]:
                    # Cancel the user's request as a client would on its deadline; a fresh
                    # user takes its place so the closed model keeps its population.
                    timed_out[uid] = True
                    since[uid] = 0.0
                    record(started, timeout, 0.0, STATUS_TIMEOUT, timeout_kind, 0)
                    scope = scopes[uid]
                    if scope is not None:
                        scope.cancel()
                    spawn(group, uid, started + timeout + think)

    cpu_before = time.thread_time()
    wall_before = perf_counter()
    with anyio.move_on_after(max(0.0, window.deadline - perf_counter())) as hard:
        async with anyio.create_task_group() as group:
            for uid in range(users):
                spawn(group, uid, origin + offsets[uid])
            group.start_soon(monitor, group)
    if hard.cancelled_caught:
        for uid in range(users):
            if since[uid]:
                record(since[uid], timeout, 0.0, STATUS_TIMEOUT, timeout_kind, 0)
    cpu = time.thread_time() - cpu_before
    wall = perf_counter() - wall_before
    return rec, book, window, cpu, wall


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
        rec, *_rest, cpu, _wall = await _asgi_users(plan, driver)
        _HARNESS_COST["asgi"] = cpu / max(1, len(rec)) * 1e6
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


def _run_wsgi(plan: StormPlan) -> StormResult:
    config = plan.config
    driver = WsgiDriver(plan.app, list(plan.requests))
    pool = WsgiPool(driver, workers=config.workers, threads=config.threads)
    book = ErrorBook()
    origin = perf_counter() + 0.001
    window = _window(config, origin)
    offsets = start_offsets(config.users, config.ramp) if config.ramp > 0 else [0.0] * config.users
    wall_before = perf_counter()
    run = pool.run(
        origin=origin,
        first_sends=[origin + o for o in offsets],
        pick=plan.mix.picker(),
        book=book,
        stop_at=None if math.isinf(window.stop_at) else window.stop_at,
        total=window.total,
        think=config.think_ms / 1000,
        timeout=config.timeout_ms / 1000,
        deadline=window.deadline,
    )
    wall = perf_counter() - wall_before
    rec = Recorder.merge(run.recorders)
    result = _fold(plan, rec, book, window, server=pool.describe(), pool=pool)
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
    result.verdicts = evaluate(result, config.budgets)
    return result


# -- folding records into a result ---------------------------------------------------------


def _fold(
    plan: StormPlan,
    rec: Recorder,
    book: ErrorBook,
    window: _Window,
    *,
    server: str,
    pool: WsgiPool | None,
) -> StormResult:
    config = plan.config
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
    record_many(latency_h, (lats[i] for i in keep))
    ttfbs = rec.ttfb
    record_many(ttfb_h, (ttfbs[i] for i in keep if ttfbs[i] >= 0))
    histograms = {"latency": latency_h, "ttfb": ttfb_h}
    queue_stats: LatencyStats | None = None
    service_stats: LatencyStats | None = None
    pool_stats: PoolStats | None = None
    queues = rec.queue
    statuses = rec.status
    if pool is not None:
        served = [i for i in keep if statuses[i] != STATUS_TIMEOUT]
        record_many(queue_h, (queues[i] for i in keep))
        record_many(service_h, (lats[i] - queues[i] for i in served))
        histograms["queue_wait"] = queue_h
        histograms["service_time"] = service_h
        queue_stats = latency_stats(queue_h)
        service_stats = latency_stats(service_h)

    status_counts: Counter[int] = Counter(statuses[i] for i in keep)
    timeouts = status_counts.pop(STATUS_TIMEOUT, 0)
    errors_idx = rec.error
    failed = sum(
        1 for i in keep if errors_idx[i] or statuses[i] >= 400 or statuses[i] == STATUS_TIMEOUT
    )
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
        completed = sum(
            1 for s, lat in zip(starts, lats, strict=True) if measure_from_us <= s + lat <= stop_us
        )
    throughput = completed / duration if duration > 0 else 0.0

    endpoints: dict[str, EndpointStats] = {}
    if len(plan.requests) > 1:
        ends = rec.endpoint
        for index, spec in enumerate(plan.requests):
            chosen = [i for i in keep if ends[i] == index]
            h = new_histogram()
            record_many(h, (lats[i] for i in chosen))
            bad = sum(
                1
                for i in chosen
                if errors_idx[i] or statuses[i] >= 400 or statuses[i] == STATUS_TIMEOUT
            )
            endpoints[spec.label] = EndpointStats(spec.label, len(chosen), bad, latency_stats(h))
            histograms[f"latency:{spec.label}"] = h

    busy_by_second: list[float] = []
    if pool is not None:
        pool_stats, busy_by_second = _pool_figures(rec, keep, window, pool, queue_stats, latency_h)

    timeline = _timeline(rec, keep, window, busy_by_second)
    spec0 = plan.requests[0]
    return StormResult(
        label=plan.label,
        app=plan.app_name,
        interface=plan.interface.upper(),
        server=server,
        method=spec0.method.upper() if len(plan.requests) == 1 else "MIX",
        path=spec0.path if len(plan.requests) == 1 else "*",
        users=config.users,
        requests=len(keep),
        duration=duration,
        throughput=throughput,
        latency=latency_stats(latency_h),
        ttfb=latency_stats(ttfb_h),
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
    )


def _pool_figures(
    rec: Recorder,
    keep: list[int],
    window: _Window,
    pool: WsgiPool,
    queue_stats: LatencyStats | None,
    latency_h: Any,
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
    mean_latency = latency_h.get_mean_value() / 1000 if latency_h.get_total_count() else math.nan
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
    rec: Recorder, keep: list[int], window: _Window, busy: list[float]
) -> list[TimelinePoint]:
    starts, lats, statuses, errors = rec.start, rec.latency, rec.status, rec.error
    lo = int((window.measure_from - window.origin) * 1e6)
    by_second: dict[int, list[int]] = {}
    bad: Counter[int] = Counter()
    for i in keep:
        second = max(0, (starts[i] + lats[i] - lo) // 1_000_000)
        by_second.setdefault(second, []).append(lats[i])
        if errors[i] or statuses[i] >= 400 or statuses[i] == STATUS_TIMEOUT:
            bad[second] += 1
    points = []
    for second in sorted(by_second):
        values = sorted(by_second[second])
        count = len(values)
        points.append(
            TimelinePoint(
                second=int(second),
                requests=count,
                errors=bad[second],
                p50=values[int(0.5 * (count - 1))] / 1000,
                p99=values[int(0.99 * (count - 1))] / 1000,
                max=values[-1] / 1000,
                busy_workers=busy[second] if second < len(busy) else None,
            )
        )
    return points


def describe_layers(values: Mapping[str, Any]) -> str:  # pragma: no cover - debugging aid
    """Compact ``k=v`` rendering of parameter values."""
    return ", ".join(f"{k}={v!r}" for k, v in values.items())
