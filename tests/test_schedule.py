"""The one schedule every executor follows: first sends, next sends, stages, counts, drops."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pytest_concurrency import constant
from pytest_concurrency._engine.schedule import Schedule, _pause, start_offsets
from pytest_concurrency._errors import StormError
from pytest_concurrency._params import Layer, resolve


def _schedule(**params: object) -> Schedule:
    return Schedule(resolve([Layer("keyword argument", dict(params))]), origin=100.0)


def test_first_sends_are_staggered_over_at_most_100_ms() -> None:
    assert start_offsets(1) == [0.0]
    offsets = start_offsets(50)
    assert offsets[0] == 0.0
    assert offsets[-1] == pytest.approx(49 * 20e-6)
    assert start_offsets(100_000)[-1] < 0.1
    sends = _schedule(users=10, duration=1.0).first_sends()
    assert [uid for uid, _ in sends] == list(range(10))
    assert all(100.0 <= at < 100.001 for _, at in sends)


def test_next_send_adds_think_time_and_retires_at_the_end() -> None:
    schedule = _schedule(users=2, duration=1.0, think_ms=100)
    assert schedule.next_send(0, 100.2) == pytest.approx(100.3)
    # A send that would fall at or after the end of the round retires the user.
    assert schedule.next_send(0, 100.95) is None


def test_think_distribution_is_sampled_and_checked() -> None:
    schedule = _schedule(users=1, duration=10.0, think_ms=constant(30))
    assert schedule.next_send(0, 101.0) == pytest.approx(101.03)

    with pytest.raises(StormError, match=r"think_ms=.*drew 'soon'"):
        _pause("soon", "sampler")  # type: ignore[arg-type]
    assert _pause(-0.5, "sampler") == 0.0  # a negative draw never sends early


def test_stages_gate_users_above_the_target() -> None:
    # 0 -> 10 users over 10 s: user 5 is wanted from t = 5 s on.
    schedule = _schedule(stages=[(10, 10)])
    assert schedule.users == 10
    assert schedule.admit(5, 101.0) == pytest.approx(105.0, abs=1e-6)
    assert schedule.admit(0, 100.5) == pytest.approx(100.5)
    firsts = dict(schedule.first_sends())
    assert firsts[9] == pytest.approx(109.0, abs=1e-3)


def test_request_count_is_spent_once() -> None:
    schedule = _schedule(users=3, requests=5)
    assert [schedule.take() for _ in range(7)] == [True] * 5 + [False] * 2
    assert schedule.spent
    assert math.isinf(schedule.window.stop_at)


def test_open_model_arrivals_and_drops() -> None:
    schedule = _schedule(rate=100, duration=1.0, in_flight_cap=2)
    arrivals = list(schedule.arrivals())
    assert len(arrivals) == 100
    assert arrivals[0] == pytest.approx(100.0)
    assert schedule.admits_arrival(100.0, 1)
    assert not schedule.admits_arrival(100.01, 2)
    assert schedule.dropped == [100.01]


@pytest.mark.parametrize("model", [{"users": 1}, {"rate": 200}])
def test_a_timer_that_fires_early_sends_nothing_before_its_time(
    model: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # uvloop's timers count whole milliseconds from a time read once per loop pass, so a
    # sleep may end before perf_counter reaches its end. A request sent early reads a
    # latency shorter than its own (below zero on a fast app), and the next one falls
    # before the round's start, out of the count.
    import anyio

    from pytest_concurrency import run_storm
    from tests.apps import asgi_hello

    real_sleep = anyio.sleep

    async def early(delay: float) -> None:
        await real_sleep(max(0.0, delay - 0.002))

    monkeypatch.setattr(anyio, "sleep", early)
    result = run_storm(asgi_hello, "GET", "/", requests=5, **model)
    assert result.requests == 5
    assert result.status_counts == {200: 5}
    assert result.latency.min >= 0


def test_an_open_storm_of_a_request_count_sends_them_all() -> None:
    # A request-count storm has no end time: the arrivals run until the count is spent.
    from pytest_concurrency import run_storm
    from tests.apps import asgi_hello

    result = run_storm(asgi_hello, "GET", "/", requests=40, rate=400)
    assert result.requests == 40
    assert result.status_counts == {200: 40}
