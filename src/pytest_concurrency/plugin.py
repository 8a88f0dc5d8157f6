"""pytest wiring: options and ini twins, the ``concurrency`` marker, the ``storm`` fixture,
per-test figures in ``user_properties`` and a terminal summary of every storm.

Precedence of storm parameters: keyword argument > marker > command-line option > ini
> default.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from ._api import check_budgets, plan_capacity, run_capacity, warn_about
from ._capacity import CapacityResult
from ._engine import LiveFigures, Progress, StormPlan, plan_storm, run_plan, run_plan_async
from ._errors import ConfigError
from ._latency import Upstream
from ._params import BUDGET_NAMES, WORKLOAD_NAMES, Layer, check_names, resolve
from ._report._options import STORM_JSON_PROPERTY, ReportSession, add_options
from ._report._terminal import LiveProgress, storms_table
from ._result import StormResult
from ._session import STORMS_KEY, SessionStorms
from ._workload import Request, RequestFactory, split_requests

__all__ = ["StormFixture"]

#: Parameters that can also be set for the whole run: option --concurrency-NAME, ini concurrency_NAME.
_RUN_DEFAULTS: dict[str, tuple[type, str]] = {
    "duration": (
        float,
        "default storm duration in seconds when a storm gives neither duration nor requests",
    ),
    "timeout_ms": (float, "default per-request timeout in milliseconds"),
    "warmup": (float, "default warm-up in seconds, discarded from the figures"),
    "users": (int, "default number of virtual users"),
    "workers": (int, "default WSGI worker count (server model)"),
    "threads": (int, "default threads per WSGI worker (server model)"),
    "seed": (int, "default seed for request mixes and simulated latency"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options ``--concurrency-*`` with their ini twins ``concurrency_*``."""
    group = parser.getgroup("concurrency", "request storms (pytest-storm)")
    for name, (kind, help_text) in _RUN_DEFAULTS.items():
        option = "--concurrency-" + name.replace("_", "-")
        group.addoption(
            option,
            dest=f"concurrency_{name}",
            default=None,
            metavar=kind.__name__.upper(),
            help=help_text,
        )
        parser.addini(f"concurrency_{name}", help_text, default=None)
    group.addoption(
        "--concurrency-scale",
        dest="concurrency_scale",
        default=None,
        metavar="FACTOR",
        help=_SCALE_HELP,
    )
    parser.addini("concurrency_scale", _SCALE_HELP, default=None)
    group.addoption(
        "--concurrency-disable",
        dest="concurrency_disable",
        action="store_true",
        default=None,
        help=_DISABLE_HELP,
    )
    parser.addini("concurrency_disable", _DISABLE_HELP, type="bool", default=False)
    add_options(parser)


_SCALE_HELP = (
    "scale users, rates, durations and request counts of every storm by FACTOR for a quick "
    "local run (budgets unchanged; reports say so)"
)
_DISABLE_HELP = "skip every test that uses the storm fixture (with a reason)"


def _scale(config: pytest.Config) -> tuple[float, str] | None:
    raw = config.getoption("concurrency_scale", None)
    origin = "command-line option --concurrency-scale"
    if raw is None:
        raw = config.getini("concurrency_scale")
        origin = f"ini option concurrency_scale in {config.inipath}"
    if raw in (None, ""):
        return None
    try:
        factor = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(
            f"scale={raw!r} (from {origin}) must be a number greater than 0"
        ) from None
    if not factor > 0:
        raise ConfigError(f"scale={raw!r} (from {origin}) must be a number greater than 0")
    return factor, origin


def _disabled(config: pytest.Config) -> bool:
    flag = config.getoption("concurrency_disable", None)
    return bool(flag) if flag is not None else bool(config.getini("concurrency_disable"))


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker (documented by ``pytest --markers``) and the session store."""
    workload = ", ".join(f"{name}=…" for name in WORKLOAD_NAMES)
    budgets = ", ".join(BUDGET_NAMES)
    config.addinivalue_line(
        "markers",
        f"concurrency({workload}, <budget>=…): parameters of the storms fired by the `storm` "
        f"fixture in this test. Budgets: {budgets}. Keyword arguments of storm() override it.",
    )
    config.stash[STORMS_KEY] = SessionStorms()
    config.pluginmanager.register(ReportSession(config), "concurrency-report")


def _marker_layer(item: pytest.Item) -> Layer:
    values: dict[str, Any] = {}
    origin = f"@pytest.mark.concurrency on {item.nodeid}"
    # Closest marker first: a function's marker overrides its class's and module's.
    for marker in item.iter_markers("concurrency"):
        if marker.args:
            raise ConfigError(
                f"@pytest.mark.concurrency({', '.join(map(repr, marker.args))}) on {item.nodeid} "
                "takes keyword arguments "
                "only, such as @pytest.mark.concurrency(users=50, p99_ms=100)"
            )
        check_names(marker.kwargs, origin)
        for key, value in marker.kwargs.items():
            values.setdefault(key, value)
    return Layer(origin, values)


def _run_layers(config: pytest.Config) -> list[Layer]:
    option_values: dict[str, Any] = {}
    ini_values: dict[str, Any] = {}
    for name, (kind, _) in _RUN_DEFAULTS.items():
        raw = config.getoption(f"concurrency_{name}", None)
        flag = "--concurrency-" + name.replace("_", "-")
        if raw is not None:
            option_values[name] = _convert(name, raw, kind, f"command-line option {flag}")
        raw_ini = config.getini(f"concurrency_{name}")
        if raw_ini not in (None, "", []):
            ini_values[name] = _convert(
                name, raw_ini, kind, f"ini option concurrency_{name} in {config.inipath}"
            )
    return [Layer("command-line options", option_values), Layer("ini options", ini_values)]


def _convert(name: str, raw: Any, kind: type, origin: str) -> Any:
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={raw!r} (from {origin}) must be a {kind.__name__}") from None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Reject a bad marker before the test runs (no load is ever fired for it)."""
    if item.get_closest_marker("concurrency") is None:
        return
    try:
        resolve([_marker_layer(item), *_run_layers(item.config)])
        _scale(item.config)
    except ConfigError as exc:
        message = str(exc)
    else:
        return
    pytest.fail(message, pytrace=False)


class StormFixture:
    """The ``storm`` fixture: ``storm(app, method="GET", path="/", **params) -> StormResult``."""

    def __init__(self, item: pytest.Item) -> None:
        self._item = item
        self.results: list[StormResult] = []

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
            scale=_scale(self._item.config),
        )

    def _layers(self, params: dict[str, Any]) -> list[Layer]:
        """Parameter layers in precedence order: keyword, marker, command line, ini."""
        return [
            Layer("keyword argument", params),
            _marker_layer(self._item),
            *_run_layers(self._item.config),
        ]

    def __call__(
        self,
        app: Any,
        method: str | None = None,
        path: str | None = None,
        *,
        requests: int | Sequence[Request] | RequestFactory | None = None,
        **params: Any,
    ) -> StormResult:
        """Fire a storm at *app*; budgets from the marker and *params* are enforced on return."""
        __tracebackhide__ = True
        plan = self._plan(app, method, path, requests, params)
        return self._finish(run_plan(plan, self._progress()))

    async def arun(
        self,
        app: Any,
        method: str | None = None,
        path: str | None = None,
        *,
        requests: int | Sequence[Request] | RequestFactory | None = None,
        **params: Any,
    ) -> StormResult:
        """Async form of the fixture, for async tests (``await storm.arun(app, "GET", "/")``)."""
        __tracebackhide__ = True
        plan = self._plan(app, method, path, requests, params)
        return self._finish(await run_plan_async(plan, self._progress()))

    def capacity(
        self,
        app: Any,
        method: str | None = None,
        path: str | None = None,
        *,
        workers: Iterable[int] = range(1, 129),
        requests: int | Sequence[Request] | RequestFactory | None = None,
        **params: Any,
    ) -> CapacityResult:
        """Smallest worker count of *workers* that meets the budgets (bisection, few storms)."""
        __tracebackhide__ = True
        layers = self._layers(params)
        base, candidates, budgets = plan_capacity(app, method, path, requests, workers, layers)
        found = run_capacity(base, candidates, budgets, layers)
        prefix = "capacity" if not self.results else f"capacity[{len(self.results)}]"
        self._item.user_properties.append((f"{prefix}.best_workers", found.best))
        self._item.user_properties.append((f"{prefix}.storms", found.storms))
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

    def _finish(self, result: StormResult) -> StormResult:
        __tracebackhide__ = True
        index = len(self.results)
        self.results.append(result)
        self._item.config.stash[STORMS_KEY].rows.append((self._item.nodeid, result))
        if hasattr(self._item.config, "workerinput"):
            # An xdist worker: the controller rebuilds the storm from this property.
            self._item.user_properties.append((STORM_JSON_PROPERTY, json.dumps(result.to_dict())))
        prefix = "storm" if index == 0 else f"storm[{index}]"
        for key, value in _figures(result).items():
            self._item.user_properties.append((f"{prefix}.{key}", value))
        warn_about(result, stacklevel=4)
        check_budgets(result)
        report = self._item.config.pluginmanager.get_plugin("concurrency-report")
        message = report.check_regression(self._item.nodeid, index, result) if report else None
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
    if result.saturation is not None:
        figures["saturation"] = round(result.saturation, 4)
    if result.queue_wait is not None:
        figures["queue_p99_ms"] = round(result.queue_wait.p99, 3)
    return figures


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """Answer the app's own outbound httpx calls in-process: ``upstream.route(url, latency=...)``."""
    with Upstream() as fake:
        yield fake


@pytest.fixture
def storm(request: pytest.FixtureRequest) -> StormFixture:
    """Fire request storms at an ASGI or WSGI app: ``storm(app, "GET", "/path", users=50, p99_ms=100)``."""
    if _disabled(request.config):
        pytest.skip("storms disabled (--concurrency-disable)")
    return StormFixture(request.node)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """One row per storm of the session (never fails the run: budgets fail their own test)."""
    rows = config.stash[STORMS_KEY].rows if STORMS_KEY in config.stash else []
    if not rows:
        return
    terminalreporter.section("storms")
    for line in storms_table(rows):
        terminalreporter.write_line(line)
