"""Fire a plan: rounds, the context around each round, and judging the chosen round.

Around every round the cyclic garbage collector is paused (past a few thousand
in-flight requests its full collections re-scan every live coroutine), simulated
latency is seeded and its own error recorded, and the live line runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import os
import tempfile
import threading
from collections.abc import Awaitable, Callable, Collection, Generator, Iterator, Mapping
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any, cast

import anyio
import anyio.to_thread

from .._budget import completed, evaluate, evaluate_endpoint, evaluate_pool
from .._errors import ConfigError, StormError
from .._locust import build_locustfile, read_back, run_locust
from .._model.extras import ServerProbes, UpstreamFigures
from .._model.remarks import (
    client_bound_warning,
    client_share_warning,
    dropped_arrivals_warning,
    knee_note,
    rounds_note,
    scale_note,
    server_probes_missing_warning,
    server_probes_not_applicable,
    server_probes_note,
    shard_proxy_note,
    uncalled_routes_warning,
    undeclared_upstream_warning,
    unused_server_model_note,
    virtual_unserved_warning,
)
from .._model.result import StormResult, Verdict
from .._params import StormConfig
from .._servers import ResourceSampler, ResourceUsage, RunningServer, serve
from .._servers._process import cores
from .._servers.channel import ProbeReport
from .._servers.simio import (
    EGRESS_ENV,
    egress_settings,
    served_port,
    served_tls,
    ship_upstreams,
)
from .._servers.simio import ENV as SIMIO_ENV
from .._servers.simio import SETUP as SIMIO_SETUP
from .._simio import INSTALLED as UPSTREAMS
from .._simio import seed_latency, tls, wait_recorder
from .._simio.egress import EgressGuard, anonymous_log, read_log, tally
from .._simio.loopback import ALIAS as LOOPBACK_ALIAS
from .._simio.loopback import LoopbackUpstream
from .._simio.loopserver import LoopbackProcess, collect_live, portable
from .._spec.rules import unused_server_model
from .._spec.table import BUDGETS
from .interrupts import watch_interrupts
from .plan import LiveFigures, Progress, Serving, StormPlan
from .rounds import run_async_round, run_pool_round
from .shards import run_sharded_round
from .virtual import loop_options

__all__ = [
    "EXECUTORS",
    "Executor",
    "executor_for",
    "judge_budgets",
    "run_plan",
    "run_plan_async",
]

#: Client CPU share (of one core) above which a real-server storm may be client-bound.
_CLIENT_BOUND = 0.85
#: Share of the machine's cores that client and server together use above which the
#: machine counts as busy: past it, what the client spends the server lacks.
_MACHINE_FULL = 0.75
#: The client's share of the CPU a storm used past which, on a busy machine, the client is
#: said to limit the server: its figures may read that much low or more.
_CLIENT_SHARE = 0.05
#: Budgets judged on the loop monitor's and thread-pool probe's figures. Behind a real
#: server the probes run inside its workers only for a storm that sets one of these:
#: they tick every millisecond on the server's loop, which a storm measuring the server
#: alone should not pay.
PROBED_BUDGETS = frozenset(name for name, row in BUDGETS.items() if row.probed)


@dataclass(frozen=True)
class Executor:
    """How a round is carried out: from a thread with no event loop (``run``), and on the
    caller's running loop (``arun``). The round loop is the same for every executor."""

    name: str
    run: Callable[[StormPlan, LiveFigures], StormResult]
    arun: Callable[[StormPlan, LiveFigures], Awaitable[StormResult]]
    #: Verdicts the executor's own figures add once the round to report is chosen.
    judge: Callable[[StormResult], StormResult] | None = None


def _in_thread(name: str, run: Callable[[StormPlan, LiveFigures], StormResult]) -> Executor:
    """An executor that blocks its thread: from async code it runs on a helper thread."""

    async def arun(plan: StormPlan, live: LiveFigures) -> StormResult:
        return await anyio.to_thread.run_sync(run, plan, live)

    return Executor(name, run, arun)


def _locust_round(plan: StormPlan, live: LiveFigures) -> StormResult:
    return run_locust_round(plan)


def _native_round(plan: StormPlan, live: LiveFigures) -> StormResult:
    return anyio.run(run_async_round, plan, live, **loop_options(plan))


async def _native_round_on_loop(plan: StormPlan, live: LiveFigures) -> StormResult:
    if plan.config.clock == "virtual":
        # Virtual time needs a loop of its own: run the round on one in a thread.
        return await anyio.to_thread.run_sync(_native_round, plan, live)
    return await run_async_round(plan, live)


#: Every way a round of an HTTP storm is carried out (a WebSocket storm brings its own,
#: ``_engine/websocket.py``), chosen once per storm by :func:`executor_for`.
EXECUTORS: dict[str, Executor] = {
    "locust": _in_thread("locust", _locust_round),
    "shards": _in_thread("shards", run_sharded_round),
    "wsgi pool": _in_thread("wsgi pool", run_pool_round),
    "native async": Executor("native async", _native_round, _native_round_on_loop),
}


def executor_for(plan: StormPlan) -> Executor:
    """The executor of *plan*'s rounds: Locust, forked shards, the WSGI pool or the loop."""
    if plan.config.engine == "locust":
        return EXECUTORS["locust"]
    if plan.config.processes > 1:
        return EXECUTORS["shards"]
    if not plan.on_loop:
        return EXECUTORS["wsgi pool"]
    return EXECUTORS["native async"]


def run_plan(
    plan: StormPlan, progress: Progress | None = None, executor: Executor | None = None
) -> StormResult:
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
    run = (executor or executor_for(plan)).run
    rounds = _rounds(plan, progress, executor)
    request = next(rounds)
    while True:
        try:
            result = run(*request)
        except BaseException as exc:
            # Through the loop's blocks on its way out: they stop what they started.
            rounds.throw(exc)
            raise  # pragma: no cover - the loop re-raises what it is thrown
        try:
            request = rounds.send(result)
        except StopIteration as done:
            return cast(StormResult, done.value)


async def run_plan_async(
    plan: StormPlan, progress: Progress | None = None, executor: Executor | None = None
) -> StormResult:
    """Fire the storm from async code: ASGI on the running loop, WSGI on a helper thread."""
    arun = (executor or executor_for(plan)).arun
    rounds = _rounds(plan, progress, executor)
    request = next(rounds)
    while True:
        try:
            result = await arun(*request)
        except BaseException as exc:
            rounds.throw(exc)
            raise  # pragma: no cover - the loop re-raises what it is thrown
        try:
            request = rounds.send(result)
        except StopIteration as done:
            return cast(StormResult, done.value)


def _rounds(
    plan: StormPlan, progress: Progress | None, executor: Executor | None
) -> Generator[tuple[StormPlan, LiveFigures], StormResult, StormResult]:
    """The one round loop: yields each round to run (the plan as served, its live figures)
    and is sent the round's result; returns the judged result.

    Everything a round needs around it starts and stops here, whichever executor runs it
    and whether it is driven from synchronous or async code.
    """
    rounds: list[StormResult] = []
    with _one_storm(), _served(plan) as served:
        for _ in range(served.config.rounds):
            with _round(served, progress) as (live, attach), _sampled(served) as sampled:
                result = yield served, live
                rounds.append(attach(sampled(result)))
    chosen = _judge(plan, rounds)
    if executor is not None and executor.judge is not None:
        chosen = executor.judge(chosen)
    return chosen


#: Held while a storm runs in this process: the simulated clock, the wait recorder, the
#: installed upstreams, the egress guard and the probes' patches are process-wide, so two
#: storms at once would mix their figures.
_STORM_RUNNING = [threading.Lock()]


def _release_in_child() -> None:
    # A process forked while a storm runs (a shard) starts with none of its own.
    _STORM_RUNNING[0] = threading.Lock()


os.register_at_fork(after_in_child=_release_in_child)


@contextmanager
def _one_storm() -> Iterator[None]:
    """Refuse a second storm while one runs in this process (another task or thread)."""
    lock = _STORM_RUNNING[0]
    if not lock.acquire(blocking=False):
        raise ConfigError(
            "another storm is already running in this process: storms share the process's "
            "simulated clock, wait recorder, upstreams and patches, so one runs at a time "
            "(await them one after the other, not with asyncio.gather)"
        )
    try:
        yield
    finally:
        lock.release()


def run_locust_round(plan: StormPlan) -> StormResult:
    """One round with Locust's master and local workers against the plan's server."""
    config = plan.config
    if plan.url is None:  # pragma: no cover - checked when the plan was made
        raise ConfigError("engine='locust' needs a real server")
    think: Any = config.think if config.think is not None else (config.think_ms or None)
    duration = config.duration if config.duration is not None else 10.0
    locustfile = build_locustfile(
        list(plan.requests),
        users=config.users,
        duration=config.warmup + duration,
        think_ms=think,
        stages=config.stages,
        timeout_ms=config.timeout_ms,
        label=plan.label,
    )
    run = run_locust(
        locustfile, plan.url, processes=config.processes if config.processes > 1 else 0
    )
    result = read_back(run, label=plan.label)
    result.app = plan.app_name
    result.server = f"{result.server} → {plan.served_by}"
    result.budgets = dict(config.budgets)
    return result


@contextmanager
def _served(plan: StormPlan) -> Iterator[StormPlan]:
    """Start the plan's real server (if any) for the whole storm; stop it on every exit."""
    if plan.server is None:
        if plan.url is not None:
            yield plan.serve_on(Serving(plan.url, served_by=f"server at {plan.url}"))
        else:
            yield plan
        return
    spec = plan.server
    if PROBED_BUDGETS & set(plan.config.budgets) or plan.config.pool_budgets:
        spec = dataclasses.replace(spec, probes=True)
    # The http:// routes are answered here, on loopback, for the server's processes too:
    # their calls are counted where the storm reads its figures.
    served = sorted({host for upstream in UPSTREAMS for host in upstream.http_hosts})
    tls_hosts = sorted(_tls_hosts())
    with ExitStack() as cleanup:
        shipped = ship_upstreams(UPSTREAMS, skip=served, skip_tls=tls_hosts)
        if shipped is not None:
            cleanup.callback(_unlink, shipped)
        # The server's processes refuse egress too, and log what they refused.
        log = _egress_log()
        cleanup.callback(_unlink, log)
        port = tls_port = ca = None
        if served or tls_hosts:
            port, tls_port, ca = _start_loopback(cleanup, tls_hosts)
        settings = egress_settings(
            plan.config.allow_hosts,
            log,
            served,
            port,
            redirect=_proxy_redirects(),
            tls=(tls_hosts, sorted(_tls_ports()), tls_port, ca) if ca is not None else None,
        )
        env = {**spec.env, EGRESS_ENV: settings}
        if shipped is not None:
            env[SIMIO_ENV] = shipped
        spec = dataclasses.replace(spec, setup=SIMIO_SETUP, env=env)
        with serve(spec) as server:
            yield plan.serve_on(Serving(server.url, served_by=server.describe(), running=server))


def _unlink(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def _egress_log() -> str:
    """A new empty file for other processes' egress refusals."""
    handle, path = tempfile.mkstemp(prefix="pytest-storm-egress-", suffix=".jsonl")
    os.close(handle)
    return path


def _server_egress_log(plan: StormPlan) -> str | None:
    """The log file the plan's real server's processes write their refusals to, if any."""
    if plan.running is None:
        return None
    settings = plan.running.spec.env.get(EGRESS_ENV)
    return str(json.loads(settings)["log"]) if settings else None


@contextmanager
def _sampled(plan: StormPlan) -> Iterator[Callable[[StormResult], StormResult]]:
    """CPU and memory of a real server's processes during one round (psutil), and the
    probes inside its workers when the storm asked for them.

    The block yields a function that stops the sampler and closes the probes' window once
    the round has its result, and puts the figures on it; both stop on every other exit too.
    """
    running = plan.running
    if running is None:
        yield lambda result: result
        return
    channel = running.probes
    if channel is not None:
        # Before the sampler: the wait for every worker to start its probes is no load.
        channel.open_window()
    sampler = ResourceSampler(running.pids).start()
    closed: list[ProbeReport] = []

    def attach(result: StormResult) -> StormResult:
        result = _with_usage(result, sampler.stop())
        if channel is not None:
            closed.append(channel.close_window())
            return _with_probes(result, closed[-1])
        if running.spec.probes:
            return _without_probes(result, running)
        return result

    try:
        yield attach
    finally:
        sampler.stop()
        if channel is not None and not closed:
            channel.close_window()


def _with_probes(result: StormResult, report: ProbeReport) -> StormResult:
    """The figures the workers' probes sent back, or why there are none (never a pass)."""
    result.server_probes = report.record()
    if report.complete:
        result.loop_lag = report.loop_lag
        result.thread_pools = report.thread_pools
        result.connection_pools = report.connection_pools
        result.attribution = report.attribution
        result.notes.append(server_probes_note(report.where))
    else:
        result.loop_lag = None
        result.thread_pools = []
        result.connection_pools = []
        result.warnings.append(
            server_probes_missing_warning(report.where, report.reason or "no reason given")
        )
    return result


def _without_probes(result: StormResult, running: RunningServer) -> StormResult:
    """Say why a WSGI app behind a real server has no loop or thread-pool figures."""
    reason = server_probes_not_applicable(running.describe())
    result.server_probes = ServerProbes(where=None, measured=False, reason=reason)
    result.notes.append(reason)
    return result


def client_share(usage: ResourceUsage, machine_cores: int) -> float | None:
    """The client's share of the CPU the storm used (client and server), when the client's
    CPU is what limited the server; None when it was not.

    It limits when its own loop has a core to itself (:data:`_CLIENT_BOUND`), and when
    client and server together kept the machine's cores busy (:data:`_MACHINE_FULL`): every
    core-second the client spent was then one the server lacked, and a client share of
    :data:`_CLIENT_SHARE` or more costs the server's figures that much or more.
    """
    client, server = usage.client_cpu_mean, usage.server_cpu_mean
    total = client + server
    if total <= 0:
        return None
    share = client / total
    if client >= _CLIENT_BOUND:
        return share
    if total >= _MACHINE_FULL * machine_cores and share >= _CLIENT_SHARE:
        return share
    return None


def _with_usage(result: StormResult, usage: ResourceUsage) -> StormResult:
    result.server_usage = usage
    client, server = usage.client_cpu_mean, usage.server_cpu_mean
    machine_cores = cores()
    share = client_share(usage, machine_cores)
    if share is None:
        return result
    if client >= _CLIENT_BOUND:  # its own loop had a core to itself: the client set the pace
        result.warnings.append(client_bound_warning(client, server))
    else:
        result.warnings.append(client_share_warning(client, server, machine_cores, share))
    return result


@contextmanager
def _round(
    plan: StormPlan, progress: Progress | None
) -> Iterator[tuple[LiveFigures, Callable[[StormResult], StormResult]]]:
    """Everything around one round of a storm: collector paused, simulated I/O, live line."""
    live = LiveFigures(plan)
    with (
        watch_interrupts(),
        _collector(plan.config),
        _simulated_io(plan) as attach,
        progress(live) if progress is not None else nullcontext(),
    ):
        yield live, attach


def _round_entry(result: StormResult) -> dict[str, Any]:
    """A round's figures as a comparison resamples them (with the CPU contention it met)."""
    entry: dict[str, Any] = {
        "p50": result.latency.p50,
        "p99": result.latency.p99,
        "max": result.latency.max,
        "rps": result.throughput,
        "error_rate": result.error_rate,
    }
    contention = result.cpu_contention
    if contention is not None and contention.slowdown is not None:
        entry["cpu_slowdown"] = contention.slowdown
    handled = result.requests + result.discarded
    if contention is not None and contention.run_s and handled:
        # CPU µs the storm's threads ran per request: what a busy machine moves least.
        entry["cpu"] = contention.run_s * 1e6 / handled
    return entry


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
        chosen.rounds = [_round_entry(r) for r in rounds]
        p99s = [r.latency.p99 for r in rounds]
        rps = [r.throughput for r in rounds]
        chosen.notes.append(rounds_note(config.aggregate, p99s, rps))
    real_server = plan.server is not None or plan.url is not None
    for name, value, origin in unused_server_model(config, plan.interface, real_server=real_server):
        chosen.notes.append(unused_server_model_note(name, value, origin))
    if config.scale is not None:
        chosen.notes.append(scale_note(config.scale))
        chosen.scale = config.scale
    chosen.verdicts = judge_budgets(
        chosen, config.budgets, config.endpoint_budgets, config.pool_budgets
    )
    if chosen.knee is not None:
        knee = chosen.knee
        chosen.notes.append(
            knee_note(knee.second, knee.target, chosen.model == "open", knee.p99, knee.calm_p99)
        )
    if chosen.dropped:
        chosen.warnings.append(dropped_arrivals_warning(chosen.dropped, config.max_in_flight))
    chosen.verdicts.extend(_egress_verdicts(rounds))
    return chosen


def judge_budgets(
    result: StormResult,
    budgets: Mapping[str, float],
    endpoint_budgets: Mapping[str, Mapping[str, float]] | None = None,
    pool_budgets: Mapping[str, Mapping[str, float]] | None = None,
) -> list[Verdict]:
    """The verdicts of every storm, whatever fired it: its budgets, the default error budget,
    failed start hooks, the per-endpoint budgets and those of named pools."""
    budgets = dict(budgets)
    if "max_error_rate" not in budgets and (result.failed or not completed(result)):
        # Like Locust's exit code: any failed request fails a storm that set no error budget.
        # A storm with no completed request has nothing to judge: the default error budget
        # fails it as not measured, rather than passing on nothing.
        budgets["max_error_rate"] = 0.0
    verdicts = evaluate(result, budgets)
    hooks_failed = result.on_start.hooks_failed_count if result.on_start is not None else 0
    if hooks_failed:
        # As in Locust, a user whose start hook failed fails, and so does its storm.
        verdicts.append(Verdict("on_start", 0.0, float(hooks_failed), False))
    for endpoint, limits in (endpoint_budgets or {}).items():
        verdicts.extend(evaluate_endpoint(result, endpoint, limits))
    for pool, limits in (pool_budgets or {}).items():
        verdicts.extend(evaluate_pool(result, pool, limits))
    return verdicts


def _egress_verdicts(rounds: list[StormResult]) -> list[Verdict]:
    """A storm whose app tried to leave the machine fails, whatever its budgets."""
    refused = sum(entry["count"] for r in rounds for entry in r.refused_egress)
    return [Verdict("refused_egress", 0.0, float(refused), False)] if refused else []


def _warn_uncalled(result: StormResult, routes: Mapping[str, UpstreamFigures]) -> None:
    """Say so when declared routes saw no call while the storm's requests failed."""
    uncalled = [name for name, figures in routes.items() if not figures.calls_in_storm]
    if not uncalled or not (result.failed or result.refused_egress):
        return
    seen = [(kind, error.count) for kind, error in result.errors.items()]
    if not seen:  # an app that caught the error answered with a status of its own
        seen = [(f"status {code}", n) for code, n in result.status_counts.items() if code >= 500]
    seen += [
        (f"refused egress to {r['host']}:{r['port']} from {r['client']} at {r['site']}", r["count"])
        for r in result.refused_egress
    ]
    seen.sort(key=lambda item: -item[1])
    result.warnings.append(uncalled_routes_warning(uncalled, result.failed, seen))


#: Counts of routes and proxies also given for the storm alone (``<count>_in_storm``).
_IN_STORM = ("calls", "bytes_up", "bytes_down", "chunks_up", "chunks_down")


def _tls_hosts() -> set[str]:
    """Hosts of https:// routes the loopback upstream can serve (trustme is installed)."""
    if not tls.available():
        return set()
    return {host for upstream in UPSTREAMS for host in upstream.https_hosts}


def _tls_ports() -> set[int]:
    return {port for upstream in UPSTREAMS for port in upstream.https_ports}


def _loopback(
    tls_hosts: Collection[str], *, thread: bool = False
) -> tuple[LoopbackUpstream | LoopbackProcess, str | None]:
    """A loopback upstream for the installed upstreams (not started), serving TLS for
    *tls_hosts* with a certificate of the session CA; and that CA (PEM) when it does.

    The newest upstream answers; when none of its routes has a handler, a process of its
    own serves them (off the storm's interpreter lock), else (or with *thread*) a thread
    of this process.
    """
    newest = UPSTREAMS[-1] if UPSTREAMS else None
    if not thread and newest is not None and portable(newest, tls=bool(tls_hosts)):
        if not tls_hosts:
            return LoopbackProcess(newest), None
        return LoopbackProcess(newest, tls_pem=tls.server_pem(tls_hosts)), tls.ca_pem()
    if not tls_hosts:
        return LoopbackUpstream(lambda: list(UPSTREAMS)), None
    context = tls.server_context(tls_hosts)
    return LoopbackUpstream(lambda: list(UPSTREAMS), tls=context), tls.ca_pem()


def _start_loopback(
    cleanup: ExitStack, tls_hosts: Collection[str]
) -> tuple[int, int | None, str | None]:
    """Start the loopback upstream, stopped by *cleanup*: its port, TLS port and CA (PEM).

    A process that cannot start (a route's latency its interpreter cannot import) leaves
    the routes to a thread of this process, which answers them as before.
    """
    loopback, ca = _loopback(tls_hosts)
    cleanup.callback(loopback.stop)
    try:
        loopback.start()
    except StormError:
        if not isinstance(loopback, LoopbackProcess):
            raise
        loopback, ca = _loopback(tls_hosts, thread=True)
        cleanup.callback(loopback.stop)
        loopback.start()
    return loopback.port, loopback.tls_port, ca


def _proxy_redirects() -> dict[tuple[str, int], tuple[str, int]]:
    """Each latency proxy's target, mapped to the proxy (the newest upstream wins)."""
    return {key: to for upstream in UPSTREAMS for key, to in upstream.redirects.items()}


def _declared_hosts() -> set[str]:
    return {host for upstream in UPSTREAMS for host in upstream.hosts}


@contextmanager
def _simulated_io(plan: StormPlan) -> Iterator[Callable[[StormResult], StormResult]]:
    """Seed simulated latency, record the simulated waits' own error, snapshot upstreams,
    and refuse every connection off the machine (counted on the result)."""
    if plan.config.seed is not None:
        seed_latency(plan.config.seed)
    before = {
        id(u): {k: {c: v.get(c, 0) for c in _IN_STORM} for k, v in u.stats().items()}
        for u in UPSTREAMS
    }
    undeclared_before = {id(u): u.undeclared_calls for u in UPSTREAMS}
    server_log = _server_egress_log(plan)
    server_from = read_log(server_log)[1] if server_log is not None else 0
    # Clients other than httpx and httpx2 reach the declared http:// routes over loopback.
    served = {host for upstream in UPSTREAMS for host in upstream.http_hosts}
    tls_hosts = _tls_hosts()
    results: list[StormResult] = []

    def attach(result: StormResult) -> StormResult:
        results.append(result)
        return result

    with ExitStack() as cleanup:
        # Forked shards inherit the guard; they log their refusals for this process to read.
        shard_log = anonymous_log() if plan.config.processes > 1 else None
        if shard_log is not None:
            cleanup.callback(os.close, shard_log)
        # A real server's storm has one for all its rounds already.
        env = plan.running.spec.env if plan.running is not None else {}
        port = served_port(env)
        tls_port, ca = served_tls(env)
        # Not under virtual time: a real server's waits cannot be jumped over.
        if (served or tls_hosts) and port is None and plan.config.clock != "virtual":
            port, tls_port, ca = _start_loopback(cleanup, tls_hosts)
        guard = EgressGuard(
            plan.config.allow_hosts,
            declared=_declared_hosts,
            log=shard_log,
            serve=served,
            serve_port=port,
            alias=LOOPBACK_ALIAS,
            redirect=_proxy_redirects(),
            serve_tls=tls_hosts,
            serve_tls_port=tls_port,
            tls_ports=_tls_ports(),
            tls_ca=ca,
        )
        _serve_new_hosts(cleanup, guard)
        wait_recorder.start()
        try:
            with guard:
                yield attach
            # A loopback process's calls and waits, added where the storm reads them.
            collect_live()
            refused = guard.counts()
            for refusal in read_log(server_log, server_from)[0] if server_log is not None else []:
                refused[refusal] = refused.get(refusal, 0) + 1
        finally:
            waits = wait_recorder.stop(results[0].window if results else None)
    for result in results:
        result.refused_egress = tally(refused)
        if waits.async_waits.count or waits.blocking_waits.count:
            result.simulated_waits = waits.record()
        routes = _routes_in_storm(result, before, undeclared_before)
        unserved = (served | tls_hosts) if port is None else set()
        _say_why_routes_missed(result, routes, unserved, virtual=plan.config.clock == "virtual")
        if routes:
            result.upstream = routes
        _say_shard_proxies(result, routes, plan.config.processes)


def _serve_new_hosts(cleanup: ExitStack, guard: EgressGuard) -> None:
    """Send the hosts of http:// routes declared during the storm to the loopback upstream
    too (after the upstream has taken the route up), until *cleanup* closes."""
    for upstream in UPSTREAMS:

        def serve(route: Any, declaration: Any, upstream: Any = upstream) -> None:
            for host in upstream.http_hosts:
                guard.serve(host)

        upstream._watch(serve)
        cleanup.callback(upstream._unwatch, serve)


def _routes_in_storm(
    result: StormResult,
    before: Mapping[int, Mapping[str, Mapping[str, int]]],
    undeclared_before: Mapping[int, int],
) -> dict[str, UpstreamFigures]:
    """Each declared route's figures, with its counts over this storm alone; calls to
    undeclared routes are a warning on *result*."""
    routes: dict[str, UpstreamFigures] = {}
    for upstream in UPSTREAMS:
        for name, stats in upstream.stats().items():
            counts_before = before.get(id(upstream), {}).get(name, {})
            routes[name] = UpstreamFigures.from_dict(
                {
                    **stats,
                    **{
                        f"{count}_in_storm": stats[count] - counts_before.get(count, 0)
                        for count in _IN_STORM
                        if count in stats
                    },
                }
            )
        missed = upstream.undeclared_calls - undeclared_before.get(id(upstream), 0)
        if missed:
            result.warnings.append(undeclared_upstream_warning(missed, upstream.undeclared))
    return routes


def _say_shard_proxies(
    result: StormResult, routes: Mapping[str, UpstreamFigures], processes: int
) -> None:
    """A latency proxy runs in this process: the delays it gave requests sent from forked
    shards are in its totals, never charged to those requests. Said when it carried any."""
    if processes <= 1:
        return
    carried = [
        name
        for name, figures in routes.items()
        if figures.is_proxy and (figures.calls_in_storm or figures.chunks_down_in_storm)
    ]
    if carried:
        result.notes.append(shard_proxy_note(processes, carried))


def _say_why_routes_missed(
    result: StormResult, routes: Mapping[str, UpstreamFigures], unserved: set[str], *, virtual: bool
) -> None:
    """Why declared routes were not reached. On the virtual clock the loopback upstream,
    which clients other than httpx and httpx2 need, is not started: said apart, since the
    generic advice (declare the host) would send the user in circles."""
    refused = [r for r in result.refused_egress if r["host"] in unserved]
    if refused and virtual:
        result.warnings.append(virtual_unserved_warning(refused))
    elif routes:
        _warn_uncalled(result, routes)


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
