"""One way to fire: the fixture, the API and the command line drive the same round loop
with the same options, and one storm runs at a time in a process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_concurrency import ConfigError, StormError, StormResult, arun_storm, run_storm
from pytest_concurrency._engine.plan import plan_storm
from pytest_concurrency._engine.storm import EXECUTORS, executor_for
from pytest_concurrency._locust import locust_available
from pytest_concurrency._params import Layer

from .apps import asgi_hello, asgi_sleep, wsgi_hello

FIXTURE_APPS = """
import time

async def echo(scope, receive, send):
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]})

def slow_wsgi(environ, start_response):
    time.sleep(0.02)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(face_apps=FIXTURE_APPS)

    def runner(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess(
            "-p", "pytest_concurrency.plugin", "-p", "no:cacheprovider", *args
        )

    return runner


def test_every_executor_is_chosen_from_one_table() -> None:
    def plan(app: Any, **params: Any) -> Any:
        return plan_storm(app, layers=[Layer("keyword argument", {"users": 2, **params})])

    assert set(EXECUTORS) == {"locust", "shards", "wsgi pool", "native async"}
    assert all(name == executor.name for name, executor in EXECUTORS.items())
    assert executor_for(plan(asgi_hello)) is EXECUTORS["native async"]
    assert executor_for(plan(wsgi_hello)) is EXECUTORS["wsgi pool"]
    assert executor_for(plan(asgi_hello, processes=2)) is EXECUTORS["shards"]


def test_websocket_and_capacity_fixture_forms_take_check(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        test_forms="""
        from face_apps import echo, slow_wsgi

        def test_websocket_unchecked(storm):
            result = storm.websocket(echo, "/ws", users=2, messages=10, p50_ms=0, check=False)
            assert not result.passed
            assert [v.name for v in result.failed_verdicts] == ["p50_ms"]

        def test_websocket_checked(storm):
            storm.websocket(echo, "/ws", users=2, messages=10, p50_ms=0)

        def test_capacity_unchecked(storm):
            found = storm.capacity(
                slow_wsgi, workers=[1, 2], users=2, requests=4, p99_ms=1, check=False
            )
            assert found.best is None

        def test_capacity_checked(storm):
            storm.capacity(slow_wsgi, workers=[1, 2], users=2, requests=4, p99_ms=1)
        """
    )
    result = run("-rf")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_forms.py::test_websocket_checked - *BudgetExcee*",
            "FAILED test_forms.py::test_capacity_checked - *BudgetExcee*",
        ]
    )


def test_websocket_and_capacity_storms_take_the_compare_layers(
    pytester: pytest.Pytester,
    run,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A storm whose comparison with a baseline can fail its test runs three rounds (their
    # spread is what the comparison judges against), whichever fixture form fired it.
    pytester.makepyfile(
        test_layers="""
        import os

        from apps_for_layers import hello_wsgi
        from face_apps import echo

        ROUNDS = int(os.environ["EXPECT_ROUNDS"])

        def test_websocket(storm):
            result = storm.websocket(echo, "/ws", users=2, messages=6)
            assert len(result.rounds) == ROUNDS

        def test_capacity(storm):
            found = storm.capacity(hello_wsgi, workers=[1], users=2, requests=4, p99_ms=10_000)
            assert [len(r.rounds) for r in found.results.values()] == [ROUNDS]

        def test_websocket_keeps_its_own_rounds(storm):
            result = storm.websocket(echo, "/ws", users=2, messages=6, rounds=1)
            assert result.rounds == []
        """,
        apps_for_layers="""
        def hello_wsgi(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        """,
    )
    monkeypatch.setenv("EXPECT_ROUNDS", "0")
    run("--concurrency-save=main").assert_outcomes(passed=3)
    monkeypatch.setenv("EXPECT_ROUNDS", "3")
    compared = run("--concurrency-compare=main", "--concurrency-compare-fail=p50:100000%")
    compared.assert_outcomes(passed=3)


def test_two_storms_at_once_in_one_process_are_refused() -> None:
    async def both() -> list[StormResult | BaseException]:
        return await asyncio.gather(
            arun_storm(asgi_sleep(0.01), users=2, duration=0.3),
            arun_storm(asgi_sleep(0.01), users=2, duration=0.3),
            return_exceptions=True,
        )

    first, second = asyncio.run(both())
    assert isinstance(first, StormResult)
    assert first.requests > 0
    assert isinstance(second, ConfigError)
    assert "another storm is already running in this process" in str(second)
    # Once the first is done, the next storm runs.
    assert run_storm(asgi_hello, users=2, requests=4).requests == 4


def test_a_storm_that_raised_lets_the_next_one_run() -> None:
    async def no_start(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(StormError, match="no database"):
        run_storm(no_start, users=2, requests=4, lifespan="on")
    assert run_storm(asgi_hello, users=2, requests=4).requests == 4


SERVER = textwrap.dedent(
    """
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(500)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no")

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            pass

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """
)


@pytest.fixture
def failing_server() -> Iterator[str]:
    """URL of a server on 127.0.0.1 that answers every request with a 500."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.skipif(not locust_available(), reason="Locust is not installed")
def test_cli_locust_host_fails_on_failed_requests_like_engine_locust(
    tmp_path: object, failing_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_concurrency._cli import main

    code = main(
        [
            "locust",
            "--path",
            "/",
            "--users",
            "2",
            "--duration",
            "1",
            "--out",
            f"{tmp_path}/storm_locustfile.py",
            "--host",
            failing_server,
        ]
    )
    assert code == 1
    assert "max_error_rate" in capsys.readouterr().out


def test_a_plan_is_frozen_and_firing_it_leaves_it_as_it_was() -> None:
    import dataclasses

    from pytest_concurrency._engine.storm import run_plan

    plan = plan_storm(asgi_hello, layers=[Layer("keyword argument", {"users": 2, "requests": 4})])
    before = dataclasses.asdict(plan)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.url = "http://127.0.0.1:9"  # type: ignore[misc]
    assert run_plan(plan).requests == 4
    assert dataclasses.asdict(plan) == before


def test_api_compare_takes_check_like_the_fixture() -> None:
    pytest.importorskip("uvicorn")
    from pytest_concurrency import BudgetExceeded, compare

    params: dict[str, Any] = {"users": 2, "requests": 10, "p50_ms": 1e-6}
    fidelity = compare("tests.apps:asgi_hello", servers=("inprocess", "uvicorn"), **params)
    assert not fidelity["inprocess"].passed
    with pytest.raises(BudgetExceeded, match="p50_ms"):
        compare("tests.apps:asgi_hello", servers=("inprocess", "uvicorn"), check=True, **params)


def test_capacity_judges_each_count_like_a_storm() -> None:
    from pytest_concurrency import capacity

    def failing(environ: object, start_response: Any) -> list[bytes]:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"no"]

    # Every request failed: no count meets the budgets, whatever its latency (as a storm
    # with no error budget fails on its first failed request).
    found = capacity(failing, workers=[1, 2], users=2, requests=4, p99_ms=10_000)
    assert found.best is None
    assert {v.name for t in found.tried for v in t.failed} == {"max_error_rate"}


def test_the_running_state_is_a_record_apart_from_the_plan() -> None:
    from pytest_concurrency._engine.plan import Serving

    plan = plan_storm(asgi_hello, layers=[Layer("keyword argument", {"users": 2})])
    assert plan.serving == Serving()
    sent = plan_storm(
        asgi_hello, layers=[Layer("keyword argument", {"server": "http://127.0.0.1:9"})]
    )
    assert sent.serving == Serving(url="http://127.0.0.1:9")
    served = sent.serve_on(Serving(sent.url, served_by="server at http://127.0.0.1:9"))
    assert (served.url, served.served_by, served.running) == (
        "http://127.0.0.1:9",
        "server at http://127.0.0.1:9",
        None,
    )
    assert sent.served_by is None  # the plan itself is as it was
