"""The one table of parameters and budgets, what is derived from it, and the combination rules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pytest_concurrency import ConfigError, run_storm
from pytest_concurrency._budget import evaluate
from pytest_concurrency._cli import _params as cli_params
from pytest_concurrency._cli import build_parser
from pytest_concurrency._engine.shards import shard_configs
from pytest_concurrency._options import RUN_DEFAULTS
from pytest_concurrency._params import BUDGET_NAMES, Layer, StormConfig, resolve
from pytest_concurrency._report._text import unmeasured_reason
from pytest_concurrency._spec import values
from pytest_concurrency._spec.rules import check_kind, storm_kind
from pytest_concurrency._spec.table import (
    BUDGETS,
    HTTP,
    INPROCESS,
    LOCUST,
    PARAMS,
    SERVER,
    SHARDS,
    VIRTUAL,
    WEBSOCKET,
    Budget,
    CliFlag,
    Param,
    registered,
)

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")


def _config(**params: Any) -> StormConfig:
    return resolve([Layer("keyword argument", params)])


class Counting:
    """An async app that counts the requests it answered (none, when refused before load)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


# -- the table itself ------------------------------------------------------------------------


def test_every_config_parameter_defaults_as_its_row_says() -> None:
    config = StormConfig()
    for name, row in PARAMS.items():
        if row.target == "config":
            assert getattr(config, name) == (row.default if row.default is not None else None), name


def test_a_budget_row_names_its_figure_by_the_naming_rule() -> None:
    for name, row in BUDGETS.items():
        assert row.figure, name
        if name.startswith(("max_", "min_")) and not name.startswith("max_ms"):
            assert name == f"{name[:4]}{row.figure}", name
            assert row.direction == name[:3], name
        else:
            assert name == row.figure, name
            assert row.direction == "max", name
    assert not [p for p in PARAMS if p.startswith(("max_", "min_"))], (
        "a parameter reads as a budget"
    )


# -- a parameter and a budget added to the tables --------------------------------------------


BURST = Param(
    "burst",
    "requests each user sends back to back",
    values.positive_int(),
    1,
    run_wide=int,
    run_help="default burst of every storm",
    cli=CliFlag(int, "requests each user sends back to back"),
)
MAX_BURST = Budget(
    "max_burst_ms",
    "slowest burst, ms",
    lambda r: r.latency.max * 2,
    "ms",
    figure="burst_ms",
)


@pytest.fixture
def burst() -> Iterator[None]:
    with registered(BURST, MAX_BURST):
        yield
    assert "burst" not in PARAMS
    assert "max_burst_ms" not in BUDGETS


def test_an_added_row_reaches_the_resolver(burst: None) -> None:
    config = _config(burst=3, max_burst_ms=40)
    assert config.burst == 3  # type: ignore[attr-defined]
    assert config.budgets["max_burst_ms"] == 40
    with pytest.raises(ConfigError, match=r"burst=0 \(from keyword argument\) must be at least 1"):
        _config(burst=0)
    with pytest.raises(ConfigError, match=r"budget max_burst_ms=-1 \(from keyword argument\)"):
        _config(max_burst_ms=-1)


def test_an_added_row_reaches_the_cli_the_options_and_the_budgets(burst: None) -> None:
    args = build_parser().parse_args(["run", "m:app", "--burst", "4", "--budget", "max_burst_ms=9"])
    params = cli_params(args)
    assert params["burst"] == 4
    assert params["max_burst_ms"] == 9
    assert RUN_DEFAULTS["burst"] == (int, "default burst of every storm")
    assert "max_burst_ms" in BUDGET_NAMES
    result = run_storm(Counting(), "GET", "/", users=1, requests=5, burst=2, max_burst_ms=1e6)
    [verdict] = [v for v in result.verdicts if v.name == "max_burst_ms"]
    assert verdict.measured == result.latency.max * 2
    assert verdict.ok
    assert evaluate(result, {"max_burst_ms": 0})[0].ok is False


def test_an_added_row_reaches_the_marker_help_and_ini_keys(
    burst: None, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    markers = pytester.runpytest_inprocess("-p", "pytest_concurrency.plugin", "--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.concurrency(*burst=*Budgets:*max_burst_ms*"])
    helped = pytester.runpytest_inprocess("-p", "pytest_concurrency.plugin", "--help")
    helped.stdout.fnmatch_lines(["*--concurrency-burst=INT", "*default burst of every storm"])
    helped.stdout.fnmatch_lines(["*concurrency_burst (string):", "*default burst of every storm"])
    pytester.makeini("[pytest]\nconcurrency_burst = 0\n")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.concurrency(users=1)
        def test_x():
            pass
        """
    )
    ran = pytester.runpytest_inprocess("-p", "pytest_concurrency.plugin")
    ran.stdout.fnmatch_lines(["*burst=0 (from ini options) must be at least 1*"])


# -- derived views -----------------------------------------------------------------------------


def test_scaling_and_shard_split_follow_the_rows() -> None:
    config = _config(users=3, warmup=1.0, ramp=0.5, stages=[(2, 4)])
    config.scaled(2, "test")
    assert (config.users, config.warmup, config.ramp) == (6, 2.0, 1.0)
    assert config.stages == ((4.0, 8.0),)
    shards = shard_configs(_config(rate=90, processes=3, in_flight_cap=10, warmup_requests=5))
    assert [(s.rate, s.max_in_flight, s.warmup_requests) for s in shards] == [
        (30, 4, 2),
        (30, 4, 2),
        (30, 4, 1),
    ]
    assert all(s.processes == 1 and s.rounds == 1 and s.budgets == {} for s in shards)


def test_unmeasured_reasons_come_from_the_rows() -> None:
    data = {"requests": 10, "interface": "ASGI"}
    for name, row in BUDGETS.items():
        if name != "p99_ratio":
            assert unmeasured_reason(name, data) == row.unmeasured
    wsgi = {**data, "interface": "WSGI"}
    assert unmeasured_reason("max_loop_lag_ms", wsgi) == BUDGETS["max_loop_lag_ms"].unmeasured_wsgi


# -- WebSocket parameters are rows of the same table ------------------------------------------


# -- combination rules, table-driven -----------------------------------------------------------


RULES = [
    # (params, real server, websocket, kind, refused with)
    ({}, False, False, INPROCESS, None),
    ({"clock": "virtual"}, False, False, VIRTUAL, None),
    ({"clock": "virtual", "max_blocking_calls": 0}, False, False, VIRTUAL, "max_blocking_calls"),
    ({"clock": "virtual", "max_threads_busy": 1}, False, False, VIRTUAL, "max_threads_busy"),
    ({"clock": "virtual", "max_saturation": 0.5}, False, False, VIRTUAL, "max_saturation"),
    ({"clock": "virtual", "max_queue_p99_ms": 5}, False, False, VIRTUAL, "max_queue_p99_ms"),
    ({"clock": "virtual", "max_queued": 0}, False, False, VIRTUAL, "max_queued"),
    ({"clock": "virtual", "p99_ms": 5}, False, False, VIRTUAL, None),
    ({"processes": 2, "max_loop_lag_ms": 5}, False, False, SHARDS, "max_loop_lag_ms"),
    ({"processes": 2, "max_saturation": 0.5}, False, False, SHARDS, None),
    ({"max_loop_lag_ms": 5}, True, False, SERVER, None),
    ({"engine": "locust", "requests": 5}, True, False, LOCUST, "requests"),
    ({"engine": "locust", "rate": 5}, True, False, LOCUST, "rate"),
    ({"engine": "locust", "stages": [(1, 2)]}, True, False, LOCUST, None),
    ({"listeners": 3}, False, False, INPROCESS, "listeners"),
    ({"listeners": 3}, False, True, WEBSOCKET, None),
    ({"max_disconnect_rate": 0.1}, True, False, SERVER, "max_disconnect_rate"),
]


@pytest.mark.parametrize(("params", "real", "websocket", "kind", "refused"), RULES)
def test_combination_rules(
    params: dict[str, Any], real: bool, websocket: bool, kind: str, refused: str | None
) -> None:
    config = _config(**params)
    assert storm_kind(config, real_server=real, websocket=websocket) == kind
    if refused is None:
        check_kind(config, kind)
    else:
        with pytest.raises(ConfigError, match=rf"{refused}\b.*\(from keyword argument\)"):
            check_kind(config, kind)


def test_every_kind_is_named_by_some_row() -> None:
    kinds = {kind for row in [*PARAMS.values(), *BUDGETS.values()] for kind in row.storms}
    assert kinds == HTTP | {WEBSOCKET}


# -- names a user can guess --------------------------------------------------------------------


def test_a_limit_is_checked_by_its_rows_unit() -> None:
    fraction = [n for n, b in BUDGETS.items() if b.unit == "fraction"]
    assert set(fraction) == {"max_error_rate", "max_saturation", "max_disconnect_rate"}
    for name in fraction:
        with pytest.raises(ConfigError, match="is a fraction between 0 and 1"):
            _config(**{name: 1.5})


def test_a_run_wide_default_does_not_refuse_a_storm_it_does_not_apply_to() -> None:
    config = resolve([Layer("keyword argument", {}), Layer("ini options", {"workers": 4})])
    check_kind(config, WEBSOCKET)
    config = resolve([Layer("keyword argument", {"workers": 4})])
    with pytest.raises(ConfigError, match=r"workers \(from keyword argument\) does not apply"):
        check_kind(config, WEBSOCKET)


def test_junit_properties_and_compare_thresholds_use_the_figures_names() -> None:
    from pytest_concurrency._fixture import _figures
    from pytest_concurrency._spec.table import COMPARE_FIGURES

    figures = {row.figure for row in BUDGETS.values()}
    result = run_storm(Counting(), "GET", "/", users=1, requests=5)
    described = {"label", "interface", "server", "users", "requests", "rate", "passed"}
    properties = set(_figures(result)) - described
    assert properties
    assert properties <= figures
    assert set(COMPARE_FIGURES) <= figures
