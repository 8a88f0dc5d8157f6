"""The same storm against real servers on loopback: Little's law holds, nothing survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrency import BudgetExceeded, ConfigError, run_storm
from pytest_concurrency._servers import ServerSpec, live_servers, serve

from . import apps

ROOT = Path(__file__).resolve().parent.parent
psutil = pytest.importorskip("psutil")
pytest.importorskip("uvicorn")
pytest.importorskip("gunicorn")


def _gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        if not alive:
            return True
        time.sleep(0.05)
    return False


def test_server_is_validated_before_any_load() -> None:
    with pytest.raises(ConfigError, match=r"server='http://10\.0\.0\.1:80' .* not on loopback"):
        run_storm(apps.asgi_hello, "GET", "/", server="http://10.0.0.1:80")
    with pytest.raises(ConfigError, match=r"server='nginx' .* must be one of inprocess, uvicorn"):
        run_storm(apps.asgi_hello, "GET", "/", server="nginx")
    closure = apps.asgi_sleep(0.01)
    with pytest.raises(ConfigError, match="cannot be imported by name"):
        run_storm(closure, "GET", "/", server="uvicorn")


def test_uvicorn_storm_reports_the_server_and_its_figures() -> None:
    result = run_storm(apps.asgi_routes, "GET", "/", users=10, requests=300, server="uvicorn")
    assert result.status_counts == {200: 300}
    assert result.server.startswith("uvicorn, 1 worker")
    usage = result.extras["server_usage"]
    assert usage["server_rss_peak"] > 0
    assert usage["samples"] >= 1
    # The client's loop lag says nothing about the server: not measured, not reported.
    assert result.loop_lag is None
    assert not live_servers()


def test_a_running_server_is_driven_by_url() -> None:
    spec = ServerSpec(kind="uvicorn", app="tests.apps:asgi_routes", cwd=str(ROOT))
    with serve(spec) as server:
        result = run_storm(
            apps.asgi_routes,
            "POST",
            "/echo",
            json={"a": 1},
            users=4,
            requests=40,
            server=server.url,
        )
        assert result.status_counts == {200: 40}
        assert result.server.startswith("server at http://127.0.0.1:")


def test_no_server_survives_a_failed_storm() -> None:
    with pytest.raises(BudgetExceeded):
        run_storm(apps.io_asgi, "GET", "/", users=5, requests=20, server="uvicorn", p99_ms=1)
    assert not live_servers()


def test_ctrl_c_stops_the_server() -> None:
    script = textwrap.dedent(
        """
        import threading, time, sys
        from pytest_concurrency import run_storm
        from pytest_concurrency._servers import live_servers

        def report():
            while not live_servers():
                time.sleep(0.05)
            print(" ".join(str(p) for s in live_servers() for p in s.pids()), flush=True)

        threading.Thread(target=report, daemon=True).start()
        try:
            run_storm("tests.apps:io_asgi", "GET", "/", users=10, duration=30, server="uvicorn")
        except KeyboardInterrupt:
            sys.exit(130)
        """
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    with subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env
    ) as child:
        try:
            assert child.stdout is not None
            pids = [int(p) for p in child.stdout.readline().split()]
            assert pids
            time.sleep(0.5)
            child.send_signal(signal.SIGINT)
            assert child.wait(timeout=20) == 130
        finally:
            if child.poll() is None:
                child.kill()
    assert _gone(pids)


@pytest.mark.timing
def test_uvicorn_async_io_follows_littles_law() -> None:
    # 100 users each awaiting 50 ms: 100 / 0.05 = 2,000 rps, p50 ≈ 50 ms.
    result = run_storm(
        apps.io_asgi, "GET", "/", users=100, duration=3.0, warmup=1.0, server="uvicorn"
    )
    assert result.throughput == pytest.approx(2000, rel=0.25)
    assert result.latency.p50 == pytest.approx(50, abs=15)


@pytest.mark.timing
def test_gunicorn_sync_workers_queue_by_littles_law() -> None:
    # 8 sync worker processes × 50 ms serve 160 rps; 50 users wait 50 / 160 = 312.5 ms.
    result = run_storm(
        apps.io_wsgi, "GET", "/", users=50, workers=8, duration=3.0, warmup=1.0, server="gunicorn"
    )
    assert result.throughput == pytest.approx(160, rel=0.15)
    assert result.latency.mean == pytest.approx(312.5, rel=0.2)


@pytest.mark.timing
def test_blocking_async_def_behind_uvicorn_serialises() -> None:
    # time.sleep(0.05) on the server's loop: one request at a time, 20 rps whatever the users.
    result = run_storm(
        apps.blocking_asgi, "GET", "/", users=20, duration=3.0, warmup=1.0, server="uvicorn"
    )
    assert result.throughput == pytest.approx(20, rel=0.2)
    # Latency counts from the intended send: 20 users queue ≈ 20 × 50 ms on average (a
    # client that timed from its own send would report ≈ 50 ms). The server does not
    # serve its connections first come, first served, so over 60 requests the mean
    # wanders: 770–1,010 ms in three runs here.
    assert 500 <= result.latency.mean <= 1500


def test_upstream_routes_reach_the_server_process(upstream: Any) -> None:
    from examples import fastapi_app

    upstream.route(fastapi_app.MODEL_URL, latency=20, json={"text": "Hello!", "tokens": 3})
    result = run_storm(
        "examples.fastapi_app:app",
        "POST",
        "/llm",
        json={"prompt": "Say hello", "max_tokens": 16},
        users=5,
        requests=50,
        server="uvicorn",
    )
    assert result.status_counts == {200: 50}
    # Each call waited the simulated 20 ms inside the server's process.
    assert result.latency.p50 >= 19


def test_compare_lines_up_inprocess_and_real_figures() -> None:
    from pytest_concurrency._api import compare
    from pytest_concurrency._report._fidelity import fidelity_table

    fidelity = compare(
        apps.asgi_routes, "GET", "/", servers=["inprocess", "uvicorn"], users=4, requests=200
    )
    assert set(fidelity.results) == {"inprocess", "uvicorn"}
    figures = [row.figure for row in fidelity.rows]
    assert figures == ["rps", "p50_ms", "p99_ms", "mean_ms", "error_rate"]
    table = fidelity_table(fidelity)
    assert "real / in-process" in table
    assert "uvicorn" in table
    assert fidelity["uvicorn"].extras["fidelity"]["rows"][0]["figure"] == "rps"


def test_cli_compare_prints_the_fidelity_table(capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_concurrency._cli import main

    code = main(
        [
            "compare",
            "tests.apps:asgi_routes",
            "--server",
            "inprocess,uvicorn",
            "--users",
            "2",
            "--requests",
            "40",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "tests.apps:asgi_routes: in-process against real servers" in out
    assert "real / in-process" in out


# -- the server runs the app that was named ------------------------------------------------

_FACTORY_APP = '''
class App:
    """200 only once main_app has tagged it: the app a bare import of this module builds fails."""

    def __init__(self):
        self.tag = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        status = 200 if self.tag == "main" else 500
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": str(self.tag).encode()})


app = App()
'''

_MAIN_APP = """
from factory_app import app

app.tag = "main"  # middleware added where the app is re-exported
"""


@pytest.fixture
def reexported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    (tmp_path / "factory_app.py").write_text(_FACTORY_APP)
    (tmp_path / "main_app.py").write_text(_MAIN_APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("factory_app", "main_app"):
        sys.modules.pop(name, None)


def test_the_server_imports_the_string_it_was_given(reexported: Path) -> None:
    result = run_storm("main_app:app", "GET", "/", users=1, requests=5, server="uvicorn")
    assert result.status_counts == {200: 5}
    assert not live_servers()


def test_an_app_held_by_several_modules_is_refused_not_guessed(reexported: Path) -> None:
    import main_app  # type: ignore[import-not-found]

    with pytest.raises(ConfigError, match=r"several modules \(factory_app:app, main_app:app\)"):
        run_storm(main_app.app, "GET", "/", users=1, requests=5, server="uvicorn")


def test_an_app_also_held_by_main_does_not_refuse_its_import_string(
    reexported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import main_app

    monkeypatch.setattr(sys.modules["__main__"], "app", main_app.app, raising=False)
    result = run_storm("main_app:app", "GET", "/", users=1, requests=5, server="uvicorn")
    assert result.status_counts == {200: 5}


def test_an_app_reexported_by_its_package_is_served_from_the_module_that_builds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_concurrency._apps import import_name

    package = tmp_path / "chained_pkg"
    package.mkdir()
    (package / "main.py").write_text(_FACTORY_APP)
    (package / "__init__.py").write_text("from .main import app\n\napp.tag = 'main'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import chained_pkg  # type: ignore[import-not-found]

        # Importing chained_pkg.main runs the package's __init__ first: the same app.
        assert import_name(chained_pkg.app) == "chained_pkg.main:app"
        result = run_storm(chained_pkg.app, "GET", "/", users=1, requests=5, server="uvicorn")
        assert result.status_counts == {200: 5}
    finally:
        for name in ("chained_pkg", "chained_pkg.main"):
            sys.modules.pop(name, None)


def test_a_killed_storm_leaves_no_handed_over_file(tmp_path: Path) -> None:
    # A storm behind a server hands its processes the routes they answer in a file, and a
    # log for the connections they refuse. A SIGKILL of the storm's process runs no
    # cleanup: the server's own watcher of its parent removes them.
    psutil = pytest.importorskip("psutil")
    script = textwrap.dedent(
        """
        import sys

        # Without trustme the storm cannot answer https:// routes itself: they are shipped
        # to the server's processes in a file.
        sys.modules["trustme"] = None

        from pytest_concurrency import Upstream, run_storm

        with Upstream() as upstream:
            upstream.route("https://api.example.invalid/v1", latency=5, json={"ok": True})
            run_storm("tests.apps:asgi_hello", "GET", "/", users=2, duration=60, server="uvicorn")
        """
    )
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TMPDIR": str(temp)}
    caller = subprocess.Popen(
        [sys.executable, "-c", script], env=env, cwd=Path(__file__).parent.parent
    )
    try:
        deadline = time.monotonic() + 60
        handed: list[Path] = []
        while time.monotonic() < deadline and len(handed) < 2:
            handed = sorted(temp.glob("pytest-storm-*"))
            time.sleep(0.1)
        assert [p.name.split("-")[2] for p in handed] == ["egress", "upstreams"]
        # The files are made before the server starts: wait for its process to be up.
        servers: list[Any] = []
        while time.monotonic() < deadline and not servers:
            servers = [
                p
                for p in psutil.Process(caller.pid).children(recursive=True)
                if "pytest_concurrency._servers.bootstrap" in " ".join(p.cmdline())
            ]
            time.sleep(0.1)
        assert servers
        time.sleep(1.0)  # its watcher of the parent starts once its arguments are read
        caller.kill()  # no finally, no atexit, no cleanup in the storm's process
        caller.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            list(temp.glob("pytest-storm-*")) or any(p.is_running() for p in servers)
        ):
            time.sleep(0.1)
        assert list(temp.glob("pytest-storm-*")) == []
        assert [p.pid for p in servers if p.is_running() and p.status() != "zombie"] == []
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
