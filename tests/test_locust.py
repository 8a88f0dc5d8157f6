"""Locust as the engine: the exported locustfile, runs in child processes, figures read back.

Locust is never imported here (its import patches the whole process with gevent): the
locustfile is checked with compile() and ast, and Locust runs as a child process.
"""

from __future__ import annotations

import ast
import math
import os
import random
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrency import (
    ConfigError,
    Request,
    StormError,
    empirical,
    exponential,
    lognormal,
    normal,
    uniform,
)
from pytest_concurrency._budget import evaluate
from pytest_concurrency._locust import (
    LocustRun,
    build_locustfile,
    locust_available,
    run_locust,
    task_weights,
)
from pytest_concurrency._locust import runner as locust_runner
from pytest_concurrency._locust.runner import LocustEntry, read_back
from pytest_concurrency._simio.distributions import UniformLatency

needs_locust = pytest.mark.skipif(
    not locust_available(), reason="Locust is not installed (pip install 'pytest-storm[locust]')"
)

MIX = [
    Request("GET", "/items/1", weight=3),
    Request(
        "POST",
        "/items",
        json={"name": "widget", "tags": [1, 2]},
        headers={"X-Token": "abc"},
        weight=1,
        name="create item",
    ),
    Request("GET", "/search", query={"q": "a b"}, weight=0.5),
]

# A tiny threaded HTTP server for Locust to load: /fail answers 500, anything else 200.
SERVER = textwrap.dedent(
    """
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            status = 500 if self.path.startswith("/fail") else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST = answer

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            pass  # clients stopped mid-connection when Locust quits

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """
)


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"no line from {proc.args!r} within {timeout} s")
    return proc.stdout.readline()


@pytest.fixture
def server_url() -> Iterator[str]:
    """URL of a throw-away HTTP server on 127.0.0.1, in a child process."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        port = int(_read_line(proc, 10))
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _alive(pids: list[int], timeout: float = 0) -> list[str]:
    """The processes among *pids* still running after *timeout* (zombies count as gone)."""
    psutil = pytest.importorskip("psutil")
    deadline = time.monotonic() + timeout
    while True:
        alive: list[str] = []
        for pid in pids:
            try:
                process = psutil.Process(pid)
                if process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {process.status()} {process.cmdline()[-4:]}")
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _descendants(pid: int) -> list[int]:
    psutil = pytest.importorskip("psutil")
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _wait_for_descendants(pid: int, count: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _descendants(pid)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise TimeoutError(f"process {pid} did not start {count} children within {timeout} s")


# ------------------------------------------------------------------------------ export


def test_task_weights_keep_proportions_as_integers() -> None:
    assert task_weights([Request(weight=1), Request(weight=3)]) == [1, 3]
    assert task_weights([Request(weight=0.25), Request(weight=0.75)]) == [1, 3]
    assert task_weights([Request(weight=3), Request(weight=1), Request(weight=0.5)]) == [6, 2, 1]
    with pytest.raises(ConfigError, match=r"requests\[1\]\.weight=0\.0001"):
        task_weights([Request(weight=1), Request(weight=0.0001)])


def test_locustfile_compiles_with_tasks_weights_think_time_and_shape() -> None:
    locustfile = build_locustfile(
        MIX,
        users=20,
        duration=30,
        think_ms=lognormal(10, 50),
        stages=[(10, 20), (5, 20), (5, 0)],
        timeout_ms=2000,
    )
    text = locustfile.text
    compile(text, "storm_locustfile.py", "exec")
    tree = ast.parse(text)
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    user = classes["StormUser"]
    assert [ast.unparse(b) for b in user.bases] == ["FastHttpUser"]
    assert [ast.unparse(b) for b in classes["StormShape"].bases] == ["LoadTestShape"]

    tasks: dict[str, tuple[int, dict[str, Any]]] = {}
    for node in user.body:
        if isinstance(node, ast.FunctionDef) and node.decorator_list:
            decorator = node.decorator_list[0]
            assert isinstance(decorator, ast.Call)
            assert ast.unparse(decorator.func) == "task"
            weight = ast.literal_eval(decorator.args[0])
            call = node.body[0]
            assert isinstance(call, ast.Expr)
            assert isinstance(call.value, ast.Call)
            args = [ast.literal_eval(a) for a in call.value.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.value.keywords}
            tasks[kwargs["name"]] = (weight, {"args": args, **kwargs})
    assert set(tasks) == {"GET /items/1", "create item", "GET /search"}
    assert {name: w for name, (w, _) in tasks.items()} == {
        "GET /items/1": 6,
        "create item": 2,
        "GET /search": 1,
    }
    create = tasks["create item"][1]
    assert create["args"] == ["POST", "/items"]
    assert create["json"] == {"name": "widget", "tags": [1, 2]}
    assert create["headers"] == {"X-Token": "abc"}
    assert tasks["GET /search"][1]["args"] == ["GET", "/search?q=a+b"]
    assert "wait_time = think_time" in text
    assert "random.lognormvariate(2.302585092994046, 0.69183" in text
    assert "network_timeout = 2" in text
    assert "def on_start(self):" in text
    assert locustfile.endpoints == ("GET /items/1", "create item", "GET /search")
    assert locustfile.has_shape
    assert (locustfile.duration, locustfile.users) == (20.0, 20)


def _shape_ticks(text: str, times: list[float]) -> list[Any]:
    """Run the generated StormShape.tick at given run times, with a stand-in base class."""
    tree = ast.parse(text)
    shape = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "StormShape")
    namespace: dict[str, Any] = {}

    class LoadTestShape:
        now = 0.0

        def get_run_time(self) -> float:
            return self.now

    namespace["LoadTestShape"] = LoadTestShape
    exec(compile(ast.Module([shape], []), "shape", "exec"), namespace)
    instance = namespace["StormShape"]()
    ticks = []
    for t in times:
        instance.now = t
        ticks.append(instance.tick())
    return ticks


def test_stages_become_a_linear_load_shape_with_k6_semantics() -> None:
    locustfile = build_locustfile(MIX, stages=[(10, 20), (5, 20), (0, 40), (5, 0)])
    ticks = _shape_ticks(locustfile.text, [0, 5, 9.9, 12, 15.5, 17.5, 20, 25])
    users = [t[0] if t else None for t in ticks]
    # Ramp 0 → 20 over 10 s, hold 20 for 5 s, jump to 40, ramp down to 0 over 5 s, stop.
    assert users == [0, 10, 20, 20, 36, 20, None, None]
    # Spawn rate keeps up with the ramp (2 users/s up, 8 users/s down).
    assert ticks[1][1] >= 2
    assert ticks[4][1] >= 8
    assert (locustfile.duration, locustfile.users) == (20.0, 40)


def test_think_time_and_plain_runs_use_locust_wait_helpers() -> None:
    text = build_locustfile(MIX[:1], users=5, duration=3, think_ms=250).text
    compile(text, "storm_locustfile.py", "exec")
    assert "wait_time = constant(0.25)" in text
    assert "-u 5 -r 5 -t 3s" in text
    assert "LoadTestShape" not in text


@pytest.mark.parametrize(
    "think",
    [normal(20, 5), lognormal(10, 50), exponential(15), empirical([5, 10, 30]), uniform(10, 30)],
    ids=lambda think: type(think).__name__,
)
def test_think_time_distributions_are_inlined_with_their_mean(think: Any) -> None:
    text = build_locustfile(MIX, users=1, duration=1, think_ms=think).text
    compile(text, "storm_locustfile.py", "exec")
    assert "pytest_concurrency" not in text  # the file needs Locust only
    tree = ast.parse(text)
    user = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "StormUser")
    wait = next(
        n
        for n in user.body
        if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "wait_time"
    )
    if isinstance(think, UniformLatency):
        assert ast.unparse(wait.value) == "between(0.01, 0.03)"
        return
    helper = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "think_time")
    samples = next(
        (
            ast.literal_eval(n.value)
            for n in user.body
            if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "think_samples_ms"
        ),
        None,
    )
    rng = random.Random(7)
    namespace: dict[str, Any] = {"random": rng}
    exec(compile(ast.Module([helper], []), "think", "exec"), namespace)
    user_stub = type("User", (), {"think_samples_ms": samples})()
    draws = [namespace["think_time"](user_stub) for _ in range(20_000)]
    assert min(draws) >= 0
    assert sum(draws) / len(draws) * 1000 == pytest.approx(think.mean_ms, rel=0.05)


def test_locustfile_parameters_are_checked_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match=r"users=0 \(from keyword argument\)"):
        build_locustfile(MIX, users=0)
    with pytest.raises(ConfigError, match=r"stages\[0\]=\(5,\)"):
        build_locustfile(MIX, stages=[(5,)])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match=r"requests\[0\]=.*pytest_concurrency.Request"):
        build_locustfile(["GET /"])  # type: ignore[list-item]


def test_no_locust_or_gevent_in_this_process() -> None:
    # The whole package, the Locust engine included, works without importing Locust.
    assert "locust" not in sys.modules
    assert "gevent" not in sys.modules
    for path in Path(locust_runner.__file__).parent.parent.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not [n for n in names if n.split(".")[0] in ("locust", "gevent")], path


# --------------------------------------------------------------------------- read back


def _entry(name: str, times: dict[int, int], failures: int = 0, **kw: Any) -> LocustEntry:
    count = sum(times.values())
    return LocustEntry(
        method=kw.get("method", "GET"),
        name=name,
        requests=count,
        failures=failures,
        total_ms=kw.get("total_ms", float(sum(ms * n for ms, n in times.items()))),
        min_ms=float(min(times)),
        max_ms=kw.get("max_ms", float(max(times))),
        start_time=1000.0,
        last_request=1002.0,
        response_times=times,
        per_second={1000: count // 2, 1001: count - count // 2},
        failures_per_second={1001: failures} if failures else {},
    )


def _run(entries: list[LocustEntry], failures: list[dict[str, Any]] | None) -> LocustRun:
    return LocustRun(
        command=["locust"],
        returncode=0,
        entries=entries,
        failures=failures,
        status_counts=Counter({200: 150, 500: 50}) if failures is not None else Counter(),
        workers=2,
        version="2.47.0",
        host="http://127.0.0.1:8000",
        users=10,
        duration=2.0,
        elapsed=3.0,
    )


def test_read_back_percentiles_come_from_locusts_histogram() -> None:
    items = _entry("GET /items/1", {10: 98, 1000: 2}, total_ms=3012.5, max_ms=1004.2)
    fail = _entry("GET /fail", {20: 100}, failures=50)
    run = _run(
        [items, fail],
        [
            {
                "method": "GET",
                "name": "GET /fail",
                "error": "LocustBadStatusCode(code=500)",
                "occurrences": 50,
            }
        ],
    )
    result = read_back(run, label="mix")
    assert result.requests == 200
    assert result.failed == 50
    assert result.error_rate == 0.25
    assert result.duration == 2.0
    assert result.throughput == 100.0
    assert result.server == "Locust 2.47.0 (1 master + 2 workers, FastHttpUser)"
    assert result.status_counts == Counter({200: 150, 500: 50})
    assert set(result.endpoints) == {"GET /items/1", "GET /fail"}
    items_stats = result.endpoints["GET /items/1"].latency
    assert items_stats.p50 == pytest.approx(10, rel=1e-3)
    assert items_stats.p99 == pytest.approx(1000, rel=1e-3)
    # Mean and max are Locust's exact figures, not the rounded buckets.
    assert items_stats.mean == pytest.approx(30.125)
    assert items_stats.max == pytest.approx(1004.2)
    assert result.latency.count == 200
    assert result.latency.p50 == pytest.approx(20, rel=1e-3)
    assert result.histograms["latency"].get_total_count() == 200
    assert result.errors["LocustBadStatusCode(code=500)"].count == 50
    assert result.errors["LocustBadStatusCode(code=500)"].type == "LocustBadStatusCode"
    assert [(p.second, p.requests, p.errors) for p in result.timeline] == [
        (0, 100, 0),
        (1, 100, 50),
    ]
    assert any("half to even" in note for note in result.notes)
    assert any("coordinated omission" in note for note in result.notes)
    # What Locust cannot measure is a note: a passing storm passes under -W error.
    assert not [w for w in result.warnings if "no open model" in w or "half to even" in w]
    verdicts = {v.name: v for v in evaluate(result, {"p99_ms": 15, "max_error_rate": 0.5})}
    assert not verdicts["p99_ms"].ok
    assert verdicts["max_error_rate"].ok


def test_read_back_without_the_locustfile_report_keeps_failure_counts() -> None:
    run = _run([_entry("GET /fail", {20: 10}, failures=10)], None)
    result = read_back(run)
    assert result.failed == 10
    assert result.errors["failure (no message from Locust)"].count == 10
    assert (result.method, result.path) == ("GET", "/fail")
    assert any("no status codes" in note for note in result.warnings)


# ------------------------------------------------------------------------------- runs


def test_malformed_host_is_a_config_error() -> None:
    locustfile = build_locustfile(MIX, users=1, duration=1)
    with pytest.raises(ConfigError, match=r"host='127.0.0.1:8000' \(from keyword argument\)"):
        run_locust(locustfile, "127.0.0.1:8000")


@needs_locust
def test_unreachable_host_is_a_storm_error_before_locust_starts() -> None:
    locustfile = build_locustfile(MIX, users=1, duration=1)
    started = time.monotonic()
    with pytest.raises(StormError, match=r"host='http://127.0.0.1:1' .* not reachable"):
        run_locust(locustfile, "http://127.0.0.1:1")
    assert time.monotonic() - started < 5


@needs_locust
def test_master_and_two_local_workers_give_a_storm_result(server_url: str) -> None:
    requests = [*MIX, Request("GET", "/fail", weight=1)]
    locustfile = build_locustfile(requests, users=4, duration=2, think_ms=5)
    run = run_locust(locustfile, server_url, processes=2, timeout=60)
    assert "--processes" in run.command
    result = run.result(label="locust mix")
    assert result.requests > 0
    assert set(result.endpoints) <= {r.label for r in requests}
    assert {"GET /items/1", "GET /fail"} <= set(result.endpoints)
    assert result.server.startswith("Locust ")
    assert result.server.endswith("(1 master + 2 workers, FastHttpUser)")
    assert math.isfinite(result.latency.p50)
    assert result.latency.p50 <= result.latency.p99 <= result.latency.max
    assert result.throughput > 0
    # /fail answers 500: failures by message, and status codes from the workers' tallies.
    assert result.failed == result.endpoints["GET /fail"].requests > 0
    assert result.status_counts[500] == result.failed
    assert result.status_counts[200] + result.status_counts[500] == result.requests
    [(message, summary)] = result.errors.items()
    assert "500" in message
    assert summary.count == result.failed
    assert sum(p.requests for p in result.timeline) == result.requests


@needs_locust
def test_locust_that_fails_to_start_is_a_storm_error_quoting_stderr(
    tmp_path: Path, server_url: str
) -> None:
    broken = tmp_path / "broken_locustfile.py"
    broken.write_text("raise RuntimeError('no such fixture data')\n", encoding="utf-8")
    with pytest.raises(StormError, match=r"(?s)exited with code \d+.*no such fixture data"):
        run_locust(broken, server_url, users=1, duration=1, timeout=60)


@needs_locust
def test_timeout_stops_every_locust_process(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    wait = locust_runner._wait

    def watching_wait(proc: subprocess.Popen[bytes], deadline: float) -> int:
        # The watcher that leads the group, the master and its two workers.
        seen.extend([proc.pid, *_wait_for_descendants(proc.pid, 3)])
        return wait(proc, deadline)

    monkeypatch.setattr(locust_runner, "_wait", watching_wait)
    locustfile = build_locustfile(MIX, users=2, duration=60)
    with pytest.raises(StormError, match=r"did not finish within timeout=\d+ s"):
        run_locust(locustfile, server_url, processes=2, timeout=4, stop_grace=2)
    assert len(seen) == 4
    assert _alive(seen) == []


@needs_locust
def test_keyboard_interrupt_leaves_no_locust_process(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []

    def interrupted_wait(proc: subprocess.Popen[bytes], deadline: float) -> int:
        # The watcher that leads the group, the master and its two workers.
        seen.extend([proc.pid, *_wait_for_descendants(proc.pid, 3)])
        raise KeyboardInterrupt

    monkeypatch.setattr(locust_runner, "_wait", interrupted_wait)
    locustfile = build_locustfile(MIX, users=2, duration=60)
    with pytest.raises(KeyboardInterrupt):
        run_locust(locustfile, server_url, processes=2, timeout=60, stop_grace=2)
    assert len(seen) == 4
    assert _alive(seen) == []


@needs_locust
def test_sigint_to_the_calling_process_leaves_no_locust_process(server_url: str) -> None:
    script = textwrap.dedent(
        f"""
        from pytest_concurrency import Request
        from pytest_concurrency._locust import build_locustfile, run_locust

        locustfile = build_locustfile([Request("GET", "/")], users=2, duration=60)
        run_locust(locustfile, {server_url!r}, processes=2, timeout=90, stop_grace=2)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    caller = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        # The caller's watcher, its Locust master and the master's two forked workers.
        locust = _wait_for_descendants(caller.pid, 4)
        caller.send_signal(signal.SIGINT)
        _, stderr = caller.communicate(timeout=30)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
    assert b"KeyboardInterrupt" in stderr
    assert _alive(locust) == []


@needs_locust
def test_sigkill_of_the_calling_process_leaves_no_locust_process(server_url: str) -> None:
    psutil = pytest.importorskip("psutil")
    script = textwrap.dedent(
        f"""
        from pytest_concurrency import Request
        from pytest_concurrency._locust import build_locustfile, run_locust

        locustfile = build_locustfile([Request("GET", "/")], users=2, duration=60)
        run_locust(locustfile, {server_url!r}, processes=2, timeout=90, stop_grace=2)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    caller = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        # The watcher, the Locust master and the master's two forked workers.
        locust = _wait_for_descendants(caller.pid, 4)
        (watcher,) = psutil.Process(caller.pid).children()
        workdir = Path(watcher.cmdline()[4])
        assert workdir.name.startswith("pytest-storm-locust-")
        caller.kill()  # no finally, no atexit: only the watcher can stop Locust now
        caller.wait()
        # SIGTERM, then SIGKILL after stop_grace (2 s), with the watcher's poll on top.
        assert _alive(locust, timeout=5) == []
        assert not workdir.exists()
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()


@needs_locust
def test_master_waits_for_workers_started_elsewhere(server_url: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    locustfile = build_locustfile(MIX, users=2, duration=2)
    path = locustfile.write(tmp_path / "storm_locustfile.py")
    # What a user runs on another machine: a worker that knows the master's address.
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(path),
            "--worker",
            "--master-host",
            "127.0.0.1",
            "--master-port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        run = run_locust(
            locustfile,
            server_url,
            processes=1,
            expect_workers_from_elsewhere=True,
            master_bind_host="127.0.0.1",
            master_bind_port=port,
            timeout=60,
        )
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    assert "--processes" not in run.command
    assert run.command[run.command.index("--expect-workers") + 1] == "1"
    result = run.result()
    assert result.requests > 0
    assert result.server.endswith("(1 master + 1 worker, FastHttpUser)")


def test_the_masters_json_is_read_past_the_workers_empty_arrays() -> None:
    master = '[\n    {"name": "GET /", "method": "GET", "num_requests": 3, "response_times": {"5": 3}}\n]\n'
    entries = locust_runner._parse_json("[]\n[]\n" + master, "")
    assert [(e.name, e.requests, e.response_times) for e in entries] == [("GET /", 3, {5: 3})]
    with pytest.raises(StormError, match="without its --json statistics"):
        locust_runner._parse_json("Traceback ...\n", "boom")


@needs_locust
def test_stages_drive_a_single_locust_process(server_url: str) -> None:
    locustfile = build_locustfile(MIX[:1], stages=[(1, 2), (1, 2)], think_ms=10)
    run = run_locust(locustfile, server_url, processes=0, timeout=60)
    # The shape sets users and length: no -u, -r or -t, and no workers.
    assert not {"-u", "-r", "-t", "--processes"} & set(run.command)
    result = run.result()
    assert result.requests > 0
    assert result.status_counts[200] == result.requests
    assert result.server.endswith("(1 process, FastHttpUser)")
    assert (result.method, result.path) == ("GET", "/items/1")


@needs_locust
def test_engine_locust_runs_the_storm_behind_a_real_server_and_judges_budgets() -> None:
    pytest.importorskip("uvicorn")
    from pytest_concurrency import BudgetExceeded, run_storm
    from pytest_concurrency._servers import live_servers

    result = run_storm(
        "tests.apps:asgi_routes",
        "GET",
        "/",
        users=4,
        duration=2.0,
        engine="locust",
        server="uvicorn",
        processes=2,
        p99_ms=2000,
    )
    assert result.requests > 0
    assert result.server.startswith("Locust")
    assert "uvicorn" in result.server
    assert [v.name for v in result.verdicts] == ["p99_ms"]
    with pytest.raises(BudgetExceeded, match="min_rps"):
        run_storm(
            "tests.apps:asgi_routes",
            "GET",
            "/",
            users=2,
            duration=1.0,
            engine="locust",
            server="uvicorn",
            min_rps=10**9,
        )
    assert not live_servers()


def test_engine_locust_needs_a_real_server_and_a_static_mix() -> None:
    from pytest_concurrency import ConfigError, Request, run_storm

    from .apps import asgi_hello

    with pytest.raises(ConfigError, match=r"engine='locust' .* sends real HTTP"):
        run_storm(asgi_hello, "GET", "/", engine="locust")
    with pytest.raises(ConfigError, match="cannot carry requests=<factory>"):
        run_storm(
            asgi_hello,
            requests=lambda u, i: Request("GET", "/"),
            engine="locust",
            server="http://127.0.0.1:9",
        )


def test_cli_writes_a_locustfile_and_runs_it(tmp_path: Path, server_url: str) -> None:
    from pytest_concurrency._cli import main

    out = tmp_path / "storm_locustfile.py"
    code = main(
        [
            "locust",
            "--path",
            "/",
            "--users",
            "3",
            "--duration",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    compile(out.read_text(), str(out), "exec")
    assert "FastHttpUser" in out.read_text()
    if not locust_available():
        pytest.skip("locust is not installed")
    code = main(
        [
            "locust",
            "--path",
            "/",
            "--users",
            "2",
            "--duration",
            "2",
            "--out",
            str(out),
            "--host",
            server_url,
            "--workers-here",
            "2",
            "--budget",
            "p99_ms=5000",
        ]
    )
    assert code == 0


def test_percentiles_from_locusts_buckets_stay_within_the_exact_min_and_max() -> None:
    # Locust rounds 46.2–46.8 ms into its 46 and 47 ms buckets: read from the buckets, the
    # p99 would be 47 ms, past the slowest request Locust itself timed (46.8 ms).
    stats, _ = locust_runner._stats(Counter({46: 10, 47: 90}), 4_660.0, 100, 46.2, 46.8)
    assert stats.min == 46.2
    assert stats.max == 46.8
    assert stats.p50 <= stats.p99 <= stats.p999 <= stats.max
    assert stats.p50 >= stats.min
    assert stats.p99 == pytest.approx(46.8)
