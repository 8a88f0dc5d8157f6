"""Storm parameters: their layers, precedence and validation, from the one table in ``_spec``.

Values arrive in layers (keyword argument > marker > command-line option > ini >
default); every value keeps the name of the layer it came from so that an error
can say where a bad value was written. What each parameter and budget is -- its help,
validator, default, scaling, shard split, options and the storms it applies to -- is
one row of ``_spec.table``; this module only merges the layers.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field, fields
from typing import Any

from ._errors import ConfigError
from ._spec import table as _table
from ._spec.table import REQUEST_NAMES, WEBSOCKET, budget_limit, canonical, check_budget_name
from ._spec.values import (
    DEFAULT_DURATION,
    DEFAULT_TIMEOUT_MS,
    DEFAULT_USERS,
    MAX_SCALE,
    SERVERS,
    _is_number,
)

__all__ = [
    "BUDGET_NAMES",
    "COUNT_BUDGETS",
    "DEFAULT_DURATION",
    "DEFAULT_TIMEOUT_MS",
    "ENDPOINT_BUDGETS",
    "FLOOR_BUDGETS",
    "SERVERS",
    "WEBSOCKET_BUDGETS",
    "WEBSOCKET_NAMES",
    "WORKLOAD_NAMES",
    "Layer",
    "StormConfig",
    "budget_limit",
    "check_budget_name",
    "resolve",
]

_ = DEFAULT_USERS


class _Names(Mapping[str, str]):
    """Name -> help of the table's rows that *keep* accepts, read when asked (never stale)."""

    def __init__(self, rows: Callable[[], Mapping[str, Any]], keep: Callable[[Any], bool]) -> None:
        self._rows = rows
        self._keep = keep

    def _live(self) -> dict[str, str]:
        return {name: row.help for name, row in self._rows().items() if self._keep(row)}

    def __getitem__(self, name: str) -> str:
        return self._live()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._live())

    def __len__(self) -> int:
        return len(self._live())


class _NameSet(Set[str]):
    """The names of a :class:`_Names` view, as a set."""

    def __init__(self, names: Mapping[str, str]) -> None:
        self._names = names

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _http(row: Any) -> bool:
    return bool(row.storms - {WEBSOCKET})


def _websocket_only(row: Any) -> bool:
    return bool(row.storms == {WEBSOCKET})


#: Budget name -> description, in the order of the verdict table (HTTP storms).
BUDGET_NAMES: Mapping[str, str] = _Names(lambda: _table.BUDGETS, _http)
#: Budgets whose limit is a floor (the measured figure must reach it), not a ceiling.
FLOOR_BUDGETS: Set[str] = _NameSet(_Names(lambda: _table.BUDGETS, lambda b: b.direction == "min"))
#: Budgets that count something (requests, threads, calls): whole numbers.
COUNT_BUDGETS: Set[str] = _NameSet(_Names(lambda: _table.BUDGETS, lambda b: b.unit == "count"))
#: Budgets that also apply to one endpoint of a request mix.
ENDPOINT_BUDGETS: Set[str] = _NameSet(
    _Names(lambda: _table.BUDGETS, lambda b: b.endpoint is not None)
)
#: Workload parameter name -> one line of help (HTTP storms).
WORKLOAD_NAMES: Mapping[str, str] = _Names(lambda: _table.PARAMS, _http)
#: WebSocket-only parameters and budgets.
WEBSOCKET_NAMES: Mapping[str, str] = _Names(lambda: _table.PARAMS, _websocket_only)
WEBSOCKET_BUDGETS: Mapping[str, str] = _Names(lambda: _table.BUDGETS, _websocket_only)


def _all_names() -> tuple[str, ...]:
    return (*_table.PARAMS, *_table.BUDGETS, *REQUEST_NAMES)


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
    pool_budgets: dict[str, dict[str, float]] = field(default_factory=dict)
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

    #: Values of the WebSocket-only parameters (a WebSocket storm reads them).
    websocket: dict[str, Any] = field(default_factory=dict)

    @property
    def in_flight_cap(self) -> int:
        """The open model's cap on requests in flight (the field keeps its old name)."""
        return self.max_in_flight

    @in_flight_cap.setter
    def in_flight_cap(self, value: int) -> None:
        self.max_in_flight = value

    def scaled(self, factor: float, origin: str) -> None:
        """Scale users, rates, durations and request counts by *factor* (budgets unchanged).

        What scales, and how, is each parameter's ``scaling`` in ``_spec.table``.
        """
        if not _is_number(factor) or not 0 < factor <= MAX_SCALE:
            raise ConfigError(
                f"scale={factor!r} (from {origin}) must be a number greater than 0 and at most "
                f"{MAX_SCALE:g}"
            )
        self.scale = factor
        for row in _table.PARAMS.values():
            if row.scaling is None or row.target not in ("config", "resolve"):
                continue
            value = getattr(self, row.name, None)
            if value is None:
                continue
            setattr(self, row.name, _SCALE[row.scaling](value, factor))

    def origin_of(self, name: str) -> str:
        """Where the value of *name* came from."""
        return self.origins.get(name, "default")

    def workload(self) -> dict[str, Any]:
        """Workload parameters as a plain dict (for reports)."""
        skip = {
            "websocket",
            "budgets",
            "origins",
            "request_options",
            "endpoint_budgets",
            "pool_budgets",
            "think",
            "on_start",
            "checks",
        }
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


#: How each kind of ``scaling`` scales a value by a factor.
_SCALE: dict[str, Callable[[Any, float], Any]] = {
    "users": lambda n, f: max(1, math.ceil(n * f)) if n else 0,
    "factor": lambda x, f: x * f,
    "count": lambda n, f: max(1, math.ceil(n * f)),
    "stages": lambda st, f: tuple((seconds * f, target * f) for seconds, target in st),
}


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, _all_names(), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_names(values: Mapping[str, Any], origin: str) -> None:
    """Raise :class:`ConfigError` for a name that is not a storm parameter."""
    known = _all_names()
    aliases = {alias for row in _table.PARAMS.values() for alias in row.aliases}
    aliases |= {alias for row in _table.BUDGETS.values() for alias in row.aliases}
    for name in values:
        if name not in known and name not in aliases:
            raise ConfigError(
                f"unknown storm parameter {name!r} (from {origin}){_suggest(name)}; "
                f"known: {', '.join(known)}"
            )


def canonical_layer(layer: Layer) -> Layer:
    """*layer* with every old spelling replaced by its name (each warns once)."""
    renamed = {canonical(name, layer.origin): value for name, value in layer.values.items()}
    if renamed.keys() == layer.values.keys():
        return layer
    return Layer(layer.origin, renamed)


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


def _stop(
    merged: dict[str, tuple[Any, str]], order: list[str]
) -> tuple[tuple[Any, str] | None, tuple[Any, str] | None]:
    """The stop condition: ``duration`` or ``requests``, not both from one layer."""
    duration = merged.get("duration")
    requests = merged.get("requests")
    if duration is None or requests is None or duration[0] is None or requests[0] is None:
        return duration, requests
    if duration[1] == requests[1]:
        raise ConfigError(
            f"duration={duration[0]!r} and requests={requests[0]!r} are both set "
            f"(from {duration[1]}); give one stop condition, not both"
        )
    # Different layers: the higher one wins, as for any other parameter.
    if order.index(requests[1]) < order.index(duration[1]):
        return None, requests
    return duration, None


def _resolve_coupled(
    config: StormConfig, merged: dict[str, tuple[Any, str]], order: list[str]
) -> None:
    """The parameters that decide together: the model, the stop condition, stages, think time."""
    rows = _table.PARAMS

    def check(name: str, item: tuple[Any, str]) -> Any:
        return rows[name].validate(name, *item)

    if (item := merged.get("users")) is not None:
        config.users = check("users", item)
    duration, requests = _stop(merged, order)
    if requests is not None and requests[0] is not None:
        config.requests = check("requests", requests)
        config.duration = None
    elif duration is not None and duration[0] is not None:
        config.duration = check("duration", duration)
    if (item := merged.get("think_ms")) is not None:
        think = check("think_ms", item)
        if isinstance(think, float):
            config.think_ms = think
        else:
            config.think = think
            mean = getattr(think, "mean_ms", None)
            config.think_ms = float(mean) if isinstance(mean, int | float) else 0.0
    if (item := merged.get("rate")) is not None and item[0] is not None:
        config.rate = check("rate", item)
        if (users := merged.get("users")) is not None and users[1] == item[1]:
            raise ConfigError(
                f"users={users[0]!r} and rate={item[0]!r} are both set (from {item[1]}): users is "
                "the closed model, rate the open model; give one"
            )
    if (item := merged.get("stages")) is not None and item[0] is not None:
        config.stages = check("stages", item)
        config.duration = None
        config.requests = None
        for clash in ("duration", "requests"):
            other = merged.get(clash)
            if other is not None and other[0] is not None and other[1] == item[1]:
                raise ConfigError(
                    f"stages and {clash}={other[0]!r} are both set (from {item[1]}): the stages "
                    "set the length of the storm"
                )
        if config.rate is None and config.origins.get("users") is None:
            config.users = 0
    if (item := merged.get("budgets")) is not None and item[0] is not None:
        config.endpoint_budgets = check("budgets", item)


def resolve(layers: Iterable[Layer]) -> StormConfig:
    """Merge *layers* (highest precedence first) into a validated :class:`StormConfig`.

    Each parameter is validated by its row of ``_spec.table``; old spellings warn and
    count as the new name.
    """
    layers = [canonical_layer(layer) for layer in layers]
    order = [layer.origin for layer in layers]
    merged: dict[str, tuple[Any, str]] = {}
    for layer in layers:
        check_names(layer.values, layer.origin)
        for name, value in layer.values.items():
            if value is None and name in _table.BUDGETS:
                continue
            merged.setdefault(name, (value, layer.origin))
    _choose_model(layers, merged)

    config = StormConfig()
    for name, (_, origin) in merged.items():
        config.origins[name] = origin
    _resolve_coupled(config, merged, order)
    for name, row in _table.PARAMS.items():
        item = merged.get(name)
        if item is None or (item[0] is None and not row.none_is_value):
            continue
        if row.target == "config":
            setattr(config, name, row.validate(name, *item))
        elif row.target == "websocket":
            config.websocket[name] = row.validate(name, *item)
    for name in _table.BUDGETS:
        if (item := merged.get(name)) is not None:
            config.budgets[name] = budget_limit(name, *item)
    for name in REQUEST_NAMES:
        if (item := merged.get(name)) is not None and item[0] is not None:
            config.request_options[name] = item[0]
    return config
