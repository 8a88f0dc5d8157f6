"""Gates that do not depend on the machine's speed: count-based and model-relative budgets,
budgets that could not be measured, and the rounds' noise in the verdict table."""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import anyio
import anyio.to_thread
import pytest

from pytest_concurrency import blocking_io, run_storm, simulated_io
from pytest_concurrency._budget import evaluate, measure
from pytest_concurrency._capacity import search_capacity
from pytest_concurrency._errors import ConfigError
from pytest_concurrency._metrics import LatencyStats
from pytest_concurrency._model.extras import SimulatedWaits
from pytest_concurrency._model.result import PoolStats, StormResult
from pytest_concurrency._params import BUDGET_NAMES, Layer, budget_limit, resolve
from pytest_concurrency._report._text import verdict_table

from .apps import asgi_blocking, asgi_sleep, wsgi_sleep

Scope = dict[str, Any]


def synthetic(
    *,
    requests: int = 100,
    p99: float = 20.0,
    interface: str = "ASGI",
    pool: PoolStats | None = None,
    simulated_waits: dict[str, Any] | None = None,
    rounds: list[dict[str, float]] | None = None,
) -> StormResult:
    """A storm result built by hand: figures chosen by the test, nothing timed."""
    latency = (
        LatencyStats(count=requests, min=1.0, mean=p99 / 2, p50=p99 / 2, p99=p99, max=p99)
        if requests
        else LatencyStats()
    )
    return StormResult(
        label="GET /",
        app="synthetic",
        interface=interface,
        server="event loop",
        method="GET",
        path="/",
        users=10,
        requests=requests,
        duration=1.0,
        throughput=float(requests),
        latency=latency,
        ttfb=latency,
        queue_wait=None,
        service_time=None,
        status_counts=Counter({200: requests}) if requests else Counter(),
        errors={},
        failed=0,
        timeouts=0,
        pool=pool,
        timeline=[],
        endpoints={},
        histograms={},
        params={},
        budgets={},
        simulated_waits=SimulatedWaits.from_dict(simulated_waits) if simulated_waits else None,
        rounds=rounds or [],
    )


# -- budgets that could not be measured -------------------------------------------------


def test_a_storm_without_requests_fails_every_budget_and_says_why() -> None:
    result = synthetic(requests=0)
    result.verdicts = evaluate(result, {"p99_ms": 1, "max_error_rate": 0.0})

    assert [(v.name, v.ok) for v in result.verdicts] == [
        ("p99_ms", False),
        ("max_error_rate", False),
    ]
    assert not result.passed
    table = verdict_table(result)
    assert "✗ not measured: no request completed in the measured window" in table


@pytest.mark.parametrize("name", list(BUDGET_NAMES))
def test_no_budget_passes_on_a_storm_without_requests(name: str) -> None:
    limit = 1.0 if name != "min_rps" else 0.0
    (verdict,) = evaluate(synthetic(requests=0), {name: limit})
    assert not verdict.ok
    assert math.isnan(verdict.measured)


def test_saturation_without_a_pool_fails_with_the_reason() -> None:
    result = synthetic()
    result.verdicts = evaluate(result, {"max_saturation": 0.5, "p99_ms": 100})

    assert [(v.name, v.ok) for v in result.verdicts] == [
        ("p99_ms", True),
        ("max_saturation", False),
    ]
    assert "no worker pool was busy" in verdict_table(result)


def test_p99_ratio_without_simulated_waits_fails_with_the_reason() -> None:
    result = synthetic()
    result.verdicts = evaluate(result, {"p99_ratio": 2})

    assert not result.passed
    assert "the storm made no simulated waits" in verdict_table(result)


def test_p99_ratio_compares_with_the_waits_own_p99() -> None:
    kind = {"count": 50, "p50_ms": 0.1, "p99_ms": 0.5, "requested_p99_ms": 10.0}
    waits = {"async": kind, "blocking": {"count": 0}}
    assert measure(synthetic(p99=25.0, simulated_waits=waits), "p99_ratio") == 2.5
    (held,) = evaluate(synthetic(p99=25.0, simulated_waits=waits), {"p99_ratio": 3})
    (broke,) = evaluate(synthetic(p99=40.0, simulated_waits=waits), {"p99_ratio": 3})
    assert held.ok
    assert not broke.ok


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("p99_ratio", 0, r"budget p99_ratio=0 must be greater than 0"),
        ("max_blocking_calls", -1, r"budget max_blocking_calls=-1 must not be negative"),
        ("max_queued", "few", r"budget max_queued='few' must be a number"),
    ],
)
def test_new_budgets_are_validated(name: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        budget_limit(name, value)


def test_new_budgets_are_storm_parameters() -> None:
    config = resolve(
        [
            Layer(
                "marker",
                {
                    "max_in_flight_peak": 20,
                    "max_threads_busy": 4,
                    "max_blocking_calls": 0,
                    "max_queued": 0,
                    "p99_ratio": 1.5,
                },
            )
        ]
    )
    assert config.budgets == {
        "max_in_flight_peak": 20.0,
        "max_threads_busy": 4.0,
        "max_blocking_calls": 0.0,
        "max_queued": 0.0,
        "p99_ratio": 1.5,
    }


# -- rounds: a limit inside the rounds' spread is "within noise" -------------------------


def test_a_limit_inside_the_rounds_spread_is_called_within_noise() -> None:
    rounds = [
        {"p50": 5.0, "p99": p99, "max": p99, "rps": 100.0, "error_rate": 0.0}
        for p99 in (18.0, 22.0, 30.0)
    ]
    result = synthetic(p99=22.0, rounds=rounds)
    result.verdicts = evaluate(result, {"p99_ms": 25, "p50_ms": 100})

    table = verdict_table(result)
    p99_line = next(line for line in table.splitlines() if line.strip().startswith("p99_ms"))
    assert "✓ (within noise: over 3 rounds it ranged 18–30 ms" in p99_line
    assert "judged on the median round" in p99_line
    p50_line = next(line for line in table.splitlines() if line.strip().startswith("p50_ms"))
    assert "within noise" not in p50_line


# -- count-based and model-relative budgets on an async endpoint and its blocking twin ---


def simulated_async(ms: float) -> Any:
    """ASGI app awaiting a simulated wait (recorded, so ``p99_ratio`` has a model)."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await simulated_io(ms)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def simulated_blocking(ms: float) -> Any:
    """Its blocking twin: the same wait, as time.sleep inside `async def`."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        blocking_io(ms)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def threaded(ms: float) -> Any:
    """ASGI app that sends its blocking wait to a worker thread (a FastAPI `def` endpoint)."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await anyio.to_thread.run_sync(time.sleep, ms / 1000)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def _verdicts(app: Any, budgets: dict[str, float], **params: Any) -> dict[str, bool]:
    result = run_storm(app, "GET", "/", check=False, duration=0.4, **budgets, **params)
    return {v.name: v.ok for v in result.verdicts}


@pytest.mark.filterwarnings("ignore::pytest_concurrency.ConcurrencyWarning")
@pytest.mark.usefixtures("no_leaked_threads")
def test_count_based_budgets_pass_async_and_fail_the_blocking_twin() -> None:
    # 10 ms waits at 200 arrivals/s: about 2 in flight when the loop is free; a loop held
    # 10 ms a request serves at most 100/s, so the requests due pile up (Little's law).
    budgets = {"max_blocking_calls": 0, "max_in_flight_peak": 10}
    assert _verdicts(asgi_sleep(0.01), budgets, rate=200) == {
        "max_in_flight_peak": True,
        "max_blocking_calls": True,
    }
    assert _verdicts(asgi_blocking(0.01), budgets, rate=200) == {
        "max_in_flight_peak": False,
        "max_blocking_calls": False,
    }


@pytest.mark.filterwarnings("ignore::pytest_concurrency.ConcurrencyWarning")
@pytest.mark.usefixtures("no_leaked_threads")
def test_p99_ratio_passes_async_and_fails_the_blocking_twin() -> None:
    # 10 users, 20 ms waits: awaited, p99 is about one wait; blocking the loop, the ten
    # users' waits run one after another, about ten waits. The limit of 5 waits sits
    # halfway: the awaited storm may lose 80 ms to a machine that takes its CPU away (as a
    # loaded 2-core one does) and still pass; the blocking one only grows under load.
    assert _verdicts(simulated_async(20), {"p99_ratio": 5}, users=10) == {"p99_ratio": True}
    assert _verdicts(simulated_blocking(20), {"p99_ratio": 5}, users=10) == {"p99_ratio": False}


@pytest.mark.filterwarnings("ignore::pytest_concurrency.ConcurrencyWarning")
def test_threads_busy_counts_the_apps_own_thread_pool() -> None:
    assert _verdicts(asgi_sleep(0.01), {"max_threads_busy": 0}, users=8) == {
        "max_threads_busy": True
    }
    assert _verdicts(threaded(10), {"max_threads_busy": 2}, users=8) == {"max_threads_busy": False}


@pytest.mark.filterwarnings("ignore::pytest_concurrency.ConcurrencyWarning")
@pytest.mark.usefixtures("no_leaked_threads")
def test_queued_counts_requests_that_waited_for_a_worker() -> None:
    # 4 users on 8 workers never wait; on 1 worker three of every four do.
    app = wsgi_sleep(0.005)
    assert _verdicts(app, {"max_queued": 0}, users=4, workers=8) == {"max_queued": True}
    assert _verdicts(app, {"max_queued": 0}, users=4, workers=1) == {"max_queued": False}


@pytest.mark.filterwarnings("ignore::pytest_concurrency.ConcurrencyWarning")
def test_queued_on_an_asgi_app_fails_with_the_reason() -> None:
    result = run_storm(asgi_sleep(0.001), "GET", "/", check=False, requests=20, max_queued=0)
    assert not result.passed
    assert "only the WSGI pool records each request's wait" in verdict_table(result)


# -- capacity: confirmed at the boundary, never above what can matter --------------------


def pool_result(workers: int, p99: float) -> StormResult:
    result = synthetic(p99=p99, interface="WSGI")
    result.server = f"{workers} workers"
    return result


class ScriptedRun:
    """A fake ``run(workers)``: p99 from *verdicts* (a list of pass/fail per call) or a rule."""

    def __init__(self, script: dict[int, list[bool]], needed: int) -> None:
        self.script = {w: list(seq) for w, seq in script.items()}
        self.needed = needed
        self.calls: list[int] = []

    def __call__(self, workers: int) -> StormResult:
        self.calls.append(workers)
        seq = self.script.get(workers)
        ok = seq.pop(0) if seq else workers >= self.needed
        return pool_result(workers, 10.0 if ok else 500.0)


def test_capacity_never_answers_more_workers_than_users() -> None:
    # 16 users: a 17th worker never has a request to serve. A noisy machine that fails
    # the 16-worker storm must not push the answer to 17.
    for seed in range(20):
        flaky = {16: [seed % 2 == 0, seed % 3 == 0, True]}
        run = ScriptedRun(flaky, needed=9)
        found = search_capacity(
            run, range(1, 129), budgets={"p99_ms": 100}, repeats=3, max_useful=16
        )
        assert found.best is not None
        assert found.best <= 16, found.table()
        assert max(run.calls) <= 16
    assert found.left_out == list(range(17, 129))
    assert "more than 16 workers cannot help" in found.table()


def test_a_boundary_that_flips_is_confirmed_by_a_majority() -> None:
    # 8 workers pass, then fail twice: by two of three, 8 is not enough.
    run = ScriptedRun({8: [True, False, False]}, needed=8)
    found = search_capacity(run, range(1, 17), budgets={"p99_ms": 100}, repeats=3)

    assert found.best == 9
    assert run.calls.count(8) == 3
    trial = found.trial(8)
    assert trial is not None
    assert (trial.passed, trial.runs, trial.passes) == (False, 3, 1)
    assert found.confidence == "uncertain"
    assert found.answer_range == (8, 9)
    summary = "\n".join(found.summary())
    assert "confidence: uncertain" in summary
    assert "the answer lies between 8 and 9 workers" in summary
    assert "more to confirm the boundary" in summary


def test_a_boundary_that_holds_states_high_confidence() -> None:
    run = ScriptedRun({}, needed=8)
    found = search_capacity(run, range(1, 17), budgets={"p99_ms": 100}, repeats=3)

    assert found.best == 8
    assert run.calls.count(8) == 2
    assert run.calls.count(7) == 2
    assert found.confidence == "high"
    assert found.confirming == 2
    assert "confidence: high — the storms at the boundary agreed" in found.table()
    assert found.to_dict()["confidence"] == "high"


@pytest.mark.filterwarnings("ignore::pytest_concurrency.ConcurrencyWarning")
@pytest.mark.usefixtures("no_leaked_threads")
def test_capacity_of_a_closed_model_is_capped_at_its_users() -> None:
    from pytest_concurrency import capacity

    found = capacity(wsgi_sleep(0.002), "GET", "/", users=3, requests=30, p99_ms=10_000)
    assert found.best == 1
    assert found.candidates == [1, 2, 3]
    assert found.max_useful == 3
    assert len(found.left_out) == 125
    assert found.confidence == "high"
