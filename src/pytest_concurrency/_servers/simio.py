"""Carry the test's simulated upstreams and the egress guard into a real server's processes.

The ``upstream`` fixture patches httpx in the test process; a server started for a
storm runs the app in processes of its own, where those patches do not exist. The
routes are declared again there: their arguments are pickled to a file named in the
server's environment, and :func:`install_from_env` (the bootstrap's setup hook, run
in every server process before the app is imported) declares and installs them. The
egress guard is installed there too, with the storm's ``allow_hosts``; its refusals are
appended to a log file the storm's process reads after each round.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Iterable
from typing import Any

from .._errors import ConfigError

__all__ = ["EGRESS_ENV", "ENV", "SETUP", "egress_settings", "install_from_env", "ship_upstreams"]

#: Environment variable naming the file of pickled route declarations.
ENV = "PYTEST_STORM_UPSTREAMS"
#: Environment variable with the egress guard's settings (JSON: allow_hosts, log).
EGRESS_ENV = "PYTEST_STORM_EGRESS"
#: The bootstrap setup hook that declares them.
SETUP = "pytest_concurrency._servers.simio:install_from_env"

_KEEP: list[Any] = []


def ship_upstreams(upstreams: Iterable[Any]) -> str | None:
    """Pickle the routes of *upstreams* to a file; its path, or None when there are none."""
    declarations = [d for upstream in upstreams for d in upstream.declarations]
    if not declarations:
        return None
    try:
        payload = pickle.dumps(declarations)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ConfigError(
            "upstream routes cannot be sent to the server's processes: a route's handler or "
            f"latency must be a module-level function or value ({exc}); declare such routes "
            "with static responses, or run the storm in-process"
        ) from exc
    handle, path = tempfile.mkstemp(prefix="pytest-storm-upstreams-", suffix=".pickle")
    with os.fdopen(handle, "wb") as file:
        file.write(payload)
    return path


def egress_settings(allow_hosts: Iterable[str], log: str) -> str:
    """The value of :data:`EGRESS_ENV` for a server: the hosts it may reach, the log path."""
    return json.dumps({"allow_hosts": list(allow_hosts), "log": log})


def install_from_env() -> None:
    """Declare and install the shipped routes, then the egress guard, in this (server) process."""
    from .._simio import Upstream
    from .._simio.egress import EgressGuard

    path = os.environ.get(ENV)
    upstream = Upstream()
    if path:
        with open(path, "rb") as file:
            declarations = pickle.load(file)  # written by this package for this server
        for declaration in declarations:
            upstream.route(**declaration)
        upstream.install()
        _KEEP.append(upstream)
    egress = os.environ.get(EGRESS_ENV)
    if egress:
        settings = json.loads(egress)
        guard = EgressGuard(
            settings["allow_hosts"],
            declared=lambda: upstream.hosts,
            log=settings["log"],
            log_here=True,
        )
        guard.install()
        _KEEP.append(guard)
