"""One naming rule for budgets, compare thresholds and JUnit properties; old spellings still
work under a DeprecationWarning that names the new spelling and where the old one came from."""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest

from pytest_concurrency._spec.table import (
    BUDGETS,
    COMPARE_FIGURES,
    OLD_THRESHOLD_NAMES,
    warn_old_threshold_names,
)

Run = Callable[..., pytest.RunResult]

APP = """
def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(spelling_apps=APP)

    def runner(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess(
            "-p", "pytest_concurrency.plugin", "-p", "no:cacheprovider", *args
        )

    return runner


def test_an_old_threshold_spelling_warns_with_the_new_one_and_its_origin() -> None:
    with pytest.warns(DeprecationWarning, match="is now called") as caught:
        warn_old_threshold_names("p99:10%,rps:5%, mean :5ms", "--concurrency-compare-fail")
    assert [str(w.message) for w in caught] == [
        "'p99' (from --concurrency-compare-fail) is now called 'p99_ms'; "
        "the old name will be removed",
        "'mean' (from --concurrency-compare-fail) is now called 'mean_ms'; "
        "the old name will be removed",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # The names by the rule, and what only the paired mode judges, pass untouched.
        new = "p99_ms:10%, rps:5%,error_rate:1%,cpu:10%,blocking:50%"
        warn_old_threshold_names(new, "ini concurrency_compare_fail")


def test_every_old_threshold_spelling_is_a_figure_of_the_rule() -> None:
    assert OLD_THRESHOLD_NAMES == {
        "p50": "p50_ms",
        "p90": "p90_ms",
        "p95": "p95_ms",
        "p99": "p99_ms",
        "p999": "p999_ms",
        "max": "max_ms",
        "mean": "mean_ms",
    }
    # A threshold and a budget name the same figure the same way.
    for figure in COMPARE_FIGURES:
        assert {figure, f"max_{figure}", f"min_{figure}"} & set(BUDGETS), figure


def test_junit_properties_are_named_by_the_rule(run: Run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_props="""
        from spelling_apps import hello

        def test_closed(storm):
            storm(hello, "GET", "/", users=2, workers=2, duration=0.2)

        def test_open(storm):
            storm(hello, "GET", "/", rate=50, workers=2, duration=0.2)
        """
    )
    run("--junitxml=junit.xml").assert_outcomes(passed=2)
    names = {
        str(p.get("name")).removeprefix("storm.")
        for p in ET.parse(pytester.path / "junit.xml").iter("property")
    }
    figures = {"rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "error_rate"}
    assert figures | {"saturation", "queue_p99_ms", "in_flight_peak"} <= names
    for name in figures | {"saturation", "queue_p99_ms", "in_flight_peak"}:
        # Each figure is named as its budget names it, without max_ or min_.
        assert {name, f"max_{name}", f"min_{name}"} & set(BUDGETS), name
    assert "peak_in_flight" not in names


def _save_a_baseline(run: Run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_one="""
        from spelling_apps import hello

        def test_one(storm):
            storm(hello, "GET", "/", users=2, workers=2, requests=8)
        """
    )
    run("--concurrency-save=main").assert_outcomes(passed=1)


def test_an_old_threshold_spelling_on_the_command_line_fails_under_w_error(
    run: Run, pytester: pytest.Pytester
) -> None:
    _save_a_baseline(run, pytester)
    old = run(
        "-W",
        "error::DeprecationWarning",
        "--concurrency-compare=main",
        "--concurrency-compare-fail=p99:100000%",
    )
    assert old.ret != 0
    assert (
        "'p99' (from --concurrency-compare-fail) is now called 'p99_ms'"
        in old.stderr.str() + old.stdout.str()
    )
    new = run(
        "-W",
        "error::DeprecationWarning",
        "--concurrency-compare=main",
        "--concurrency-compare-fail=p99_ms:100000%",
    )
    new.assert_outcomes(passed=1)
    # Without -W error the old spelling still works, and says so once.
    warned = run("--concurrency-compare=main", "--concurrency-compare-fail=p99:100000%")
    warned.assert_outcomes(passed=1)
    assert "is now called 'p99_ms'" in warned.stdout.str() + warned.stderr.str()


def test_an_old_threshold_spelling_in_the_ini_names_the_ini(
    run: Run, pytester: pytest.Pytester
) -> None:
    _save_a_baseline(run, pytester)
    pytester.makeini("[pytest]\nconcurrency_compare_fail = mean:100000%\n")
    old = run("-W", "error::DeprecationWarning", "--concurrency-compare=main")
    assert old.ret != 0
    text = old.stderr.str() + old.stdout.str()
    assert "'mean' (from " in text
    assert "concurrency_compare_fail" in text
    assert "is now called 'mean_ms'" in text


def test_an_old_parameter_spelling_in_a_marker_fails_under_w_error(
    run: Run, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        test_marked="""
        import pytest
        from spelling_apps import hello

        @pytest.mark.concurrency(max_in_flight=4)
        def test_old(storm):
            storm(hello, "GET", "/", rate=40, workers=2, duration=0.2)

        @pytest.mark.concurrency(in_flight_cap=4)
        def test_new(storm):
            storm(hello, "GET", "/", rate=40, workers=2, duration=0.2)
        """
    )
    result = run("-W", "error::DeprecationWarning")
    # Read when the fixture resolves the marker: an error at the test's setup.
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*DeprecationWarning: 'max_in_flight' (from @pytest.mark.concurrency on "
            "test_marked.py::test_old) is now called 'in_flight_cap'*"
        ]
    )
