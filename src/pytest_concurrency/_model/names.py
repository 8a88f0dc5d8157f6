"""Names of the thread pools the probes watch (shared by the probes and their wording)."""

from __future__ import annotations

__all__ = ["ANYIO_LIMITER", "ASGIREF_THREADS", "DEFAULT_EXECUTOR"]

#: Name of anyio's default thread limiter in results.
ANYIO_LIMITER = "anyio default thread limiter"
#: Name of asgiref's SyncToAsync threads in results.
ASGIREF_THREADS = "asgiref SyncToAsync threads"
#: Name of the event loop's default executor (``loop.run_in_executor(None, ...)``) in results.
DEFAULT_EXECUTOR = "asyncio default executor"
