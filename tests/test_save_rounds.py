"""``--concurrency-save`` runs what the user asked for; a compare that can fail adds rounds, and says so."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")

APP = """
import time

def sleepy_wsgi(environ, start_response):
    time.sleep(0.002)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""

TEST = """
from storm_apps import sleepy_wsgi

def test_one(storm):
    storm(sleepy_wsgi, "GET", "/one", users=2, workers=2, duration=0.2)
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "pytest_concurrency.plugin", "-p", "no:cacheprovider", *args)


def test_save_runs_one_round_and_a_failing_compare_three_with_a_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(storm_apps=APP, test_one=TEST)
    saved = _run(pytester, "--concurrency-save=main", "--concurrency-json=saved.json")
    saved.assert_outcomes(passed=1)
    storm = json.loads((pytester.path / "saved.json").read_text())["storms"][0]
    assert storm["rounds"] == []  # one round, as the storm asked
    saved.stdout.no_fnmatch_line("*rounds each*")

    compared = _run(
        pytester,
        "--concurrency-compare=main",
        "--concurrency-compare-fail=p99:1000%",
        "--concurrency-json=compared.json",
    )
    compared.assert_outcomes(passed=1)
    storm = json.loads((pytester.path / "compared.json").read_text())["storms"][0]
    assert len(storm["rounds"]) == 3
    compared.stdout.fnmatch_lines(
        [
            "storms ran 3 rounds each unless they set rounds: --concurrency-compare-fail "
            "judges them on the spread of their rounds"
        ]
    )
