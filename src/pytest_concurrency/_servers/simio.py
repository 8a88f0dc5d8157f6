"""Carry the test's simulated upstreams and the egress guard into a real server's processes.

The ``upstream`` fixture patches httpx in the test process; a server started for a
storm runs the app in processes of its own, where those patches do not exist. The
routes are declared again there: their arguments are pickled to a file named in the
server's environment, and :func:`install_from_env` (the bootstrap's setup hook, run
in every server process before the app is imported) declares and installs them. Routes of
``http://`` hosts are not declared there: the storm's process serves them on loopback
(``_simio.loopback``) and the server's processes reach it through the egress guard, so
every client's calls are answered and counted where the storm reads its figures. The
egress guard is installed there too, with the storm's ``allow_hosts``; its refusals are
appended to a log file the storm's process reads after each round.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import sys
import tempfile
from collections.abc import Collection, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .._errors import ConfigError
from .._optional import installed

__all__ = [
    "EGRESS_ENV",
    "ENV",
    "SETUP",
    "egress_settings",
    "install_from_env",
    "served_port",
    "served_tls",
    "ship_upstreams",
]

#: Environment variable naming the file of pickled route declarations.
ENV = "PYTEST_STORM_UPSTREAMS"
#: Environment variable with the egress guard's settings (JSON: allow_hosts, log).
EGRESS_ENV = "PYTEST_STORM_EGRESS"
#: The bootstrap setup hook that declares them.
SETUP = "pytest_concurrency._servers.simio:install_from_env"

_KEEP: list[Any] = []


def ship_upstreams(
    upstreams: Iterable[Any], *, skip: Collection[str] = (), skip_tls: Collection[str] = ()
) -> str | None:
    """Pickle the routes of *upstreams* to a file; its path, or None when there are none.

    Routes of the ``http://`` hosts in *skip* and the ``https://`` hosts in *skip_tls* stay
    behind: the storm's process serves them over loopback, where their figures are counted.
    """

    def kept(url: str) -> bool:
        parts = urlsplit(url)
        host = parts.hostname or ""
        return not (
            (parts.scheme == "http" and host in skip)
            or (parts.scheme == "https" and host in skip_tls)
        )

    declarations = [
        d for upstream in upstreams for d in upstream.declarations if kept(d["url_prefix"])
    ]
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


def egress_settings(
    allow_hosts: Iterable[str],
    log: str,
    serve: Iterable[str] = (),
    serve_port: int | None = None,
    *,
    redirect: Mapping[tuple[str, int], tuple[str, int]] | None = None,
    tls: tuple[Collection[str], Collection[int], int | None, str] | None = None,
) -> str:
    """The value of :data:`EGRESS_ENV` for a server: the hosts it may reach, the log path,
    the hosts the storm's loopback upstream (on *serve_port*) answers, and the targets of
    the storm's latency proxies with the proxy each goes to."""
    return json.dumps(
        {
            "allow_hosts": list(allow_hosts),
            "log": log,
            "serve": list(serve),
            "serve_port": serve_port,
            "redirect": [[h, p, to[0], to[1]] for (h, p), to in (redirect or {}).items()],
            # https:// hosts, their ports, the TLS port answering them and the CA to trust.
            "tls": (
                None
                if tls is None
                else {"hosts": list(tls[0]), "ports": list(tls[1]), "port": tls[2], "ca": tls[3]}
            ),
        }
    )


def served_port(env: Mapping[str, str]) -> int | None:
    """The port of the storm's loopback upstream named in a server's environment, if any."""
    settings = env.get(EGRESS_ENV)
    port = json.loads(settings).get("serve_port") if settings else None
    return int(port) if port is not None else None


def served_tls(env: Mapping[str, str]) -> tuple[int | None, str | None]:
    """The TLS port of the storm's loopback upstream and its CA (PEM) named in a server's
    environment, if any."""
    settings = env.get(EGRESS_ENV)
    tls = json.loads(settings).get("tls") if settings else None
    if not tls:
        return None, None
    return (int(tls["port"]) if tls.get("port") is not None else None), tls.get("ca")


def install_from_env() -> None:
    """Declare and install the shipped routes, then the egress guard, in this (server) process."""
    from .._simio import Upstream
    from .._simio.egress import EgressGuard
    from .._simio.loopback import ALIAS

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
        if "aiohttp.client" not in sys.modules and installed("aiohttp"):
            # The app is imported after this hook; the guard must find aiohttp's session in
            # place to keep the app's line where a call begins: aiohttp resolves names in a
            # task of its own, whose stack ends in the server's loop, not in the app.
            importlib.import_module("aiohttp.client")
        settings = json.loads(egress)
        served = set(settings.get("serve") or ())
        tls = settings.get("tls") or {}
        served |= set(tls.get("hosts", ()))
        guard = EgressGuard(
            settings["allow_hosts"],
            declared=lambda: upstream.hosts | served,
            log=settings["log"],
            log_here=True,
            serve=served,
            serve_port=settings.get("serve_port"),
            alias=ALIAS,
            redirect={(h, p): (to_h, to_p) for h, p, to_h, to_p in settings.get("redirect", ())},
            serve_tls=tls.get("hosts", ()),
            serve_tls_port=tls.get("port"),
            tls_ports=tls.get("ports", (443,)),
            tls_ca=tls.get("ca"),
        )
        guard.install()
        _KEEP.append(guard)
