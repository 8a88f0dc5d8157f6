"""Validators of parameter values: each takes the value and the words naming where it was
written, and returns the value as the storm uses it or raises :class:`ConfigError`."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .._errors import ConfigError

DEFAULT_DURATION = 2.0
DEFAULT_TIMEOUT_MS = 10_000.0
DEFAULT_USERS = 10
_MAX_PROCESSES = 256
#: Largest --concurrency-scale: beyond it, scaled users and durations overflow.
MAX_SCALE = 1e6

#: A validator: (name, value, origin) -> the value as the storm uses it.
Validator = Callable[[str, Any, str], Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _where(name: str, value: Any, origin: str) -> str:
    return f"{name}={value!r} (from {origin})"


def _positive_int(name: str, value: Any, origin: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{_where(name, value, origin)} must be a whole number")
    if value < minimum:
        raise ConfigError(f"{_where(name, value, origin)} must be at least {minimum}")
    return int(value)


def _number(name: str, value: Any, origin: str, *, positive: bool = False) -> float:
    if not _is_number(value):
        raise ConfigError(f"{_where(name, value, origin)} must be a finite number")
    number = float(value)
    if positive and number <= 0:
        raise ConfigError(f"{_where(name, value, origin)} must be greater than 0")
    if number < 0:
        raise ConfigError(f"{_where(name, value, origin)} must not be negative")
    return number


def _choice(name: str, value: Any, origin: str, choices: Iterable[str]) -> str:
    options = tuple(choices)
    if value not in options:
        raise ConfigError(
            f"{_where(name, value, origin)} must be one of {', '.join(map(repr, options))}"
        )
    return str(value)


def positive_int(minimum: int = 1) -> Validator:
    """A whole number of at least *minimum*."""
    return lambda name, value, origin: _positive_int(name, value, origin, minimum=minimum)


def number(*, positive: bool = False) -> Validator:
    """A finite number, not negative (greater than 0 if *positive*)."""
    return lambda name, value, origin: _number(name, value, origin, positive=positive)


def choice(*choices: str) -> Validator:
    """One of *choices*."""
    return lambda name, value, origin: _choice(name, value, origin, choices)


def text(name: str, value: Any, origin: str) -> str:
    """A string."""
    if not isinstance(value, str):
        raise ConfigError(f"{_where(name, value, origin)} must be a string")
    return value


def anything(name: str, value: Any, origin: str) -> Any:
    """Any value, taken as given (a hook, a callable, a request body)."""
    return value


SERVERS = ("inprocess", "uvicorn", "hypercorn", "granian", "gunicorn")


def _loopback_literal(host: str) -> bool:
    """True for an IP literal in 127.0.0.0/8 or ``::1`` (never a name: names are resolved)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _checked_localhost(where: str, port: int) -> str:
    """The loopback address ``localhost`` resolves to; refused unless every address is loopback.

    The storm then connects to that address, so a later answer from the resolver cannot
    send it elsewhere.
    """
    try:
        infos = socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"{where}: 'localhost' does not resolve here ({exc})") from None
    addresses = [str(info[4][0]) for info in infos]
    outside = sorted({a for a in addresses if not _loopback_literal(a)})
    if not addresses or outside:
        raise ConfigError(
            f"{where}: 'localhost' resolves to {', '.join(outside) or 'nothing'}, which is not "
            "loopback; give the address itself, such as 'http://127.0.0.1:8000'"
        )
    # IPv4 first: a server bound to 127.0.0.1 is the common case.
    return min(addresses, key=lambda a: (":" in a, addresses.index(a)))


def server(name: str, value: Any, origin: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{_where('server', value, origin)} must be a string")
    if value in SERVERS:
        return value
    where = _where("server", value, origin)
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.hostname is not None:
        if parts.scheme != "http":
            raise ConfigError(f"{where}: only http:// is supported")
        host = parts.hostname
        if host != "localhost" and not _loopback_literal(host):
            # No name but localhost is resolved: a name that merely starts with 127. can
            # resolve anywhere.
            raise ConfigError(
                f"{where} is not on loopback: storms are sent only to in-process apps and to "
                "servers on this machine (an address in 127.0.0.0/8, [::1] or localhost)"
            )
        try:
            port = parts.port
        except ValueError:
            port = -1
        if port in (-1, 0) or (port is None and parts.netloc.endswith(":")):
            raise ConfigError(f"{where} has no valid port: give a port from 1 to 65535")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ConfigError(
                f"{where} must be a server root such as "
                "'http://127.0.0.1:8000' (paths come from the storm's requests)"
            )
        port = port or 80
        if host == "localhost":
            host = _checked_localhost(where, port)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"
    raise ConfigError(
        f"{where} must be one of {', '.join(SERVERS)} or a loopback "
        "URL such as 'http://127.0.0.1:8000'"
    )


def allow_hosts(name: str, value: Any, origin: str) -> tuple[str, ...]:
    """Host names, IP addresses or networks: a list, or a comma-separated string."""
    where = _where("allow_hosts", value, origin)
    if isinstance(value, str):
        items: list[Any] = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, Iterable) and not isinstance(value, bytes | bytearray | Mapping):
        items = list(value)
    else:
        raise ConfigError(
            f"{where} must be a list of host names, IP addresses or networks (a comma-separated "
            "string on the command line or in the ini file)"
        )
    hosts = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{where}: {item!r} is not a host name, IP address or network")
        host = item.strip()
        if "/" in host and "://" not in host:
            try:
                ipaddress.ip_network(host, strict=False)
            except ValueError:
                raise ConfigError(f"{where}: {host!r} is not an IP network") from None
        else:
            try:
                ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                if any(c in host for c in ":/@ \t") or host.startswith("."):
                    raise ConfigError(
                        f"{where}: {host!r} must be a bare host name or address, without a "
                        "scheme or a port (every port of an allowed host is open)"
                    ) from None
        hosts.append(host)
    return tuple(hosts)


def processes(name: str, value: Any, origin: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # from an option or the ini file
    if value == "auto":
        return max(
            1,
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1),
        )
    count = _positive_int("processes", value, origin)
    if count > _MAX_PROCESSES:
        raise ConfigError(
            f"{_where('processes', value, origin)} is more than {_MAX_PROCESSES} processes; "
            "past the machine's cores, shards only compete for them"
        )
    return count


def stages(name: str, value: Any, origin: str) -> tuple[tuple[float, float], ...]:
    where = _where("stages", value, origin)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ConfigError(f"{where} must be a list of (seconds, target) pairs")
    stages = []
    for i, stage in enumerate(value):
        if not isinstance(stage, tuple | list) or len(stage) != 2:
            raise ConfigError(f"{where}: stage {i} must be a (seconds, target) pair, not {stage!r}")
        seconds, target = stage
        if not _is_number(seconds) or seconds <= 0:
            raise ConfigError(f"{where}: stage {i} lasts {seconds!r} s; it must be a number > 0")
        if not _is_number(target) or target < 0:
            raise ConfigError(f"{where}: stage {i} targets {target!r}; it must be a number >= 0")
        stages.append((float(seconds), float(target)))
    if not stages:
        raise ConfigError(f"{where} is empty")
    return tuple(stages)


def cli_stages(text: str) -> list[tuple[float, float]]:
    """``30:100,60:100,10:0`` as k6 stages: (seconds, target) pairs."""
    stages = []
    for part in text.split(","):
        seconds, sep, target = part.strip().partition(":")
        try:
            stages.append((float(seconds), float(target)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected SECONDS:TARGET pairs separated by commas, e.g. 10:50,20:50,5:0"
            ) from None
        if not sep:
            raise argparse.ArgumentTypeError(f"{text!r}: {part!r} is not SECONDS:TARGET")
    return stages


def cli_processes(text: str) -> int | str:
    """``--processes N`` or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or 'auto'") from None
