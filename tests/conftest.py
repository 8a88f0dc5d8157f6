from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

from tests._postgres import PostgresCluster
from tests._postgres import unavailable as postgres_unavailable

pytest_plugins = ["pytester"]

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    # A shell's background job starts with Ctrl-C ignored, and child processes inherit
    # an ignored signal: the tests that interrupt a child need it delivered. A handler of
    # our own is not inherited (exec resets it), so the children start with the default.
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    """Fail the test if it leaves a thread running (worker pools must be joined)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    # asyncio's default executor threads (used by some frameworks) are shut down by
    # asyncio.run; anything else left alive is a leak.
    leaked = [t for t in leaked if not t.name.startswith(("asyncio_", "ThreadPoolExecutor"))]
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster on loopback for the session (skips when none can run)."""
    why = postgres_unavailable()
    if why is not None:
        pytest.skip(why)
    try:
        cluster = PostgresCluster.start()
    except RuntimeError as e:
        pytest.skip(f"PostgreSQL could not be started: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresCluster) -> str:
    """``postgresql://postgres@127.0.0.1:PORT/storm`` (swap the scheme for a driver)."""
    return postgres.url


@pytest.fixture(scope="session")
def postgres_dsn(postgres: PostgresCluster) -> str:
    """``host=127.0.0.1 port=PORT user=postgres dbname=storm`` for psycopg."""
    return postgres.dsn
