"""HDR histograms and the moments kept beside them."""

from __future__ import annotations

import random
from array import array

import pytest

from pytest_concurrency._metrics import HISTOGRAM_MAX_US, latency_stats, new_histogram, record_many
from pytest_concurrency._metrics.percentile import quantile
from pytest_concurrency._metrics.records import STATUS_TIMEOUT, ErrorBook, Recorder


def test_moments_agree_with_the_histogram() -> None:
    rng = random.Random(3)
    values = [int(rng.lognormvariate(10, 0.8)) + 1 for _ in range(20_000)]
    h = new_histogram()
    moments = record_many(h, values)
    fast = latency_stats(h, moments)
    slow = latency_stats(h)  # iterates the histogram for mean and deviation
    assert fast.count == slow.count == 20_000
    # The histogram keeps 3 significant digits: its mean may differ by 0.1 %.
    assert fast.mean == pytest.approx(slow.mean, rel=2e-3)
    assert fast.stdev == pytest.approx(slow.stdev, rel=5e-3)
    ordered = sorted(values)
    assert fast.p99 * 1000 == pytest.approx(ordered[int(0.99 * len(ordered)) - 1], rel=2e-3)


def test_out_of_range_values_are_clamped_and_counted() -> None:
    h = new_histogram()
    moments = record_many(h, [0, 5, HISTOGRAM_MAX_US * 2])
    assert moments.out_of_range == 1
    assert h.get_total_count() == 3
    assert latency_stats(h, moments).max == pytest.approx(HISTOGRAM_MAX_US / 1000, rel=1e-3)


# -- the fold: bounded memory, same figures ----------------------------------------------


def _pool_records(n: int, seed: int = 5) -> Recorder:
    """A pool of 4 workers served FIFO: queue waits and service times that fit together."""
    rng = random.Random(seed)
    rec = Recorder()
    free = [0] * 4
    t = 0
    for _ in range(n):
        t += int(rng.expovariate(1 / 2500))
        worker = min(range(4), key=free.__getitem__)
        begin = max(t, free[worker])
        service = 1000 + int(rng.expovariate(1 / 8000))
        timed_out = rng.random() < 0.02
        free[worker] = begin + service
        rec.start.append(t)
        rec.queue.append(begin - t)
        rec.latency.append(begin - t + service)
        rec.ttfb.append(-1)
        rec.status.append(STATUS_TIMEOUT if timed_out else 200)
        rec.endpoint.append(0)
        rec.error.append(0)
    return rec


def _reference_pool_figures(
    rec: Recorder, keep: list[int], lo: int, hi: int, size: int
) -> tuple[float, float, list[float]]:
    """The sweep as a list of (time, Δbusy, Δwaiting) tuples sorted at once: exact, and
    ≈ 400 bytes a request."""
    events: list[tuple[int, int, int]] = []
    for i in range(len(rec)):
        sent = rec.start[i]
        begin = sent + rec.queue[i]
        if begin > sent:
            events += [(sent, 0, 1), (begin, 0, -1)]
        end = sent + rec.latency[i] if rec.status[i] != STATUS_TIMEOUT else begin
        if end > begin:
            events += [(begin, 1, 0), (end, -1, 0)]
    events.sort()
    span = hi - lo
    busy_us = [0.0] * max(1, -(-span // 1_000_000))
    saturated = busy_total = 0.0
    busy = waiting = 0
    prev = lo
    for at, d_busy, d_waiting in events:
        a, b = max(prev, lo), min(at, hi)
        if b > a and busy:
            busy_total += busy * (b - a)
            if busy >= size and waiting > 0:
                saturated += b - a
            second = a
            while second < b:
                index = (second - lo) // 1_000_000
                edge = min(b, lo + (index + 1) * 1_000_000)
                busy_us[index] += busy * (edge - second)
                second = edge
        prev = max(prev, at)
        busy += d_busy
        waiting += d_waiting
    return saturated / span, busy_total / span, [b / 1e6 for b in busy_us]


def test_fold_pool_figures_match_the_exact_sweep() -> None:
    from pytest_concurrency._engine.schedule import Window
    from pytest_concurrency._metrics.fold import PoolModel, _pool_figures

    rec = _pool_records(20_000)
    window = Window(origin=0.0, measure_from=2.0, stop_at=40.0, total=None, deadline=60.0)
    lo, hi = 2_000_000, 40_000_000
    keep = array("I", (i for i in range(len(rec)) if rec.start[i] >= lo))
    h = new_histogram()
    moments = record_many(h, (rec.latency[i] for i in keep))
    sweep = _pool_figures(rec, keep, window, PoolModel("4 workers", 4), None, moments)
    saturation, mean_busy, busy_by_second = _reference_pool_figures(rec, list(keep), lo, hi, 4)
    assert sweep.stats.saturation == pytest.approx(saturation, abs=1e-12)
    assert sweep.stats.mean_busy == pytest.approx(mean_busy, abs=1e-9)
    assert sweep.busy_by_second == pytest.approx(busy_by_second, abs=1e-9)
    # Requests in flight (queued or served) are at least the busy workers, and the pool
    # queued: the peak is above its 4 workers.
    assert all(
        f >= b - 1e-9 for f, b in zip(sweep.in_flight_by_second, busy_by_second, strict=True)
    )
    assert sweep.peak_in_flight > 4


def test_warmup_requests_drop_the_first_completions_ties_in_index_order() -> None:
    from pytest_concurrency._metrics.fold import _kept

    rec = Recorder()
    # Completions: 30, 10, 20, 20, 5, 20 (start + latency).
    for start, latency in [(10, 20), (0, 10), (5, 15), (10, 10), (0, 5), (0, 20)]:
        rec.start.append(start)
        rec.latency.append(latency)
    by_completion = sorted(range(6), key=lambda i: rec.start[i] + rec.latency[i])
    for count in range(7):
        assert list(_kept(rec, 0, count)) == sorted(by_completion[count:])


def test_fold_holds_few_bytes_per_request() -> None:
    import tracemalloc

    from pytest_concurrency._engine.plan import plan_storm
    from pytest_concurrency._engine.schedule import Window
    from pytest_concurrency._metrics.fold import PoolModel, RunFigures, fold
    from pytest_concurrency._params import Layer

    def wsgi_app(environ: object, start_response: object) -> list[bytes]:
        return [b""]

    plan = plan_storm(wsgi_app, "GET", "/", layers=[Layer("test", {"users": 8, "workers": 4})])

    def peak_bytes(n: int) -> int:
        rec = _pool_records(n)
        stop = (rec.start[-1] + 1) / 1e6
        window = Window(origin=0.0, measure_from=0.0, stop_at=stop, total=None, deadline=stop + 9)
        figures = RunFigures(rec, ErrorBook(), window, cpu=1.0, wall=stop, dropped=[])
        tracemalloc.start()
        try:
            result = fold(plan, figures, server="test", pool=PoolModel("4 workers", 4))
            peak: int = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result.requests == n
        return peak

    # What each further request costs (the histograms' fixed size cancels out). The fold
    # of lists and tuples took ≈ 400 bytes; the budget is 50 MB a million requests.
    per_request = (peak_bytes(60_000) - peak_bytes(20_000)) / 40_000
    assert per_request < 50


def test_one_percentile_takes_the_rank_the_hdr_histogram_takes() -> None:
    # Rank round(q·n), half up, 1 … n: not ceil(q·n) (5.4 → 6), nor int(q·(n-1)), nor
    # int(q·n) + 1 (the three conventions a sorted list could otherwise be read with).
    ten = list(range(1, 11))
    assert [quantile(ten, q) for q in (0.0, 0.05, 0.5, 0.54, 0.55, 0.99, 1.0)] == [
        1,
        1,
        5,
        5,
        6,
        10,
        10,
    ]
    assert quantile(list(range(1, 101)), 0.99) == 99
    assert quantile([7.5], 0.5) == 7.5
    # Values below 2,048 µs are exact in the histogram: both give the same value.
    rng = random.Random(7)
    for count in (1, 2, 3, 10, 99, 100, 101, 999, 1000):
        values = sorted(rng.randrange(1, 2000) for _ in range(count))
        histogram = new_histogram()
        record_many(histogram, values)
        for q in (0.0, 0.01, 0.25, 0.5, 0.54, 0.55, 0.9, 0.95, 0.99, 0.999, 1.0):
            assert quantile(values, q) == histogram.get_value_at_percentile(q * 100), (count, q)
