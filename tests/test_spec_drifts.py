"""Drifts between the places that used to define a parameter or budget, each refused now.

These tests use only what existed before the one table, so each fails on the code as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_concurrency import ConfigError, run_storm
from pytest_concurrency._cli import main
from pytest_concurrency._params import Layer, resolve


def _config(**params: Any) -> Any:
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


def test_the_marker_accepts_websocket_parameters() -> None:
    marker = Layer("@pytest.mark.concurrency on t", {"listeners": 5, "connect_p99_ms": 20})
    config = resolve([marker])
    assert config.websocket == {"listeners": 5}
    with pytest.raises(ConfigError, match=r"listeners=0 \(from @pytest.mark.concurrency on t\)"):
        resolve([Layer("@pytest.mark.concurrency on t", {"listeners": 0})])


def test_a_websocket_parameter_on_an_http_storm_is_refused_before_load() -> None:
    app = Counting()
    with pytest.raises(
        ConfigError, match=r"listeners \(from keyword argument\) applies to WebSocket"
    ):
        run_storm(app, "GET", "/", users=1, requests=1, listeners=5)
    with pytest.raises(ConfigError, match=r"budget connect_p99_ms .* cannot be measured"):
        run_storm(app, "GET", "/", users=1, requests=1, connect_p99_ms=5)
    assert app.calls == 0


@pytest.mark.parametrize(
    "budget", ["max_blocking_calls", "max_threads_busy", "max_saturation", "max_queue_p99_ms"]
)
def test_the_virtual_clock_refuses_what_it_cannot_measure_before_load(budget: str) -> None:
    app = Counting()
    with pytest.raises(
        ConfigError,
        match=rf"budget {budget} \(from keyword argument\) cannot be measured by a storm on the virtual clock",
    ):
        run_storm(app, "GET", "/", users=2, requests=4, clock="virtual", **{budget: 1})
    assert app.calls == 0


# -- Locust stages -----------------------------------------------------------------------------


def test_the_locust_command_validates_stages_as_every_storm_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "locustfile.py"
    code = main(["locust", "--stages", "0:10,5:0", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert not out.exists()
    assert "stages=[(0.0, 10.0), (5.0, 0.0)] (from command line): stage 0 lasts 0.0 s" in err
    code = main(["locust", "--users", "0", "--out", str(out)])
    assert code == 2
    assert "users=0 (from command line)" in capsys.readouterr().err


# -- names a user can guess ----------------------------------------------------------------------


def test_the_open_models_cap_is_in_flight_cap_and_the_old_name_warns() -> None:
    assert _config(rate=10, in_flight_cap=7).max_in_flight == 7
    with pytest.warns(DeprecationWarning, match=r"'max_in_flight' .* now called 'in_flight_cap'"):
        config = _config(rate=10, max_in_flight=5)
    assert config.max_in_flight == 5
    assert config.origin_of("in_flight_cap") == "keyword argument"


def test_a_compare_threshold_names_its_figure_as_budgets_and_properties_do() -> None:
    from pytest_concurrency._baseline.thresholds import parse_compare_fail

    assert parse_compare_fail("p99_ms:10%,mean_ms:5ms,max_ms:12.5,rps:5%") == parse_compare_fail(
        "p99:10%,mean:5ms,max:12.5,rps:5%"
    )


def test_process_shards_refuse_a_loop_lag_budget_before_load() -> None:
    app = Counting()
    with pytest.raises(
        ConfigError,
        match=r"budget max_loop_lag_ms \(from keyword argument\) cannot be measured by a storm "
        r"sharded over processes .*does not watch process shards",
    ):
        run_storm(app, "GET", "/", users=2, requests=4, processes=2, max_loop_lag_ms=5)
    assert app.calls == 0
