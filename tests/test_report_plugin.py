"""Report options in real pytest sessions: JSON, HTML, baselines, regressions, pytest-xdist."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from hdrh.histogram import HdrHistogram

from pytest_concurrency._report._json import merge_histograms

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")

# The app's service time comes from the environment, so two runs of the same tests can
# differ by a known amount (a regression on purpose).
STORM_APPS = """
import os
import time

DELAY = float(os.environ.get("STORM_TEST_DELAY", "0.005"))

def sleepy_wsgi(environ, start_response):
    time.sleep(DELAY)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""

TESTS = """
from storm_apps import sleepy_wsgi

def test_one(storm):
    storm(sleepy_wsgi, "GET", "/one", users=4, workers=4, duration=0.3)

def test_two(storm):
    storm(sleepy_wsgi, "GET", "/two", users=4, workers=4, duration=0.3)
    storm(sleepy_wsgi, "GET", "/three", users=4, workers=4, duration=0.3)
"""

ONE = """
from storm_apps import sleepy_wsgi

def test_one(storm):
    storm(sleepy_wsgi, "GET", "/one", users=4, workers=4, duration=0.3)
"""

Run = Callable[..., pytest.RunResult]


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("STORM_TEST_DELAY", raising=False)
    pytester.makepyfile(storm_apps=STORM_APPS)

    def runner(*args: str) -> pytest.RunResult:
        return pytester.runpytest(
            "-p", "pytest_concurrency.plugin", "-p", "no:cacheprovider", *args
        )

    return runner


def _storms(path: Path) -> list[dict[str, object]]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["schema_version"] == 2
    storms: list[dict[str, object]] = doc["storms"]
    return storms


def test_options_are_documented(run: Run) -> None:
    result = run("--help")
    result.stdout.fnmatch_lines(
        [
            "*--concurrency-json=PATH*",
            "*--concurrency-html=PATH*",
            "*--concurrency-save=NAME*",
            "*--concurrency-compare=NAME*",
            "*--concurrency-compare-fail=EXPR*",
            "*--concurrency-storage=DIR*",
            "*concurrency_compare_fail (string):*",
        ]
    )


def test_json_report_has_every_storm(pytester: pytest.Pytester, run: Run) -> None:
    pytester.makepyfile(test_storms=TESTS)
    result = run("--concurrency-json=out/storms.json")
    result.assert_outcomes(passed=2)
    path = pytester.path / "out" / "storms.json"
    result.stdout.fnmatch_lines(
        [f"JSON report written to {path}", "timer noise on this machine: *within noise."]
    )
    storms = _storms(path)
    assert [(s["nodeid"], s["index"], s["label"]) for s in storms] == [
        ("test_storms.py::test_one", 0, "GET /one"),
        ("test_storms.py::test_two", 0, "GET /two"),
        ("test_storms.py::test_two", 1, "GET /three"),
    ]
    doc = json.loads(path.read_text())
    assert set(doc["machine"]["noise"]) >= {"sleep_p99_ms", "asyncio_p99_ms"}
    for storm in storms:
        histograms = storm["histograms"]
        assert isinstance(histograms, dict)
        latency = HdrHistogram.decode(histograms["latency"])
        assert latency.get_total_count() == storm["requests"]
        # Simulated I/O is 5 ms; nothing can answer faster.
        assert latency.get_value_at_percentile(50) >= 5000


def test_ini_twins_are_relative_to_the_ini_file(pytester: pytest.Pytester, run: Run) -> None:
    pytester.makeini(
        "[pytest]\n"
        "concurrency_json = reports/storms.json\n"
        "concurrency_storage = baselines\n"
        "concurrency_save = nightly\n"
    )
    pytester.makepyfile(test_storms=ONE)
    (pytester.path / "sub").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(pytester.path / "sub")
        result = run(str(pytester.path))
    result.assert_outcomes(passed=1)
    assert len(_storms(pytester.path / "reports" / "storms.json")) == 1
    assert len(_storms(pytester.path / "baselines" / "nightly.json")) == 1


def test_html_report(pytester: pytest.Pytester, run: Run) -> None:
    pytester.makepyfile(test_storms=ONE)
    result = run("--concurrency-html=report.html")
    result.assert_outcomes(passed=1)
    page = (pytester.path / "report.html").read_text(encoding="utf-8")
    result.stdout.fnmatch_lines([f"HTML report written to {pytester.path / 'report.html'}"])
    assert page.count("Plotly.newPlot(") == 1 + 2
    assert "test_storms.py::test_one · GET /one" in page


def test_html_without_plotly_is_a_usage_error(
    pytester: pytest.Pytester, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "plotly", None)
    pytester.makepyfile(test_storms=TESTS)
    result = run("--concurrency-html=report.html")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --concurrency-html='report.html' needs plotly*pip install 'pytest-storm[[]html]'"]
    )
    assert "passed" not in result.stdout.str()


def test_save_then_compare(pytester: pytest.Pytester, run: Run) -> None:
    pytester.makepyfile(test_storms=TESTS)
    saved = run("--concurrency-save=main", "-k", "test_one")
    saved.assert_outcomes(passed=1, deselected=1)
    path = pytester.path / ".storms" / "main.json"
    saved.stdout.fnmatch_lines([f"baseline 'main' written to {path}"])

    result = run("--concurrency-compare=main")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*= storms compared with baseline main (saved *) =*",
            "test*storm*p50*p99*max*rps*errors",
            "test_storms.py::test_one*GET /one*ms (*%)*ms (*%)*ms (*%)*rps (*%)*0.00% (+0.00pp)",
            "test_storms.py::test_two*GET /two*new: not in the baseline",
            "test_storms.py::test_two*GET /three [[]1]*new: not in the baseline",
        ]
    )
    # Said once, under the comparison table.
    assert result.stdout.str().count("timer noise on this machine") == 1


def test_compare_fail_fails_the_storm_that_regressed(
    pytester: pytest.Pytester, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_storms=ONE)
    run("--concurrency-save=main").assert_outcomes(passed=1)
    # Four times the service time, on a pool large enough never to queue: p50 grows ~4x.
    monkeypatch.setenv("STORM_TEST_DELAY", "0.02")
    result = run("--concurrency-compare=main", "--concurrency-compare-fail=p50:50%")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*storm GET /one regressed against baseline 'main' (*main.json, saved *):",
            "*p50 grew from * ms to * ms (+*%; allowed p50:50%)",
            "test_storms.py::test_one · GET /one",
            "  regressed vs baseline main: p50 +*% ?+*%, +*%? >+50%; 3 rounds now",
            "    p50 grew from * ms to * ms (+*%; allowed p50:50%) — 90% interval of the change *",
        ]
    )
    line = next(x for x in result.stdout.lines if x.startswith("  regressed vs baseline"))
    assert len(line.strip()) <= 160
    # The storm's row says the test failed on it, as the test's own verdict does.
    result.stdout.fnmatch_lines(["test_storms.py::test_one*FAIL vs baseline*regressed: p50 +*"])


def test_compare_fail_passes_within_its_threshold(
    pytester: pytest.Pytester, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_storms=ONE)
    run("--concurrency-save=main").assert_outcomes(passed=1)
    # The same app again: p50 stays near 5 ms, far from 3x; throughput far from a 90% drop.
    result = run("--concurrency-compare=main", "--concurrency-compare-fail=p50:200%,rps:90%")
    result.assert_outcomes(passed=1)
    assert "regressed" not in result.stdout.str()
    result.stdout.fnmatch_lines(["test_storms.py::test_one*GET /one*ms (*%)*rps (*%)*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--concurrency-compare=main", "--concurrency-compare-fail=p99:lots"],
            "ERROR: --concurrency-compare-fail='p99:lots': 'lots' for p99 is not an amount*",
        ),
        (
            ["--concurrency-compare-fail=p99:10%"],
            "ERROR: --concurrency-compare-fail='p99:10%' needs a baseline to compare with: "
            "add --concurrency-compare=NAME",
        ),
        (
            ["--concurrency-compare=nope"],
            "ERROR: --concurrency-compare='nope': no baseline *nope.json (saved baselines: main; "
            "save one with --concurrency-save=NAME)",
        ),
        (
            ["--concurrency-save=../up"],
            "ERROR: --concurrency-save='../up': a baseline name is letters, digits*",
        ),
    ],
)
def test_bad_report_options_are_usage_errors(
    pytester: pytest.Pytester, run: Run, args: list[str], message: str
) -> None:
    storage = pytester.path / ".storms"
    storage.mkdir()
    (storage / "main.json").write_text(json.dumps({"schema_version": 1, "storms": []}))
    pytester.makepyfile(test_storms=TESTS)
    result = run(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


@pytest.mark.parametrize(
    ("name", "saved", "message"),
    [
        (
            "main",
            "{not json",
            "ERROR: --concurrency-save='main': baseline *main.json is not valid JSON (*); no test "
            "was run (--concurrency-save-replace replaces it)",
        ),
        (
            "main",
            '{"schema_version": 1, "storms": 3}',
            "ERROR: --concurrency-save='main': baseline *main.json does not fit the session "
            "document schema: the document lacks 'generator'*; no test was run",
        ),
        (
            "n" * 300,
            None,
            f"ERROR: --concurrency-save={'n' * 40 + '…'!r}: the name is 300 characters long; a "
            "baseline name has at most 100*",
        ),
        ("ci/main", None, "ERROR: --concurrency-save='ci/main': a baseline name is letters*"),
    ],
)
def test_a_baseline_that_could_not_be_saved_is_a_usage_error_before_any_test(
    pytester: pytest.Pytester, run: Run, name: str, saved: str | None, message: str
) -> None:
    storage = pytester.path / ".storms"
    storage.mkdir()
    if saved is not None:
        (storage / "main.json").write_text(saved, encoding="utf-8")
    pytester.makepyfile(
        test_storms="""
        from pathlib import Path
        from storm_apps import sleepy_wsgi

        def test_one(storm):
            Path("ran").touch()
            storm(sleepy_wsgi, "GET", "/one", users=2, workers=2, duration=0.1)
        """
    )
    result = run(f"--concurrency-save={name}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert not (pytester.path / "ran").exists()
    assert [p.read_text(encoding="utf-8") for p in storage.iterdir()] == (
        [saved] if saved is not None else []
    )


def test_bad_ini_compare_fail_names_the_ini_file(pytester: pytest.Pytester, run: Run) -> None:
    pytester.makeini("[pytest]\nconcurrency_compare_fail = p99=10%\n")
    pytester.makepyfile(test_storms=TESTS)
    result = run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: ini option concurrency_compare_fail in *tox.ini='p99=10%': 'p99=10%' has no ':'*"]
    )


def test_storage_option(pytester: pytest.Pytester, run: Run) -> None:
    pytester.makepyfile(test_storms=ONE)
    run("--concurrency-storage=ci/baselines", "--concurrency-save=py311")
    assert len(_storms(pytester.path / "ci" / "baselines" / "py311.json")) == 1
    result = run("--concurrency-storage=ci/baselines", "--concurrency-compare=py311")
    result.stdout.fnmatch_lines(["*storms compared with baseline py311*", "*test_one*GET /one*%*"])


def test_a_session_without_storms_writes_an_empty_document(
    pytester: pytest.Pytester, run: Run
) -> None:
    pytester.makepyfile(test_plain="def test_nothing():\n    pass\n")
    result = run("--concurrency-json=storms.json")
    result.assert_outcomes(passed=1)
    assert _storms(pytester.path / "storms.json") == []
    assert "timer noise" not in result.stdout.str()


def test_xdist_workers_send_their_storms_to_the_controller(
    pytester: pytest.Pytester, run: Run
) -> None:
    pytester.makepyfile(test_storms=TESTS)
    junit = pytester.path / "junit.xml"
    result = run("-p", "xdist", "-n", "2", "--concurrency-json=storms.json", f"--junitxml={junit}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*= storms =*",
            "test*storm*app*users*requests*rps*",
            "storms ran on 2 pytest-xdist workers in parallel*run the storm tests with -n 0*",
        ]
    )
    doc = json.loads((pytester.path / "storms.json").read_text())
    storms = sorted(doc["storms"], key=lambda s: (s["nodeid"], s["index"]))
    assert [(s["nodeid"], s["index"], s["label"]) for s in storms] == [
        ("test_storms.py::test_one", 0, "GET /one"),
        ("test_storms.py::test_two", 0, "GET /two"),
        ("test_storms.py::test_two", 1, "GET /three"),
    ]
    merged = merge_histograms([doc])["latency"]
    assert merged.get_total_count() == sum(s["requests"] for s in storms) > 0
    # The transport stays out of the JUnit XML; the figures stay in.
    names = {p.get("name") for p in ET.parse(junit).iter("property")}
    assert "storm.json" not in names
    assert "storm.p99_ms" in names


def test_an_unwritable_report_is_reported_not_an_internal_error(
    pytester: pytest.Pytester, run: Run
) -> None:
    # A report asked for that cannot be written is a usage error before any test runs.
    pytester.makepyfile(test_plain="def test_nothing():\n    pass\n")
    (pytester.path / "taken").mkdir()
    result = run("--concurrency-json=taken")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --concurrency-json='taken' (from command-line option --concurrency-json): "
            f"cannot write {pytester.path / 'taken'}: *is a directory*"
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert [p.name for p in pytester.path.iterdir() if p.name.startswith("taken")] == ["taken"]


# -- nothing lies, nothing is lost --------------------------------------------------------


def test_a_report_lost_after_the_tests_fails_the_run(pytester: pytest.Pytester, run: Run) -> None:
    # The path was writable when the session started; a test then took it.
    pytester.makepyfile(
        test_plain="""
        from pathlib import Path

        def test_takes_the_report_path():
            Path("late.json").mkdir()
        """
    )
    result = run("--concurrency-json=late.json")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            f"could not write the JSON report (--concurrency-json='late.json', "
            f"{pytester.path / 'late.json'}): *Is a directory*; the run fails because this "
            "report was asked for"
        ]
    )


def test_a_link_at_the_old_temporary_name_is_not_followed(
    pytester: pytest.Pytester, run: Run
) -> None:
    pytester.makepyfile(test_storms=ONE)
    victim = pytester.path / "victim.txt"
    victim.write_text("precious\n", encoding="utf-8")
    (pytester.path / "storms.json.partial").symlink_to(victim)
    storage = pytester.path / ".storms"
    storage.mkdir()
    (storage / "main.json.partial").symlink_to(victim)
    result = run("--concurrency-json=storms.json", "--concurrency-save=main")
    result.assert_outcomes(passed=1)
    assert victim.read_text(encoding="utf-8") == "precious\n"
    assert len(_storms(pytester.path / "storms.json")) == 1
    assert len(_storms(storage / "main.json")) == 1


def test_notes_are_not_warnings_under_w_error(pytester: pytest.Pytester, run: Run) -> None:
    # A scaled load and the spread of rounds are notes: a passing storm passes under -W error.
    pytester.makepyfile(
        test_notes="""
        from storm_apps import sleepy_wsgi

        def test_rounds(storm):
            result = storm(sleepy_wsgi, "GET", "/r", users=2, workers=2, duration=0.4, rounds=2)
            assert any("2 rounds" in n for n in result.notes)
            assert result.warnings == []
        """
    )
    result = run("-W", "error::pytest.PytestWarning", "--concurrency-scale=0.5")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= storms =*",
            "test_notes.py::test_rounds*GET /r*pass",
            "note: test_notes.py::test_rounds · GET /r: load scaled ×0.5*",
        ]
    )


MIX = """
import pytest
from pytest_concurrency import Request
from storm_apps import sleepy_wsgi

MIX = [Request("GET", "/a", weight=3), Request("GET", "/b", name="slow b")]

def test_mix(storm):
    storm(sleepy_wsgi, requests=MIX, users=4, workers=4, duration=0.4,
          budgets={"GET /a": {"p99_ms": 1000}, "slow b": {"p99_ms": 0.001}})
"""


def test_a_mix_shows_each_endpoint_with_its_verdict(pytester: pytest.Pytester, run: Run) -> None:
    pytest.importorskip("plotly")
    pytester.makepyfile(test_mix=MIX)
    result = run("--concurrency-html=report.html")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*= storms =*",
            "test*storm*",
            "test_mix.py::test_mix*mix of 2 requests*FAIL slow b p99_ms",
            "*  GET /a*pass",
            "*  slow b*FAIL p99_ms",
        ]
    )
    page = (pytester.path / "report.html").read_text(encoding="utf-8")
    assert "<td colspan='3'>GET /a</td>" in page
    assert "FAIL p99_ms" in page


def test_csv_export_has_locust_columns(pytester: pytest.Pytester, run: Run) -> None:
    import csv

    pytester.makepyfile(test_mix=MIX.replace('"slow b": {"p99_ms": 0.001}', '"slow b": {}'))
    pytester.makeini("[pytest]\nconcurrency_csv = out/run\n")
    result = run()
    result.assert_outcomes(passed=1)
    with (pytester.path / "out" / "run_stats.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["Type"], r["Name"]) for r in rows] == [
        ("GET", "/a"),
        ("", "slow b"),
        ("", "Aggregated"),
    ]
    for column in (
        "Request Count",
        "Failure Count",
        "Median Response Time",
        "Average Response Time",
        "Min Response Time",
        "Max Response Time",
        "Requests/s",
        "50%",
        "99%",
        "99.9%",
        "100%",
    ):
        assert column in rows[0]
    total = rows[-1]
    assert int(total["Request Count"]) == int(rows[0]["Request Count"]) + int(
        rows[1]["Request Count"]
    )
    # 5 ms per request: the median sits at the service time.
    assert 4 <= float(total["Median Response Time"]) < 50
    with (pytester.path / "out" / "run_stats_history.csv").open(newline="") as fh:
        history = list(csv.DictReader(fh))
    assert list(history[0])[2:] == [
        "Second",
        "Target",
        "Requests",
        "Errors",
        "50%",
        "99%",
        "In Flight",
        "Busy Workers",
    ]
    assert sum(int(h["Requests"]) for h in history) == int(total["Request Count"])
    assert all(h["Busy Workers"] for h in history)


def test_fixture_accepts_check_false(pytester: pytest.Pytester, run: Run) -> None:
    pytester.makepyfile(
        test_check="""
        from storm_apps import sleepy_wsgi

        def test_unchecked(storm):
            result = storm(sleepy_wsgi, "GET", "/", users=2, workers=1, requests=20,
                           p99_ms=0.001, check=False)
            assert not result.passed
            assert [v.name for v in result.failed_verdicts] == ["p99_ms"]
        """
    )
    run().assert_outcomes(passed=1)


def test_arun_without_a_running_loop_says_how_to_run_async_tests(
    pytester: pytest.Pytester, run: Run
) -> None:
    pytester.makepyfile(
        test_arun="""
        from storm_apps import sleepy_wsgi

        def test_forgot(storm):
            storm.arun(sleepy_wsgi, "GET", "/", requests=5)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*storm.arun(...) was called without a running event loop*@pytest.mark.anyio*asyncio_mode = auto*"
        ]
    )


def test_open_model_storm_reports_users_and_rate(pytester: pytest.Pytester, run: Run) -> None:
    pytester.makepyfile(
        test_rate="""
        from storm_apps import sleepy_wsgi

        def test_rate(storm):
            result = storm(sleepy_wsgi, "GET", "/", rate=100, workers=2, duration=0.5)
            # ≈ 100 rps × 5 ms = 0.5 in flight on average: at least one at the peak.
            assert 1 <= result.peak_in_flight <= 10
            assert any(p.in_flight for p in result.timeline)
        """
    )
    result = run("--junitxml=junit.xml")
    result.assert_outcomes(passed=1)
    props = {
        p.get("name"): p.get("value")
        for p in ET.parse(pytester.path / "junit.xml").iter("property")
    }
    assert props["storm.rate"] == "100.0"
    assert float(props["storm.in_flight_peak"]) >= 1
