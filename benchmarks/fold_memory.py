"""Peak memory of folding one million synthetic records into a result (WSGI pool and ASGI).

    PYTHONPATH=src python benchmarks/fold_memory.py [--requests 1000000]

Each driver's fold runs in a child process of its own; the figure is tracemalloc's peak
during the fold, over what the records themselves hold, per million requests, and the
child's maximum resident size for reference.
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

from pytest_concurrency._engine import plan_storm
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


def measure(kind: str, n: int, out: Any) -> None:
    pool = kind == "wsgi"
    app = wsgi_app if pool else asgi_app
    layer = Layer("benchmark", {"users": 64, "duration": 10.0, "workers": 8} if pool else {})
    if not pool:
        layer = Layer("benchmark", {"users": 64, "duration": 10.0})
    plan = plan_storm(app, "GET", "/", layers=[layer])
    rec = synthetic(n, pool=pool)
    window = Window(origin=0.0, measure_from=0.0, stop_at=10.0, total=None, deadline=20.0)
    figures = RunFigures(rec, ErrorBook(), window, cpu=1.0, wall=10.0, dropped=[])
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    result = fold(plan, figures, server="bench", pool=PoolModel("8 sync workers", 8) if pool else None)
    took = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    out.put(
        {
            "driver": kind,
            "requests": n,
            "fold_s": round(took, 2),
            "fold_peak_mb_per_million": round(peak / 2**20 / (n / 1e6), 1),
            "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "p99_ms": round(result.latency.p99, 2),
            "users": result.users,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=1_000_000)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    for kind in ("wsgi", "asgi"):
        queue = ctx.Queue()
        child = ctx.Process(target=measure, args=(kind, args.requests, queue))
        child.start()
        print(json.dumps(queue.get()))
        child.join()


if __name__ == "__main__":
    main()
