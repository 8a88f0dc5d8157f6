"""Real servers on loopback: start, describe, readiness errors, and no process left behind."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pytest_concurrency import ConfigError, StormError
from pytest_concurrency._servers import (
    ResourceSampler,
    RunningServer,
    ServerSpec,
    _process,
    live_servers,
    serve,
)

ROOT = str(Path(__file__).resolve().parent.parent)


def spec(kind: str, app: str = "tests.apps:asgi_routes", **options: object) -> ServerSpec:
    return ServerSpec(kind, app, cwd=ROOT, **options)  # type: ignore[arg-type]


def assert_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        # A reaped child of an already-stopped process may linger as a zombie for an instant.
        alive = [p for p in alive if psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        time.sleep(0.05)
    pytest.fail(f"server processes still alive: {alive}")


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read())


def wait_for_pids(server: RunningServer, count: int) -> list[int]:
    deadline = time.monotonic() + 5.0
    while len(pids := server.pids()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


@pytest.fixture(autouse=True)
def no_server_left() -> Iterator[None]:
    yield
    assert live_servers() == []


def test_uvicorn_serves_and_stops_its_process() -> None:
    with serve(spec("uvicorn")) as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert server.describe().startswith("uvicorn, 1 worker (")
        assert get(server.url + "/") == b"hello"
        pids = server.pids()
        assert pids == [server.process.pid]
        assert live_servers() == [server]
    assert_gone(pids)
    assert server.process.returncode is not None


def test_gunicorn_gthread_workers_all_stop() -> None:
    with serve(
        spec("gunicorn", "tests.apps:wsgi_routes", interface="wsgi", workers=2, threads=2)
    ) as server:
        assert server.describe() == "gunicorn, 2 workers × 2 threads (gthread)"
        assert get(server.url + "/") == b"hello"
        pids = wait_for_pids(server, 3)
        assert len(pids) == 3  # the arbiter and its two workers
    assert_gone(pids)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"kind": "gunicorn", "interface": "wsgi", "workers": 8}, "gunicorn, 8 sync workers"),
        ({"kind": "gunicorn", "interface": "asgi"}, "gunicorn + uvicorn worker, 1 worker"),
        ({"kind": "hypercorn", "workers": 2}, "hypercorn, 2 workers (ASGI)"),
        (
            {"kind": "granian", "interface": "wsgi", "threads": 4},
            "granian, 1 worker × 4 threads (WSGI)",
        ),
    ],
)
def test_describe(options: dict[str, object], expected: str) -> None:
    kind = options.pop("kind")
    assert ServerSpec(kind, "m:app", **options).describe() == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["hypercorn", "granian", "gunicorn"])
def test_other_servers_answer(kind: str) -> None:
    with serve(spec(kind)) as server:
        assert get(server.url + "/") == b"hello"
        pids = server.pids()
    assert_gone(pids)


def test_exception_inside_serve_stops_the_server() -> None:
    pids: list[int] = []

    def storm_that_fails() -> None:
        nonlocal pids
        with serve(spec("uvicorn", workers=2)) as server:
            pids = wait_for_pids(server, 3)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        storm_that_fails()
    assert len(pids) >= 3
    assert_gone(pids)


def test_import_failure_is_a_storm_error_with_the_stderr_tail(tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text("import math\nVALUE = 1 / 0\n")
    broken = ServerSpec(
        "uvicorn", "broken_app:app", cwd=str(tmp_path), sys_path=(str(tmp_path), *sys.path)
    )
    started = time.monotonic()
    with pytest.raises(StormError, match=r"(?s)uvicorn.*broken_app:app.*exited.*ZeroDivisionError"):
        serve(broken, startup_timeout=30).__enter__()
    assert time.monotonic() - started < 10


def test_silent_server_times_out_with_a_storm_error(tmp_path: Path) -> None:
    (tmp_path / "hanging_app.py").write_text(
        "import sys, time\nprint('loading forever', file=sys.stderr)\ntime.sleep(60)\n"
    )
    hanging = ServerSpec("uvicorn", "hanging_app:app", sys_path=(str(tmp_path), *sys.path))
    started = time.monotonic()
    with pytest.raises(StormError, match=r"(?s)did not answer HTTP.*within 3 s.*loading forever"):
        serve(hanging, startup_timeout=3).__enter__()
    assert time.monotonic() - started < 8


def test_caller_path_cwd_and_setup_hook_reach_the_server(tmp_path: Path) -> None:
    (tmp_path / "hooks.py").write_text(
        "state = 'plain'\ndef install():\n    global state\n    state = 'installed'\n"
    )
    (tmp_path / "where_app.py").write_text(
        textwrap.dedent(
            """
            import json, os
            import hooks
            SEEN = {"state": hooks.state, "cwd": os.getcwd()}

            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": json.dumps(SEEN).encode()})
            """
        )
    )
    # Path entries given relative to the caller's cwd ('' included) resolve there.
    located = ServerSpec(
        "uvicorn",
        "where_app:app",
        cwd=str(tmp_path),
        sys_path=("", *sys.path),
        setup="hooks:install",
    )
    with serve(located) as server:
        seen = json.loads(get(server.url + "/"))
    assert seen == {"state": "installed", "cwd": str(tmp_path)}


def test_missing_server_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "granian" else real(name)
    )
    monkeypatch.setattr(_process.subprocess, "Popen", None)  # nothing may start
    with (
        pytest.raises(
            ConfigError, match=r"server='granian'.*pip install 'pytest-storm\[servers\]'"
        ),
        serve(spec("granian")),
    ):
        pass


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "nginx"}, r"server='nginx' \(from server=\) must be one of uvicorn"),
        ({"kind": "uvicorn", "app": "tests.apps"}, r"app='tests.apps' .*module:attr"),
        ({"kind": "gunicorn", "workers": 0}, r"workers=0 .* ≥ 1"),
        ({"kind": "uvicorn", "threads": 4}, r"threads=4 .* no meaning for uvicorn"),
    ],
)
def test_bad_spec_is_a_config_error(options: dict[str, object], message: str) -> None:
    options.setdefault("app", "tests.apps:asgi_routes")
    with pytest.raises(ConfigError, match=message):
        ServerSpec(**options).validate()  # type: ignore[arg-type]


CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from pytest_concurrency._servers import ServerSpec, serve
with serve(ServerSpec({kind!r}, "tests.apps:asgi_routes", cwd={root!r}, workers=2)) as server:
    deadline = time.monotonic() + 5
    while len(server.pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps(server.pids()), flush=True)
    time.sleep(60)
"""


def start_child(kind: str) -> tuple[subprocess.Popen[str], list[int]]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(root=ROOT, kind=kind)],
        stdout=subprocess.PIPE,
        text=True,
        env={**_process.os.environ, "PYTHONPATH": str(Path(ROOT) / "src")},
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.kill()
        child.wait()
        pytest.fail("the child process did not start its server")
    pids: list[int] = json.loads(line)
    assert len(pids) >= 3
    assert all(psutil.pid_exists(p) for p in pids)
    return child, pids


def test_ctrl_c_in_the_parent_stops_the_server() -> None:
    child, pids = start_child("uvicorn")
    child.send_signal(signal.SIGINT)
    try:
        child.wait(timeout=15)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
    assert_gone(pids)


def test_a_killed_parent_takes_its_server_down() -> None:
    child, pids = start_child("gunicorn")
    child.kill()  # no finally, no atexit: the bootstrap notices that its parent is gone
    child.wait()
    child.stdout.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert_gone(pids)


def test_resource_sampler_measures_the_server_tree() -> None:
    with serve(spec("uvicorn")) as server:
        with ResourceSampler(server.pids, interval=0.05) as sampler:
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                get(server.url + "/")
        usage = sampler.stop()
    assert usage.samples >= 5
    assert 0 < usage.server_cpu_mean <= usage.server_cpu_peak
    assert usage.server_rss_peak > 10 * 2**20
    assert usage.client_cpu_mean > 0
    assert set(usage.to_dict()) >= {"server_cpu_mean", "server_rss_peak", "client_cpu_mean"}


@contextlib.contextmanager
def adopting_orphans() -> Iterator[None]:
    """Make this process the subreaper of its descendants, one that reaps only at the end:
    like PID 1 in a container, which may never reap the orphans it adopts."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip("prctl(PR_SET_CHILD_SUBREAPER) is not available")
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


_PR_SET_CHILD_SUBREAPER = 36


@pytest.mark.skipif(sys.platform != "linux", reason="subreapers are a Linux feature")
def test_stop_does_not_wait_for_zombies() -> None:
    # The leader leaves at once on SIGTERM; its child exits 0.2 s later, adopted by a
    # process that does not reap it. A zombie has stopped: the stop must not wait for it.
    script = textwrap.dedent(
        """
        import os, signal, sys, time
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.2), os._exit(0)))
            while True:
                time.sleep(1)
        print("ready", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        while True:
            time.sleep(1)
        """
    )
    with adopting_orphans():
        process = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True
        )
        assert process.stdout is not None
        with process.stdout:
            assert process.stdout.readline() == b"ready\n"
            children = psutil.Process(process.pid).children()
            assert len(children) == 1
            try:
                started = time.monotonic()
                _process._stop_group(process, grace=5.0)
                took = time.monotonic() - started
            finally:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(children[0].pid, 0)  # ours to reap, as the adopter
    assert took < 2.5, f"stop took {took:.2f} s of its 5 s grace"
    assert_gone([process.pid, children[0].pid])


def test_uvicorn_with_workers_stops_quickly() -> None:
    # SIGTERM to the supervisor first: workers killed under it made it wait out a health
    # check on each (5 s) before it looked at its own signal.
    with serve(spec("uvicorn", workers=2)) as server:
        pids = wait_for_pids(server, 3)
        started = time.monotonic()
        server.stop(grace=_process.STOP_GRACE)
        took = time.monotonic() - started
    assert took < 2.5, f"stop took {took:.2f} s of its {_process.STOP_GRACE:g} s grace"
    assert_gone(pids)


# -- whatever answers on the server's port is the server ----------------------------------


@contextlib.contextmanager
def squatter() -> Iterator[int]:
    """A listener on a loopback port that answers every connection with 200 'squatter'."""
    import socket
    import threading

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.settimeout(0.1)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsquatter")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        sock.close()


@pytest.mark.parametrize("kind", ["uvicorn", "hypercorn", "gunicorn", "granian"])
def test_a_squatted_port_is_never_taken_for_the_server(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip(kind)
    with squatter() as taken:
        ports = iter([taken])
        real = _process._free_port
        # The port a server would be given is taken by another listener before it binds.
        monkeypatch.setattr(_process, "_free_port", lambda: next(ports, None) or real())
        with serve(spec(kind)) as server:
            assert server.port != taken
            assert get(server.url + "/") == b"hello"


def test_readiness_never_waits_for_the_apps_own_root(tmp_path: Path) -> None:
    """An app whose / takes 5 s starts as fast as any: the probe is answered by the server."""
    (tmp_path / "slow_root.py").write_text(
        textwrap.dedent(
            """
            import asyncio

            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                if scope["path"] == "/":
                    await asyncio.sleep(5)
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"ok"})
            """
        )
    )
    slow = ServerSpec("uvicorn", "slow_root:app", sys_path=(str(tmp_path), *sys.path))
    with serve(slow, startup_timeout=4) as server:
        assert get(server.url + "/fast") == b"ok"


def test_a_client_sharing_a_busy_machine_with_its_server_is_said_to_limit_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from pytest_concurrency._engine import storm
    from pytest_concurrency._servers import ResourceUsage

    def usage(client: float, server: float) -> ResourceUsage:
        return ResourceUsage(server, server, 0, client, 10, 1.0)

    # gunicorn -w 8 on 2 cores with a client reconnecting per request: 0.37 of a core for
    # the client, 1.3 for the server. Far below one core, yet the server's loss.
    assert storm.client_share(usage(0.37, 1.3), 2) == pytest.approx(0.37 / 1.67)
    # The same client on 8 cores leaves the server room: it limits nothing.
    assert storm.client_share(usage(0.37, 1.3), 8) is None
    # A busy machine, but the client took under 5 % of what the storm used.
    assert storm.client_share(usage(0.08, 1.8), 2) is None
    # A client loop with a core to itself limits, whatever the machine.
    assert storm.client_share(usage(0.9, 0.2), 64) == pytest.approx(0.9 / 1.1)

    monkeypatch.setattr(storm, "cores", lambda: 2)
    result = SimpleNamespace(extras={}, warnings=[])
    storm._with_usage(result, usage(0.37, 1.3))  # type: ignore[arg-type]
    assert len(result.warnings) == 1
    assert "0.37 of the machine's 2 cores" in result.warnings[0]
    assert "up to 28% low" in result.warnings[0]
    quiet = SimpleNamespace(extras={}, warnings=[])
    storm._with_usage(quiet, usage(0.2, 0.6))  # type: ignore[arg-type]
    assert quiet.warnings == []


def test_a_client_loop_with_a_core_to_itself_is_said_to_set_the_pace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from pytest_concurrency._engine import storm
    from pytest_concurrency._servers import ResourceUsage

    # On a machine with room to spare, a client loop busy 90 % of a core limits on its own.
    monkeypatch.setattr(storm, "cores", lambda: 64)
    result = SimpleNamespace(extras={}, warnings=[])
    storm._with_usage(result, ResourceUsage(0.2, 0.2, 0, 0.9, 10, 1.0))  # type: ignore[arg-type]
    [warning] = result.warnings
    assert warning.startswith("the load generator used 90% of a core while the server used 20%")
    assert "the client may be the bottleneck" in warning
