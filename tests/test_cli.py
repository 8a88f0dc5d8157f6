"""The ``pytest-storm`` command: run, compare, capacity and demo, and its errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrency._cli import main

REPO = Path(__file__).resolve().parent.parent

# A module of tiny apps, written where no test package can shadow it.
APPS = '''
import os
import time

import httpx

from tests.apps import asgi_hello, asgi_sleep, wsgi_sleep

fast = asgi_sleep(0.01)
slow = wsgi_sleep(0.01)
hello = asgi_hello
not_an_app = 42
# The process that first imported this module (the test's); servers inherit the variable.
FIRST = int(os.environ.setdefault("STORM_CLI_APPS_FIRST_PID", str(os.getpid())))


async def fails_in_process(scope, receive, send):
    """ASGI app that answers 500 in the test's own process and 200 in any other."""
    if scope["type"] != "http":
        return
    status = 500 if os.getpid() == FIRST else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def needs_token(environ, start_response):
    """WSGI app that takes 10 ms and answers 403 without the header X-Token: abc."""
    time.sleep(0.01)
    ok = environ.get("HTTP_X_TOKEN") == "abc"
    start_response("200 OK" if ok else "403 Forbidden", [])
    return [b""]
client = httpx.AsyncClient()


async def looks_up_a_host(scope, receive, send):
    """ASGI app that looks up api.example.invalid and answers with what became of it."""
    import socket

    if scope["type"] != "http":
        return
    try:
        socket.getaddrinfo("api.example.invalid", 443)
    except OSError as exc:
        body = type(exc).__name__.encode()
    else:
        body = b"resolved"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def calls_model(scope, receive, send):
    """ASGI app that forwards each request to a model server with httpx."""
    if scope["type"] != "http":
        return
    response = await client.get("http://model-server/generate")
    await send({"type": "http.response.start", "status": response.status_code, "headers": []})
    await send({"type": "http.response.body", "body": response.content})
'''


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of the module of tiny apps, for MODULE:APP specs."""
    path = tmp_path_factory.mktemp("cli") / "storm_cli_apps.py"
    path.write_text(APPS, encoding="utf-8")
    return str(path)


def test_run_prints_the_verdicts_and_writes_json(
    apps: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.json"
    code = main(
        [
            "run",
            f"{apps}:fast",
            "--path",
            "/io",
            "--users",
            "5",
            "--duration",
            "0.3",
            "--budget",
            "p99_ms=1000",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "p99_ms" in printed
    assert "5 users" in printed
    storm = json.loads(out.read_text())["storms"][0]
    assert storm["users"] == 5
    assert storm["passed"] is True
    # 5 users, each request waiting 10 ms: at most 500 rps (Little's law).
    assert 0 < storm["throughput"] <= 520


def test_run_exits_1_when_a_budget_breaks(apps: str, capsys: pytest.CaptureFixture[str]) -> None:
    # One sync worker, 5 users, 10 ms each: every request queues behind the others (≈ 50 ms).
    code = main(
        ["run", f"{apps}:slow", "--users", "5", "--requests", "40", "--budget", "p99_ms=15"]
    )
    assert code == 1
    assert "✗" in capsys.readouterr().out


def test_compare_puts_the_storms_side_by_side(
    apps: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["compare", f"{apps}:fast", f"{apps}:slow", "--users", "4", "--requests", "40"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"{apps}:fast" in printed
    assert f"{apps}:slow" in printed
    assert "WSGI, 1 sync worker" in printed


def test_ctrl_c_in_a_capacity_search_prints_what_the_finished_storms_measured(
    apps: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_concurrency import _cli

    real = _cli.run_capacity

    def interrupted(plan: Any, *, on_trial: Any = None, **kwargs: Any) -> Any:
        finished: list[Any] = []

        def trial(result: Any) -> None:
            assert on_trial is not None, "the command line keeps no storm of the search"
            on_trial(result)
            finished.append(result)
            if len(finished) == 2:
                raise KeyboardInterrupt  # Ctrl-C as the third storm starts

        return real(plan, on_trial=trial, **kwargs)

    monkeypatch.setattr(_cli, "run_capacity", interrupted)
    storm = ["--users", "8", "--duration", "0.2", "--budget", "p99_ms=45", "--workers", "1-16"]
    code = main(["capacity", f"{apps}:slow", *storm])
    assert code == 130
    out, err = capsys.readouterr()
    (kinds,) = [line for line in out.splitlines() if line.startswith("kind")]
    assert kinds.count("sync worker") == 2
    assert any(line.startswith("p99 ms") for line in out.splitlines())
    assert "interrupted (Ctrl-C)" in err


def test_capacity_finds_the_worker_count(
    apps: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "capacity.json"
    code = main(
        [
            "capacity",
            f"{apps}:slow",
            "--users",
            "8",
            "--duration",
            "0.3",
            "--budget",
            "p99_ms=45",
            "--workers",
            "1-16",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "smallest worker count that meets p99_ms ≤ 45" in printed
    found = json.loads(out.read_text())["capacity"]
    # 8 users on W workers of 10 ms: mean latency ≈ 80 / W ms, so 1 worker (80 ms) fails
    # and 8 (10 ms, no queue) passes.
    assert 2 <= found["best"] <= 8
    assert found["storms"] <= 5  # bisection over 16 candidates


def test_upstream_answers_the_apps_calls_in_process(
    apps: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "run",
            f"{apps}:calls_model",
            "--users",
            "4",
            "--requests",
            "40",
            "--upstream",
            "http://model-server/generate=lognormal:5:10",
            "--upstream-json",
            '{"text": "hi"}',
            "--budget",
            "max_error_rate=0",
        ]
    )
    assert code == 0
    assert "✗" not in capsys.readouterr().out


def test_undeclared_upstream_fails_inside_the_app_not_on_the_network(
    apps: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["run", f"{apps}:calls_model", "--users", "2", "--requests", "4", "--budget", "p99_ms=1000"]
    )
    captured = capsys.readouterr()
    # The p99 budget held, but every request failed and no error budget was set: like
    # Locust, any failed request fails the storm (max_error_rate lifts it).
    assert code == 1
    assert "max_error_rate" in captured.out
    assert "model-server" in captured.err
    assert "--upstream URL=LATENCY" in captured.err
    lifted = ["--budget", "max_error_rate=1"]
    assert main(["run", f"{apps}:calls_model", "--users", "2", "--requests", "4", *lifted]) == 0


def test_allow_hosts_opens_a_host_on_the_command_line(
    apps: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .test_egress import Spy

    spy = Spy(monkeypatch)  # below the guard: a lookup it lets through goes no further
    storm = ["run", f"{apps}:looks_up_a_host", "--users", "1", "--requests", "3"]
    # A refused connection fails the storm.
    assert main([*storm, "--json", str(tmp_path / "closed.json")]) == 1
    closed = json.loads((tmp_path / "closed.json").read_text())["storms"][0]
    assert closed["refused_egress"][0]["host"] == "api.example.invalid"
    assert closed["refused_egress"][0]["count"] == 3
    assert spy.lookups == []
    opened = ["--allow-hosts", "db.example.invalid,api.example.invalid"]
    assert main([*storm, *opened, "--json", str(tmp_path / "open.json")]) == 0
    assert json.loads((tmp_path / "open.json").read_text())["storms"][0]["refused_egress"] == []
    assert spy.lookups == ["api.example.invalid"] * 3
    assert spy.off_machine == ["api.example.invalid"] * 3  # asked of the spy, never sent


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "nocolon"], "must look like MODULE:APP or path/to/file.py:APP"),
        (["run", "no_such_module_xyz:app"], "importing no_such_module_xyz failed"),
        (["run", "{apps}:missing"], "storm_cli_apps has no 'missing'"),
        (["run", "{apps}:not_an_app"], "is not callable"),
        (["run", "missing_dir/app.py:app"], "no file"),
        (["run", "{apps}:fast", "--users", "-3"], "users=-3 (from command line)"),
        (["run", "{apps}:fast", "--budget", "p99=5"], "expected NAME=VALUE with NAME one of"),
        (["run", "{apps}:fast", "--budget", "p99_ms=fast"], "'fast' is not a number"),
        (["capacity", "{apps}:slow", "--workers", "0-3"], "worker counts must be at least 1"),
        (["capacity", "{apps}:slow", "--workers", "a-b"], "expected a count (8), a range"),
        (["capacity", "{apps}:slow"], "needs at least one budget"),
        (["run", "{apps}:fast", "--upstream", "model-server"], "expected URL=LATENCY"),
        (["run", "{apps}:fast", "--upstream", "http://m/x=gamma:1"], "expected milliseconds"),
        (["run", "{apps}:fast", "--upstream", "http://m/x=0.05"], "this would be 0.05 ms, not 50"),
        (["run", "{apps}:fast", "--upstream", "http://m/x=lognormal:9"], "takes 2 number(s)"),
        (["run", "{apps}:fast", "--body-json", "{oops"], "is not JSON"),
        (["run", "{apps}:fast", "--allow-hosts", "10.0.0.0/99"], "allow_hosts="),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    apps: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([arg.replace("{apps}", apps) for arg in argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_demo_outside_the_repository_says_where_to_run_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick", "--out", str(tmp_path / "out")]) == 2
    assert "run `pytest-storm demo` from the repository root" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.timing
def test_quick_demo_writes_the_claims_table(tmp_path: Path) -> None:
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_concurrency._cli",
            "demo",
            "--quick",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert elapsed < 90
    doc = json.loads((tmp_path / "claims.json").read_text())
    numbers = [claim["number"] for claim in doc["claims"]]
    assert numbers == ["1", "2a", "2b", "3", "4a", "4b", "5", "6", "7", "8"]
    for claim in doc["claims"]:
        assert claim["verdict"] in ("holds", "holds partly", "does not hold here")
        assert claim["reason"]
        assert claim["figures"]
    # The examples show each behaviour plainly even in the quick run.
    verdicts = {claim["number"]: claim["verdict"] for claim in doc["claims"]}
    assert verdicts["4a"] == verdicts["4b"] == "holds"
    markdown = (tmp_path / "claims.md").read_text()
    assert "| # | claim | source | scenario | measured | verdict |" in markdown
    for claim in doc["claims"]:
        assert claim["claim"] in done.stdout  # the table is printed as well as written


# -- reports, interruptions and the options a Locust or k6 user expects ----------------------


def test_unwritable_json_is_an_error_before_the_storm(
    apps: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken").mkdir()
    started = time.perf_counter()
    code = main(["run", f"{apps}:fast", "--duration", "3", "--json", str(tmp_path / "taken")])
    assert code == 2
    # No 3-second storm was fired first.
    assert time.perf_counter() - started < 2.5
    err = capsys.readouterr().err
    assert f"--json '{tmp_path / 'taken'}' (from the command line): cannot write" in err
    assert "is a directory" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("option", ["--html", "--csv"])
def test_unwritable_html_and_csv_are_errors_before_the_storm(
    apps: str, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", f"{apps}:fast", "--requests", "10", option, "/proc/storm/report"])
    assert code == 2
    assert f"{option} '/proc/storm/report' (from the command line): cannot write" in (
        capsys.readouterr().err
    )


def test_an_app_module_that_exits_on_import_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "exits_on_import.py"
    script.write_text("import sys\nsys.exit(0)\napp = None\n", encoding="utf-8")
    code = main(["run", f"{script}:app", "--requests", "10"])
    assert code == 2
    err = capsys.readouterr().err
    assert "importing exits_on_import raised SystemExit(0)" in err
    assert 'if __name__ == "__main__":' in err


def test_rate_header_stages_html_and_csv_options(
    apps: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv

    pytest.importorskip("plotly")
    out = tmp_path / "rate.json"
    code = main(
        [
            "run",
            f"{apps}:needs_token",
            "--rate",
            "40",
            "--duration",
            "1",
            "--workers",
            "2",
            "--header",
            "X-Token: abc",
            "--json",
            str(out),
            "--html",
            str(tmp_path / "report.html"),
            "--csv",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0
    storm = json.loads(out.read_text())["storms"][0]
    assert storm["model"] == "open"
    assert storm["rate"] == 40
    assert storm["status_counts"] == {"200": storm["requests"]}  # the header was sent
    # Requests in flight on the WSGI pool, counted from its records: ≈ 40 rps × 10 ms.
    assert storm["peak_in_flight"] >= 1
    assert "<html" in (tmp_path / "report.html").read_text()
    with (tmp_path / "run_stats.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["Type"], r["Name"]) for r in rows] == [("GET", "/")]
    with (tmp_path / "run_stats_history.csv").open(newline="") as fh:
        history = list(csv.DictReader(fh))
    assert history
    assert history[0]["Target"] == "40"

    code = main(["run", f"{apps}:fast", "--stages", "0.5:4,0.5:8", "--json", str(out)])
    assert code == 0
    storm = json.loads(out.read_text())["storms"][0]
    assert storm["users"] == 8  # the peak of the stages, not 0


def test_bad_stages_and_headers_exit_2(apps: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", f"{apps}:fast", "--stages", "10"]) == 2
    assert "expected SECONDS:TARGET pairs" in capsys.readouterr().err
    assert main(["run", f"{apps}:fast", "--header", "no-colon"]) == 2
    assert "expected 'Name: value'" in capsys.readouterr().err


def test_each_warning_and_note_is_printed_once(
    apps: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["run", f"{apps}:calls_model", "--users", "2", "--requests", "4", "--budget", "p99_ms=1000"]
    )
    assert code == 1  # every request failed and no error budget was set
    captured = capsys.readouterr()
    both = captured.out + captured.err
    assert both.count("undeclared upstream hosts") == 1
    assert both.count("UndeclaredUpstreamError ×4") == 1
    assert "max_error_rate" not in captured.err


def test_ctrl_c_during_a_storm_exits_130_without_a_traceback(apps: str) -> None:
    import signal

    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest_concurrency._cli",
            "run",
            f"{apps}:fast",
            "--users",
            "5",
            "--duration",
            "20",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.0)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted (Ctrl-C)" in err


def test_the_cpu_contention_note_is_printed_once_for_several_storms(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pytest_concurrency._cli import _notes
    from pytest_concurrency._model.extras import ContentionFigures
    from pytest_concurrency._model.remarks import contention_note

    from .test_report import make_result

    results = [make_result([1.0, 2.0], label=f"GET /{i}") for i in range(3)]
    for share, result in zip((0.3, 0.5, 0.4), results, strict=True):
        result.cpu_contention = ContentionFigures(wait_share=share, wait_s=0.1)
        result.notes.append(contention_note(share, 0.1))
    _notes(results)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        "note: the threads of 3 storms waited for a CPU 30%–50% of the time they were ready"
    )


@pytest.mark.parametrize("command", ["run", "capacity"])
def test_server_option_runs_the_storm_behind_that_server(
    apps: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("httptools")
    out = tmp_path / "out.json"
    extra = ["--workers", "1-2", "--budget", "max_error_rate=0"] if command == "capacity" else []
    args = [f"{apps}:fails_in_process", "--server", "uvicorn", "--users", "2", "--duration", "0.3"]
    code = main([command, *args, "--json", str(out), *extra])
    printed = capsys.readouterr().out
    assert code == 0, printed
    document = json.loads(out.read_text())
    if command == "capacity":
        # In-process every request fails: only the server's worker can meet the budgets.
        assert document["capacity"]["best"] == 1
        return
    (storm,) = document["storms"]
    assert storm["server"].startswith("uvicorn, ")
    assert storm["status_counts"] == {"200": storm["requests"]}
