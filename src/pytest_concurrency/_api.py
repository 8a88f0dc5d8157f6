"""Programmatic entry points: fire a storm without pytest."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ._capacity import CapacityResult, search_capacity
from ._engine.plan import StormPlan, plan_storm
from ._engine.storm import run_plan, run_plan_async
from ._engine.websocket import WebSocketResult, plan_websocket, run_websocket_plan
from ._errors import BudgetExceeded, ConcurrencyWarning, ConfigError
from ._fidelity import Fidelity, compare_servers
from ._model.result import StormResult
from ._params import Layer
from ._report._text import budget_failure
from ._servers._process import max_workers
from ._workload import Request, RequestFactory, split_requests

__all__ = [
    "CapacityPlan",
    "arun_storm",
    "capacity",
    "check_budgets",
    "check_capacity",
    "compare",
    "plan_capacity",
    "run_capacity",
    "run_storm",
    "run_websocket_storm",
    "warn_about",
]


def warn_about(result: StormResult, *, stacklevel: int = 3) -> None:
    """Emit a :class:`ConcurrencyWarning` for each caveat the storm found in its own figures."""
    for message in result.warnings:
        warnings.warn(ConcurrencyWarning(f"{result.label}: {message}"), stacklevel=stacklevel)


def check_budgets(result: StormResult) -> None:
    """Raise :class:`BudgetExceeded` with the verdict table when a budget did not hold."""
    __tracebackhide__ = True
    if not result.passed:
        raise BudgetExceeded(budget_failure(result), result)


def check_capacity(found: CapacityResult) -> None:
    """Raise :class:`BudgetExceeded` with the search's table when no worker count met the
    budgets."""
    __tracebackhide__ = True
    if found.best is None:
        raise BudgetExceeded(found.table(), found)


def _plan(
    app: Any,
    method: str | None,
    path: str | None,
    requests: int | Sequence[Request] | RequestFactory | None,
    params: dict[str, Any],
) -> StormPlan:
    mix, params = split_requests(requests, params)
    return plan_storm(app, method, path, requests=mix, layers=[Layer("keyword argument", params)])


def run_storm(
    app: Any,
    method: str | None = None,
    path: str | None = None,
    *,
    requests: int | Sequence[Request] | RequestFactory | None = None,
    check: bool = True,
    **params: Any,
) -> StormResult:
    """Fire a storm at *app* and return its result; raise :class:`BudgetExceeded` if *check*."""
    result = run_plan(_plan(app, method, path, requests, params))
    warn_about(result)
    if check:
        check_budgets(result)
    return result


async def arun_storm(
    app: Any,
    method: str | None = None,
    path: str | None = None,
    *,
    requests: int | Sequence[Request] | RequestFactory | None = None,
    check: bool = True,
    **params: Any,
) -> StormResult:
    """Async twin of :func:`run_storm`."""
    result = await run_plan_async(_plan(app, method, path, requests, params))
    warn_about(result)
    if check:
        check_budgets(result)
    return result


def run_websocket_storm(
    app: Any, path: str = "/", *, check: bool = True, **params: Any
) -> WebSocketResult:
    """Fire a WebSocket storm at an ASGI *app*; raise :class:`BudgetExceeded` if *check*.

    One connection per user (``users``), or messages arriving at ``rate``; each sends
    ``message`` (or ``factory(user, i)``) and waits for the server's answer, for
    ``duration`` seconds or ``messages`` messages. ``listeners=N`` opens a broadcast room
    of N listen-only connections. Budgets: the latency budgets on the round trip,
    ``connect_p99_ms``, ``min_messages_per_s``, ``max_disconnect_rate``, ``max_error_rate``
    (default 0: any failed message fails the storm).
    """
    plan = plan_websocket(app, path, layers=[Layer("keyword argument", params)])
    result = run_websocket_plan(plan)
    warn_about(result)
    if check:
        check_budgets(result)
    return result


@dataclass(frozen=True)
class CapacityPlan:
    """A validated capacity search: every trial is *base* with another worker count."""

    base: StormPlan
    candidates: list[int]
    budgets: dict[str, float]
    layers: Sequence[Layer]
    scale: tuple[float, str] | None = None
    #: Largest worker count that can matter (closed model), and the users that set it.
    max_useful: int | None = None
    users: int | None = None
    #: Storms per worker count at the boundary, until a majority agrees.
    repeats: int = 3


def plan_capacity(
    app: Any,
    method: str | None,
    path: str | None,
    mix: Sequence[Request] | RequestFactory | None,
    workers: Iterable[int],
    layers: Sequence[Layer],
    *,
    scale: tuple[float, str] | None = None,
) -> CapacityPlan:
    """Validate a capacity search before any storm: the base plan, candidates and budgets.

    *layers* hold every parameter, a ``requests`` count among them (see ``split_requests``);
    *mix* is the request mix, if any. *scale* scales each trial as any storm.
    """
    base = plan_storm(app, method, path, requests=mix, layers=layers, scale=scale)
    try:
        candidates = sorted({int(w) for w in workers})
    except (TypeError, ValueError):
        raise ConfigError(
            f"workers={workers!r} (from capacity()) must be whole numbers, e.g. range(1, 65)"
        ) from None
    if not candidates or candidates[0] < 1:
        raise ConfigError(
            f"workers={workers!r} (from capacity()) must hold worker counts of at least 1"
        )
    budgets = dict(base.config.budgets)
    if not budgets:
        raise ConfigError("capacity() needs at least one budget to meet, e.g. p99_ms=200")
    if base.server is not None:
        # A real server takes at most max_workers() processes here: larger counts are
        # not tried rather than refused halfway through the search.
        candidates = [w for w in candidates if w <= max_workers()]
    if base.interface == "asgi" and base.server is None and base.url is None:
        # In-process, an ASGI app runs on one event loop whatever the worker count: one
        # storm answers whether a single worker suffices.
        candidates = candidates[:1]
    users, useful = _useful_workers(base)
    return CapacityPlan(
        base, candidates, budgets, list(layers), scale, max_useful=useful, users=users
    )


def _useful_workers(base: StormPlan) -> tuple[int | None, int | None]:
    """Closed model: the users, and the most workers that can serve them all at once."""
    config = base.config
    if config.rate is not None:
        return None, None  # open model: arrivals do not wait for responses
    users = config.users
    if config.stages:
        users = max(users, math.ceil(max(target for _, target in config.stages)))
    if users < 1:
        return None, None
    return users, max(1, math.ceil(users / max(1, config.threads)))


def run_capacity(
    plan: CapacityPlan,
    *,
    on_storm: Callable[[StormResult], None] | None = None,
    on_trial: Callable[[StormResult], None] | None = None,
) -> CapacityResult:
    """Bisect the worker counts with as few storms as possible; *on_storm* sees one per count.

    *on_trial* sees every storm as soon as it has run (what an interrupted search measured).
    """
    base = plan.base
    # One storm per worker count goes to the reports, in the order the counts were first
    # tried: the one whose figures the capacity table shows (repeats confirm the verdict).
    first_tried: list[int] = []

    def run(workers: int) -> StormResult:
        trial = plan_storm(
            base.import_string or base.app,
            requests=base.mix.factory or list(base.mix.requests),
            layers=[Layer("capacity search", {"workers": workers}), *plan.layers],
            scale=plan.scale,
        )
        trial = dataclasses.replace(trial, app_name=base.app_name, label=base.label)
        result = run_plan(trial)
        warn_about(result, stacklevel=4)
        if on_trial is not None:
            on_trial(result)
        if workers not in first_tried:
            first_tried.append(workers)
        return result

    found = search_capacity(
        run,
        plan.candidates,
        budgets=plan.budgets,
        is_async_app=base.interface == "asgi",
        repeats=plan.repeats,
        max_useful=plan.max_useful,
    )
    found.users = plan.users
    if on_storm is not None:
        for workers in first_tried:
            on_storm(found.results[workers])
    return found


def capacity(
    app: Any,
    method: str | None = None,
    path: str | None = None,
    *,
    workers: Iterable[int] = range(1, 129),
    requests: int | Sequence[Request] | RequestFactory | None = None,
    check: bool = False,
    **params: Any,
) -> CapacityResult:
    """Smallest WSGI worker count (of *workers*) whose storm meets the budgets in *params*.

    With *check*, a search in which no worker count met the budgets raises
    :class:`BudgetExceeded`; without it ``found.best`` is None.
    """
    mix, params = split_requests(requests, params)
    layers = [Layer("keyword argument", params)]
    found = run_capacity(plan_capacity(app, method, path, mix, workers, layers))
    if check:
        check_capacity(found)
    return found


def compare(
    app: Any,
    method: str | None = None,
    path: str | None = None,
    *,
    servers: Sequence[str] = ("inprocess", "uvicorn"),
    requests: int | Sequence[Request] | RequestFactory | None = None,
    check: bool = False,
    **params: Any,
) -> Fidelity:
    """Fire the same storm in-process and behind each real server; results side by side.

    Budgets in *params* are judged on every result; without *check* they do not raise:
    read ``fidelity[server].passed`` and the rows of :class:`Fidelity`. With *check* a
    broken budget raises :class:`BudgetExceeded` once every storm has run.
    """

    def run(server: str) -> StormResult:
        return run_storm(app, method, path, requests=requests, check=False, server=server, **params)

    fidelity = compare_servers(list(servers), run)
    if check:
        for result in fidelity.results.values():
            check_budgets(result)
    return fidelity
