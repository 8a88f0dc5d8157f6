"""Process shards: one storm spread over N processes, each with its own loop and copy of the app.

In-process, each shard mounts its own copy of the app, as ``uvicorn --workers N`` or
``gunicorn -w N`` run N worker processes; the storm's users (or its arrival rate,
request count and in-flight cap) are split between them. Shards are forked: the app
object is inherited as it is (closures included), nothing is re-imported, and a
shard is ready in milliseconds. Every shard reports ready after its own start-up
(ASGI lifespan included); only then does the parent fix one origin on the shared
monotonic clock, so start-up stays out of the measured window and every record of
every shard lies on one time axis. The raw records come back and are folded once:
histograms, timeline, status counts, errors and drops are those of the whole storm.

A shard that crashes, hangs or fails is an error naming it; the others are stopped.
Every shard is terminated (SIGTERM, then SIGKILL) on every exit path, Ctrl-C included.
"""

from __future__ import annotations

import copyreg
import dataclasses
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from time import perf_counter
from typing import Any

import anyio
from hdrh.histogram import HdrHistogram

from .._errors import StormError
from .._metrics import ErrorBook, Recorder
from .._metrics.fold import PoolModel, RunFigures
from .._model.extras import ShardFigures, ShardShare, StartHooks
from .._model.remarks import idle_shards_note
from .._model.result import StormResult
from .._params import StormConfig
from .._spec.table import PARAMS
from .plan import LiveFigures, StormPlan
from .rounds import RoundOutput, execute_async, execute_pool, finish
from .schedule import Schedule

__all__ = ["live_shards", "run_sharded_round", "shard_configs"]

#: Seconds every shard gets to start (fork, lifespan startup) before the storm fails.
_STARTUP_TIMEOUT = 60.0
#: The first request of every shard is due this long after the last shard is ready.
_LEAD = 0.05
#: Seconds a shard may take to send its records back after its deadline.
_RETURN_GRACE = 30.0
#: Seconds between SIGTERM and SIGKILL when a shard is stopped.
_KILL_GRACE = 2.0
#: How often a shard checks that the process that forked it is still there.
_PARENT_POLL = 0.25

_LIVE: set[multiprocessing.process.BaseProcess] = set()


def live_shards() -> list[int]:
    """Process ids of shards still running (none, outside a storm)."""
    return [p.pid for p in list(_LIVE) if p.pid is not None and p.is_alive()]


def _decode_histogram(encoded: bytes) -> HdrHistogram:
    return HdrHistogram.decode(encoded)


def _reduce_histogram(histogram: HdrHistogram) -> tuple[Any, tuple[bytes]]:
    return _decode_histogram, (histogram.encode(),)


# HdrHistogram keeps its counts in a ctypes array, which pickle cannot carry; its own
# compressed encoding can, and decodes to the same counts.
copyreg.pickle(HdrHistogram, _reduce_histogram)


def _split(total: int, parts: int, index: int) -> int:
    base, extra = divmod(total, parts)
    return base + (1 if index < extra else 0)


def shard_configs(config: StormConfig) -> list[StormConfig]:
    """The parameters of each shard: users, rates, counts and caps split, seeds distinct.

    Never more shards than users (closed model) or requests: a shard without load
    would only cost a process.
    """
    n = config.processes
    if config.rate is None and not config.stages:
        n = min(n, config.users)
    if config.requests is not None:
        n = min(n, config.requests)
    n = max(1, n)
    shards = []
    for i in range(n):
        changes: dict[str, Any] = {"budgets": {}}
        for row in PARAMS.values():
            if row.split is not None and row.target in ("config", "resolve"):
                field = "endpoint_budgets" if row.name == "budgets" else row.name
                field = "max_in_flight" if field == "in_flight_cap" else field
                changes[field] = _SPLIT[row.split](getattr(config, field), n, i)
        # Shards number their users apart.
        changes["first_user"] = config.first_user + sum(
            _split(config.users, n, j) for j in range(i)
        )
        shards.append(dataclasses.replace(config, **changes))
    return shards


#: How each kind of ``split`` (``_spec.table``) shares a value among *n* shards: shard *i*'s part.
_SPLIT: dict[str, Callable[[Any, int, int], Any]] = {
    "users": _split,
    "count": lambda count, n, i: _split(count, n, i) if count is not None else None,
    "divide": lambda x, n, i: (
        None
        if x is None
        else tuple((seconds, target / n) for seconds, target in x)
        if isinstance(x, tuple)
        else x / n
    ),
    "cap": lambda cap, n, i: max(1, math.ceil(cap / n)),
    "workers": lambda workers, n, i: max(1, _split(workers, n, i)),
    "seed": lambda seed, n, i: seed + i if seed is not None else None,
    "one": lambda value, n, i: 1,
    "clear": lambda value, n, i: {},
}


def _watch_parent(parent: int) -> None:
    """End this shard at once if the process that forked it dies without stopping it
    (SIGKILL, a crash): no finally or atexit of the parent runs then."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL)
        _stop_own_group(signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="storm-shard-parent-watch", daemon=True).start()


def _shard_main(
    conn: multiprocessing.connection.Connection, plan: StormPlan, index: int, parent: int
) -> None:
    """Body of one shard process: start, report ready, wait for the origin, run, send back."""
    # The parent handles Ctrl-C and stops the shards itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A group of its own: processes the app starts are in it, and end with the shard.
    os.setpgid(0, 0)
    _watch_parent(parent)
    try:
        if not plan.on_loop:

            def origin_now() -> float:
                conn.send(("ready", None))
                return float(conn.recv())

            output = execute_pool(plan, None, origin_now)
        else:

            async def origin_later() -> float:
                conn.send(("ready", None))
                return float(await anyio.to_thread.run_sync(conn.recv))

            output = anyio.run(execute_async, plan, None, origin_later)
        conn.send(("done", output))
    except BaseException as exc:  # everything goes back to the parent, named
        message = f"{type(exc).__name__}: {exc}"
        detail = "".join(traceback.format_exception(exc))
        with suppress(OSError, ValueError):
            conn.send(("error", (message, detail)))
    finally:
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        _stop_own_group(signal.SIGTERM)
        os._exit(0)  # no atexit hooks or inherited finalizers of the parent


def _stop_own_group(sig: signal.Signals) -> None:
    """Signal the processes of this shard's group (what the app started); SIGKILL ends the
    shard too, SIGTERM is ignored by it (called from its main thread)."""
    if sig != signal.SIGKILL:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with suppress(OSError):
        os.killpg(0, sig)


@contextmanager
def _shards(plans: list[StormPlan]) -> Iterator[list[tuple[Any, Any]]]:
    context = multiprocessing.get_context("fork")
    started: list[tuple[Any, Any]] = []
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns that forking a threaded process may deadlock; a shard
            # runs only the app and the storm, never the parent's other threads.
            warnings.simplefilter("ignore", DeprecationWarning)
            for index, shard in enumerate(plans):
                parent, child = context.Pipe()
                process = context.Process(
                    target=_shard_main,
                    args=(child, shard, index, os.getpid()),
                    name=f"storm-shard-{index}",
                )
                process.daemon = True
                process.start()
                _LIVE.add(process)
                child.close()
                started.append((process, parent))
        yield started
    finally:
        for process, conn in started:
            conn.close()
            if process.is_alive():
                process.terminate()
        stop_by = perf_counter() + _KILL_GRACE
        for process, _ in started:
            process.join(max(0.0, stop_by - perf_counter()))
            if process.is_alive():
                process.kill()
                process.join(1.0)
            # What the app started in the shard's group and survived it (SIGTERM ignored,
            # or the shard killed before it could stop them).
            with suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            _LIVE.discard(process)


def _receive(started: list[tuple[Any, Any]], expect: str, deadline: float) -> list[Any]:
    """Wait for message *expect* from every shard; a shard that fails, dies or misses the
    deadline is an error naming it."""
    pending = {id(conn): (index, process, conn) for index, (process, conn) in enumerate(started)}
    got: dict[int, Any] = {}
    while pending:
        left = deadline - perf_counter()
        if left <= 0:
            names = ", ".join(f"shard {index}" for index, _, _ in pending.values())
            raise StormError(
                f"{names} did not {'start' if expect == 'ready' else 'finish'} in time; "
                "the other shards were stopped"
            )
        watched = [conn for _, _, conn in pending.values()]
        watched += [process.sentinel for _, process, _ in pending.values()]
        ready = multiprocessing.connection.wait(watched, timeout=min(left, 1.0))
        for index, process, conn in list(pending.values()):
            if conn in ready or conn.poll():
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    kind, payload = "died", None
            elif process.sentinel in ready:
                kind, payload = "died", None
            else:
                continue
            if kind == "error":
                message, detail = payload
                raise StormError(
                    f"shard {index} of {len(started)} failed: {message}; the other shards were "
                    f"stopped\n{detail}"
                )
            if kind == "died":
                process.join(1.0)  # the pipe closes just before the exit code is known
                raise StormError(
                    f"shard {index} of {len(started)} (pid {process.pid}) died with exit code "
                    f"{process.exitcode} before it {'started' if expect == 'ready' else 'finished'}; "
                    "the other shards were stopped"
                )
            got[index] = payload
            del pending[id(conn)]
    return [got[i] for i in range(len(started))]


def run_sharded_round(plan: StormPlan, live: LiveFigures | None = None) -> StormResult:
    """Run one round over ``plan.config.processes`` forked shards and fold it as one storm."""
    if sys.platform == "win32" or "fork" not in multiprocessing.get_all_start_methods():
        raise StormError("processes > 1 needs the 'fork' start method (Linux, macOS)")
    configs = shard_configs(plan.config)
    plans = [dataclasses.replace(plan, config=config) for config in configs]
    started_at = perf_counter()
    with _shards(plans) as started:
        _receive(started, "ready", perf_counter() + _STARTUP_TIMEOUT)
        startup = perf_counter() - started_at
        origin = perf_counter() + _LEAD
        for _, conn in started:
            conn.send(origin)
        window_deadline = _deadline(configs[0], origin)
        outputs: list[RoundOutput] = _receive(started, "done", window_deadline + _RETURN_GRACE)
    result = finish(plan, _merge(outputs, len(plans)))
    result.shards = ShardFigures(
        processes=len(plans),
        start_method="fork",
        startup_s=startup,
        per_shard=tuple(
            ShardShare(
                requests=len(output.figures.rec),
                cpu_share=output.cpu_share,
                loop_lag_max_ms=output.loop_lag.max_ms if output.loop_lag else None,
            )
            for output in outputs
        ),
    )
    if len(plans) < plan.config.processes:
        result.notes.append(idle_shards_note(plan.config.processes, len(plans)))
    return result


def _deadline(config: StormConfig, origin: float) -> float:
    return Schedule(config, origin).window.deadline


def _merge(outputs: list[RoundOutput], n: int) -> RoundOutput:
    """One output from the shards': records concatenated on the shared clock, error kinds
    renumbered, each shard's loop stalls for its own requests, the worst loop lag, every pool."""
    book = ErrorBook()
    merged = Recorder()
    cpu = wall = 0.0
    dropped: list[float] = []
    loops: list[tuple[int, list[tuple[float, float]]]] = []
    for output in outputs:
        figures = output.figures
        shard_book = figures.book
        remap = [0] + [
            book.adopt(kind, example)
            for kind, example in zip(shard_book.kinds[1:], shard_book.examples[1:], strict=True)
        ]
        # A shard's loop stalls held its own requests only: kept with where they start.
        loops.append((len(merged), figures.stalls))
        merged.extend(figures.rec, remap)
        cpu = max(cpu, figures.cpu)
        wall = max(wall, figures.wall)
        dropped.extend(figures.dropped)
    first = outputs[0]
    figures = RunFigures(
        merged,
        book,
        first.figures.window,
        cpu,
        wall,
        sorted(dropped),
        _sum_in_flight([o.figures.in_flight for o in outputs]),
        first.figures.profile,
        loops=loops,
    )
    lags = [o.loop_lag for o in outputs if o.loop_lag is not None]
    pools = []
    for index, output in enumerate(outputs):
        for usage in output.thread_pools:
            pools.append(dataclasses.replace(usage, name=f"{usage.name} (shard {index})"))
    connections = [
        dataclasses.replace(usage, name=f"{usage.name} (shard {index})")
        for index, output in enumerate(outputs)
        for usage in output.connection_pools
    ]
    pool = None
    if first.pool is not None:
        size = sum(o.pool.size for o in outputs if o.pool is not None)
        pool = PoolModel(f"{n} processes × {first.pool.description}", size)
    return RoundOutput(
        figures,
        f"{n} processes × {first.server}",
        pool=pool,
        loop_lag=max(lags, key=lambda lag: lag.max_ms) if lags else None,
        thread_pools=pools,
        connection_pools=connections,
        stuck_threads=[t for o in outputs for t in o.stuck_threads],
        warnings=[w for o in outputs for w in o.warnings],
        # Start hooks ran in every shard: a failure in any of them fails the storm.
        on_start=StartHooks.merged([o.on_start for o in outputs if o.on_start is not None]),
    )


def _sum_in_flight(shards: list[list[tuple[float, int]]]) -> list[tuple[float, int]]:
    """Requests in flight over all shards: each shard samples on its own ticks, so take
    each shard's mean per 50 ms and add them up."""
    totals: dict[int, float] = {}
    for samples in shards:
        per: dict[int, list[int]] = {}
        for at, count in samples:
            per.setdefault(int(at * 20), []).append(count)
        for key, counts in per.items():
            totals[key] = totals.get(key, 0.0) + sum(counts) / len(counts)
    return [(key / 20, round(total)) for key, total in sorted(totals.items())]
