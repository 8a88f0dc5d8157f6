"""Run one server on 127.0.0.1 in this process: ``python -m pytest_concurrency._servers.bootstrap``.

Started by :func:`pytest_concurrency._servers.serve` as the leader of a new process
group. It puts the caller's ``sys.path`` in place, runs the optional ``--setup`` hook,
imports the app (an import failure ends the process with its traceback on stderr,
before any port is bound) and then runs the server programmatically.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from ._target import APP_ENV, PATH_ENV, SETUP_ENV, TARGET, load_app

HOST = "127.0.0.1"
#: Seconds a server gets to finish in-flight requests once told to stop.
GRACEFUL_SECONDS = 2


def _install_path() -> None:
    """Put the caller's sys.path first, and hand the entries to every descendant."""
    raw = os.environ.get(PATH_ENV)
    if not raw:
        return
    caller: list[str] = json.loads(raw)
    own = list(sys.path)
    sys.path[:] = caller + [p for p in own if p not in caller]
    # Worker processes that start a fresh interpreter (spawn) see PYTHONPATH only.
    extra = [p for p in caller if p and p not in own]
    if extra:
        previous = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(extra + ([previous] if previous else []))


def _handed_files() -> list[str]:
    """Temporary files the storm's process made for this server (see ``_servers/simio``)."""
    from .simio import EGRESS_ENV
    from .simio import ENV as UPSTREAMS_ENV

    found = [os.environ[UPSTREAMS_ENV]] if os.environ.get(UPSTREAMS_ENV) else []
    settings = os.environ.get(EGRESS_ENV)
    if settings:
        log = json.loads(settings).get("log")
        if log:
            found.append(str(log))
    return found


def _watch_parent(parent: int) -> None:
    """Stop the whole process group if the process that started it dies (SIGKILL, crash)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.25)
        # The files the storm handed over (shipped routes, the egress log) are its to
        # remove; with the storm gone, they are removed here, before the group is stopped
        # (a graceful stop may end this very process).
        for path in _handed_files():
            with contextlib.suppress(OSError):
                os.unlink(path)
        group = os.getpgid(0)
        os.killpg(group, signal.SIGTERM)
        time.sleep(GRACEFUL_SECONDS + 1)
        os.killpg(group, signal.SIGKILL)

    threading.Thread(target=watch, name="pytest-storm-parent-watch", daemon=True).start()


def run_uvicorn(app: Any, args: argparse.Namespace) -> None:
    """uvicorn.Server in this process; uvicorn's own supervisor for several workers."""
    import uvicorn

    options: dict[str, Any] = {
        "host": HOST,
        "port": args.port,
        "interface": "wsgi" if args.interface == "wsgi" else "auto",
        "access_log": False,
        "log_level": "warning",
        "timeout_graceful_shutdown": GRACEFUL_SECONDS,
    }
    # uvicorn's own fd= option labels the socket AF_UNIX, which turns TCP_NODELAY off on
    # every accepted connection: the socket is built here, its family read from the fd.
    sockets = [socket.socket(fileno=args.fd)] if args.fd is not None else None
    if args.workers == 1:
        uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=sockets)
    elif sockets is None:
        uvicorn.run(TARGET, workers=args.workers, **options)
    else:
        from uvicorn.supervisors import Multiprocess

        config = uvicorn.Config(TARGET, workers=args.workers, **options)
        Multiprocess(config, sockets=sockets).run()


def run_hypercorn(app: Any, args: argparse.Namespace) -> None:
    """hypercorn's asyncio serve() in this process; hypercorn.run for several workers."""
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"fd://{args.fd}" if args.fd is not None else f"{HOST}:{args.port}"]
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    config.graceful_timeout = GRACEFUL_SECONDS
    if args.workers > 1:
        from hypercorn.run import run

        config.workers = args.workers
        # hypercorn evaluates the part after the colon as an expression in the module.
        config.application_path = TARGET.replace(":app", ":load_app()")
        run(config)
        return

    from hypercorn.asyncio import serve

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(app, config, mode=args.interface, shutdown_trigger=stop.wait)

    asyncio.run(main())


def run_granian(app: Any, args: argparse.Namespace) -> None:
    """granian with the app as an import string (its workers import it themselves)."""
    from granian import Granian
    from granian.constants import Interfaces

    interface = Interfaces.WSGI if args.interface == "wsgi" else Interfaces.ASGI
    options: dict[str, Any] = {}
    if args.interface == "wsgi":
        options["blocking_threads"] = args.threads
    Granian(
        TARGET,
        address=HOST,
        port=args.port,
        interface=interface,
        workers=args.workers,
        log_access=False,
        workers_kill_timeout=GRACEFUL_SECONDS,
        **options,
    ).serve()


def run_gunicorn(app: Any, args: argparse.Namespace) -> None:
    """gunicorn through a BaseApplication: sync, gthread, or uvicorn workers for ASGI."""
    from gunicorn.app.base import BaseApplication

    if args.interface == "asgi":
        worker_class = "uvicorn.workers.UvicornWorker"
    else:
        worker_class = "gthread" if args.threads > 1 else "sync"
    options: dict[str, Any] = {
        "bind": f"fd://{args.fd}" if args.fd is not None else f"{HOST}:{args.port}",
        "workers": args.workers,
        "threads": args.threads,
        "worker_class": worker_class,
        "graceful_timeout": GRACEFUL_SECONDS,
        "timeout": 120,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        # The app is already imported (after the setup hook): workers inherit it.
        "preload_app": True,
    }

    class Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    Application().run()


RUNNERS = {
    "uvicorn": run_uvicorn,
    "hypercorn": run_hypercorn,
    "granian": run_granian,
    "gunicorn": run_gunicorn,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the arguments, import the app and run the server until told to stop."""
    parser = argparse.ArgumentParser(prog="python -m pytest_concurrency._servers.bootstrap")
    parser.add_argument("--kind", choices=sorted(RUNNERS), required=True)
    parser.add_argument("--app", required=True, help="the app as an import string module:attr")
    parser.add_argument("--interface", choices=("asgi", "wsgi"), default="asgi")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--setup", help="module:function to call before the app is imported")
    parser.add_argument("--parent-pid", type=int, help="stop when this process goes away")
    parser.add_argument("--fd", type=int, help="serve on this listening socket (already bound)")
    args = parser.parse_args(argv)
    _install_path()
    os.environ[APP_ENV] = args.app
    if args.setup:
        os.environ[SETUP_ENV] = args.setup
    if args.parent_pid:
        _watch_parent(args.parent_pid)
    if args.kind == "gunicorn" and args.interface == "asgi":
        import warnings

        # The worker class is deprecated upstream in favour of a separate package.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="uvicorn.workers")
    app = load_app()
    RUNNERS[args.kind](app, args)


if __name__ == "__main__":
    main()
