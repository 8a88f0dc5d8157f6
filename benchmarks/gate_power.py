"""How much does the paired gate catch, and what does it cost? Three changes and none, K times.

    python benchmarks/gate_power.py [--k 5] [--fail p99:10%,rps:10%] [--duration 1.0]
                                    [--json PATH] [--until HH:MM]

A temporary git repository holds an example app (a bare ASGI app: ``/cpu`` spends about
1 ms of Python per request, ``/io`` awaits 50 ms) and two storm tests, committed as the
control. Each iteration changes the working tree in one of four ways and runs the tests
with ``--concurrency-control=HEAD --concurrency-compare-fail=...`` in a child pytest:

  cpu+20%   ``/cpu`` does 20 % more work      -> its storm should regress, ``/io``'s not
  cpu×2     ``/cpu`` does twice the work      -> its storm should regress, ``/io``'s not
  block5ms  ``time.sleep(0.005)`` in ``/io``'s async handler -> ``/io`` should regress
  unchanged nothing                           -> no storm may regress

Per change it counts the changed storm caught (regressed), missed (unchanged or
improved) or inconclusive, and false failures (a regressed verdict on a storm whose code
did not change). It also counts the judged figures that came out inconclusive, and
times a gated session against the same session ungated (one per iteration).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ["-p", "pytest_concurrency.plugin", "-p", "no:cacheprovider"]

APP = """\
import asyncio
import time

CPU_WORK = {work}
BLOCK_S = {block}


def _burn(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/cpu":
        _burn(CPU_WORK)
    else:
        if BLOCK_S:
            time.sleep(BLOCK_S)
        await asyncio.sleep(0.05)
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b"ok"}})
"""

TESTS = """\
import pytest

from gate_app import app


@pytest.mark.concurrency(users=8, duration={duration})
def test_cpu(storm):
    storm(app, "GET", "/cpu")


@pytest.mark.concurrency(users=50, duration={duration})
def test_io(storm):
    storm(app, "GET", "/io")
"""

#: change -> (work multiplier of /cpu, blocking seconds in /io, the storm that changed)
CHANGES: dict[str, tuple[float, float, str | None]] = {
    "cpu+20%": (1.2, 0.0, "test_cpu"),
    "cpu×2": (2.0, 0.0, "test_cpu"),
    "block5ms": (1.0, 0.005, "test_io"),
    "unchanged": (1.0, 0.0, None),
}


def _calibrate() -> int:
    """Loop iterations of ``_burn`` that take about 1 ms here."""
    namespace: dict[str, Any] = {}
    exec(APP.format(work=0, block=0), namespace)
    burn = namespace["_burn"]
    n = 20_000
    best = min(_timed(burn, n) for _ in range(20))
    return max(1000, int(n * 0.001 / best))


def _timed(fn: Any, n: int) -> float:
    started = time.perf_counter()
    fn(n)
    return time.perf_counter() - started


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def _write(repo: Path, work: int, block: float, duration: float) -> None:
    (repo / "gate_app.py").write_text(APP.format(work=work, block=block), encoding="utf-8")
    (repo / "test_gate.py").write_text(TESTS.format(duration=duration), encoding="utf-8")


def _session(repo: Path, args: list[str]) -> tuple[float, int, dict[str, Any]]:
    report = repo / "storms.json"
    report.unlink(missing_ok=True)
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "test_gate.py", *PLUGINS, "-q", "-p", "no:randomly",
         f"--concurrency-json={report}", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    wall = time.perf_counter() - started
    doc = json.loads(report.read_text(encoding="utf-8")) if report.exists() else {}
    if not doc:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    return wall, proc.returncode, doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=5, help="runs per change (default 5)")
    parser.add_argument("--fail", default="p99:10%,rps:10%", help="--concurrency-compare-fail")
    parser.add_argument("--duration", type=float, default=1.0, help="storm duration, s")
    parser.add_argument("--json", type=Path, help="write the raw outcomes here")
    parser.add_argument("--until", help="start no run likely to end after HH:MM UTC")
    args = parser.parse_args()
    deadline = None
    if args.until:
        hour, minute = (int(x) for x in args.until.split(":"))
        now = dt.datetime.now(dt.UTC)
        deadline = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if deadline < now:
            deadline += dt.timedelta(days=1)
    work = _calibrate()
    print(f"calibrated: {work} loop iterations ≈ 1 ms of /cpu", flush=True)
    gated = ["--concurrency-control=HEAD", f"--concurrency-compare-fail={args.fail}"]
    counts: dict[str, Counter[str]] = {name: Counter() for name in CHANGES}
    figures: Counter[str] = Counter()
    walls: dict[str, list[float]] = {"gated": [], "ungated": []}
    raw: list[dict[str, Any]] = []
    loads: list[float] = []
    reached = 0
    with tempfile.TemporaryDirectory(prefix="storm-gate-power-") as tmp:
        repo = Path(tmp)
        _git(repo, "init", "-q")
        _write(repo, work, 0.0, args.duration)
        _git(repo, "add", ".")
        _git(repo, "commit", "-qm", "control")
        for k in range(args.k):
            per_iteration = sum(walls["gated"][-4:]) + sum(walls["ungated"][-1:])
            if (
                deadline
                and per_iteration
                and (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=per_iteration) > deadline)
            ):
                break
            for name, (factor, block, changed) in CHANGES.items():
                _write(repo, int(work * factor), block, args.duration)
                wall, code, doc = _session(repo, gated)
                walls["gated"].append(wall)
                storms = doc.get("storms", [])
                outcome: dict[str, str] = {}
                for storm in storms:
                    test = storm["nodeid"].rsplit("::", 1)[-1]
                    comparison = storm.get("comparison") or {}
                    verdict = comparison.get("verdict", "missing")
                    outcome[test] = verdict
                    for figure in comparison.get("figures", []):
                        figures[figure["verdict"]] += 1
                    if test == changed:
                        key = {"regressed": "caught", "inconclusive": "inconclusive"}.get(
                            verdict, "missed"
                        )
                        counts[name][key] += 1
                    elif verdict == "regressed":
                        counts[name]["false failures"] += 1
                load = os.getloadavg()[0]
                loads.append(load)
                raw.append({"k": k, "change": name, "wall": wall, "exit": code,
                            "verdicts": outcome, "load": load,
                            "lines": [(s.get("comparison") or {}).get("line") for s in storms]})  # fmt: skip
                print(f"k={k} {name}: {outcome} ({wall:.1f} s, exit {code}, load {load:.2f})",
                      flush=True)  # fmt: skip
                for storm in storms:
                    print(f"    {(storm.get('comparison') or {}).get('line')}", flush=True)
            _write(repo, work, 0.0, args.duration)
            wall, _, _ = _session(repo, [])
            walls["ungated"].append(wall)
            reached = k + 1
    print(f"\nK = {reached} runs per change, --concurrency-compare-fail={args.fail}, "
          f"storms of {args.duration:g} s")  # fmt: skip
    print(f"{'change':<10} {'caught':>7} {'missed':>7} {'inconcl.':>9} {'false fail':>11}")
    for name, found in counts.items():
        print(
            f"{name:<10} {found['caught']:>7} {found['missed']:>7} {found['inconclusive']:>9} "
            f"{found['false failures']:>11}"
        )
    if loads:
        print(f"load average (1 min) after each gated session: min {min(loads):.2f}, "
              f"median {sorted(loads)[len(loads) // 2]:.2f}, max {max(loads):.2f}")  # fmt: skip
    judged = sum(figures.values())
    if judged:
        share = figures["inconclusive"] / judged
        print(f"judged figures: {judged}, inconclusive {figures['inconclusive']} ({share:.0%})")
    if walls["gated"] and walls["ungated"]:
        gated_mean = sum(walls["gated"]) / len(walls["gated"])
        ungated_mean = sum(walls["ungated"]) / len(walls["ungated"])
        print(
            f"session wall time: gated {gated_mean:.1f} s, ungated {ungated_mean:.1f} s "
            f"({gated_mean / ungated_mean:.1f}×)"
        )
    if args.json:
        args.json.write_text(json.dumps({"runs": raw, "counts": counts}, indent=1))


if __name__ == "__main__":
    main()
