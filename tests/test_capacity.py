"""Capacity search: bisection over worker counts, its answer, its table and its cost in storms."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable

import pytest

from pytest_concurrency._capacity import search_capacity
from pytest_concurrency._engine.plan import plan_storm
from pytest_concurrency._engine.storm import run_plan
from pytest_concurrency._errors import ConfigError
from pytest_concurrency._metrics import LatencyStats
from pytest_concurrency._model.result import PoolStats, StormResult
from pytest_concurrency._params import Layer

from .apps import wsgi_sleep

USERS = 20
SERVICE_MS = 20.0


def modelled_result(workers: int, *, interface: str = "WSGI") -> StormResult:
    """What a pool of *workers* serving USERS closed users, SERVICE_MS each, should measure.

    Little's law: throughput is min(workers, users) / service time, and the mean latency
    users / throughput. A request waits whole rounds of service, so its worst latency is
    ceil(users / workers) rounds.
    """
    busy = min(workers, USERS)
    throughput = busy / (SERVICE_MS / 1000)
    mean = USERS / throughput * 1000
    worst = math.ceil(USERS / workers) * SERVICE_MS
    latency = LatencyStats(count=1000, min=SERVICE_MS, mean=mean, p50=mean, p99=worst, max=worst)
    pool = PoolStats(
        description=f"{workers} threads",
        size=workers,
        saturation=1.0 if workers < USERS else 0.0,
        mean_busy=float(busy),
        mean_queue_ms=mean - SERVICE_MS,
        queue_share=(mean - SERVICE_MS) / mean,
    )
    return StormResult(
        label="GET /",
        app="model",
        interface=interface,
        server=f"{workers} threads",
        method="GET",
        path="/",
        users=USERS,
        requests=1000,
        duration=1.0,
        throughput=throughput,
        latency=latency,
        ttfb=latency,
        queue_wait=None,
        service_time=None,
        status_counts=Counter({200: 1000}),
        errors={},
        failed=0,
        timeouts=0,
        pool=pool if interface == "WSGI" else None,
        timeline=[],
        endpoints={},
        histograms={},
        params={},
        budgets={},
    )


class CountingRun:
    """A fake ``run``: remembers which worker counts were stormed."""

    def __init__(self, make: Callable[[int], StormResult] = modelled_result) -> None:
        self.make = make
        self.calls: list[int] = []

    def __call__(self, workers: int) -> StormResult:
        self.calls.append(workers)
        return self.make(workers)


def most_storms(candidates: int) -> int:
    return math.ceil(math.log2(candidates + 1))


def test_bisection_finds_the_smallest_count_in_log2_storms() -> None:
    run = CountingRun()
    result = search_capacity(run, range(1, 33), budgets={"p99_ms": 60})

    # ceil(20 / w) rounds of 20 ms must fit in 60 ms: w >= 7.
    assert result.best == 7
    assert result.storms == len(run.calls) == len(set(run.calls))
    assert result.storms <= most_storms(32)  # 6 storms instead of 32
    assert [t.workers for t in result.tried] == sorted(run.calls)
    trial = result.trial(7)
    assert trial is not None
    assert trial.passed
    assert not result.is_async_app
    assert result.results[7].server == "7 threads"


def threshold_result(workers: int) -> StormResult:
    """p99 of 1000 / workers ms: a p99 budget of 1000 / n ms passes from n workers up."""
    result = modelled_result(workers)
    p99 = 1000 / workers
    result.latency = LatencyStats(count=1000, mean=p99, p50=p99, p99=p99, max=p99)
    return result


@pytest.mark.parametrize("needed", [1, 2, 3, 5, 8, 13, 21, 32, 33])
@pytest.mark.parametrize(
    "candidates", [list(range(1, 33)), [1, 2, 4, 8, 16, 32], [32, 3, 8, 1, 8, 21]]
)
def test_bisection_agrees_with_trying_everything(needed: int, candidates: list[int]) -> None:
    run = CountingRun(threshold_result)
    result = search_capacity(run, candidates, budgets={"p99_ms": 1000 / needed})

    expected = min((w for w in candidates if w >= needed), default=None)
    assert result.best == expected
    assert result.storms <= most_storms(len(set(candidates)))
    if expected is not None and expected != min(candidates):
        # The answer is pinned by a failure just below it, not assumed.
        below = max(w for w in candidates if w < expected)
        assert below in run.calls


def test_table_lists_tries_in_worker_order() -> None:
    result = search_capacity(CountingRun(), range(1, 33), budgets={"p99_ms": 60})
    lines = result.table().splitlines()

    assert lines[0].split() == [
        "workers",
        "verdict",
        "throughput",
        "rps",
        "p50",
        "ms",
        "p99",
        "ms",
        "saturation",
    ]
    shown = [int(line.split()[0]) for line in lines[1 : 1 + result.storms]]
    assert shown == sorted(shown)
    row7 = next(line for line in lines if line.split()[0] == "7")
    assert "✓" in row7
    # The answer is pinned by the failure of the count just below it.
    row6 = next(line for line in lines if line.split()[0] == "6")
    assert "✗ p99_ms" in row6
    assert lines[-1] == (
        f"smallest worker count that meets p99_ms ≤ 60: 7 — {result.storms} storms over "
        "32 candidates (1–32)"
    )
    # Aligned: the last column is right-justified, so every row has the same width.
    assert len({len(line) for line in lines[: 1 + result.storms]}) == 1
    assert str(result) == result.table()


def test_smallest_candidate_passing_is_said_so() -> None:
    result = search_capacity(CountingRun(), [20, 24, 32], budgets={"p99_ms": 60})

    assert result.best == 20
    assert result.summary()[0].startswith(
        "the smallest candidate, 20 workers, already meets p99_ms ≤ 60"
    )


def test_no_candidate_passing_names_the_budget_that_still_fails() -> None:
    run = CountingRun()
    result = search_capacity(run, range(1, 9), budgets={"p99_ms": 30, "max_error_rate": 0.0})

    assert result.best is None
    assert 8 in run.calls  # the largest was tried: its failure is known, not assumed
    assert result.storms <= most_storms(8)
    assert result.summary()[0].startswith(
        "no candidate meets p99_ms ≤ 30, max_error_rate ≤ 0: at 8 workers p99_ms is still 60 "
        "(limit 30)"
    )
    assert "max_error_rate is still" not in result.table()


def test_async_app_with_one_worker_says_one_event_loop_suffices() -> None:
    run = CountingRun(lambda w: modelled_result(USERS, interface="ASGI"))
    result = search_capacity(run, range(1, 17), budgets={"p99_ms": 60})

    assert result.is_async_app
    assert result.best == 1
    assert run.calls[0] == 9  # the middle candidate: ASGI is only known after it
    assert "one event-loop worker suffices" in result.table()

    told = CountingRun(lambda w: modelled_result(USERS, interface="ASGI"))
    result = search_capacity(told, range(1, 17), budgets={"p99_ms": 60}, is_async_app=True)
    assert told.calls == [1]  # told up front: the smallest count is tried first
    assert result.storms == 1
    assert result.summary() == [
        "the smallest candidate, 1 worker, already meets p99_ms ≤ 60 — 1 storm over 16 "
        "candidates (1–16)",
        "one event-loop worker suffices: the app is async (ASGI), its concurrency comes from "
        "the event loop, not from workers",
    ]


def test_async_hint_costs_at_most_one_extra_storm() -> None:
    run = CountingRun()
    result = search_capacity(run, range(1, 33), budgets={"p99_ms": 60}, is_async_app=True)

    assert result.best == 7
    assert run.calls[0] == 1
    assert result.storms <= most_storms(31) + 1


def test_to_dict_is_json_ready() -> None:
    result = search_capacity(CountingRun(), range(1, 33), budgets={"p99_ms": 60})
    data = json.loads(json.dumps(result.to_dict()))

    assert data["best"] == 7
    assert data["storms"] == result.storms
    assert [t["workers"] for t in data["tried"]] == [t.workers for t in result.tried]
    failed = next(t for t in data["tried"] if not t["passed"])
    assert failed["failed"][0]["name"] == "p99_ms"
    assert data["summary"] == result.summary()


@pytest.mark.parametrize(
    ("candidates", "budgets", "message"),
    [
        ([], {"p99_ms": 1}, r"candidates=\[\] must be a non-empty sequence of worker counts"),
        ([1, 0], {"p99_ms": 1}, r"candidates: 0 is not a worker count"),
        ([1, 2.5], {"p99_ms": 1}, r"candidates: 2.5 is not a worker count"),
        ([True], {"p99_ms": 1}, r"candidates: True is not a worker count"),
        ([1, 2], {}, r"search_capacity needs at least one budget"),
        ([1, 2], {"p99": 1}, r"unknown budget 'p99' in budgets; known: p50_ms"),
        ([1, 2], {"p99_ms": "fast"}, r"budget p99_ms='fast' must be a number"),
    ],
)
def test_bad_input_is_a_clear_error_before_any_storm(
    candidates: list[int], budgets: dict[str, float], message: str
) -> None:
    run = CountingRun()
    with pytest.raises(ConfigError, match=message):
        search_capacity(run, candidates, budgets=budgets)
    assert run.calls == []


@pytest.mark.timing
@pytest.mark.usefixtures("no_leaked_threads")
def test_real_storms_find_the_pool_size_littles_law_predicts() -> None:
    """20 users, a WSGI handler blocking 20 ms, p99 within 70 ms: how many threads?

    Little's law: W threads serve W / 20 ms requests per second, so 20 users see a mean
    latency of 20 × 20 / W ms, and p99 ≥ mean rules out W ≤ 5 (400 / 70 ≈ 5.7). Requests
    wait whole rounds of service, ceil(20 / W) × 20 ms: W = 6 needs 4 rounds (80 ms) and
    fails, W = 7 needs 3 (60 ms) and passes. Noise only adds latency, so best ≥ 7. A
    loaded machine may delay the p99 request by up to a round: W ≥ 10 (2 rounds, 40 ms)
    still passes then, hence best ≤ 10, with 2 of slack for a noisier CI: 7 ≤ best ≤ 12.
    (A 60 ms budget would sit exactly on the 3-round boundary, where sleep overshoot of a
    fraction of a millisecond decides.)
    """
    app = wsgi_sleep(SERVICE_MS / 1000)

    def run(workers: int) -> StormResult:
        values = {"users": USERS, "duration": 0.6, "workers": workers, "threads": 1}
        return run_plan(plan_storm(app, "GET", "/", layers=[Layer("capacity test", values)]))

    result = search_capacity(run, range(1, 33), budgets={"p99_ms": 70})

    assert result.best is not None, result.table()
    assert 7 <= result.best <= 12, result.table()
    assert result.storms <= most_storms(32)
    assert not result.is_async_app
    # The answer is pinned by a storm one below it that failed.
    below = result.trial(result.best - 1)
    assert below is not None, result.table()
    assert not below.passed
    # Little's law on the throughput of the failing pool: W / 20 ms, within 15%.
    expected_rps = below.workers / (SERVICE_MS / 1000)
    assert below.throughput == pytest.approx(expected_rps, rel=0.15)


@pytest.mark.usefixtures("no_leaked_threads")
def test_capacity_keeps_the_requests_stop_condition() -> None:
    from pytest_concurrency._api import capacity

    app = wsgi_sleep(0.001)
    found = capacity(app, "GET", "/", workers=[1, 2, 3], users=2, requests=20, p99_ms=10_000)

    assert found.best == 1
    assert [r.requests for r in found.results.values()] == [20] * found.storms
    # Twenty 1 ms requests, not the default 2 s storm.
    assert all(r.duration < 1.0 for r in found.results.values())
