"""Which parameters and budgets combine: every rule in one place, checked before any load.

A storm is of one kind (``table``: in-process, behind a real server, Locust, virtual
clock, process shards, WebSocket). A parameter or budget whose row does not list the
storm's kind is refused: a figure the storm cannot measure would only fail after the
whole storm ran, and a parameter it cannot honour would be silently ignored. The virtual
clock has rules of its own (``check_clock``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol

from .._errors import ConfigError
from .table import (
    BUDGETS,
    INPROCESS,
    LOCUST,
    PARAMS,
    SERVER,
    SHARDS,
    VIRTUAL,
    WEBSOCKET,
)

__all__ = [
    "KIND_WORDS",
    "RUN_WIDE_LAYERS",
    "check_clock",
    "check_kind",
    "storm_kind",
    "unused_server_model",
]


class _Config(Protocol):
    """The parts of a ``StormConfig`` the rules read."""

    clock: str
    workers: int
    threads: int
    engine: str
    server: str
    processes: int
    budgets: dict[str, float]
    origins: dict[str, str]
    websocket: dict[str, Any]

    def origin_of(self, name: str) -> str: ...


#: The layers of run-wide defaults (``--concurrency-NAME`` and the ini file).
RUN_WIDE_LAYERS = frozenset({"command-line options", "ini options"})

#: How an error names each kind of storm.
KIND_WORDS = {
    INPROCESS: "an in-process storm",
    SERVER: "a storm against a real server",
    LOCUST: "a Locust storm (engine='locust')",
    VIRTUAL: "a storm on the virtual clock (clock='virtual')",
    SHARDS: "a storm sharded over processes (processes > 1)",
    WEBSOCKET: "a WebSocket storm",
}

#: Why a budget cannot be measured by a kind of storm, where more can be said than its name.
_WHY_NOT: dict[tuple[str, str], str] = {
    (VIRTUAL, "max_loop_lag_ms"): (
        "a virtual loop never lags, it charges the app's work to its clock instead"
    ),
    (VIRTUAL, "max_blocking_calls"): (
        "the event-loop monitor does not run on the virtual clock (a blocking call only "
        "advances it)"
    ),
    (VIRTUAL, "max_threads_busy"): "the thread-pool probes do not run on the virtual clock",
    (VIRTUAL, "max_saturation"): "the thread-pool probes do not run on the virtual clock",
    (VIRTUAL, "max_queue_p99_ms"): "the thread-pool probes do not run on the virtual clock",
    (VIRTUAL, "max_queued"): "only the WSGI pool counts queued requests, and a WSGI app "
    "cannot run on the virtual clock",
    (SHARDS, "max_loop_lag_ms"): "the event-loop monitor does not watch process shards",
    (SHARDS, "max_blocking_calls"): "the event-loop monitor does not watch process shards",
}

#: What to do instead, by kind.
_INSTEAD = {
    VIRTUAL: "set a latency budget or use clock='wall'",
    SHARDS: "use processes=1 for this budget",
    LOCUST: "run it on the native engine",
}


def storm_kind(config: _Config, *, real_server: bool, websocket: bool = False) -> str:
    """The kind of storm *config* fires (one of the kinds of ``table``)."""
    if websocket:
        return WEBSOCKET
    if config.engine == "locust":
        return LOCUST
    if real_server:
        return SERVER
    if config.clock == "virtual":
        return VIRTUAL
    if config.processes > 1:
        return SHARDS
    return INPROCESS


def check_kind(config: _Config, kind: str) -> None:
    """Refuse a parameter or budget set for *config* that a storm of *kind* cannot honour."""
    for name, origin in config.origins.items():
        row = PARAMS.get(name)
        if origin in RUN_WIDE_LAYERS:
            # A default for the whole run is not a request of this storm: a storm it does
            # not apply to goes without it.
            continue
        if row is not None and kind not in row.storms:
            where = f"{name} (from {config.origin_of(name)})"
            if row.storms == {WEBSOCKET}:
                raise ConfigError(
                    f"{where} applies to WebSocket storms only (storm.websocket), not to "
                    f"{KIND_WORDS[kind]}"
                )
            raise ConfigError(f"{where} does not apply to {KIND_WORDS[kind]}")
    for name in config.budgets:
        budget = BUDGETS.get(name)
        if budget is None or kind in budget.storms:
            continue
        why = _WHY_NOT.get((kind, name))
        if why is None and budget.storms == {WEBSOCKET}:
            why = "it is a WebSocket storm's figure"
        because = f": {why}" if why else ""
        instead = f"; {_INSTEAD[kind]}" if kind in _INSTEAD else ""
        raise ConfigError(
            f"budget {name} (from {config.origin_of(name)}) cannot be measured by "
            f"{KIND_WORDS[kind]}{because}{instead}"
        )


#: Layers that set a worker count for every app they try, ASGI ones included.
_SEARCH_LAYERS = frozenset({"capacity search"})


def unused_server_model(
    config: _Config, interface: str, *, real_server: bool
) -> list[tuple[str, int, str]]:
    """``workers``/``threads`` a storm set that nothing honours: ``(name, value, origin)``.

    The in-process WSGI pool and a real server's processes take them; an ASGI app in-process
    runs every request on the one event loop of its storm (or of each shard). They are not
    refused, since one test often storms WSGI and ASGI apps with the same arguments, but
    the result says so, or its figures would read as if they had been applied.
    """
    if interface != "asgi" or real_server:
        return []
    found = []
    for name in ("workers", "threads"):
        origin = config.origins.get(name)
        value = getattr(config, name)
        if origin is None or origin in RUN_WIDE_LAYERS or origin in _SEARCH_LAYERS or value == 1:
            continue
        found.append((name, value, origin))
    return found


def check_clock(
    config: _Config,
    interface: str,
    *,
    on_start: Any = None,
    is_async_hook: Callable[[Any], bool] = inspect.iscoroutinefunction,
) -> None:
    """Refuse, before any load, a virtual-time storm whose time could not be virtual."""
    if config.clock != "virtual":
        return
    where = f"clock='virtual' (from {config.origin_of('clock')})"
    if interface == "wsgi":
        raise ConfigError(
            f"{where} needs an async (ASGI) app: a WSGI app blocks real threads, whose time "
            "cannot jump; use clock='wall'"
        )
    if config.engine != "native":
        raise ConfigError(
            f"{where} runs on the native engine only, not engine={config.engine!r} (from "
            f"{config.origin_of('engine')}), which sends real HTTP on the wall clock"
        )
    if config.server != "inprocess":
        raise ConfigError(
            f"{where} cannot run against server={config.server!r} (from "
            f"{config.origin_of('server')}): a real server answers over real sockets on the "
            "wall clock; use server='inprocess' or clock='wall'"
        )
    if config.processes > 1:
        raise ConfigError(
            f"{where} runs on one event loop: processes={config.processes} (from "
            f"{config.origin_of('processes')}) would shard it over several clocks; use processes=1"
        )
    if on_start is not None and not is_async_hook(on_start):
        raise ConfigError(
            f"{where}: on_start={on_start!r} (from {config.origin_of('on_start')}) is a plain "
            "function, which runs in a worker thread; make it async def"
        )
    if "max_loop_lag_ms" in config.budgets:
        raise ConfigError(
            f"{where}: budget max_loop_lag_ms (from {config.origin_of('max_loop_lag_ms')}) "
            "cannot be measured: a virtual loop never lags, it charges the app's work to its "
            "clock instead; set a latency budget or use clock='wall'"
        )
    check_kind(config, VIRTUAL)
