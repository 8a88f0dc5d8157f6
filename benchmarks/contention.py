"""How a CPU-bound storm's time per request follows the time its threads wait for a CPU.

    python benchmarks/contention.py [--busy 0,1,2,3,4] [--repeat 3] [--json PATH]

A baseline comparison divides the machine out of CPU-bound figures: each round records its
threads' CPU slowdown s = (run + wait) / run from ``/proc/<pid>/task/*/schedstat``
(``extras["cpu_contention"]``), and the comparison lets time per request move by up to
(s_now / s_then) ** CONTENTION_POWER between two sessions. This measures that power here.

For each count of busy processes started beside the storm (pure-Python loops, one per
process), it runs CPU-bound storms with no simulated waits — Django's async view (ASGI, the
event loop and asgiref's thread) and Flask (WSGI, 4 sync workers) — and prints each storm's
slowdown and time per request (1 / throughput × users), their ratios to the run with nothing
beside it, and the power those ratios imply, ln(time ratio) / ln(slowdown ratio). The
largest power seen is what the comparison must allow. Linux only (schedstat).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_concurrency import run_storm  # noqa: E402

USERS = 20


def _busy(stop: Any) -> None:
    while not stop.is_set():
        for _ in range(10_000):
            pass


def _storms() -> dict[str, tuple[Any, str, dict[str, Any]]]:
    from examples import django_app, flask_app

    return {
        "django-async": (django_app.asgi_app, "/async-item/3", {}),
        "flask-4-workers": (flask_app.app, "/items/3", {"workers": 4}),
    }


def _measure(app: Any, path: str, options: dict[str, Any]) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_storm(
            app, "GET", path, users=USERS, duration=0.5, warmup=0.1, max_error_rate=1.0, **options
        )
    contention = result.extras.get("cpu_contention")
    if not contention or not result.throughput:
        raise SystemExit("no cpu_contention recorded: this benchmark needs Linux schedstat")
    return float(contention["slowdown"]), USERS / result.throughput * 1000


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print what it found."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--busy", default="0,1,2,3,4", help="busy processes per step")
    parser.add_argument("--repeat", type=int, default=3, help="storms per step (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to PATH")
    args = parser.parse_args(argv)
    steps = [int(n) for n in args.busy.split(",")]
    if not steps or steps[0] != 0 or any(n < 0 for n in steps):
        parser.error("--busy must start with 0 (the reference) and hold counts ≥ 0")
    storms = _storms()
    found: dict[str, list[dict[str, float]]] = {name: [] for name in storms}
    for busy in steps:
        stop = mp.Event()
        others = [mp.Process(target=_busy, args=(stop,), daemon=True) for _ in range(busy)]
        for process in others:
            process.start()
        try:
            time.sleep(0.3)
            for name, (app, path, options) in storms.items():
                runs = [_measure(app, path, options) for _ in range(args.repeat)]
                found[name].append(
                    {
                        "busy": busy,
                        "slowdown": statistics.median(r[0] for r in runs),
                        "ms_per_request": statistics.median(r[1] for r in runs),
                    }
                )
        finally:
            stop.set()
            for process in others:
                process.join(2)
                if process.is_alive():
                    process.kill()
                    process.join()
    powers: list[float] = []
    for name, rows in found.items():
        print(f"{name} ({USERS} users, median of {args.repeat} storms per step)")
        print(
            f"  {'busy':>4}  {'slowdown':>8}  {'ms/request':>10}  {'s ratio':>7}  "
            f"{'t ratio':>7}  {'power':>5}"
        )
        reference = rows[0]
        for row in rows:
            s_ratio = row["slowdown"] / reference["slowdown"]
            t_ratio = row["ms_per_request"] / reference["ms_per_request"]
            power = math.log(t_ratio) / math.log(s_ratio) if s_ratio > 1.05 else math.nan
            row["power"] = power
            if not math.isnan(power):
                powers.append(power)
            print(
                f"  {row['busy']:>4}  {row['slowdown']:>8.2f}  {row['ms_per_request']:>10.2f}  "
                f"{s_ratio:>7.2f}  {t_ratio:>7.2f}  "
                f"{'–' if math.isnan(power) else f'{power:.2f}':>5}"
            )
    if powers:
        print(f"largest power: {max(powers):.2f} (median {statistics.median(powers):.2f})")
    if args.json:
        args.json.write_text(json.dumps(found, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
