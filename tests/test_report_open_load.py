"""What reports say of storms the figures alone do not name: an open-model storm has no
users (``result.users`` is 0), so the storms table states its arrival rate, as its headline
does; a thread pool's budget that could not be measured speaks of its threads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_concurrency._model.result import StormResult
from pytest_concurrency._report import _html, _terminal

from .test_report import make_result


def _open_storm() -> StormResult:
    result = make_result([5.0 + i % 7 for i in range(400)])
    result.model, result.rate, result.users = "open", 50.0, 0
    return result


def test_the_terminal_table_states_an_open_storms_rate_not_zero_users() -> None:
    lines = _terminal.storms_table([("tests/test_api.py::test_open", _open_storm())])
    assert re.search(r"WSGI 2 sync workers\s+50/s\s+400\s", lines[1]), lines[1]


def test_the_html_table_states_an_open_storms_rate_not_zero_users(tmp_path: Path) -> None:
    pytest.importorskip("plotly")
    path = _html.write_html(
        tmp_path / "report.html",
        [("tests/test_api.py::test_open", _open_storm())],
        title="t",
    )
    page = path.read_text(encoding="utf-8")
    assert "<td class='num'>50/s</td><td class='num'>400</td>" in page


def test_a_thread_pools_unmeasured_wait_speaks_of_its_threads() -> None:
    from pytest_concurrency._model.probes import PoolUsage
    from pytest_concurrency._report._text import unmeasured_reason

    pool = PoolUsage("anyio default thread limiter", 40, 1.0, 3, 0.0, 0.0, None, None, 10, [])
    data = {"requests": 400, "timeouts": 0, "thread_pools": [pool.to_dict()]}
    reason = unmeasured_reason("pool anyio max_queue_p99_ms", data)
    assert reason == (
        "the pool 'anyio default thread limiter' recorded no wait: no request waited for "
        "one of its threads"
    )
