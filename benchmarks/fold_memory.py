"""Peak memory of folding one million synthetic records into a result (WSGI pool and ASGI).

    PYTHONPATH=src python benchmarks/fold_memory.py [--requests 1000000]

Each driver's fold runs in a child process of its own. The figure is the growth of the
child's peak resident size during the fold (``ru_maxrss`` after it minus the resident size
before it, the records already built) per million requests; ``--tracemalloc`` measures
the peak of Python allocations instead (precise, but the fold runs several times slower).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import resource
import time
import tracemalloc
from typing import Any

from pytest_concurrency._engine.plan import plan_storm
from pytest_concurrency._engine.schedule import Window
from pytest_concurrency._metrics.fold import PoolModel, RunFigures, fold
from pytest_concurrency._metrics.records import ErrorBook, Recorder
from pytest_concurrency._params import Layer


def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b""]


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    return None


def synthetic(n: int, *, pool: bool, seconds: float = 10.0) -> Recorder:
    """*n* requests over *seconds*: 8 workers' worth of queueing when *pool*."""
    rng = random.Random(1)
    rec = Recorder()
    step = seconds * 1e6 / n
    for i in range(n):
        queue = int(rng.expovariate(1 / 2000)) if pool else -1
        latency = (queue if pool else 0) + 500 + int(rng.expovariate(1 / 1500))
        rec.start.append(int(i * step))
        rec.latency.append(latency)
        rec.ttfb.append(latency - 10)
        rec.queue.append(queue)
        rec.status.append(200 if rng.random() > 0.01 else 503)
        rec.endpoint.append(0)
        rec.error.append(0)
    return rec


def _resident_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def measure(kind: str, n: int, traced: bool, out: Any) -> None:
    pool = kind == "wsgi"
    app = wsgi_app if pool else asgi_app
    workload: dict[str, Any] = {"users": 64, "duration": 10.0}
    if pool:
        workload["workers"] = 8
    layer = Layer("benchmark", workload)
    plan = plan_storm(app, "GET", "/", layers=[layer])
    rec = synthetic(n, pool=pool)
    window = Window(origin=0.0, measure_from=0.0, stop_at=10.0, total=None, deadline=20.0)
    figures = RunFigures(rec, ErrorBook(), window, cpu=1.0, wall=10.0, dropped=[])
    if traced:
        tracemalloc.start()
    before = _resident_mb()
    started = time.perf_counter()
    model = PoolModel("8 sync workers", 8) if pool else None
    result = fold(plan, figures, server="bench", pool=model)
    took = time.perf_counter() - started
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures_out = {
        "driver": kind,
        "requests": n,
        "fold_s": round(took, 2),
        "resident_before_mb": round(before, 1),
        "fold_peak_rss_growth_mb_per_million": round((maxrss - before) / (n / 1e6), 1),
        "p99_ms": round(result.latency.p99, 2),
    }
    if traced:
        figures_out["fold_peak_traced_mb_per_million"] = round(
            tracemalloc.get_traced_memory()[1] / 2**20 / (n / 1e6), 1
        )
        tracemalloc.stop()
    out.put(figures_out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--tracemalloc", action="store_true", help="trace Python allocations")
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    for kind in ("wsgi", "asgi"):
        queue = ctx.Queue()
        child = ctx.Process(target=measure, args=(kind, args.requests, args.tracemalloc, queue))
        child.start()
        print(json.dumps(queue.get()))
        child.join()


if __name__ == "__main__":
    main()
