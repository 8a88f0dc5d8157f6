"""The ``storm`` fixture: fires storms with the test's parameter layers and records them."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

from ._api import check_budgets, check_capacity, plan_capacity, run_capacity, warn_about
from ._budget import measure
from ._capacity import CapacityResult
from ._engine.plan import LiveFigures, Progress, StormPlan, plan_storm
from ._engine.storm import run_plan, run_plan_async
from ._engine.websocket import WebSocketResult, plan_websocket, run_websocket_plan
from ._errors import ConfigError
from ._fidelity import Fidelity, compare_servers
from ._model.result import StormResult
from ._options import scale, storm_layers
from ._params import Layer
from ._plugin_report import STORM_JSON_PROPERTY, compare_layers
from ._report._fidelity import fidelity_table
from ._report._terminal import LiveProgress
from ._session import STORMS_KEY
from ._workload import Request, RequestFactory, split_requests

__all__ = ["StormFixture"]


class StormFixture:
    """The ``storm`` fixture: ``storm(app, method="GET", path="/", **params) -> StormResult``."""

    def __init__(self, item: pytest.Item) -> None:
        self._item = item
        self.results: list[StormResult] = []
        self._recorded = 0

    def _plan(
        self,
        app: Any,
        method: str | None,
        path: str | None,
        requests: int | Sequence[Request] | RequestFactory | None,
        params: dict[str, Any],
    ) -> StormPlan:
        mix, params = split_requests(requests, params)
        return plan_storm(
            app,
            method,
            path,
            requests=mix,
            layers=self._layers(params),
            scale=scale(self._item.config),
        )

    def _layers(self, params: dict[str, Any]) -> list[Layer]:
        """The parameter layers of every storm this fixture fires, whichever form fires it."""
        return [*storm_layers(self._item, params), *compare_layers(self._item.config)]

    def __call__(
        self,
        app: Any,
        method: str | None = None,
        path: str | None = None,
        *,
        requests: int | Sequence[Request] | RequestFactory | None = None,
        check: bool = True,
        **params: Any,
    ) -> StormResult:
        """Fire a storm at *app*; budgets from the marker and *params* are enforced on return.

        With ``check=False`` a broken budget does not raise :class:`BudgetExceeded`: the
        verdicts are on the result (``result.passed``, ``result.failed_verdicts``).
        """
        __tracebackhide__ = True
        plan = self._plan(app, method, path, requests, params)
        paired = self._paired(plan, app, method, path, requests, params)
        if paired is not None:
            return self._finish(paired(), check=check)
        return self._finish(run_plan(plan, self._progress()), check=check)

    def _paired(
        self,
        plan: StormPlan,
        app: Any,
        method: str | None,
        path: str | None,
        requests: int | Sequence[Request] | RequestFactory | None,
        params: dict[str, Any],
    ) -> Callable[[], StormResult] | None:
        """Under --concurrency-control: the storm against the control and the experiment."""
        control = self._item.config.pluginmanager.get_plugin("concurrency-control")
        if control is None or not control.active:
            return None
        mix, rest = split_requests(requests, params)
        layers = [*storm_layers(self._item, rest), *compare_layers(self._item.config)]
        found = scale(self._item.config)
        return lambda: control.run(plan, app, method, path, mix, layers, found)

    def arun(
        self,
        app: Any,
        method: str | None = None,
        path: str | None = None,
        *,
        requests: int | Sequence[Request] | RequestFactory | None = None,
        check: bool = True,
        **params: Any,
    ) -> Coroutine[Any, Any, StormResult]:
        """Async form of the fixture, for async tests (``await storm.arun(app, "GET", "/")``)."""
        __tracebackhide__ = True
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # Without a loop the coroutine would never run: a test that forgot to await it,
            # or an async test pytest itself cannot run, would pass without a storm.
            raise ConfigError(
                "storm.arun(...) was called without a running event loop: it is for async "
                "tests — `async def test_x(storm)` with `await storm.arun(...)`, marked "
                "@pytest.mark.anyio (anyio's pytest plugin) or run under pytest-asyncio with "
                "asyncio_mode = auto (or @pytest.mark.asyncio); a sync test calls storm(...)"
            ) from None
        plan = self._plan(app, method, path, requests, params)
        return self._arun(plan, check, self._paired(plan, app, method, path, requests, params))

    async def _arun(
        self, plan: StormPlan, check: bool, paired: Callable[[], StormResult] | None = None
    ) -> StormResult:
        __tracebackhide__ = True
        if paired is not None:
            # The storm runs in other processes: the test's loop only waits for them.
            return self._finish(await anyio.to_thread.run_sync(paired), check=check)
        return self._finish(await run_plan_async(plan, self._progress()), check=check)

    def websocket(
        self, app: Any, path: str = "/", *, check: bool = True, **params: Any
    ) -> WebSocketResult:
        """Fire a WebSocket storm at an ASGI *app* (one connection per user); budgets from
        the marker and *params* are enforced on return unless *check* is False (see
        ``run_websocket_storm``)."""
        __tracebackhide__ = True
        plan = plan_websocket(
            app, path, layers=self._layers(params), scale=scale(self._item.config)
        )
        result = run_websocket_plan(plan, self._progress())
        self._finish(result, check=check)
        return result

    def compare(
        self,
        app: Any,
        method: str | None = None,
        path: str | None = None,
        *,
        servers: Sequence[str] = ("inprocess", "uvicorn"),
        requests: int | Sequence[Request] | RequestFactory | None = None,
        check: bool = True,
        **params: Any,
    ) -> Fidelity:
        """The same storm in-process and behind each real server of *servers*, side by side.

        Every storm is recorded in the session's reports and judged on its budgets; with
        *check* a broken budget raises after all of them ran. The fidelity table is printed
        to the test's output.
        """
        __tracebackhide__ = True

        def run(server: str) -> StormResult:
            plan = self._plan(app, method, path, requests, {**params, "server": server})
            result = run_plan(plan, self._progress())
            self.results.append(result)
            self._record(result)
            return result

        fidelity = compare_servers(list(servers), run)
        print(fidelity_table(fidelity))
        if check:
            for result in fidelity.results.values():
                check_budgets(result)
        return fidelity

    def capacity(
        self,
        app: Any,
        method: str | None = None,
        path: str | None = None,
        *,
        workers: Iterable[int] = range(1, 129),
        requests: int | Sequence[Request] | RequestFactory | None = None,
        check: bool = True,
        **params: Any,
    ) -> CapacityResult:
        """Smallest worker count of *workers* that meets the budgets (bisection, few storms).

        With *check*, a search in which no worker count met the budgets raises
        :class:`BudgetExceeded` (``found.best`` is None otherwise).
        """
        __tracebackhide__ = True
        mix, params = split_requests(requests, params)
        plan = plan_capacity(
            app,
            method,
            path,
            mix,
            workers,
            self._layers(params),
            scale=scale(self._item.config),
        )
        found = run_capacity(plan, on_storm=self._record)
        prefix = "capacity" if not self.results else f"capacity[{len(self.results)}]"
        self._item.user_properties.append((f"{prefix}.best_workers", found.best))
        self._item.user_properties.append((f"{prefix}.storms", found.storms))
        if check:
            check_capacity(found)
        return found

    def _progress(self) -> Progress | None:
        config = self._item.config
        capman = config.pluginmanager.getplugin("capturemanager")
        reporter = config.pluginmanager.getplugin("terminalreporter")
        if reporter is None or config.option.verbose < -1:
            return None

        @contextmanager
        def show(live: LiveFigures) -> Iterator[None]:
            if (live.expected_seconds or 0) < 1.0:
                yield  # too short to be worth a live line
                return
            line = LiveProgress(
                live.snapshot,
                label=f"storm {live.plan.label}",
                total=live.expected_seconds,
                stream=sys.__stderr__,
                capture=capman,
            )
            line.start()
            try:
                yield
            finally:
                line.stop()

        return show

    def _record(self, result: StormResult) -> None:
        """Add a storm to the session's reports (terminal table, JSON, HTML, xdist transport)."""
        self._recorded += 1
        self._item.config.stash[STORMS_KEY].rows.append((self._item.nodeid, result))
        if hasattr(self._item.config, "workerinput"):
            # An xdist worker: the controller rebuilds the storm from this property.
            self._item.user_properties.append((STORM_JSON_PROPERTY, json.dumps(result.to_dict())))

    def _finish(self, result: StormResult, *, check: bool = True) -> StormResult:
        __tracebackhide__ = True
        index = len(self.results)
        self.results.append(result)
        report_index = self._recorded
        self._record(result)
        prefix = "storm" if index == 0 else f"storm[{index}]"
        for key, value in _figures(result).items():
            self._item.user_properties.append((f"{prefix}.{key}", value))
        warn_about(result, stacklevel=4)
        if check:
            check_budgets(result)
        report = self._item.config.pluginmanager.get_plugin("concurrency-report")
        message = (
            report.check_regression(self._item.nodeid, report_index, result) if report else None
        )
        control = self._item.config.pluginmanager.get_plugin("concurrency-control")
        if not message and control is not None:
            message = control.regression(result)
        if message:
            pytest.fail(message, pytrace=False)
        return result


def _figures(result: StormResult) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "label": result.label,
        "interface": result.interface,
        "server": result.server,
        "users": result.users,
        "requests": result.requests,
        "rps": round(result.throughput, 2),
        "p50_ms": round(result.latency.p50, 3),
        "p90_ms": round(result.latency.p90, 3),
        "p99_ms": round(result.latency.p99, 3),
        "max_ms": round(result.latency.max, 3),
        "mean_ms": round(result.latency.mean, 3),
        "error_rate": round(result.error_rate, 5),
        "passed": result.passed,
    }
    if result.rate is not None:
        figures["rate"] = result.rate
    in_flight_peak = measure(result, "max_in_flight_peak")
    if math.isfinite(in_flight_peak):
        figures["in_flight_peak"] = round(in_flight_peak, 3)
    if result.saturation is not None:
        figures["saturation"] = round(result.saturation, 4)
    if result.queue_wait is not None:
        figures["queue_p99_ms"] = round(result.queue_wait.p99, 3)
    return figures
