"""How much do the gates catch, and what do they cost? Changes and none, K times, in both modes.

    python benchmarks/gate_power.py [--mode paired|saved|both] [--k 5]
                                    [--fail p99_ms:10%,rps:10%] [--duration 1.0]
                                    [--json PATH] [--until HH:MM]
                                    [--order alternate|duet] [--changes cpu+20%,...]

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

The saved-baseline half (``--mode saved``) saves the unchanged code as a baseline in three
sessions (``--concurrency-save``; a copy of the file after the first stands for a
one-session baseline), then runs ``cpu×2`` and ``unchanged`` with
``--concurrency-compare=NAME --concurrency-compare-fail=...`` against each: the doubling
must be caught with one saved session and with three, and unchanged code never fail.
Each iteration uses a storage directory of its own. Every session's 1-minute load
average is recorded beside it: the false-failure count is meant for a busy machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
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


def _session(repo: Path, args: list[str]) -> tuple[float, int, dict[str, Any], str]:
    """Run the tests in a child pytest: wall time, exit code, JSON report, terminal output."""
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
    return wall, proc.returncode, doc, proc.stdout


def _deadline(until: str | None) -> dt.datetime | None:
    if not until:
        return None
    hour, minute = (int(x) for x in until.split(":"))
    now = dt.datetime.now(dt.UTC)
    deadline = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return deadline + dt.timedelta(days=1) if deadline < now else deadline


def _late(deadline: dt.datetime | None, seconds: float) -> bool:
    return bool(
        deadline and seconds and dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds) > deadline
    )


def _load() -> float:
    return os.getloadavg()[0]


def _loads_line(loads: list[float]) -> str:
    ordered = sorted(loads)
    return (
        f"load average (1 min) after each session: min {ordered[0]:.2f}, "
        f"median {ordered[len(ordered) // 2]:.2f}, max {ordered[-1]:.2f}"
    )


def paired(repo: Path, work: int, args: argparse.Namespace) -> dict[str, Any]:
    """The paired half: each change against the committed control, K times."""
    deadline = _deadline(args.until)
    gated = [
        "--concurrency-control=HEAD",
        f"--concurrency-compare-fail={args.fail}",
        f"--concurrency-control-order={args.order}",
    ]
    counts: dict[str, Counter[str]] = {
        name: Counter() for name in CHANGES if name in args.changes.split(",")
    }
    figures: Counter[str] = Counter()
    walls: dict[str, list[float]] = {"gated": [], "ungated": []}
    raw: list[dict[str, Any]] = []
    loads: list[float] = []
    reached = 0
    for k in range(args.k):
        if _late(deadline, sum(walls["gated"][-4:]) + sum(walls["ungated"][-1:])):
            break
        for name, (factor, block, changed) in CHANGES.items():
            if name not in args.changes.split(","):
                continue
            _write(repo, int(work * factor), block, args.duration)
            wall, code, doc, _ = _session(repo, gated)
            walls["gated"].append(wall)
            load = _load()
            loads.append(load)
            outcome: dict[str, str] = {}
            for storm in doc.get("storms", []):
                test = storm["nodeid"].rsplit("::", 1)[-1]
                comparison = storm.get("comparison") or {}
                verdict = comparison.get("verdict", "missing")
                outcome[test] = verdict
                for figure in comparison.get("figures", []):
                    figures[figure["verdict"]] += 1
                _count(counts[name], test, changed, verdict)
            lines = [(s.get("comparison") or {}).get("line") for s in doc.get("storms", [])]
            raw.append({"k": k, "change": name, "wall": wall, "exit": code,
                        "verdicts": outcome, "load": load, "lines": lines})  # fmt: skip
            print(f"k={k} {name}: {outcome} ({wall:.1f} s, exit {code}, load {load:.2f})",
                  flush=True)  # fmt: skip
            for line in lines:
                print(f"    {line}", flush=True)
        _write(repo, work, 0.0, args.duration)
        wall, _, _, _ = _session(repo, [])
        walls["ungated"].append(wall)
        reached = k + 1
    print(f"\npaired: K = {reached} runs per change, --concurrency-compare-fail={args.fail}, "
          f"--concurrency-control-order={args.order}, storms of {args.duration:g} s")  # fmt: skip
    _summary(counts, loads, figures)
    if walls["gated"] and walls["ungated"]:
        gated_mean = sum(walls["gated"]) / len(walls["gated"])
        ungated_mean = sum(walls["ungated"]) / len(walls["ungated"])
        print(
            f"session wall time: gated {gated_mean:.1f} s, ungated {ungated_mean:.1f} s "
            f"({gated_mean / ungated_mean:.1f}×)"
        )
    return {"runs": raw, "counts": counts, "k": reached}


def _count(found: Counter[str], test: str, changed: str | None, verdict: str) -> None:
    if test == changed:
        key = {"regressed": "caught", "inconclusive": "inconclusive"}.get(verdict, "missed")
        found[key] += 1
    elif verdict == "regressed":
        found["false failures"] += 1


def _summary(counts: Any, loads: list[float], figures: Any) -> None:
    """The table of verdicts, the machine's load and the share of inconclusive figures."""
    _table(counts)
    if loads:
        print(_loads_line(loads))
    judged = sum(figures.values())
    if judged:
        share = figures["inconclusive"] / judged
        print(f"judged figures: {judged}, inconclusive {figures['inconclusive']} ({share:.0%})")


def _table(counts: dict[str, Counter[str]]) -> None:
    print(f"{'change':<16} {'caught':>7} {'missed':>7} {'inconcl.':>9} {'false fail':>11}")
    for name, found in counts.items():
        print(
            f"{name:<16} {found['caught']:>7} {found['missed']:>7} {found['inconclusive']:>9} "
            f"{found['false failures']:>11}"
        )


def _saved_verdicts(doc: dict[str, Any], figures: Counter[str]) -> tuple[dict[str, str], list[str]]:
    """Each storm's verdict and line from the JSON report's ``comparison`` blocks, counting
    the judged figures' verdicts."""
    found: dict[str, str] = {}
    lines: list[str] = []
    for storm in doc.get("storms", []):
        test = storm["nodeid"].rsplit("::", 1)[-1]
        block = storm.get("comparison") or {}
        found[test] = block.get("verdict", "missing")
        lines.append(str(block.get("line", "")))
        for figure in block.get("figures", []):
            if figure.get("verdict") is not None:
                figures[figure["verdict"]] += 1
    return found, lines


#: Saved-baseline runs: (change, baseline) -> (work multiplier of /cpu, the storm that changed).
SAVED_RUNS: dict[tuple[str, str], tuple[float, str | None]] = {
    ("cpu×2", "1 session"): (2.0, "test_cpu"),
    ("unchanged", "1 session"): (1.0, None),
    ("cpu×2", "3 sessions"): (2.0, "test_cpu"),
    ("unchanged", "3 sessions"): (1.0, None),
}


def saved(repo: Path, work: int, args: argparse.Namespace) -> dict[str, Any]:
    """The saved-baseline half: save unchanged code 1 and 3 times, compare each change, K times."""
    deadline = _deadline(args.until)
    counts: dict[str, Counter[str]] = {f"{c} vs {b}": Counter() for c, b in SAVED_RUNS}
    figures: Counter[str] = Counter()
    raw: list[dict[str, Any]] = []
    loads: list[float] = []
    walls: list[float] = []
    reached = 0
    for k in range(args.k):
        if _late(deadline, sum(walls[-7:])):
            break
        storage = repo / f"storms-{k}"
        _write(repo, work, 0.0, args.duration)
        for i in range(3):
            wall, code, _, _ = _session(
                repo, ["--concurrency-save=three", f"--concurrency-storage={storage}"]
            )
            walls.append(wall)
            load = _load()
            loads.append(load)
            print(f"k={k} save {i + 1}/3 ({wall:.1f} s, exit {code}, load {load:.2f})", flush=True)
            if i == 0:
                shutil.copy(storage / "three.json", storage / "one.json")
        for (change, baseline), (factor, changed) in SAVED_RUNS.items():
            _write(repo, int(work * factor), 0.0, args.duration)
            name = "one" if baseline == "1 session" else "three"
            wall, code, doc, _ = _session(
                repo,
                [f"--concurrency-compare={name}", f"--concurrency-storage={storage}",
                 f"--concurrency-compare-fail={args.fail}"],
            )  # fmt: skip
            walls.append(wall)
            load = _load()
            loads.append(load)
            outcome, lines = _saved_verdicts(doc, figures)
            for test, verdict in outcome.items():
                _count(counts[f"{change} vs {baseline}"], test, changed, verdict)
            raw.append({"k": k, "change": change, "baseline": baseline, "wall": wall,
                        "exit": code, "verdicts": outcome, "load": load, "lines": lines})  # fmt: skip
            print(f"k={k} {change} vs {baseline}: {outcome} ({wall:.1f} s, exit {code}, "
                  f"load {load:.2f})", flush=True)  # fmt: skip
            for line in lines:
                print(f"    {line[:300]}", flush=True)
        reached = k + 1
    print(f"\nsaved baseline: K = {reached} runs per change, "
          f"--concurrency-compare-fail={args.fail}, storms of {args.duration:g} s")  # fmt: skip
    _summary(counts, loads, figures)
    return {"runs": raw, "counts": counts, "k": reached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("paired", "saved", "both"), default="both")
    parser.add_argument("--k", type=int, default=5, help="runs per change (default 5)")
    parser.add_argument("--fail", default="p99_ms:10%,rps:10%", help="--concurrency-compare-fail")
    parser.add_argument("--duration", type=float, default=1.0, help="storm duration, s")
    parser.add_argument("--json", type=Path, help="write the raw outcomes here")
    parser.add_argument("--until", help="start no run likely to end after HH:MM UTC")
    parser.add_argument(
        "--order", choices=("alternate", "duet"), default="alternate",
        help="--concurrency-control-order of the paired mode (default alternate)",
    )  # fmt: skip
    parser.add_argument(
        "--changes",
        default=",".join(CHANGES),
        help=f"paired changes to run, comma-separated (default: {','.join(CHANGES)})",
    )
    args = parser.parse_args()
    work = _calibrate()
    print(f"calibrated: {work} loop iterations ≈ 1 ms of /cpu", flush=True)
    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="storm-gate-power-") as tmp:
        repo = Path(tmp)
        _git(repo, "init", "-q")
        _write(repo, work, 0.0, args.duration)
        _git(repo, "add", ".")
        _git(repo, "commit", "-qm", "control")
        if args.mode in ("paired", "both"):
            found["paired"] = paired(repo, work, args)
        if args.mode in ("saved", "both"):
            found["saved"] = saved(repo, work, args)
    if args.json:
        args.json.write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
