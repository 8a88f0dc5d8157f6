"""Report files: replaced whole or not at all, never through a link, saved by many at once."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrency import ConfigError
from pytest_concurrency._baseline import store
from pytest_concurrency._report import _csv, _files, _html, _json

from .test_report import make_result, three_storms

NODE = "t.py::test_a"


def _doc() -> dict[str, Any]:
    return _json.session_document(three_storms(), machine={"host": "h"})


# -- many sessions saving one baseline ---------------------------------------------------

SAVER = """
import json, sys, time
from pytest_concurrency._baseline import store

template, directory, worker, saves, start = sys.argv[1:6]
storm = json.loads(open(template, encoding="utf-8").read())
# Start together, so that the saves overlap.
while time.time() < float(start):
    time.sleep(0.001)
for i in range(int(saves)):
    doc = {**storm["doc"], "storms": [{**storm["entry"], "nodeid": f"t.py::test_{worker}_{i}"}]}
    store.save("main", doc, directory)
"""

WORKERS = 4
SAVES = 10


def test_concurrent_saves_keep_every_storm_and_the_file_stays_valid(tmp_path: Path) -> None:
    doc = _json.session_document([(NODE, make_result([1.0, 2.0, 3.0]))], machine={"host": "h"})
    template = tmp_path / "template.json"
    template.write_text(json.dumps({"doc": doc, "entry": doc["storms"][0]}), encoding="utf-8")
    storage = tmp_path / ".storms"
    target = storage / "main.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # Far enough ahead for every interpreter to have imported the package.
    start = str(time.time() + 3.0)
    seen: list[str] = []
    stop = threading.Event()

    def read_while_saving() -> None:
        # Every time the file is there, it is one whole baseline.
        while not stop.is_set():
            stop.wait(0.001)
            try:
                text = target.read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            try:
                json.loads(text)
            except ValueError as exc:
                seen.append(f"{exc}: {text[:200]!r}")

    reader = threading.Thread(target=read_while_saving, daemon=True)
    reader.start()
    savers = [
        subprocess.Popen(
            [sys.executable, "-c", SAVER, str(template), str(storage), str(w), str(SAVES), start],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(WORKERS)
    ]
    try:
        outcomes = [p.communicate(timeout=120) for p in savers]
    finally:
        stop.set()
        for p in savers:
            if p.poll() is None:
                p.kill()
                p.wait()
        reader.join(timeout=10)
    assert [p.returncode for p in savers] == [0] * WORKERS, [err for _, err in outcomes]
    assert seen == []
    saved = store.load("main", storage)
    names = sorted(s["nodeid"] for s in saved["storms"])
    assert names == sorted(f"t.py::test_{w}_{i}" for w in range(WORKERS) for i in range(SAVES))
    # No writer's temporary file or lock file is left behind.
    assert [p.name for p in storage.iterdir()] == ["main.json"]


def test_a_save_that_cannot_get_the_lock_in_time_says_who_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "LOCK_TIMEOUT", 0.05)
    # flock locks belong to an open file: a second open in this process waits like another.
    with _files.locked(tmp_path / "main.json"), pytest.raises(ConfigError) as raised:
        store.save("main", _doc(), tmp_path)
    assert str(raised.value) == (
        f"--concurrency-save='main': another process is saving {tmp_path / 'main.json'} and "
        f"still holds its lock ({tmp_path / 'main.json.lock'}) after 0.05 s; the baseline was "
        "not saved"
    )
    assert not (tmp_path / "main.json").exists()
    store.save("main", _doc(), tmp_path)
    assert len(store.load("main", tmp_path)["storms"]) == 3


# -- no link is followed, nothing is left half-written -------------------------------------


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n", encoding="utf-8")
    return victim


def _writers(tmp_path: Path) -> dict[str, tuple[Path, Any]]:
    doc = _doc()
    return {
        "json": (tmp_path / "out.json", lambda p: _json.write_json(p, doc)),
        "baseline": (tmp_path / "main.json", lambda p: store.save("main", doc, p.parent)),
        "html": (tmp_path / "out.html", lambda p: _html.write_html(p, three_storms())),
        "csv": (
            tmp_path / "out_stats.csv",
            lambda p: _csv.write_csv(tmp_path / "out", three_storms()),
        ),
    }


@pytest.mark.parametrize("kind", ["json", "baseline", "html", "csv"])
def test_a_link_where_the_temporary_file_was_named_is_not_followed(
    tmp_path: Path, kind: str
) -> None:
    if kind == "html":
        pytest.importorskip("plotly")
    victim = _victim(tmp_path)
    target, write = _writers(tmp_path)[kind]
    (target.with_name(target.name + ".partial")).symlink_to(victim)
    write(target)
    assert victim.read_text(encoding="utf-8") == "precious\n"
    assert target.is_file()
    assert not target.is_symlink()
    assert target.stat().st_size > 0


@pytest.mark.parametrize("kind", ["json", "baseline", "html", "csv"])
def test_a_link_at_the_report_is_replaced_not_written_through(tmp_path: Path, kind: str) -> None:
    if kind == "html":
        pytest.importorskip("plotly")
    victim = _victim(tmp_path)
    target, write = _writers(tmp_path)[kind]
    target.symlink_to(victim)
    if kind == "baseline":
        # A baseline that is a link to something else is not a baseline: refused, untouched.
        with pytest.raises(ConfigError, match="not valid JSON"):
            write(target)
    else:
        write(target)
        assert target.is_file()
        assert not target.is_symlink()
    assert victim.read_text(encoding="utf-8") == "precious\n"


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.json"
    _files.write_atomic(target, "old\n")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_files.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        _files.write_atomic(target, "new\n")
    assert target.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_an_html_report_that_fails_to_write_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.html"
    target.write_text("<html>previous</html>\n", encoding="utf-8")
    # A lone surrogate cannot be encoded: the write fails part of the way through.
    monkeypatch.setattr(_html, "render_html", lambda *a, **k: "<html>" + "x" * 100_000 + "\ud800")
    with pytest.raises(UnicodeEncodeError):
        _html.write_html(target, three_storms())
    assert target.read_text(encoding="utf-8") == "<html>previous</html>\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_a_csv_export_that_fails_to_write_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stats, history = _csv.write_csv(tmp_path / "out", three_storms())
    before = (stats.read_text(encoding="utf-8"), history.read_text(encoding="utf-8"))

    def broken(records: Any) -> Any:
        yield ["a", "row"]
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_csv, "history_rows", broken)
    with pytest.raises(OSError, match="Input/output error"):
        _csv.write_csv(tmp_path / "out", three_storms())
    assert (stats.read_text(encoding="utf-8"), history.read_text(encoding="utf-8"))[1] == before[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out_stats.csv", "out_stats_history.csv"]


def test_reports_are_created_with_the_usual_permissions(tmp_path: Path) -> None:
    # The temporary file becomes the report: it must not stay private to its owner.
    umask = os.umask(0o022)
    os.umask(umask)
    path = _json.write_json(tmp_path / "out.json", _doc())
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# -- CSV cells a spreadsheet would run ---------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ('=HYPERLINK("http://x.invalid","x")', '\'=HYPERLINK("http://x.invalid","x")'),
        ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(1)", "'@SUM(1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-1.5", "-1.5"),
        ("-3", "-3"),
        ("-1e-05", "-1e-05"),
        ("12.5", "12.5"),
        ("GET /a", "GET /a"),
        ("", ""),
    ],
)
def test_csv_cells_that_start_a_formula_are_text(cell: str, written: str) -> None:
    assert _csv.neutralise(cell) == written


def test_csv_export_neutralises_test_ids_and_keeps_numbers(tmp_path: Path) -> None:
    result = make_result([1.0, 2.0, 3.0], label="=cmd|' /C calc'!A0")
    result.path = "@evil"
    result.throughput = -1.5  # not a real figure: a negative number must stay a number
    stats, _ = _csv.write_csv(tmp_path / "out", [("-t.py::test[=1+1]", result)])
    with stats.open(newline="", encoding="utf-8") as fh:
        header, row = list(csv.reader(fh))
    cells = dict(zip(header, row, strict=True))
    assert cells["Test"] == "'-t.py::test[=1+1]"
    assert cells["Storm"] == "'=cmd|' /C calc'!A0"
    assert cells["Name"] == "'@evil"
    assert cells["Requests/s"] == "-1.5"
    assert cells["Request Count"] == "3"


def test_a_report_name_too_long_for_the_file_system_is_found_before_writing(
    tmp_path: Path,
) -> None:
    with pytest.raises(OSError, match="File name too long"):
        _json.ensure_writable(tmp_path / ("r" * 300 + ".json"))
    # A name near the limit still gets a temporary file of its own.
    near = tmp_path / ("r" * 250 + ".json")
    _json.ensure_writable(near)
    _json.write_json(near, _doc())
    assert [p.name for p in tmp_path.iterdir()] == [near.name]
