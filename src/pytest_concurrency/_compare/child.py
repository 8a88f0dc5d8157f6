"""Body of a control or experiment process: import the app from its tree, then run one
round of the storm each time the parent asks.

Started by :mod:`pytest_concurrency._compare.paired` as ``python -m
pytest_concurrency._compare.child FD PARENT``, FD the process's end of a socket pair; it
serves every storm of the session whose app comes from its tree. The
harness is imported before ``sys.path`` is set, so it is the experiment's on both sides;
only the app and its modules come from the process's own tree.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .._engine import shards as _shards  # noqa: F401 - registers the histogram pickler
from .._engine.plan import import_app, plan_storm
from .._engine.storm import run_plan
from .._model.result import StormResult
from .spec import ChildSpec

_PARENT_POLL = 0.25


def _watch_parent(parent: int) -> None:
    """End at once if the parent dies without stopping this process (SIGKILL, a crash)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL)
        os._exit(1)

    threading.Thread(target=watch, name="storm-paired-parent-watch", daemon=True).start()


def _sendable(result: StormResult) -> StormResult:
    # Callables among the parameters (on_start, checks) need not cross back.
    result.params = {
        k: v
        for k, v in result.params.items()
        if v is None or isinstance(v, str | int | float | bool | list | dict | tuple)
    }
    return result


def _load(spec: ChildSpec) -> Any:
    sys.path[:] = spec.sys_path
    app = import_app(spec.app)
    module = sys.modules.get(spec.app.partition(":")[0])
    where = getattr(module, "__file__", None)
    root = Path(spec.sys_path[0]).resolve()
    if where is None or not Path(where).resolve().is_relative_to(root):
        raise ImportError(f"module found at {where}, not under {root}")
    return app


def serve(conn: Connection) -> None:
    """Answer the parent until it says stop or goes away: ``("plan", spec)`` imports the
    app and plans its storm (``ready`` or ``error``), ``"round"`` runs one round of it."""
    plan = None
    while True:
        try:
            command = conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(command, tuple) and command[0] == "plan":
            spec: ChildSpec = command[1]
            try:
                app = _load(spec)
                plan = plan_storm(
                    app,
                    spec.method,
                    spec.path,
                    requests=spec.requests,
                    layers=spec.layers,
                    scale=spec.scale,
                )
            except BaseException as exc:  # everything goes back to the parent, named
                plan = None
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
                continue
            conn.send(("ready", None))
            continue
        if command != "round" or plan is None:
            return
        try:
            result = run_plan(plan)
        except BaseException as exc:
            detail = "".join(traceback.format_exception(exc))
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{detail}"))
            continue
        conn.send(("done", _sendable(result)))


def main() -> None:
    """Entry point: ``python -m pytest_concurrency._compare.child FD PARENT_PID``."""
    # The parent handles Ctrl-C and stops this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent(int(sys.argv[2]))
    conn = Connection(int(sys.argv[1]))
    try:
        serve(conn)
    finally:
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
