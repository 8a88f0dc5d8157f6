"""Tell a real Ctrl-C from an app that raises ``KeyboardInterrupt`` or ``SystemExit``.

An exception the app raises is the app's failure: it is recorded on the result and the
storm goes on. A real Ctrl-C (SIGINT) still stops everything. While a storm runs in
the main thread, a SIGINT handler notes that the signal arrived before raising
``KeyboardInterrupt`` as Python's own handler does, so the engine can tell the two apart.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["app_interrupt", "watch_interrupts"]

_SIGNALLED = [False]


def _on_sigint(signum: int, frame: FrameType | None) -> Any:
    _SIGNALLED[0] = True
    raise KeyboardInterrupt


@contextmanager
def watch_interrupts() -> Iterator[None]:
    """Note real SIGINTs while the block runs (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        # Someone else handles Ctrl-C (a debugger, a framework): leave it to them.
        yield
        return
    _SIGNALLED[0] = False
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _SIGNALLED[0] = False


def app_interrupt(exc: BaseException) -> bool:
    """True when *exc* (``SystemExit`` or ``KeyboardInterrupt``) came from the app itself,
    not from a real Ctrl-C."""
    if isinstance(exc, KeyboardInterrupt):
        return not _SIGNALLED[0]
    return isinstance(exc, SystemExit)
