"""The project's real-server client against wrk where the server closes every connection.

    python benchmarks/reconnect.py [--seconds S] [--users N] [--rounds R] [--workers W]
                                   [--baseline SRC]

gunicorn with W sync workers (default 8) serves ``GET /items/7`` of the Flask example on
loopback; a sync worker answers with ``Connection: close``, so each request of either
client opens a new connection. In every round wrk (one thread, N connections) and a storm
of N users aimed at the same server's URL run S seconds each, the first alternating
between rounds. Printed per round and as medians: requests per second of each, the ratio
storm / wrk (goal ≥ 0.95), each client's CPU per request (wrk's from the children's
rusage, the storm's from its process), and the machine's load average.

``--baseline SRC`` adds, in every round, the same storm run by the package found in the
directory SRC (another checkout's ``src``), the three clients taking turns to go first:
a change compared with the code before it in one run, on the same server and machine.
Each storm then runs in a child process of its own, timed there around ``run_storm``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.flask_app import app  # noqa: E402

from pytest_concurrency import ConcurrencyWarning, run_storm  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gunicorn(workers: int, port: int) -> subprocess.Popen[bytes]:
    gunicorn = Path(sys.executable).with_name("gunicorn")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path[1:2]])}
    proc = subprocess.Popen(
        [
            str(gunicorn),
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "examples.flask_app:app",
        ],
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                time.sleep(1.0)  # let every worker boot
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("gunicorn did not start")


def stop_gunicorn(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(url: str, users: int, seconds: float) -> tuple[float, float]:
    """(rps, client CPU µs per request) of wrk."""
    before = children_cpu()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{users}", f"-d{seconds:g}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = children_cpu() - before
    found = re.search(r"Requests/sec:\s*([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not found or not total:
        raise SystemExit(f"wrk said: {out}")
    return float(found.group(1)), cpu / int(total.group(1)) * 1e6


def run_project(url: str, users: int, seconds: float) -> tuple[float, float]:
    """(rps, client CPU µs per request) of a storm against *url*."""
    before = time.process_time()
    result = run_storm(
        app, "GET", "/items/7", users=users, duration=seconds, server=url.rsplit("/items", 1)[0]
    )
    cpu = time.process_time() - before
    if result.failed:
        raise SystemExit(f"the storm failed: {result.errors}")
    return result.throughput, cpu / max(1, result.requests + result.discarded) * 1e6


_CHILD = """
import json, sys, time, warnings
sys.path.insert(0, sys.argv[1])
from examples.flask_app import app
from pytest_concurrency import ConcurrencyWarning, run_storm
warnings.simplefilter("ignore", ConcurrencyWarning)
before = time.process_time()
result = run_storm(app, "GET", "/items/7", users=int(sys.argv[3]), duration=float(sys.argv[4]),
                   server=sys.argv[2])
cpu = time.process_time() - before
print(json.dumps([result.throughput, cpu / max(1, result.requests + result.discarded) * 1e6,
                  bool(result.failed)]))
"""


def run_child(src: str, url: str, users: int, seconds: float) -> tuple[float, float]:
    """(rps, client CPU µs per request) of a storm run by the package in *src*."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(ROOT)])}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(ROOT),
            url.rsplit("/items", 1)[0],
            str(users),
            str(seconds),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=ROOT,
    ).stdout
    rps, cpu, failed = json.loads(out.strip().splitlines()[-1])
    if failed:
        raise SystemExit(f"the storm run from {src} failed")
    return float(rps), float(cpu)


def main() -> None:
    warnings.simplefilter("ignore", ConcurrencyWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--baseline", metavar="SRC", help="compare with the package in SRC")
    args = parser.parse_args()
    if args.baseline:
        compare(args)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    port = free_port()
    url = f"http://127.0.0.1:{port}/items/7"
    proc = start_gunicorn(args.workers, port)
    ratios: list[float] = []
    rows: list[tuple[float, float, float, float]] = []
    try:
        for index in range(args.rounds):
            if index % 2 == 0:
                wrk = run_wrk(url, args.users, args.seconds)
                ours = run_project(url, args.users, args.seconds)
            else:
                ours = run_project(url, args.users, args.seconds)
                wrk = run_wrk(url, args.users, args.seconds)
            ratios.append(ours[0] / wrk[0])
            rows.append((wrk[0], ours[0], wrk[1], ours[1]))
            print(
                f"round {index + 1}: wrk {wrk[0]:,.0f} rps ({wrk[1]:.0f} µs CPU/request), storm "
                f"{ours[0]:,.0f} rps ({ours[1]:.0f} µs), storm/wrk {ratios[-1]:.2f}   "
                f"load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    finally:
        stop_gunicorn(proc)
    med = [statistics.median(column) for column in zip(*rows, strict=True)]
    print(
        f"gunicorn -w {args.workers} sync, {args.users} connections, {args.seconds:g} s each: "
        f"storm/wrk rps {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}); "
        f"wrk {med[0]:,.0f} rps at {med[2]:.0f} µs CPU/request, storm {med[1]:,.0f} rps at "
        f"{med[3]:.0f} µs"
    )


def compare(args: argparse.Namespace) -> None:
    """Rounds of wrk, the baseline's storm and this checkout's, each going first in turn."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/items/7"
    here = str(ROOT / "src")
    runs = {
        "wrk": lambda: run_wrk(url, args.users, args.seconds),
        "before": lambda: run_child(args.baseline, url, args.users, args.seconds),
        "after": lambda: run_child(here, url, args.users, args.seconds),
    }
    order = list(runs)
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    ratios: dict[str, list[float]] = {"before": [], "after": []}
    proc = start_gunicorn(args.workers, port)
    try:
        for index in range(args.rounds):
            turn = order[index % 3 :] + order[: index % 3]
            got = {name: runs[name]() for name in turn}
            for name, figures in got.items():
                rows[name].append(figures)
            for name, column in ratios.items():
                column.append(got[name][0] / got["wrk"][0])
            print(
                f"round {index + 1} ({', '.join(turn)}): "
                + "; ".join(f"{n} {r:,.0f} rps {c:.0f} µs" for n, (r, c) in got.items())
                + f"; before/wrk {ratios['before'][-1]:.2f}, after/wrk {ratios['after'][-1]:.2f}"
                f"   load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    finally:
        stop_gunicorn(proc)
    print(
        f"gunicorn -w {args.workers} sync, {args.users} connections, {args.seconds:g} s each, "
        f"{args.rounds} rounds (medians):"
    )
    for name in runs:
        rps = statistics.median(r for r, _ in rows[name])
        cpu = statistics.median(c for _, c in rows[name])
        ratio = ""
        if name in ratios:
            r = ratios[name]
            ratio = f", /wrk {statistics.median(r):.2f} ({min(r):.2f}–{max(r):.2f})"
        print(f"  {name}: {rps:,.0f} rps at {cpu:.0f} µs CPU/request{ratio}")


if __name__ == "__main__":
    main()
