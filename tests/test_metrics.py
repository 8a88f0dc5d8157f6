"""HDR histograms and the moments kept beside them."""

from __future__ import annotations

import random

import pytest

from pytest_concurrency._metrics import HISTOGRAM_MAX_US, latency_stats, new_histogram, record_many


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
