"""Storm parameters: the known names, their defaults, validation and precedence.

Values arrive in layers (keyword argument > marker > command-line option > ini >
default); every value keeps the name of the layer it came from so that an error
can say where a bad value was written.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ._errors import ConfigError

__all__ = [
    "BUDGET_NAMES",
    "DEFAULT_DURATION",
    "DEFAULT_TIMEOUT_MS",
    "WORKLOAD_NAMES",
    "Layer",
    "StormConfig",
    "resolve",
]

DEFAULT_DURATION = 2.0
DEFAULT_TIMEOUT_MS = 10_000.0
DEFAULT_USERS = 10

#: Budget name -> (description, unit) — the order is the order of the verdict table.
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
}

#: Workload parameter name -> one line of help (shown by `pytest --markers` and the docs).
WORKLOAD_NAMES: dict[str, str] = {
    "users": f"concurrent virtual users, closed model (default {DEFAULT_USERS})",
    "duration": f"seconds of load after warm-up (default {DEFAULT_DURATION:g}); exclusive with requests",
    "requests": "stop after this many measured requests; exclusive with duration",
    "ramp": "seconds over which users start (default: staggered over a few ms)",
    "think_ms": "pause of each user between its requests, ms (default 0)",
    "warmup": "seconds of load before measuring; those requests are discarded (default 0)",
    "warmup_requests": "number of first requests discarded (default 0)",
    "timeout_ms": f"per-request timeout, ms (default {DEFAULT_TIMEOUT_MS:g})",
    "workers": "WSGI server model: worker processes, like gunicorn -w (default 1)",
    "threads": "WSGI server model: threads per worker, like gunicorn --threads (default 1)",
    "seed": "seed for request mixes and simulated latency",
    "interface": "'asgi' or 'wsgi' when the app's kind cannot be detected",
    "lifespan": "'auto' (default), 'on' or 'off': run ASGI lifespan startup/shutdown",
    "gc": "'off' (default: the cyclic collector paused during the storm) or 'on'",
    "name": "label of the storm in reports",
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
    duration: float | None = DEFAULT_DURATION
    requests: int | None = None
    ramp: float = 0.0
    think_ms: float = 0.0
    warmup: float = 0.0
    warmup_requests: int = 0
    timeout_ms: float = DEFAULT_TIMEOUT_MS
    workers: int = 1
    threads: int = 1
    seed: int | None = None
    interface: str | None = None
    lifespan: str = "auto"
    gc: str = "off"
    name: str | None = None
    budgets: dict[str, float] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    request_options: dict[str, Any] = field(default_factory=dict)

    def origin_of(self, name: str) -> str:
        """Where the value of *name* came from."""
        return self.origins.get(name, "default")

    def workload(self) -> dict[str, Any]:
        """Workload parameters as a plain dict (for reports)."""
        skip = {"budgets", "origins", "request_options"}
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


def check_names(values: Mapping[str, Any], origin: str) -> None:
    """Raise :class:`ConfigError` for a name that is not a storm parameter."""
    for name in values:
        if name not in _ALL_NAMES:
            raise ConfigError(
                f"unknown storm parameter {name!r} (from {origin}){_suggest(name)}; "
                f"known: {', '.join(_ALL_NAMES)}"
            )


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
        config.think_ms = _number("think_ms", *item)
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
    if (item := take("seed")) is not None and item[0] is not None:
        config.seed = _positive_int("seed", *item, minimum=0)
    if (item := take("interface")) is not None and item[0] is not None:
        config.interface = _choice("interface", *item, ("asgi", "wsgi"))
    if (item := take("lifespan")) is not None:
        config.lifespan = _choice("lifespan", *item, ("auto", "on", "off"))
    if (item := take("gc")) is not None:
        config.gc = _choice("gc", *item, ("off", "on"))
    if (item := take("name")) is not None and item[0] is not None:
        if not isinstance(item[0], str):
            raise ConfigError(f"{_where('name', *item)} must be a string")
        config.name = item[0]
    for name in BUDGET_NAMES:
        if (item := take(name)) is None:
            continue
        value, origin = item
        if not _is_number(value):
            raise ConfigError(
                f"budget {_where(name, value, origin)} must be a number, not {type(value).__name__}"
            )
        if value < 0:
            raise ConfigError(f"budget {_where(name, value, origin)} must not be negative")
        if name in ("max_error_rate", "max_saturation") and value > 1:
            raise ConfigError(f"budget {_where(name, value, origin)} is a fraction between 0 and 1")
        config.budgets[name] = float(value)
    for name in REQUEST_NAMES:
        if (item := take(name)) is not None and item[0] is not None:
            config.request_options[name] = item[0]
    return config
