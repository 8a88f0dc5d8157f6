"""The throwaway PostgreSQL cluster answers on loopback and never outlives the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests._postgres import unavailable

needs_postgres = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone too (its parent, pg_ctl's, is init and reaps it soon).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")
    except OSError:
        return True


def _wait_gone(pid: int, path: str, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid) and not os.path.exists(path):
            return True
        time.sleep(0.05)
    return False


def test_the_session_cluster_answers_on_loopback(postgres_dsn: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(postgres_dsn) as conn:
        row = conn.execute(
            "select inet_server_addr()::text, current_setting('max_connections')"
        ).fetchone()
    assert row is not None
    assert row[0].startswith("127.0.0.1")
    assert int(row[1]) >= 200


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from tests._postgres import PostgresCluster
    cluster = PostgresCluster.start()
    print(cluster.postmaster_pid(), cluster.root, flush=True)
    try:
        time.sleep(60)
    finally:
        cluster.stop()
    """
)


@needs_postgres
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_no_cluster_survives_the_process_that_started_it(how: signal.Signals) -> None:
    """SIGKILL (no teardown runs: the watcher stops it) and Ctrl-C (the teardown does)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with subprocess.Popen(
        [sys.executable, "-c", CHILD.format(root=root)], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            pid_text, path = child.stdout.readline().split()
            pid = int(pid_text)
            assert not _gone(pid)
            child.send_signal(how)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert _wait_gone(pid, path), f"postgres {pid} or {path} outlived its parent"
