"""The demo's verdicts (``examples/claims``): pure functions of the figures, pinned with made-up figures."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from examples.claims.base import (
    HOLDS,
    NOT_HERE,
    PARTLY,
    ClaimRow,
    DemoStorm,
    Judgement,
    peak_rss_growth,
)
from examples.claims.blocking import judge_async_not_blocking, judge_blocking_in_async
from examples.claims.render import claims_markdown, claims_table, storms_text
from examples.claims.scale import (
    ESTIMATED,
    MEASURED,
    UNKNOWN,
    ScalePoint,
    ScaleSeries,
    _ladder_line,
    judge_choose_fastapi,
    judge_scale,
)
from examples.claims.streaming import judge_streaming
from examples.claims.sync_to_async import judge_sync_to_async
from examples.claims.workers import judge_worker_ratio

from pytest_concurrency import run_storm
from pytest_concurrency._cli import main
from pytest_concurrency._report._terminal import storms_table
from tests.apps import asgi_hello

REPO = Path(__file__).resolve().parent.parent

# -- 1. worker ratio ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("async_workers", "sync_workers", "verdict", "text"),
    [
        (1, 12, HOLDS, "12.0×"),
        (2, 12, HOLDS, "6.0×"),  # 0.75 × 8 = 6: the edge holds
        (2, 11, PARTLY, "5.5×"),
        (1, 2, PARTLY, "2.0×"),
        (2, 3, NOT_HERE, "1.5×"),
        (1, None, HOLDS, "more than 64 workers"),
        (None, 5, NOT_HERE, "met no budget"),
    ],
)
def test_worker_ratio(
    async_workers: int | None, sync_workers: int | None, verdict: str, text: str
) -> None:
    judged = judge_worker_ratio(async_workers, sync_workers, claimed=8, largest=64)
    assert judged.verdict == verdict
    assert text in judged.reason


# -- 2. scale ------------------------------------------------------------------------------


def ladder(name: str, *points: tuple[int, float | None, float]) -> ScaleSeries:
    """A scale ladder of (users, p99 or None when not run, rps); capped = rps < users / 50 ms."""
    return ScaleSeries(
        name,
        tuple(
            ScalePoint(users, p99, rps, capped=rps < 0.8 * users / 0.05)
            for users, p99, rps in points
        ),
    )


def test_series_knows_where_it_held_and_broke() -> None:
    series = ladder("X", (100, 52, 2000), (1000, 70, 15000), (5000, 400, 13000), (10000, None, 0))
    assert series.held_up_to() == 1000
    assert series.broke_at() == 5000
    assert series.largest_run == 5000
    assert series.p99_at(1000) == (70, MEASURED)
    # Not run at 10k, but capped at 13k rps at 5k: Little's law gives 10,000 / 13,000 s.
    p99, how = series.p99_at(10000)
    assert how == ESTIMATED
    assert p99 == pytest.approx(10000 / 13000 * 1000)


def test_series_does_not_estimate_from_an_uncapped_storm() -> None:
    series = ladder("X", (100, 51, 1990), (1000, None, 0))
    assert series.p99_at(1000) == (51, UNKNOWN)


def test_errors_break_a_scale_whatever_its_p99() -> None:
    series = ScaleSeries("X", (ScalePoint(100, 50, 2000, error_rate=0.2),))
    assert series.held_up_to() == 0
    assert series.broke_at() == 100


def test_scale_claim_holds_when_fastapi_holds_50k_and_django_breaks_by_10k() -> None:
    fastapi = ladder("FastAPI", (1000, 60, 16000), (10000, 80, 100000), (50000, 95, 500000))
    django = ladder("Django", (1000, 70, 14000), (5000, 90, 60000), (10000, 400, 20000))
    judged = judge_scale(fastapi, [django])
    assert judged.verdict == HOLDS
    assert "up to 50,000" in judged.reason


def test_scale_claim_holds_partly_when_fastapi_only_outlasts_django() -> None:
    fastapi = ladder("FastAPI", (100, 52, 2000), (1000, 71, 15000), (5000, 489, 13000))
    django = ladder("Django ASGI", (100, 295, 764), (1000, None, 0))
    judged = judge_scale(fastapi, [django])
    assert judged.verdict == PARTLY
    assert "up to 1,000 users" in judged.reason
    assert "50× short" in judged.reason
    assert "Django ASGI held at none of its scales (broke at 100)" in judged.reason


def test_scale_claim_does_not_hold_when_django_lasts_longer() -> None:
    fastapi = ladder("FastAPI", (100, 52, 2000), (1000, 300, 3000))
    django = ladder("Django", (100, 51, 2000), (1000, 60, 16000), (5000, 500, 9000))
    assert judge_scale(fastapi, [django]).verdict == NOT_HERE


def test_scale_claim_uses_the_best_django() -> None:
    fastapi = ladder("FastAPI", (100, 52, 2000), (1000, 71, 15000), (5000, 489, 13000))
    wsgi = ladder("Django WSGI", (100, 650, 160))
    asgi = ladder("Django ASGI", (100, 60, 1900), (1000, 90, 12000), (5000, 300, 12000))
    judged = judge_scale(fastapi, [wsgi, asgi])
    assert judged.verdict == NOT_HERE  # the ASGI deployment held as far as FastAPI
    assert "Django ASGI held up to 1,000" in judged.reason


def test_choose_fastapi_holds_when_it_wins_within_budget() -> None:
    fastapi = ladder("FastAPI", (1000, 55, 18000), (5000, 90, 90000))
    flask = ladder("Flask", (1000, 600, 160))  # capped: ≈ 5,000 / 160 s at 5k
    judged = judge_choose_fastapi(fastapi, [flask])
    assert judged.verdict == HOLDS
    assert "Little's law" in judged.reason


def test_choose_fastapi_holds_partly_when_it_wins_over_budget() -> None:
    fastapi = ladder("FastAPI", (1000, 71, 15000), (5000, 489, 13000))
    django = ladder("Django ASGI", (100, 295, 764))
    judged = judge_choose_fastapi(fastapi, [django])
    assert judged.verdict == PARTLY
    assert "489 ms is over 100 ms" in judged.reason.replace("489.0", "489")


def test_choose_fastapi_does_not_hold_when_another_is_faster() -> None:
    fastapi = ladder("FastAPI", (5000, 489, 13000))
    django = ladder("Django ASGI", (5000, 150, 30000))
    judged = judge_choose_fastapi(fastapi, [django])
    assert judged.verdict == NOT_HERE
    assert "lost to Django ASGI 150 ms at 5,000" in judged.reason


def test_choose_fastapi_says_what_it_could_not_compare() -> None:
    fastapi = ladder("FastAPI", (5000, 80, 60000))
    other = ladder("Other", (100, 51, 1990))  # stopped early but not capped: unknown at 5k
    judged = judge_choose_fastapi(fastapi, [other])
    assert judged.verdict == PARTLY
    assert "not known: Other at 5,000" in judged.reason


def test_choose_fastapi_falls_back_to_the_largest_scale_run() -> None:
    fastapi = ladder("FastAPI", (100, 52, 2000), (1000, 71, 15000))
    flask = ladder("Flask", (100, 600, 160))
    judged = judge_choose_fastapi(fastapi, [flask])
    assert judged.verdict == HOLDS
    assert "from 1,000 users (5,000 was not run)" in judged.reason


# -- 3. sync_to_async ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orm_us", "verdict"),
    [(2000.0, HOLDS), (1140.0, HOLDS), (1139.0, PARTLY), (1065.0, PARTLY), (1064.0, NOT_HERE)],
)
def test_sync_to_async_overhead(orm_us: float, verdict: str) -> None:
    # 900 µs without the hop, 140 µs of query: the hop is orm_us - 1,040 µs.
    judged = judge_sync_to_async(900.0, orm_us, 140.0, threads=50)
    assert judged.verdict == verdict
    assert f"{round(orm_us - 1040):,} µs" in judged.reason
    assert "50 threads" in judged.reason


# -- 4. blocking -----------------------------------------------------------------------------


def test_async_endpoint_holds_at_littles_law_without_stalls() -> None:
    judged = judge_async_not_blocking(980, users=50, wait_ms=50, loop_lag_max_ms=1.5)
    assert judged.verdict == HOLDS
    assert "98% of users / wait (1,000 rps)" in judged.reason


@pytest.mark.parametrize(
    ("rps", "lag", "verdict"),
    [
        (975, 30.0, PARTLY),  # throughput fine, but the loop stalled 30 ms
        (975, math.nan, PARTLY),  # lag not measured: not claimed free
        (600, 1.0, PARTLY),
        (300, 1.0, NOT_HERE),
    ],
)
def test_async_endpoint_short_of_the_model(rps: float, lag: float, verdict: str) -> None:
    assert judge_async_not_blocking(rps, users=50, wait_ms=50, loop_lag_max_ms=lag).verdict == (
        verdict
    )


@pytest.mark.parametrize(
    ("rps", "share", "verdict"),
    [(20.0, 1.0, HOLDS), (29.0, 0.95, HOLDS), (20.0, 0.3, PARTLY), (200.0, 0.5, PARTLY)],
)
def test_blocking_in_async(rps: float, share: float, verdict: str) -> None:
    judged = judge_blocking_in_async(rps, users=50, wait_ms=50, blocked_share=share)
    assert judged.verdict == verdict


def test_blocking_claim_fails_when_users_still_overlap() -> None:
    judged = judge_blocking_in_async(900.0, users=50, wait_ms=50, blocked_share=0.1)
    assert judged.verdict == NOT_HERE
    assert "still served concurrently" in judged.reason


# -- 5. streaming ----------------------------------------------------------------------------


def test_streaming_holds_when_every_framework_sends_early() -> None:
    judged = judge_streaming({"A": (20.0, 95.0), "B": (22.0, 93.0)}, span_ms=70)
    assert judged.verdict == HOLDS
    assert "half the 70 ms token stream" in judged.reason


def test_streaming_holds_partly_when_one_buffers() -> None:
    judged = judge_streaming({"A": (20.0, 95.0), "B": (94.0, 95.0)}, span_ms=70)
    assert judged.verdict == PARTLY


def test_streaming_does_not_hold_when_the_body_comes_in_one_piece() -> None:
    assert judge_streaming({"A": (94.0, 95.0)}, span_ms=70).verdict == NOT_HERE
    assert judge_streaming({}, span_ms=70).verdict == NOT_HERE


# -- rendering, memory, examples check ---------------------------------------------------------


def row(number: str, verdict: str) -> ClaimRow:
    return ClaimRow(
        number,
        f"claim {number} | with a pipe",
        "articles",
        "a scenario",
        ["figure one", "figure two"],
        Judgement(verdict, "because of the figures"),
        ["a note"],
    )


def test_claims_table_lists_every_claim_then_its_details() -> None:
    text = claims_table([row("1", HOLDS), row("2", NOT_HERE)])
    lines = text.splitlines()
    assert lines[2].startswith("1")
    assert lines[2].endswith(HOLDS)
    assert lines[3].endswith(NOT_HERE)
    assert "HOLDS — because of the figures" in text
    assert "figure two" in text


def test_claims_markdown_escapes_cells_and_includes_the_storms() -> None:
    result = run_storm(asgi_hello, "GET", "/", users=2, requests=20)
    text = claims_markdown([row("1", PARTLY)], [DemoStorm("1", "raw", result, 1.5)], "# T")
    assert "claim 1 \\| with a pipe" in text
    assert "figure one<br>figure two" in text
    assert "**holds partly** — because of the figures" in text
    assert storms_text([DemoStorm("1", "raw", result, 1.5)]) in text


def test_peak_rss_growth_sees_a_block_that_allocates() -> None:
    with peak_rss_growth() as growth:
        block = b"x" * (64 * 1024 * 1024)  # bytes * n writes every page
        del block
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak memory is measured on Linux only")
    assert growth
    assert growth[0] >= 48


def test_demo_outside_the_repository_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 2  # a ConfigError, as the command line reports it
    assert re.search(r"run `pytest-storm demo` from the repository root", capsys.readouterr().err)


def test_storms_text_names_storms_by_claim_and_shows_their_memory() -> None:
    result = run_storm(asgi_hello, "GET", "/", users=2, requests=20)
    lines = storms_text([DemoStorm("2", "FastAPI", result, 1.5), DemoStorm("1", "x", result)])
    assert lines.splitlines()[0].split()[:3] == ["claim", "storm", "app"]
    assert lines.splitlines()[0].endswith("+RSS MB")
    assert re.search(r"^2 FastAPI\s+GET /\s.*\s2$", lines.splitlines()[1])
    assert lines.splitlines()[2].endswith("n/a")  # not measured (a capacity search's storm)
    # Without memory figures the library's table keeps its own columns.
    plain = storms_table([("t.py::x", result)])
    assert plain[0].split()[0] == "test"
    assert "+RSS MB" not in plain[0]


def test_the_demo_takes_its_constants_from_the_example_apps() -> None:
    from examples import django_app, fastapi_app, flask_app, starlette_app
    from examples.claims import base, streaming, workers

    apps = (fastapi_app, starlette_app, flask_app, django_app)
    assert {app.IO_SECONDS * 1000 for app in apps} == {base.IO_WAIT_MS}
    assert {app.MODEL_URL for app in apps} == {workers.MODEL_URL}
    assert {app.STREAM_URL for app in (fastapi_app, flask_app)} == {streaming.STREAM_URL}


def test_the_demo_names_a_missing_framework() -> None:
    script = (
        "import sys\n"
        "sys.modules['flask'] = None  # as if it were not installed\n"
        "from examples.claims.__main__ import main\n"
        "sys.exit(main(['--quick']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "the demo needs flask" in done.stderr
    assert "pip install 'pytest-storm[examples]'" in done.stderr


def test_a_scale_storm_without_a_completed_request_is_written_not_crashed() -> None:
    # A storm that completed no request has an infinite p99 (and no cost per request).
    series = ScaleSeries("Flask", (ScalePoint(100, 650, 160), ScalePoint(5000, math.inf, 0, 1.0)))
    assert (
        _ladder_line(series)
        == "Flask p99 ms — 100: 650 · 5k: ∞ (100% errors) → over from the start"
    )
    judged = judge_sync_to_async(900.0, math.inf, 140.0, threads=0)
    assert "/orm costs ∞ µs" in judged.reason


def test_pydantic_claim_is_judged_on_serialisation_at_its_edges() -> None:
    from examples.claims.pydantic_speed import (
        CLAIMED_MIN_SPEEDUP,
        PARTLY_MIN_SPEEDUP,
        judge_pydantic,
    )

    assert judge_pydantic(CLAIMED_MIN_SPEEDUP, 2.0).verdict == "holds"
    assert "endpoint gains less" in judge_pydantic(CLAIMED_MIN_SPEEDUP, 2.0).reason
    assert "beyond the claimed 10×" in judge_pydantic(31.0, 5.5).reason
    assert judge_pydantic(CLAIMED_MIN_SPEEDUP - 0.1, 1.0).verdict == "holds partly"
    assert judge_pydantic(PARTLY_MIN_SPEEDUP - 0.1, 1.0).verdict == "does not hold here"


def test_chat_claim_is_judged_on_held_connections_latency_and_extras() -> None:
    from examples.claims.websocket_chat import BUTTER_P99_MS, judge_chat

    fine = judge_chat(1000, 1000, BUTTER_P99_MS, django_core_refused=True, flask_refused=True)
    assert fine.verdict == "holds"
    assert "needs Channels" in fine.reason
    slow = judge_chat(1000, 1000, BUTTER_P99_MS + 1, django_core_refused=True, flask_refused=True)
    assert slow.verdict == "holds partly"
    lost = judge_chat(1000, 900, 50.0, django_core_refused=True, flask_refused=True)
    assert lost.verdict == "does not hold here"
    served = judge_chat(1000, 1000, 50.0, django_core_refused=False, flask_refused=True)
    assert served.verdict == "holds partly"
