"""Reports: JSON documents and their schema, baselines and regressions, terminal and HTML output."""

from __future__ import annotations

import io
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram

from pytest_concurrency import ConfigError, StormResult, TimelinePoint
from pytest_concurrency._baseline import compare as judged_against
from pytest_concurrency._baseline import store, wording
from pytest_concurrency._baseline import thresholds as compare_fail
from pytest_concurrency._budget import evaluate
from pytest_concurrency._metrics import latency_stats, new_histogram, record_many
from pytest_concurrency._report import _html, _json, _schema, _terminal
from pytest_concurrency._report._records import StormRecord, as_records

CHROMIUM = Path("/usr/bin/chromium")


def make_result(
    latencies_ms: list[float],
    *,
    label: str = "GET /items/1",
    throughput: float | None = None,
    failed: int = 0,
    budgets: dict[str, float] | None = None,
) -> StormResult:
    """A result whose histograms hold exactly *latencies_ms* (no storm is fired)."""
    latency = new_histogram()
    record_many(latency, (round(ms * 1000) for ms in latencies_ms))
    stats = latency_stats(latency)
    n = len(latencies_ms)
    half = n // 2
    result = StormResult(
        label=label,
        app="apps:app",
        interface="WSGI",
        server="2 sync workers",
        method="GET",
        path="/items/1",
        users=10,
        requests=n,
        duration=2.0,
        throughput=throughput if throughput is not None else n / 2.0,
        latency=stats,
        ttfb=stats,
        queue_wait=None,
        service_time=None,
        status_counts=Counter({200: n - failed, 500: failed}),
        errors={},
        failed=failed,
        timeouts=0,
        pool=None,
        timeline=[
            TimelinePoint(0, half, 0, stats.p50, stats.p99, stats.max, 1.5),
            TimelinePoint(1, n - half, failed, stats.p50, stats.p99, stats.max, 2.0),
        ],
        endpoints={},
        histograms={"latency": latency, "ttfb": HdrHistogram.decode(latency.encode())},
        params={"users": 10, "duration": 2.0},
        budgets=dict(budgets or {}),
    )
    result.verdicts = evaluate(result, result.budgets)
    return result


def three_storms() -> list[tuple[str, StormResult]]:
    return [
        ("tests/test_api.py::test_items", make_result([5.0 + i % 7 for i in range(400)])),
        (
            "tests/test_api.py::test_items",
            make_result([20.0 + (i % 50) for i in range(300)], label="POST /items"),
        ),
        (
            "tests/test_api.py::test_other",
            make_result([1.0 + i / 100 for i in range(1000)], budgets={"p99_ms": 5.0}),
        ),
    ]


# -- a small JSON Schema validator, for the keywords JSON_SCHEMA uses ----------------------

_KEYWORDS = {
    "$schema",
    "$id",
    "$ref",
    "$defs",
    "title",
    "description",
    "type",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "const",
    "minimum",
    "anyOf",
}
_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
    "integer": int,
    "number": (int, float),
}


def _type_ok(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def validate(
    instance: Any, schema: dict[str, Any], root: dict[str, Any], at: str = "$"
) -> list[str]:
    """Errors of *instance* against *schema* (draft 2020-12 subset)."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return validate(instance, root["$defs"][name], root, at)
    errors: list[str] = []
    if "anyOf" in schema and all(validate(instance, s, root, at) for s in schema["anyOf"]):
        errors.append(f"{at}: matches none of anyOf")
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{at}: {instance!r} != {schema['const']!r}")
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(instance, n) for n in names):
            return [*errors, f"{at}: {instance!r} is not {names}"]
    if "minimum" in schema and isinstance(instance, int | float) and instance < schema["minimum"]:
        errors.append(f"{at}: {instance} < {schema['minimum']}")
    if isinstance(instance, dict):
        errors += [f"{at}: missing {k!r}" for k in schema.get("required", []) if k not in instance]
        props = schema.get("properties", {})
        for key, value in instance.items():
            if key in props:
                errors += validate(value, props[key], root, f"{at}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += validate(value, schema["additionalProperties"], root, f"{at}.{key}")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            errors += validate(item, schema["items"], root, f"{at}[{i}]")
    return errors


def _keywords(schema: Any, in_properties: bool = False) -> set[str]:
    found: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if not in_properties:
                found.add(key)
            found |= _keywords(
                value, in_properties=key in ("properties", "$defs") and not in_properties
            )
    elif isinstance(schema, list):
        for item in schema:
            found |= _keywords(item)
    return found


def test_schema_is_draft_2020_12_and_uses_only_checked_keywords() -> None:
    schema = _json.JSON_SCHEMA
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert _json.SCHEMA_VERSION == 2
    # Version 2 added an optional block: documents of version 1 still read.
    assert schema["properties"]["schema_version"] == {"anyOf": [{"const": 1}, {"const": 2}]}
    # Every keyword the validator above would silently skip is a hole in this test.
    assert _keywords(schema) <= _KEYWORDS


def test_session_document_matches_its_schema() -> None:
    doc = _json.session_document(three_storms(), machine=_json.machine_info(), scaled=0.5)
    json.loads(json.dumps(doc, allow_nan=False))
    assert validate(doc, _json.JSON_SCHEMA, _json.JSON_SCHEMA) == []
    assert doc["scaled"] == 0.5
    assert [(s["nodeid"], s["index"], s["label"]) for s in doc["storms"]] == [
        ("tests/test_api.py::test_items", 0, "GET /items/1"),
        ("tests/test_api.py::test_items", 1, "POST /items"),
        ("tests/test_api.py::test_other", 0, "GET /items/1"),
    ]
    third = doc["storms"][2]
    assert third["budgets"] == {"p99_ms": 5.0}
    assert third["verdicts"][0]["name"] == "p99_ms"
    assert third["passed"] is False
    assert len(third["timeline"]) == 2


def test_validator_rejects_a_broken_document() -> None:
    doc = _json.session_document(three_storms()[:1], machine=_json.machine_info())
    del doc["storms"][0]["histograms"]
    doc["storms"][0]["latency"]["count"] = -1
    doc["schema_version"] = 3
    errors = validate(doc, _json.JSON_SCHEMA, _json.JSON_SCHEMA)
    assert any("missing 'histograms'" in e for e in errors)
    assert any("count" in e and "< 0" in e for e in errors)
    assert any("schema_version: matches none of anyOf" in e for e in errors)


def test_refused_egress_is_in_the_schema() -> None:
    rows = three_storms()[:1]
    rows[0][1].refused_egress = [
        {
            "host": "api.example.invalid",
            "port": "443",
            "client": "requests",
            "site": "a.py:3 in f",
            "count": 2,
        }
    ]
    doc = _json.session_document(rows, machine=_json.machine_info())
    assert validate(doc, _json.JSON_SCHEMA, _json.JSON_SCHEMA) == []
    assert doc["storms"][0]["refused_egress"][0]["count"] == 2
    doc["storms"][0]["refused_egress"] = [{"host": "api.example.invalid", "count": 0}]
    errors = validate(doc, _json.JSON_SCHEMA, _json.JSON_SCHEMA)
    assert any("missing 'site'" in e for e in errors)
    assert any("count" in e and "< 1" in e for e in errors)
    assert _schema.first_problem(doc) is not None


def test_rows_may_be_results_or_their_dicts() -> None:
    rows = three_storms()
    as_dicts = [(nodeid, r.to_dict()) for nodeid, r in rows]
    machine = {"python": "3"}
    live = _json.session_document(rows, machine=machine)
    plain = _json.session_document(as_dicts, machine=machine)
    assert live["storms"] == plain["storms"]


def test_json_round_trip_re_merges_into_the_same_percentiles(tmp_path: Path) -> None:
    rows = three_storms()
    path = _json.write_json(
        tmp_path / "deep" / "storms.json", _json.session_document(rows, machine={})
    )
    loaded = _json.load_json(path)
    merged = _json.merge_histograms([loaded])

    expected = new_histogram()
    for _, result in rows:
        expected.add(result.histograms["latency"])
    latency = merged["latency"]
    assert latency.get_total_count() == sum(r.requests for _, r in rows) == 1700
    for p in (0.0, 50.0, 90.0, 99.0, 99.9, 100.0):
        assert latency.get_value_at_percentile(p) == expected.get_value_at_percentile(p)
    assert latency.get_max_value() == expected.get_max_value()
    assert merged["ttfb"].get_total_count() == 1700

    # Across documents too, and restricted to one storm label.
    twice = _json.merge_histograms([loaded, loaded], match=lambda s: s["label"] == "POST /items")
    assert twice["latency"].get_total_count() == 600
    assert twice["latency"].get_value_at_percentile(50) == rows[1][1].histograms[
        "latency"
    ].get_value_at_percentile(50)

    records = _json.document_records(loaded)
    assert [r.key for r in records] == [r.key for r in as_records(rows)]
    assert records[2].histograms["latency"].get_total_count() == 1000


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"not a readable JSON file"),
        ('{"storms": []}', r"not a pytest-storm session document"),
        (
            '{"schema_version": 3, "storms": []}',
            r"schema_version 3; this pytest-storm .* reads version 2",
        ),
        ('{"schema_version": 1, "storms": {}}', r"'storms' must be a list"),
    ],
)
def test_load_json_refuses_what_it_cannot_read(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "doc.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        _json.load_json(path)


def test_load_json_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.json: no such file"):
        _json.load_json(tmp_path / "nope.json")


def test_machine_info_hashes_the_host_name() -> None:
    info = _json.machine_info()
    assert info["implementation"] == sys.implementation.name
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["cpu_count"] == os.cpu_count()
    assert re.fullmatch(r"[0-9a-f]{12}", info["host"])
    assert socket.gethostname() not in json.dumps(info)
    assert validate(info, _json.JSON_SCHEMA["$defs"]["machine"], _json.JSON_SCHEMA) == []


# -- baselines ---------------------------------------------------------------------------


def test_parse_compare_fail() -> None:
    parsed = compare_fail.parse_compare_fail("p99:10%, rps:5%,mean:5ms,max:12.5,error_rate:1%")
    assert parsed == [
        compare_fail.Threshold("p99", 10.0, True),
        compare_fail.Threshold("rps", 5.0, True),
        compare_fail.Threshold("mean", 5.0, False),
        compare_fail.Threshold("max", 12.5, False),
        compare_fail.Threshold("error_rate", 0.01, False),
    ]
    assert [t.describe() for t in parsed] == [
        "p99:10%",
        "rps:5%",
        "mean:5ms",
        "max:12.5ms",
        "error_rate:1%",
    ]


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", r"--concurrency-compare-fail='': expected FIGURE:AMOUNT items"),
        ("p99:10%,", r"--concurrency-compare-fail='p99:10%,': expected FIGURE:AMOUNT items"),
        ("p99", r"--concurrency-compare-fail='p99': 'p99' has no ':'"),
        ("p98:10%", r"unknown figure 'p98'; choose from p50, p90, p95, p99, p999, max, mean, rps"),
        ("p99:lots", r"'lots' for p99 is not an amount; write N% .* or Nms"),
        ("p99:-5%", r"'-5%' for p99 is not an amount"),
        ("rps:5ms", r"rps is measured in rps, not ms; write rps:5% or rps:5rps"),
        ("p50:3rps", r"p50 is measured in ms, not rps"),
    ],
)
def test_parse_compare_fail_errors_name_the_option_and_value(expr: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compare_fail.parse_compare_fail(expr)


def test_parse_compare_fail_names_an_ini_origin() -> None:
    with pytest.raises(ConfigError, match=r"^ini option concurrency_compare_fail in tox.ini='x'"):
        compare_fail.parse_compare_fail(
            "x", origin="ini option concurrency_compare_fail in tox.ini"
        )


def _doc(rows: list[tuple[str, StormResult]], **machine: Any) -> dict[str, Any]:
    return _json.session_document(rows, machine={"host": "abc", "cpu_count": 8, **machine})


def test_compare_matches_nodeid_label_and_index() -> None:
    rows = three_storms()
    baseline = _doc(rows[:2])
    comparisons = judged_against.compare(rows, baseline)
    assert [c.is_new for c in comparisons] == [False, False, True]
    same = comparisons[0].deltas
    assert same is not None
    assert all(d.delta == 0 for d in same.values())
    # Same node id and label, other index: a different storm.
    renumbered = [(rows[1][0], make_result([1.0], label="POST /items"))]
    assert judged_against.compare(renumbered, baseline)[0].is_new


def test_regressions_latency_grows_and_rps_falls() -> None:
    base = make_result([10.0] * 100, throughput=1000.0)
    nodeid = "t.py::test_a"
    baseline = _doc([(nodeid, base)])
    thresholds = compare_fail.parse_compare_fail("p50:10%,rps:5%,mean:1ms")

    def check(result: StormResult) -> list[str]:
        return wording.regressions(judged_against.compare([(nodeid, result)], baseline), thresholds)

    assert check(make_result([10.0] * 100, throughput=1000.0)) == []
    # +10% exactly and -5% exactly are allowed; beyond is not.
    assert check(make_result([11.0] * 100, throughput=950.0)) == []
    slower = check(make_result([12.0] * 100, throughput=1000.0))
    assert slower == [
        "t.py::test_a · GET /items/1: p50 grew from 10.01 ms to 12.01 ms (+20.0%; allowed p50:10%)",
        "t.py::test_a · GET /items/1: mean grew from 10 ms to 12 ms (+20.0%; allowed mean:1ms)",
    ]
    fewer = check(make_result([10.0] * 100, throughput=900.0))
    assert fewer == [
        "t.py::test_a · GET /items/1: rps fell from 1,000 rps to 900 rps (-10.0%; allowed rps:5%)"
    ]
    # Faster and more throughput is never a regression.
    assert check(make_result([5.0] * 100, throughput=3000.0)) == []


def test_regressions_of_error_rate_are_in_points() -> None:
    nodeid = "t.py::test_a"
    baseline = _doc([(nodeid, make_result([1.0] * 100))])
    thresholds = compare_fail.parse_compare_fail("error_rate:1%")
    ok = judged_against.compare([(nodeid, make_result([1.0] * 100, failed=1))], baseline)
    bad = judged_against.compare([(nodeid, make_result([1.0] * 100, failed=2))], baseline)
    assert wording.regressions(ok, thresholds) == []
    assert wording.regressions(bad, thresholds) == [
        "t.py::test_a · GET /items/1: error_rate grew from 0.00% to 2.00% (+0.02; allowed error_rate:1%)"
    ]


def test_comparison_table() -> None:
    rows = three_storms()
    baseline = _doc(rows[:1])
    slower = [(rows[0][0], make_result([6.0 + i % 7 for i in range(400)])), rows[2]]
    lines = wording.comparison_table(judged_against.compare(slower, baseline)).splitlines()
    assert lines[0].split() == ["test", "storm", "p50", "p99", "max", "rps", "errors"]
    assert re.search(
        r"test_items\s+GET /items/1\s+9\.01 ms \(\+12\.5%\)\s+12\.01 ms \(\+9\.1%\)", lines[1]
    )
    assert "0.00% (+0.00pp)" in lines[1]
    assert lines[2].endswith("new: not in the baseline")


def test_machine_warning() -> None:
    here = {"host": "abc", "cpu_count": 8, "cpu_model": "X", "python": "3.11.7"}
    assert judged_against.machine_warning({"machine": here}, here) is None
    there = {**here, "cpu_count": 2, "host": "def"}
    warning = judged_against.machine_warning({"machine": there}, here)
    assert warning == (
        "the baseline was measured on a different machine or Python (host 'def' → 'abc'; cpu_count 2 → 8): "
        "differences may come from the machine, not the code"
    )


def test_save_and_load(tmp_path: Path) -> None:
    doc = _doc(three_storms())
    path = store.save("py311-linux", doc, tmp_path / ".storms")
    assert path == tmp_path / ".storms" / "py311-linux.json"
    saved = store.load("py311-linux", tmp_path / ".storms")["storms"]
    # Each storm as it was, with its first saved session as its history.
    assert [{k: v for k, v in s.items() if k != "sessions"} for s in saved] == doc["storms"]
    assert all(len(s["sessions"]) == 1 for s in saved)
    assert store.load("py311-linux.json", tmp_path / ".storms")["created"] == doc["created"]


@pytest.mark.parametrize("name", ["../main", "a/b", "", ".hidden", "main branch"])
def test_baseline_names_are_plain(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"--concurrency-save=.*: a baseline name is letters"):
        store.save(name, {}, tmp_path)


def test_missing_baseline_lists_the_saved_ones(tmp_path: Path) -> None:
    store.save("main", _doc([]), tmp_path)
    store.save("nightly", _doc([]), tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"--concurrency-compare='old': no baseline .*old\.json \(saved baselines: main, nightly;",
    ):
        store.load("old", tmp_path)
    with pytest.raises(ConfigError, match=r"no baseline is saved there; save one with"):
        store.load("old", tmp_path / "empty")


# -- terminal ----------------------------------------------------------------------------


def test_storms_table() -> None:
    lines = _terminal.storms_table(three_storms())
    assert lines[0].split()[:3] == ["test", "storm", "app"]
    assert len(lines) == 4
    assert re.search(
        r"test_items\s+GET /items/1\s+WSGI 2 sync workers\s+10\s+400\s+200\s", lines[1]
    )
    assert lines[1].endswith("-  pass")
    assert lines[3].endswith("FAIL p99_ms")


def test_noise_statement() -> None:
    statement = _terminal.noise_statement()
    assert re.fullmatch(
        r"timer noise on this machine: 200 × 1 ms sleeps overshoot by \d+\.\d\d ms at p50 and "
        r"\d+\.\d\d ms at p99 \(time\.sleep\), \d+\.\d\d ms and \d+\.\d\d ms \(asyncio\.sleep\), "
        r"so latency differences under \d+\.\d\d ms are within noise\.",
        statement,
    ), statement
    figures = _terminal.noise_figures()
    assert 0 <= figures["sleep_p50_ms"] <= figures["sleep_p99_ms"]
    assert 0 <= figures["asyncio_p50_ms"] <= figures["asyncio_p99_ms"]


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_progress_is_off_in_ci_and_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    stream = FakeTty()
    with _terminal.LiveProgress(lambda: {"elapsed": 1.0}, stream=stream) as progress:
        assert not progress.enabled
        assert progress._thread is None
    assert stream.getvalue() == ""
    monkeypatch.delenv("CI")
    assert _terminal.LiveProgress(dict, stream=FakeTty()).enabled
    assert not _terminal.LiveProgress(dict, stream=io.StringIO()).enabled


def test_live_progress_rewrites_one_line_at_most_four_times_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    stream = FakeTty()
    calls: list[float] = []
    twice = threading.Event()

    def snapshot() -> dict[str, Any]:
        calls.append(time.monotonic())
        if len(calls) == 2:
            twice.set()
        return {
            "elapsed": 1.25,
            "requests": 1234,
            "rps": 987.6,
            "p99_ms": 14.25,
            "in_flight": 50,
            "errors": 0,
        }

    progress = _terminal.LiveProgress(
        snapshot, label="storm GET /x", total=3.0, stream=stream, interval=0.01
    )
    with progress:
        assert twice.wait(5)
    assert progress._thread is None
    assert calls[1] - calls[0] >= 0.24
    line = "storm GET /x  1.2/3.0 s  1,234 requests  988 rps  p99 14.25 ms  50 in flight  0 errors"
    out = stream.getvalue()
    assert out.startswith("\r" + line)
    assert "\n" not in out
    # Cleared when done: the last write blanks the line and returns to its start.
    assert out.endswith("\r" + " " * len(line) + "\r")


def test_live_progress_survives_a_failing_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)

    def broken() -> dict[str, Any]:
        raise RuntimeError("engine gone")

    progress = _terminal.LiveProgress(broken, stream=FakeTty()).start()
    thread = progress._thread
    assert thread is not None
    thread.join(5)
    assert not thread.is_alive()
    progress.stop()


# -- HTML --------------------------------------------------------------------------------


def test_percentile_curve_follows_the_histogram() -> None:
    _, result = three_storms()[2]
    histogram = result.histograms["latency"]
    xs, ys = _html.percentile_curve(histogram, end=10_000.0)
    assert xs[0] == 1.0
    assert math.isclose(xs[-1], 10_000.0)
    assert ys == sorted(ys)
    at_p99 = min(range(len(xs)), key=lambda i: abs(xs[i] - 100.0))
    assert ys[at_p99] == histogram.get_value_at_percentile(99.0) / 1000
    assert _html.percentile_curve(new_histogram()) == ([], [])


def test_html_needs_plotly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(ConfigError, match=r"needs plotly.*pip install 'pytest-storm\[html\]'"):
        _html.write_html(tmp_path / "r.html", three_storms(), title="t")
    assert not (tmp_path / "r.html").exists()


def test_html_is_one_self_contained_page(tmp_path: Path) -> None:
    rows: list[Any] = three_storms()
    rows[1] = (rows[1][0], rows[1][1].to_dict())
    path = _html.write_html(tmp_path / "out" / "report.html", rows, title="A <b>title</b>")
    page = path.read_text(encoding="utf-8")
    assert page.count("Plotly.newPlot(") == 1 + 2 * 3
    assert page.count('<script type="text/javascript">') == 1
    assert not re.search(r"<script[^>]+src=", page)
    # plotly.js itself mentions URLs (map tiles, its home page); the page around it must not.
    around = re.sub(r'<script type="text/javascript">.*?</script>', "", page, flags=re.S)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", around)
    assert "A &lt;b&gt;title&lt;/b&gt;" in page
    third = rows[2][1]
    assert f"✗ {third.latency.p99 / 5.0:.1f}x over" in page
    assert 'id="storm-3"' in page


def test_html_of_a_session_without_storms(tmp_path: Path) -> None:
    page = _html.write_html(tmp_path / "r.html", [], title="empty").read_text()
    assert "No storms were fired" in page
    assert "Plotly.newPlot(" not in page


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs /usr/bin/chromium (`make test` installs Debian's chromium when run as root)",
)
def test_html_charts_render_in_chromium(tmp_path: Path) -> None:
    path = _html.write_html(tmp_path / "report.html", three_storms()[:2], title="render")
    charts = 1 + 2 * 2
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                path.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    assert dom.count('class="plot-container plotly"') == charts
    assert dom.count('class="main-svg"') >= charts
    # Axis labels exist only once plotly has laid the charts out.
    assert dom.count(">99.9%<") >= 3
    assert dom.count('class="scatterlayer') >= charts - 2


def test_records_number_storms_per_test() -> None:
    rows = three_storms()
    records = as_records([*rows, StormRecord.from_result("t.py::x", 4, rows[0][1])])
    assert [r.index for r in records] == [0, 1, 0, 4]
    assert records[1].title == "tests/test_api.py::test_items · POST /items [1]"


def test_document_is_plain_json_whatever_the_storm_held() -> None:
    result = make_result([1.0, 2.0])
    result.throughput = math.nan
    result.params["latency"] = {"upstream": object()}
    result.params["stages"] = [(1.0, 10)]
    doc = _json.session_document([("t.py::x", result)], machine={})
    storm = doc["storms"][0]
    assert storm["throughput"] is None
    assert storm["params"]["latency"]["upstream"].startswith("<object object")
    assert storm["params"]["stages"] == [[1.0, 10]]
    json.dumps(doc, allow_nan=False)


# -- wording shared by the failure message, the terminal and the HTML page -------------------


def failing_result(*, exceptions_counted_as_500: bool) -> StormResult:
    """100 requests: 3 raised TypeError, 12 got 404, 1 got 503; the rest 200."""
    from pytest_concurrency._metrics import ErrorSummary

    result = make_result([10.0] * 100, failed=16, budgets={"max_error_rate": 0.0})
    statuses = Counter({200: 84, 404: 12, 503: 1})
    if exceptions_counted_as_500:
        statuses[500] = 3
    result.status_counts = statuses
    trace = 'Traceback (most recent call last):\n  File "app.py", line 3\nTypeError: bad input'
    result.errors = {"TypeError": ErrorSummary("TypeError", 3, trace)}
    result.verdicts = evaluate(result, result.budgets)
    return result


@pytest.mark.parametrize("counted_as_500", [True, False])
def test_failure_diagnosis_tells_exceptions_from_error_statuses(counted_as_500: bool) -> None:
    from pytest_concurrency._report._text import verdict_table

    result = failing_result(exceptions_counted_as_500=counted_as_500)
    expected = (
        "16 failed (16.0%); 3 requests raised (TypeError: bad input ×3); "
        "13 responses with status ≥ 400 (404 ×12, 503 ×1)"
    )
    assert expected in verdict_table(result).splitlines()[-1]


def test_html_diagnosis_is_the_failure_message_diagnosis() -> None:
    from pytest_concurrency._report._text import diagnosis

    pytest.importorskip("plotly")
    result = failing_result(exceptions_counted_as_500=False)
    result.warnings = ["a storm shorter than a second"]
    page = _html.render_html([("t.py::test", result)])
    for line in diagnosis(result.to_dict(histograms=False), result):
        assert f"<li>{_html._e(line)}</li>" in page


def test_a_verdict_just_over_its_limit_shows_two_decimals() -> None:
    from pytest_concurrency._model.result import Verdict
    from pytest_concurrency._report._text import verdict_word

    assert verdict_word(Verdict("p99_ms", 200.0, 202.8, False)) == "✗ 1.01x over"
    assert verdict_word(Verdict("p99_ms", 200.0, 2820.0, False)) == "✗ 14.1x over"
    assert verdict_word(Verdict("GET /a min_rps", 100.0, 70.0, False)) == "✗ 30% short"


def test_verdict_holds_only_what_is_used() -> None:
    import dataclasses

    from pytest_concurrency._model.result import Verdict

    assert [f.name for f in dataclasses.fields(Verdict)] == ["name", "limit", "measured", "ok"]


# -- notes, status codes with sample bodies ---------------------------------------------------


def test_failure_table_shows_status_codes_and_one_sample_body_per_code() -> None:
    from pytest_concurrency._report._text import verdict_table

    result = failing_result(exceptions_counted_as_500=False)
    plain = verdict_table(result).splitlines()
    assert [line.split() for line in plain if line.strip().startswith(("status", "404"))] == [
        ["status", "count"],
        ["404", "12"],
    ]
    result.samples = {404: '{"detail":\n "Not Found"}', 503: "x" * 500}
    lines = verdict_table(result).splitlines()
    assert any(line.split()[:3] == ["status", "count", "sample"] for line in lines)
    assert any(line.split() == ["404", "12", '{"detail":', '"Not', 'Found"}'] for line in lines)
    long = next(line for line in lines if line.strip().startswith("503"))
    assert long.endswith("x…")
    assert len(long.split()[-1]) == 100
    # The failure line stays the last line of the table.
    assert "13 responses with status ≥ 400" in lines[-1]


def test_notes_are_shown_apart_from_warnings_everywhere() -> None:
    from pytest_concurrency._report._text import verdict_table

    pytest.importorskip("plotly")
    result = make_result([1.0, 2.0])
    result.notes = ["knee: p99 broke at ≈18 users"]
    data = result.to_dict(histograms=False)
    assert data["notes"] == ["knee: p99 broke at ≈18 users"]
    assert data["warnings"] == []
    assert verdict_table(result).splitlines()[-1] == "  note: knee: p99 broke at ≈18 users"
    assert _terminal.storm_notes([("t.py::x", result)]) == [
        "note: t.py::x · GET /items/1: knee: p99 broke at ≈18 users"
    ]
    assert "<li>note: knee: p99 broke at ≈18 users</li>" in _html.render_html([("t.py::x", result)])
    # A document written before notes existed reads as a storm without notes.
    old = _json.session_document([("t.py::x", result)], machine={})
    del old["storms"][0]["notes"]
    assert _terminal.storm_notes(_json.document_records(old)) == []


def _contended(share: float, label: str) -> StormResult:
    from pytest_concurrency._model.extras import ContentionFigures
    from pytest_concurrency._model.remarks import contention_note

    result = make_result([1.0, 2.0], label=label)
    result.cpu_contention = ContentionFigures(wait_share=share, wait_s=share / 10)
    result.notes = ["knee: p99 broke at ≈18 users", contention_note(share, share / 10)]
    return result


def test_the_cpu_contention_note_is_one_line_for_the_whole_session() -> None:
    rows = [("t.py::x", _contended(0.25, f"GET /{i}")) for i in range(3)]
    rows.append(("t.py::y", _contended(0.61, "GET /y")))
    lines = _terminal.storm_notes(rows)
    assert [line for line in lines if "knee" in line] == [
        f"note: {nodeid} · {result.label}{suffix}: knee: p99 broke at ≈18 users"
        for (nodeid, result), suffix in zip(rows, ["", " [1]", " [2]", ""], strict=True)
    ]
    (summary,) = [line for line in lines if "waited for a CPU" in line]
    assert summary.startswith(
        "note: the threads of 4 storms waited for a CPU 25%–61% of the time they were ready "
        "to run (Linux schedstat; each storm's figure is in its notes): other threads had"
    )
    # Each result keeps its own note.
    assert all(any("waited for a CPU" in n for n in result.notes) for _, result in rows)
    # A single storm says it as it always did.
    (alone,) = [line for line in _terminal.storm_notes(rows[-1:]) if "waited for a CPU" in line]
    assert alone.startswith("note: t.py::y · GET /y: the storm's threads waited for a CPU 61%")


@pytest.mark.parametrize(("share", "advice"), [(0.2, False), (0.7, True)])
def test_a_server_of_its_own_is_advised_only_when_the_load_generator_took_the_loop(
    share: float, advice: bool
) -> None:
    from pytest_concurrency._model.remarks import harness_bound_remark

    remark = harness_bound_remark(0.97, share, 12.0)
    assert remark.startswith(
        f"the event loop shared by the app and the load generator was busy 97% of the storm; "
        f"the load generator itself took ≈{share:.0%} of that (≈12 µs per request): "
    )
    assert ("the app may do better than this on a server of its own" in remark) is advice
    if not advice:
        assert remark.endswith(
            "the rest was the app's own work, which a server of its own would not remove"
        )


def test_storms_table_shows_each_endpoint_of_a_mix() -> None:
    from pytest_concurrency._metrics import LatencyStats
    from pytest_concurrency._model.result import EndpointStats, Verdict

    result = make_result([5.0] * 100)
    result.label = "mix of 2 requests"
    result.endpoints = {
        "GET /a": EndpointStats(
            "GET /a", 75, 0, LatencyStats(count=75, p50=4.0, p99=5.0, max=6.0), 30.0
        ),
        "POST /b": EndpointStats(
            "POST /b", 25, 5, LatencyStats(count=25, p50=8.0, p99=9.0, max=9.5), 10.0
        ),
    }
    result.verdicts = [Verdict("POST /b p99_ms", 5.0, 9.0, False)]
    lines = _terminal.storms_table([("t.py::mix", result)])
    assert len(lines) == 4
    assert lines[1].endswith("FAIL POST /b p99_ms")
    assert re.search(r"^\s+GET /a\s+75\s+30\s+4\s+5\s+6\s+0\.0%$", lines[2])
    assert re.search(r"^\s+POST /b\s+25\s+10\s+8\s+9\s+9\.5\s+20\.0%\s+FAIL p99_ms$", lines[3])


def test_the_storms_table_shows_an_open_storms_arrival_rate_not_zero_users() -> None:
    from pytest_concurrency import run_storm
    from pytest_concurrency._report._terminal import storms_table
    from tests.apps import asgi_hello

    result = run_storm(asgi_hello, "GET", "/", duration=0.2, rate=200)
    assert result.users == 0
    (row,) = [line for line in storms_table([("t", result)]) if line.startswith("t ")]
    assert " 200/s " in row
