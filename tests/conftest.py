from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

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
