"""The README's fidelity table: the examples in-process and behind a real server, one run.

    python benchmarks/fidelity.py [--seconds S] [--warmup S]

Each row fires the same storm with :func:`pytest_concurrency.compare` in-process and behind
the row's server (uvicorn for the ASGI examples, gunicorn for the WSGI one), and prints rps,
p50 and p99 of both and the ratio of their rps as a Markdown table. The machine's load
average is printed before and after each row, since every CPU-bound row depends on it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_concurrency import compare  # noqa: E402

fastapi_app = "examples.fastapi_app:app"
flask_app = "examples.flask_app:app"

#: label, app, server, path, users, extra storm parameters
ROWS: list[tuple[str, Any, str, str, int, dict[str, Any]]] = [
    ("FastAPI `/io` (50 ms await), 100 users", fastapi_app, "uvicorn", "/io", 100, {}),
    ("FastAPI `/sync-io` (thread pool), 200 users", fastapi_app, "uvicorn", "/sync-io", 200, {}),
    ("Flask `/io`, 8 workers, 50 users", flask_app, "gunicorn", "/io", 50, {"workers": 8}),
    ("FastAPI `/io`, 1,000 users", fastapi_app, "uvicorn", "/io", 1000, {}),
    ("FastAPI `/items/7`, 100 users", fastapi_app, "uvicorn", "/items/7", 100, {}),
    (
        "Flask `/items/7`, 8 workers, 50 users",
        flask_app,
        "gunicorn",
        "/items/7",
        50,
        {"workers": 8},
    ),
    (
        "FastAPI `/blocking-in-async`, 50 users",
        fastapi_app,
        "uvicorn",
        "/blocking-in-async",
        50,
        {},
    ),
]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cell(result: Any) -> str:
    lat = result.latency
    return f"{result.throughput:,.0f} / {lat.p50:,.1f} / {lat.p99:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores")
    print(
        "| app, endpoint, load | in-process rps / p50 / p99 ms | real server rps / p50 / p99 ms "
        "| real / in-process rps | load average before → after |"
    )
    print("|---|---|---|---|---|")
    for label, app, server, path, users, extra in ROWS:
        before = load()
        blocking = "blocking" in path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fidelity = compare(
                app,
                "GET",
                path,
                servers=["inprocess", server],
                users=users,
                duration=args.seconds,
                warmup=args.seconds if blocking else args.warmup,
                **extra,
            )
        inproc, real = fidelity["inprocess"], fidelity[server]
        ratio = real.throughput / inproc.throughput if inproc.throughput else float("nan")
        print(
            f"| {label} | {cell(inproc)} | {server}: {cell(real)} | {ratio:.2f}× "
            f"| {before} → {load()} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
