"""The project's real-server client against wrk where the server closes every connection.

    python benchmarks/reconnect.py [--seconds S] [--users N] [--rounds R] [--workers W]

gunicorn with W sync workers (default 8) serves ``GET /items/7`` of the Flask example on
loopback; a sync worker answers with ``Connection: close``, so each request of either
client opens a new connection. In every round wrk (one thread, N connections) and a storm
of N users aimed at the same server's URL run S seconds each, the first alternating
between rounds. Printed per round and as medians: requests per second of each, the ratio
storm / wrk (goal ≥ 0.95), each client's CPU per request (wrk's from the children's
rusage, the storm's from its process), and the machine's load average.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    warnings.simplefilter("ignore", ConcurrencyWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
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
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    med = [statistics.median(column) for column in zip(*rows, strict=True)]
    print(
        f"gunicorn -w {args.workers} sync, {args.users} connections, {args.seconds:g} s each: "
        f"storm/wrk rps {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}); "
        f"wrk {med[0]:,.0f} rps at {med[2]:.0f} µs CPU/request, storm {med[1]:,.0f} rps at "
        f"{med[3]:.0f} µs"
    )


if __name__ == "__main__":
    main()
