"""The in-process request path: records kept raw until the round ends, each step of a
request timed whether it completes in its first step or suspends, the turn users give
each other."""

from __future__ import annotations

import asyncio
import time
from array import array
from time import perf_counter
from typing import Any

import pytest

from pytest_concurrency._drivers.asgi import AsgiDriver
from pytest_concurrency._engine.plan import plan_storm
from pytest_concurrency._engine.runner import AsyncRunner
from pytest_concurrency._engine.schedule import Schedule
from pytest_concurrency._metrics.fold import RunFigures
from pytest_concurrency._metrics.records import RawRecords, Recorder
from pytest_concurrency._params import Layer
from pytest_concurrency._probes.attribution import LONG_STEP, OWN

ORIGIN = 1234.5678


def _old_way(rows: list[tuple[float, float, float, int, int, int]]) -> Recorder:
    """A recorder filled as requests complete, converting each figure on the spot."""
    rec = Recorder()
    for intended, latency, first, status, error, index in rows:
        rec.start.append(int((intended - ORIGIN) * 1e6))
        rec.latency.append(int(latency * 1e6))
        rec.ttfb.append(int((first - intended) * 1e6) if first else -1)
        rec.queue.append(-1)
        rec.status.append(status)
        rec.endpoint.append(index)
        rec.error.append(error)
    return rec


def test_raw_records_become_the_integers_a_recorder_filled_on_the_way_holds() -> None:
    rows = [
        (ORIGIN + 0.0011, 0.0023456789, ORIGIN + 0.0019999, 200, 0, 0),
        (ORIGIN + 1.0000001, 0.5, 0.0, 0, 3, 1),  # a timeout: no first byte
        (ORIGIN + 2.123456789, 1e-7, ORIGIN + 2.1234568, 500, 1, 2),
        (ORIGIN + 0.3, 0.1 + 0.2, ORIGIN + 0.3 + 0.1, 404, 0, 65535),
    ]
    raw = RawRecords()
    for intended, latency, first, status, error, index in rows:
        raw.start.append(intended)
        raw.latency.append(latency)
        raw.first.append(first)
        raw.status.append(status)
        raw.error.append(error)
        raw.endpoint.append(index)
    raw.add_waits([("pool", "db", 0.004, ORIGIN + 0.5)], ORIGIN)  # the last request's
    raw.add_waits([("upstream", "model", 0.25, ORIGIN + 1.2)], ORIGIN, at=1)
    assert len(raw) == 4
    assert raw.tail(2) == (4, [0, 300000], [500, 404])
    rec = raw.recorder(ORIGIN)
    old = _old_way(rows)
    for name in ("start", "latency", "ttfb", "queue", "status", "endpoint", "error"):
        assert getattr(rec, name) == getattr(old, name), name
    assert rec.ttfb[1] == -1
    assert list(rec.wait_at) == [3, 1]
    assert rec.wait_names == [("pool", "db"), ("upstream", "model")]
    assert list(rec.wait_us) == [4000, 250000]
    assert list(rec.wait_end) == [500000, 1200000]
    assert rec.queue == array("q", [-1] * 4)


async def _run(app: Any, *, users: int, requests: int, own_steps: bool) -> RunFigures:
    plan = plan_storm(
        app,
        "GET",
        "/",
        layers=[Layer("test", {"users": users, "requests": requests, "lifespan": "off"})],
    )
    driver = AsgiDriver(app, list(plan.requests), lifespan="off")
    runner = AsyncRunner(Schedule(plan.config, perf_counter() + 0.001), driver, plan.mix)
    progress = [0.0]
    runner.own_steps = own_steps
    runner.progress = progress
    before = perf_counter()
    figures = await runner.run()
    if own_steps:
        assert before < progress[0] < perf_counter()  # every step's end is written
    else:
        assert progress[0] == 0.0
    return figures


def _own_steps(rec: Recorder) -> dict[int, list[int]]:
    """Each request's own long steps (µs), by request index."""
    key = rec.wait_names.index((OWN, "")) if (OWN, "") in rec.wait_names else -1
    steps: dict[int, list[int]] = {}
    for at, k, us in zip(rec.wait_at, rec.wait_key, rec.wait_us, strict=True):
        if k == key:
            steps.setdefault(at, []).append(us)
    return steps


BLOCK = 0.003  # three times LONG_STEP


async def _blocks_then_answers(scope: Any, receive: Any, send: Any) -> None:
    time.sleep(BLOCK)  # held the loop in the request's first (and only) step
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _waits_then_blocks(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.sleep(0.002)  # suspends: the loop gets the future it awaits
    time.sleep(BLOCK)  # held the loop in its second step
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(0)
    await send({"type": "http.response.body", "body": b"ok"})


async def _blocks_then_waits(scope: Any, receive: Any, send: Any) -> None:
    time.sleep(BLOCK)  # the first step, run before the request ever suspends
    await asyncio.sleep(0.002)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize(
    ("app", "steps"),
    [(_blocks_then_answers, 1), (_waits_then_blocks, 1), (_blocks_then_waits, 1)],
    ids=["one-step", "long-later-step", "long-first-step-then-suspends"],
)
def test_each_long_step_of_a_request_is_its_own_whether_or_not_it_suspends(
    app: Any, steps: int
) -> None:
    figures = asyncio.run(_run(app, users=2, requests=6, own_steps=True))
    rec = figures.rec
    assert list(rec.status) == [200] * 6
    own = _own_steps(rec)
    assert sorted(own) == list(range(6))  # every request kept its own long step
    for at, durations in own.items():
        assert len(durations) == steps
        # At least the blocking call; within the request's latency.
        assert BLOCK * 1e6 <= durations[0] <= rec.latency[at]
    # A request that suspended waited 2 ms on top of its step.
    if app is not _blocks_then_answers:
        assert min(rec.latency) >= (BLOCK + 0.002) * 1e6


def test_short_steps_are_not_kept_and_nothing_is_timed_without_a_monitor() -> None:
    async def quick(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    figures = asyncio.run(_run(quick, users=3, requests=30, own_steps=True))
    assert len(figures.rec) == 30
    assert LONG_STEP >= 0.001
    assert not _own_steps(figures.rec)
    figures = asyncio.run(_run(_blocks_then_answers, users=1, requests=2, own_steps=False))
    assert len(figures.rec) == 2
    assert not _own_steps(figures.rec)


def test_a_request_that_raises_in_its_first_step_is_counted_as_its_failure() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        time.sleep(BLOCK)
        raise RuntimeError("boom")

    figures = asyncio.run(_run(broken, users=2, requests=4, own_steps=True))
    rec = figures.rec
    assert list(rec.status) == [500] * 4
    assert {figures.book.kinds[e] for e in rec.error} == {"RuntimeError"}
    assert sorted(_own_steps(rec)) == [0, 1, 2, 3]  # its step is still its own


def test_users_take_turns_on_the_loop_one_request_each() -> None:
    order: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        order.append(id(asyncio.current_task()))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    figures = asyncio.run(_run(app, users=4, requests=40, own_steps=False))
    assert len(figures.rec) == 40
    # Back to back, no user sends twice before the three others have sent once.
    tail = order[8:]
    for at in range(0, len(tail) - 4, 4):
        assert len(set(tail[at : at + 4])) == 4


def test_the_pool_probe_counts_the_cpus_once_not_at_every_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from pytest_concurrency._probes import pools

    counted: list[int] = []
    real = getattr(os, "process_cpu_count", os.cpu_count)

    def count() -> int | None:
        counted.append(1)
        return real()

    monkeypatch.setattr(os, "process_cpu_count", count, raising=False)
    monkeypatch.setattr(os, "cpu_count", count)

    async def main() -> list[Any]:
        probe = pools.ThreadPoolProbe()
        await probe.start()
        for _ in range(50):
            probe._tick(reschedule=False)
        return list(await probe.stop())

    usages = asyncio.run(main())
    assert usages  # the anyio limiter at least
    assert len(counted) <= 1


def test_a_request_recorded_after_the_records_were_taken_leaves_them_whole() -> None:
    # A request abandoned at the round's end may complete later and append its record: the
    # records already handed to the fold keep their length, every column alike.
    raw = RawRecords()
    for k in range(3):
        raw.start.append(ORIGIN + k)
        raw.latency.append(0.01)
        raw.first.append(ORIGIN + k + 0.005)
        raw.status.append(200)
        raw.endpoint.append(0)
        raw.error.append(0)
    rec = raw.recorder(ORIGIN)
    raw.start.append(ORIGIN + 9)
    raw.latency.append(0.5)
    raw.first.append(0.0)
    raw.status.append(500)
    raw.endpoint.append(0)
    raw.error.append(0)
    raw.add_waits([("pool", "db", 0.1, ORIGIN + 9.1)], ORIGIN)
    columns = ("start", "latency", "ttfb", "queue", "status", "endpoint", "error")
    assert {name: len(getattr(rec, name)) for name in columns} == dict.fromkeys(columns, 3)
    assert list(rec.wait_at) == []
