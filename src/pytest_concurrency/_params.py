"""Storm parameters: the known names, their defaults, validation and precedence.

Values arrive in layers (keyword argument > marker > command-line option > ini >
default); every value keeps the name of the layer it came from so that an error
can say where a bad value was written.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from ._errors import ConfigError

__all__ = [
    "BUDGET_NAMES",
    "COUNT_BUDGETS",
    "DEFAULT_DURATION",
    "DEFAULT_TIMEOUT_MS",
    "ENDPOINT_BUDGETS",
    "FLOOR_BUDGETS",
    "WORKLOAD_NAMES",
    "Layer",
    "StormConfig",
    "budget_limit",
    "check_budget_name",
    "resolve",
]

DEFAULT_DURATION = 2.0
DEFAULT_TIMEOUT_MS = 10_000.0
DEFAULT_USERS = 10
_MAX_PROCESSES = 256
#: Largest --concurrency-scale: beyond it, scaled users and durations overflow.
_MAX_SCALE = 1e6

#: Budget name -> description; the order is the order of the verdict table.
BUDGET_NAMES: dict[str, str] = {
    "p50_ms": "50th percentile latency, ms",
    "p90_ms": "90th percentile latency, ms",
    "p95_ms": "95th percentile latency, ms",
    "p99_ms": "99th percentile latency, ms",
    "p999_ms": "99.9th percentile latency, ms",
    "max_ms": "slowest request, ms",
    "mean_ms": "mean latency, ms",
    "ttfb_p99_ms": "99th percentile time to first body byte, ms",
    "min_rps": "minimum throughput, requests per second",
    "max_error_rate": "largest fraction of failed requests (exceptions, timeouts, status >= 400)",
    "max_queue_p99_ms": "99th percentile wait for a free worker, ms",
    "max_saturation": "largest fraction of the storm with every worker busy",
    "max_loop_lag_ms": "longest time the event loop could not run, ms",
    "max_dropped": "most open-model arrivals dropped because max_in_flight was reached",
    "max_in_flight_peak": "most requests in flight at once (a count: does not scale with CPU speed)",
    "max_threads_busy": "most threads busy at once in the WSGI pool or the app's busiest thread pool",
    "max_blocking_calls": "most blocking calls that held the event loop past the monitor's threshold",
    "max_queued": "most requests that waited over 1 ms for a free worker or thread",
    "p99_ratio": "p99 latency at most this many times the p99 of the simulated I/O waits",
}

#: Budgets whose limit is a floor (the measured figure must reach it), not a ceiling.
FLOOR_BUDGETS = frozenset({"min_rps"})

#: Budgets that count something (requests, threads, calls): whole numbers.
COUNT_BUDGETS = frozenset(
    {"max_dropped", "max_in_flight_peak", "max_threads_busy", "max_blocking_calls", "max_queued"}
)

#: Budgets that are a fraction of the storm, between 0 and 1.
_FRACTION_BUDGETS = frozenset({"max_error_rate", "max_saturation"})

#: Budgets that also apply to one endpoint of a request mix (``budgets={"GET /a": {...}}``).
ENDPOINT_BUDGETS = (
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "mean_ms",
    "max_error_rate",
    "min_rps",
)

#: Workload parameter name -> one line of help (shown by `pytest --markers` and the docs).
WORKLOAD_NAMES: dict[str, str] = {
    "users": f"concurrent virtual users, closed model (default {DEFAULT_USERS})",
    "duration": f"seconds of load after warm-up (default {DEFAULT_DURATION:g}); exclusive with requests",
    "requests": "stop after this many measured requests; exclusive with duration",
    "rate": "open model: arrivals per second (latency from each scheduled arrival); exclusive with users",
    "arrivals": "'constant' (default) or 'poisson' spacing of open-model arrivals",
    "max_in_flight": "open model: cap on requests in flight; arrivals beyond it are dropped (default 10000)",
    "stages": "k6-style [(seconds, target), ...] ramping users (closed) or rate (open); sets the duration",
    "ramp": "seconds over which users start (default: staggered over a few ms)",
    "think_ms": "pause of each user between its requests, ms, or a latency distribution (default 0)",
    "warmup": "seconds of load before measuring; those requests are discarded (default 0)",
    "warmup_requests": "number of first requests discarded (default 0)",
    "timeout_ms": f"per-request timeout, ms (default {DEFAULT_TIMEOUT_MS:g})",
    "workers": "WSGI server model: worker processes, like gunicorn -w (default 1)",
    "threads": "WSGI server model: threads per worker, like gunicorn --threads (default 1)",
    "seed": "seed for request mixes and simulated latency",
    "server": "'inprocess' (default), 'uvicorn', 'hypercorn', 'granian', 'gunicorn' (started on 127.0.0.1 for the storm), or the URL of a server already running on loopback",
    "on_start": "per-user start hook, sync or async, called once with each virtual user (a login); its requests are recorded apart",
    "checks": "checks on every response: a status, a set of statuses, a callable taking the response, or a list of those",
    "engine": "'native' (default) or 'locust': run the storm as a generated locustfile with Locust's master and local workers (needs a real server and pip install 'pytest-storm[locust]')",
    "processes": "shard the storm over this many processes, each with its own event loop and copy of the app, like N server worker processes; 'auto' = the cores available (default 1)",
    "interface": "'asgi' or 'wsgi' when the app's kind cannot be detected",
    "lifespan": "'auto' (default), 'on' or 'off': run ASGI lifespan startup/shutdown",
    "gc": "'off' (default: the cyclic collector paused during the storm) or 'on'",
    "name": "label of the storm in reports",
    "rounds": "repeat the storm and judge budgets on the aggregate round (default 1)",
    "aggregate": "'median' (default), 'worst' or 'best' round, for rounds > 1",
    "budgets": "per-endpoint budgets of a request mix: {'POST /items': {'p99_ms': 200}}",
    "clock": "'wall' (default) or 'virtual': async in-process apps only; the loop's clock jumps over waits, so simulated I/O, think time and arrivals cost no wall time and the figures repeat exactly",
    "allow_hosts": "hosts the app may reach during the storm besides loopback: names, IP addresses or networks ('db.internal', '10.0.0.0/8'); every other connection is refused before it is made",
}

REQUEST_NAMES = ("headers", "json", "content", "data", "query")

_ALL_NAMES = (*WORKLOAD_NAMES, *BUDGET_NAMES, *REQUEST_NAMES)


@dataclass(frozen=True)
class Layer:
    """One source of parameter values, with the words that name it in errors."""

    origin: str
    values: Mapping[str, Any]


@dataclass
class StormConfig:
    """Validated parameters of one storm."""

    users: int = DEFAULT_USERS
    rate: float | None = None
    arrivals: str = "constant"
    max_in_flight: int = 10_000
    stages: tuple[tuple[float, float], ...] = ()
    rounds: int = 1
    aggregate: str = "median"
    endpoint_budgets: dict[str, dict[str, float]] = field(default_factory=dict)
    think: Any = None
    duration: float | None = DEFAULT_DURATION
    requests: int | None = None
    ramp: float = 0.0
    think_ms: float = 0.0
    warmup: float = 0.0
    warmup_requests: int = 0
    timeout_ms: float = DEFAULT_TIMEOUT_MS
    workers: int = 1
    threads: int = 1
    processes: int = 1
    server: str = "inprocess"
    engine: str = "native"
    on_start: Any = None
    checks: Any = None
    #: Index of this storm's first user (process shards number their users apart).
    first_user: int = 0
    seed: int | None = None
    interface: str | None = None
    lifespan: str = "auto"
    gc: str = "off"
    clock: str = "wall"
    allow_hosts: tuple[str, ...] = ()
    name: str | None = None
    budgets: dict[str, float] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    request_options: dict[str, Any] = field(default_factory=dict)

    scale: float | None = None

    def scaled(self, factor: float, origin: str) -> None:
        """Scale users, rates, durations and request counts by *factor* (budgets unchanged)."""
        if not _is_number(factor) or not 0 < factor <= _MAX_SCALE:
            raise ConfigError(
                f"scale={factor!r} (from {origin}) must be a number greater than 0 and at most "
                f"{_MAX_SCALE:g}"
            )
        self.scale = factor
        self.users = max(1, math.ceil(self.users * factor)) if self.users else 0
        if self.rate is not None:
            self.rate *= factor
        if self.duration is not None:
            self.duration *= factor
        if self.requests is not None:
            self.requests = max(1, math.ceil(self.requests * factor))
        self.warmup *= factor
        self.ramp *= factor
        self.stages = tuple((seconds * factor, target * factor) for seconds, target in self.stages)

    def origin_of(self, name: str) -> str:
        """Where the value of *name* came from."""
        return self.origins.get(name, "default")

    def workload(self) -> dict[str, Any]:
        """Workload parameters as a plain dict (for reports)."""
        skip = {
            "budgets",
            "origins",
            "request_options",
            "endpoint_budgets",
            "think",
            "on_start",
            "checks",
        }
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, _ALL_NAMES, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


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


def _server(value: Any, origin: str) -> str:
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


def _allow_hosts(value: Any, origin: str) -> tuple[str, ...]:
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


def _processes(value: Any, origin: str) -> int:
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


def _stages(value: Any, origin: str) -> tuple[tuple[float, float], ...]:
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


def _endpoint_budgets(value: Any, origin: str) -> dict[str, dict[str, float]]:
    where = _where("budgets", value, origin)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must map an endpoint ('POST /items') to its budgets")
    result: dict[str, dict[str, float]] = {}
    for endpoint, budgets in value.items():
        if not isinstance(endpoint, str) or not isinstance(budgets, Mapping):
            raise ConfigError(f"{where}: {endpoint!r} must map to a dict of budgets")
        result[endpoint] = {}
        for name, limit in budgets.items():
            check_budget_name(name, where, endpoint=True)
            result[endpoint][name] = budget_limit(f"{endpoint} {name}", limit, origin)
    return result


def _from(origin: str) -> str:
    return f" (from {origin})" if origin else ""


def check_budget_name(name: Any, where: str, *, endpoint: bool = False) -> str:
    """Raise :class:`ConfigError` unless *name* is a budget (of one endpoint, if *endpoint*)."""
    known = ENDPOINT_BUDGETS if endpoint else tuple(BUDGET_NAMES)
    if name in known:
        return str(name)
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    if endpoint:
        raise ConfigError(
            f"{where}: {name!r} is not a per-endpoint budget{hint}; "
            f"per-endpoint budgets: {', '.join(known)}"
        )
    raise ConfigError(f"unknown budget {name!r} {where}; known: {', '.join(known)}{hint}")


def budget_limit(name: str, value: Any, origin: str = "") -> float:
    """The limit of budget *name* as a float; :class:`ConfigError` when it is no valid limit."""
    where = f"budget {name}={value!r}{_from(origin)}"
    if not _is_number(value):
        raise ConfigError(f"{where} must be a number, not {type(value).__name__}")
    if value < 0:
        raise ConfigError(f"{where} must not be negative")
    if name in _FRACTION_BUDGETS and value > 1:
        raise ConfigError(f"{where} is a fraction between 0 and 1")
    if name.rsplit(" ", 1)[-1] == "p99_ratio" and value <= 0:
        raise ConfigError(f"{where} must be greater than 0 (a multiple of the waits' p99)")
    return float(value)


def check_names(values: Mapping[str, Any], origin: str) -> None:
    """Raise :class:`ConfigError` for a name that is not a storm parameter."""
    for name in values:
        if name not in _ALL_NAMES:
            raise ConfigError(
                f"unknown storm parameter {name!r} (from {origin}){_suggest(name)}; "
                f"known: {', '.join(_ALL_NAMES)}"
            )


def _choose_model(layers: Sequence[Layer], merged: dict[str, tuple[Any, str]]) -> None:
    """The highest layer that picks a workload model overrides a lower layer's other model.

    ``rate`` is the open model; ``users`` or ``stages`` without ``rate`` the closed one. A
    keyword ``users=50`` under a marker's ``rate=100`` runs 50 users, not the marker's rate.
    """
    for layer in layers:
        picks_open = layer.values.get("rate") is not None
        picks_closed = not picks_open and any(
            layer.values.get(name) is not None for name in ("users", "stages")
        )
        if not (picks_open or picks_closed):
            continue
        other = "users" if picks_open else "rate"
        if other in merged and merged[other][1] != layer.origin:
            del merged[other]
        return


def resolve(layers: Iterable[Layer]) -> StormConfig:
    """Merge *layers* (highest precedence first) into a validated :class:`StormConfig`."""
    layers = list(layers)
    order = [layer.origin for layer in layers]
    merged: dict[str, tuple[Any, str]] = {}
    for layer in layers:
        check_names(layer.values, layer.origin)
        for name, value in layer.values.items():
            if value is None and name in BUDGET_NAMES:
                continue
            merged.setdefault(name, (value, layer.origin))
    _choose_model(layers, merged)

    config = StormConfig()
    for name, (_, origin) in merged.items():
        config.origins[name] = origin

    def take(name: str) -> tuple[Any, str] | None:
        return merged.get(name)

    if (item := take("users")) is not None:
        config.users = _positive_int("users", *item)
    duration = take("duration")
    requests = take("requests")
    if (
        duration is not None
        and requests is not None
        and duration[0] is not None
        and requests[0] is not None
    ):
        if duration[1] == requests[1]:
            raise ConfigError(
                f"duration={duration[0]!r} and requests={requests[0]!r} are both set "
                f"(from {duration[1]}); give one stop condition, not both"
            )
        # Different layers: the higher one wins, as for any other parameter.
        if order.index(requests[1]) < order.index(duration[1]):
            duration = None
        else:
            requests = None
    if requests is not None and requests[0] is not None:
        config.requests = _positive_int("requests", *requests)
        config.duration = None
    elif duration is not None and duration[0] is not None:
        config.duration = _number("duration", *duration, positive=True)
    if (item := take("ramp")) is not None:
        config.ramp = _number("ramp", *item)
    if (item := take("think_ms")) is not None:
        if hasattr(item[0], "sample") and callable(item[0].sample):
            config.think = item[0]
            mean = getattr(item[0], "mean_ms", None)
            config.think_ms = float(mean) if isinstance(mean, int | float) else 0.0
        else:
            config.think_ms = _number("think_ms", *item)
    if (item := take("rate")) is not None and item[0] is not None:
        config.rate = _number("rate", *item)
        if (users := take("users")) is not None and users[1] == item[1]:
            raise ConfigError(
                f"users={users[0]!r} and rate={item[0]!r} are both set (from {item[1]}): users is "
                "the closed model, rate the open model; give one"
            )
    if (item := take("arrivals")) is not None:
        config.arrivals = _choice("arrivals", *item, ("constant", "poisson"))
    if (item := take("max_in_flight")) is not None:
        config.max_in_flight = _positive_int("max_in_flight", *item)
    if (item := take("stages")) is not None and item[0] is not None:
        config.stages = _stages(*item)
        config.duration = None
        config.requests = None
        for clash in ("duration", "requests"):
            other = take(clash)
            if other is not None and other[0] is not None and other[1] == item[1]:
                raise ConfigError(
                    f"stages and {clash}={other[0]!r} are both set (from {item[1]}): the stages "
                    "set the length of the storm"
                )
        if config.rate is None and config.origins.get("users") is None:
            config.users = 0
    if (item := take("rounds")) is not None:
        config.rounds = _positive_int("rounds", *item)
    if (item := take("aggregate")) is not None:
        config.aggregate = _choice("aggregate", *item, ("median", "worst", "best"))
    if (item := take("budgets")) is not None and item[0] is not None:
        config.endpoint_budgets = _endpoint_budgets(*item)
    if (item := take("warmup")) is not None:
        config.warmup = _number("warmup", *item)
    if (item := take("warmup_requests")) is not None:
        config.warmup_requests = _positive_int("warmup_requests", *item, minimum=0)
    if (item := take("timeout_ms")) is not None:
        config.timeout_ms = _number("timeout_ms", *item, positive=True)
    if (item := take("workers")) is not None:
        config.workers = _positive_int("workers", *item)
    if (item := take("threads")) is not None:
        config.threads = _positive_int("threads", *item)
    if (item := take("on_start")) is not None and item[0] is not None:
        config.on_start = item[0]
    if (item := take("checks")) is not None and item[0] is not None:
        config.checks = item[0]
    if (item := take("engine")) is not None and item[0] is not None:
        config.engine = _choice("engine", *item, ("native", "locust"))
    if (item := take("server")) is not None and item[0] is not None:
        config.server = _server(*item)
    if (item := take("processes")) is not None and item[0] is not None:
        config.processes = _processes(*item)
    if (item := take("seed")) is not None and item[0] is not None:
        config.seed = _positive_int("seed", *item, minimum=0)
    if (item := take("interface")) is not None and item[0] is not None:
        config.interface = _choice("interface", *item, ("asgi", "wsgi"))
    if (item := take("lifespan")) is not None:
        config.lifespan = _choice("lifespan", *item, ("auto", "on", "off"))
    if (item := take("gc")) is not None:
        config.gc = _choice("gc", *item, ("off", "on"))
    if (item := take("clock")) is not None and item[0] is not None:
        config.clock = _choice("clock", *item, ("wall", "virtual"))
    if (item := take("allow_hosts")) is not None and item[0] is not None:
        config.allow_hosts = _allow_hosts(*item)
    if (item := take("name")) is not None and item[0] is not None:
        if not isinstance(item[0], str):
            raise ConfigError(f"{_where('name', *item)} must be a string")
        config.name = item[0]
    for name in BUDGET_NAMES:
        if (item := take(name)) is not None:
            config.budgets[name] = budget_limit(name, *item)
    for name in REQUEST_NAMES:
        if (item := take(name)) is not None and item[0] is not None:
            config.request_options[name] = item[0]
    return config
