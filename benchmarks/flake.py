"""How often do the gates fail on unchanged code? Budgets and a baseline compare, K times.

    python benchmarks/flake.py [--k 20] [--fail p99_ms:10%,rps:5%] [--json PATH] [--until HH:MM]

Each of K iterations runs, in child pytest processes and on unchanged code:
  1. the examples' budget tests (``examples/test_claims.py``, ``examples/test_llm.py``),
     saving their storms as a baseline (``--concurrency-save``: three rounds per storm);
  2. the same tests again, compared with that baseline under
     ``--concurrency-compare-fail`` (three rounds per storm by default).
The code never changes, so every failed test is a false failure. The report counts them
per test, counts the compared figures that came out inconclusive (noise wider than the
threshold: reported, not failed), and prints the spread of each storm's p99 and
throughput over every run, with the share of their ready time the storms' threads spent
waiting for a CPU (``extras["cpu_contention"]``, which the comparison divides out of
CPU-bound figures). The load average of the machine is printed with each run: other
processes on the machine take CPU from the storms and widen the spread.

``--k 3`` takes a few minutes on two cores; the default 20 about an hour. ``--until``
starts no iteration that would likely end after that time (UTC) and reports the K reached.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["examples/test_claims.py", "examples/test_llm.py"]
# Our plugin only: a third-party plugin installed next to it must not change the outcome.
PLUGINS = ["-p", "pytest_concurrency.plugin", "-p", "no:cacheprovider"]
_VERDICT = re.compile(r"^(regressed|inconclusive|improved): (.+?) · (.+?): (\w+) ")


def _child(args: list[str], workdir: Path) -> dict[str, Any]:
    """One pytest process: its failed tests (and why), compare verdicts and storms."""
    junit = workdir / "junit.xml"
    report = workdir / "storms.json"
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *TESTS,
            *PLUGINS,
            "-q",
            f"--junitxml={junit}",
            f"--concurrency-json={report}",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    failed: dict[str, str] = {}
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            for child in case:
                if child.tag in ("failure", "error"):
                    name = f"{case.get('classname', '')}::{case.get('name', '')}"
                    failed[name] = str(child.get("message", ""))[:300]
    verdicts: Counter[str] = Counter()
    for line in proc.stdout.splitlines():
        found = _VERDICT.match(line)
        if found:
            verdicts[found.group(1)] += 1
        elif re.match(r"^\d+ compared figures? within", line):
            verdicts["unchanged"] += int(line.split()[0])
    storms = json.loads(report.read_text())["storms"] if report.is_file() else []
    if proc.returncode not in (0, 1):
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise SystemExit(f"pytest exited with {proc.returncode}:\n{tail}")
    return {
        "failed": failed,
        "verdicts": verdicts,
        "storms": storms,
        "seconds": seconds,
        "load": (load_before, os.getloadavg()[0]),
    }


def _spread(values: list[float]) -> str:
    if not values:
        return "–"
    low, high, mid = min(values), max(values), statistics.median(values)
    width = (high - low) / mid if mid else 0.0
    return f"{low:,.1f}–{high:,.1f} (±{width / 2:.0%})"


def _deadline(parser: argparse.ArgumentParser, until: str) -> float:
    try:
        hour, minute = (int(part) for part in until.split(":"))
        now = dt.datetime.now(dt.UTC)
        end = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    except ValueError:
        parser.error(f"--until={until!r}: expected HH:MM (UTC), such as 07:10")
    if end < now:
        end += dt.timedelta(days=1)
    return end.timestamp()


def main(argv: list[str] | None = None) -> int:
    """Run the flake benchmark and print what it found."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--k", type=int, default=20, help="iterations (default 20)")
    parser.add_argument(
        "--fail",
        default="p99_ms:10%,rps:5%",
        help="--concurrency-compare-fail thresholds (default p99_ms:10%%,rps:5%%)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to PATH")
    parser.add_argument(
        "--until",
        help="start no iteration likely to end after HH:MM UTC (default: run all K)",
    )
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error("--k must be at least 1")
    deadline = _deadline(parser, args.until) if args.until else None

    budget_failures: Counter[str] = Counter()
    compare_failures: Counter[str] = Counter()
    other_failures: Counter[str] = Counter()
    verdicts: Counter[str] = Counter()
    p99s: dict[str, list[float]] = defaultdict(list)
    rps: dict[str, list[float]] = defaultdict(list)
    lag: dict[str, list[float]] = defaultdict(list)
    calls: dict[str, list[float]] = defaultdict(list)
    waits: dict[str, list[float]] = defaultdict(list)
    examples: dict[str, str] = {}
    loads: list[float] = []
    runs = 0
    with tempfile.TemporaryDirectory(prefix="storm-flake-") as tmp:
        storage = Path(tmp) / "baselines"
        started = time.time()
        for i in range(args.k):
            if (
                deadline is not None
                and i
                and started + (time.time() - started) / i * (i + 1) > deadline
            ):
                print(
                    f"stopping after {i} of {args.k} iterations: the next would end after {args.until} UTC"
                )
                break
            work = Path(tmp) / f"run{i}"
            (work / "save").mkdir(parents=True)
            (work / "compare").mkdir()
            saved = _child(
                [f"--concurrency-storage={storage}", "--concurrency-save=flake"], work / "save"
            )
            compared = _child(
                [
                    f"--concurrency-storage={storage}",
                    "--concurrency-compare=flake",
                    f"--concurrency-compare-fail={args.fail}",
                ],
                work / "compare",
            )
            runs += 1
            for name, message in saved["failed"].items():
                budget_failures[name] += 1
                examples.setdefault(name, message)
            for name, message in compared["failed"].items():
                if "regressed against baseline" in message:
                    compare_failures[name] += 1
                else:
                    other_failures[name] += 1
                examples.setdefault(name, message)
            verdicts.update(compared["verdicts"])
            for child in (saved, compared):
                loads.extend(child["load"])
                for storm in child["storms"]:
                    key = f"{storm['nodeid']} · {storm['label']}"
                    if storm["latency"].get("p99") is not None:
                        p99s[key].append(float(storm["latency"]["p99"]))
                    rps[key].append(float(storm.get("throughput") or 0.0))
                    contention = (storm.get("extras") or {}).get("cpu_contention") or {}
                    if contention.get("wait_share") is not None:
                        waits[key].append(100 * float(contention["wait_share"]))
                    loop = storm.get("loop_lag") or {}
                    if loop.get("max_ms") is not None:
                        lag[key].append(float(loop["max_ms"]))
                        calls[key].append(float(loop.get("calls") or 0))
            print(
                f"iteration {i + 1}/{args.k}: budget run {len(saved['failed'])} failed "
                f"({saved['seconds']:.0f} s, load {saved['load'][0]:.1f}→{saved['load'][1]:.1f}); "
                f"compare run {len(compared['failed'])} failed, "
                f"{compared['verdicts'].get('inconclusive', 0)} inconclusive "
                f"({compared['seconds']:.0f} s, load {compared['load'][0]:.1f}→"
                f"{compared['load'][1]:.1f})",
                flush=True,
            )

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print()
    print(f"{runs} iterations on {cores} cores; load average {min(loads):.1f}–{max(loads):.1f}")
    print(
        f"budget runs: {sum(budget_failures.values())} false failures in {runs} runs "
        f"({len(budget_failures)} tests)"
    )
    for name, count in budget_failures.most_common():
        print(f"  {count}/{runs}  {name}: {examples[name][:160]}")
    print(
        f"compare runs ({args.fail}): {sum(compare_failures.values())} false regressions, "
        f"{sum(other_failures.values())} budget failures"
    )
    for name, count in (compare_failures + other_failures).most_common():
        print(f"  {count}/{runs}  {name}: {examples[name][:160]}")
    judged = sum(verdicts.values())
    print(
        f"compared figures: {judged} judged, {verdicts.get('regressed', 0)} regressed, "
        f"{verdicts.get('inconclusive', 0)} inconclusive, {verdicts.get('improved', 0)} "
        f"improved, {verdicts.get('unchanged', 0)} within their thresholds"
    )
    print("spread over every run (min–max, ± half the range over the median):")
    width = max((len(k) for k in p99s), default=10)
    print(f"  {'storm'.ljust(width)}  {'p99 ms':>26}  {'rps':>26}  {'CPU wait %':>12}")
    for key in sorted(p99s):
        wait = f"{min(waits[key]):.0f}–{max(waits[key]):.0f}" if waits[key] else "–"
        print(
            f"  {key.ljust(width)}  {_spread(p99s[key]):>26}  {_spread(rps[key]):>26}  {wait:>12}"
        )
    print("event-loop storms: longest stall (max_loop_lag_ms) against blocking calls traced")
    print("to the app (max_blocking_calls), min–max over every run:")
    for key in sorted(lag):
        print(
            f"  {key.ljust(width)}  lag {min(lag[key]):,.1f}–{max(lag[key]):,.1f} ms  "
            f"calls {min(calls[key]):,.0f}–{max(calls[key]):,.0f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "k": runs,
                    "fail": args.fail,
                    "load": [min(loads), max(loads)],
                    "budget_failures": dict(budget_failures),
                    "compare_failures": dict(compare_failures),
                    "other_failures": dict(other_failures),
                    "verdicts": dict(verdicts),
                    "p99": dict(p99s),
                    "rps": dict(rps),
                    "loop_lag_ms": dict(lag),
                    "blocking_calls": dict(calls),
                    "cpu_wait_percent": dict(waits),
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
