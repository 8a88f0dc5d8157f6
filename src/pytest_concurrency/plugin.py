"""pytest wiring: options and ini twins, the ``concurrency`` marker, the ``storm`` and
``upstream`` fixtures, and a terminal summary of every storm.

Precedence of storm parameters: keyword argument > marker > command-line option > ini
> default (resolved in ``_options``; the fixture itself is ``_fixture.StormFixture``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ._compare.session import ControlSession
from ._compare.session import add_options as add_control_options
from ._errors import ConfigError
from ._fixture import StormFixture
from ._options import add_run_options, disabled, marker_layer, run_layers, scale
from ._params import BUDGET_NAMES, WEBSOCKET_BUDGETS, WEBSOCKET_NAMES, WORKLOAD_NAMES, resolve
from ._plugin_report import ReportSession, add_options
from ._report._records import as_records
from ._report._terminal import storms_table
from ._session import STORMS_KEY, SessionStorms
from ._simio import Upstream

__all__ = ["StormFixture"]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options ``--concurrency-*`` with their ini twins ``concurrency_*``."""
    add_run_options(parser)
    add_options(parser)
    add_control_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker (documented by ``pytest --markers``) and the session store."""
    workload = ", ".join(f"{name}=…" for name in WORKLOAD_NAMES)
    budgets = ", ".join(BUDGET_NAMES)
    websocket = ", ".join([*WEBSOCKET_NAMES, *WEBSOCKET_BUDGETS])
    config.addinivalue_line(
        "markers",
        f"concurrency({workload}, <budget>=…): parameters of the storms fired by the `storm` "
        f"fixture in this test. Budgets: {budgets}. WebSocket storms also: {websocket}. "
        "Keyword arguments of storm() override it.",
    )
    config.stash[STORMS_KEY] = SessionStorms()
    config.pluginmanager.register(ReportSession(config), "concurrency-report")
    config.pluginmanager.register(ControlSession(config), "concurrency-control")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Reject a bad marker before the test runs (no load is ever fired for it)."""
    if item.get_closest_marker("concurrency") is None:
        return
    try:
        resolve([marker_layer(item), *run_layers(item.config)])
        scale(item.config)
    except ConfigError as exc:
        message = str(exc)
    else:
        return
    pytest.fail(message, pytrace=False)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """Answer the app's own outbound HTTP calls: ``upstream.route(url, latency=...)``.

    httpx and httpx2 are answered in-process; during a storm every other client reaches
    ``http://`` routes through a server on loopback.
    """
    with Upstream() as fake:
        yield fake


@pytest.fixture
def storm(request: pytest.FixtureRequest) -> StormFixture:
    """Fire request storms at an ASGI or WSGI app: ``storm(app, "GET", "/path", users=50, p99_ms=100)``."""
    if disabled(request.config):
        pytest.skip("storms disabled (--concurrency-disable)")
    return StormFixture(request.node)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """One row per storm of the session (never fails the run: budgets fail their own test)."""
    rows = config.stash[STORMS_KEY].rows if STORMS_KEY in config.stash else []
    if not rows:
        return
    terminalreporter.section("storms")
    report = config.pluginmanager.getplugin("concurrency-report")
    records = as_records(rows)
    if isinstance(report, ReportSession):
        # A storm's verdict against a saved baseline is in its row, as a control's is.
        records = report.with_saved_blocks(records)
    for line in storms_table(records):
        terminalreporter.write_line(line)
