"""Take the time of the p50 and p99 requests (and of the slowest few) apart, after the storm.

Each request's latency is split into the waits charged to it while it ran (see
``_probes/attribution.py``), the time the event loop was held by someone else, and the
rest, its own service:

- a charged wait covers ``[end − wait, end]``; waits that overlap (two upstream calls
  awaited together) count once, their union shared in proportion to each;
- the WSGI pool's queue wait (intended send → picked by a thread) is a ``worker`` wait
  named by the pool;
- ``loop``: the part of the request's time inside a loop stall the monitor saw, outside
  the request's own waits and outside its own long steps (a stall it caused itself is its
  own service). While the loop is stalled nothing else runs, so a request in flight then,
  not waiting for anything else, was waiting for the loop. Stalls shorter than the
  monitor's threshold (5 ms) are not seen: their lateness stays in the service;
- ``service``: the rest, so the parts sum to the latency.

Only the requests shown are taken apart: a band of ranks around each percentile (between
p49.5 and p50.5, p98.5 and p99.5) and the slowest few, so the fold costs nothing per request.
"""

from __future__ import annotations

import bisect
import heapq
from array import array
from collections import defaultdict
from collections.abc import Sequence

from hdrh.histogram import HdrHistogram

from .._model.result import OWN_STEP, SERVICE, Attribution, Breakdown, Exemplar, WaitShare
from .percentile import rank
from .records import Recorder, new_histogram, record_many

__all__ = ["BANDS", "SLOWEST", "attribute"]

#: The bands: a label and the two quantiles that bound it.
BANDS = (("p50", 0.495, 0.505), ("p99", 0.985, 0.995))
#: Slowest requests kept as exemplars.
SLOWEST = 5

_Parts = dict[tuple[str, str], float]


def attribute(
    rec: Recorder,
    keep: Sequence[int],
    *,
    origin: float,
    stalls: Sequence[tuple[float, float]],
    pool: str | None,
    labels: Sequence[str],
    measure_from_us: int,
    histogram: HdrHistogram | None = None,
    loops: Sequence[tuple[int, Sequence[tuple[float, float]]]] = (),
) -> Attribution | None:
    """The breakdown of the bands and the slowest requests among the *keep* indices.

    *stalls* are the loop monitor's ``(start, end)`` on the round's clock; *pool* names the
    WSGI pool whose queue wait is a ``worker`` wait (None: no queue recorded); *histogram*
    holds the kept latencies (µs), made here when not given. *loops*, for records from
    several processes (shards) each with its own loop, replaces *stalls*: each process's
    first record and its loop's stalls, which held only that process's requests.
    """
    if not keep:
        return None
    lats = rec.latency
    if histogram is None:
        histogram = new_histogram()
        record_many(histogram, (lats[i] for i in keep))
    n = len(keep)
    chosen: dict[str, list[int]] = {}
    for label, lo, hi in BANDS:
        chosen[label] = _between(rec, keep, rank(n, lo), rank(n, hi), histogram, lo, hi)
    slowest = heapq.nlargest(SLOWEST, keep, key=lats.__getitem__)
    wanted = {i for band in chosen.values() for i in band} | set(slowest)
    rows: dict[int, list[int]] = defaultdict(list)
    for row, at in enumerate(rec.wait_at):
        if at in wanted:
            rows[at].append(row)
    groups = [(first, _spans(held, origin)) for first, held in loops or [(0, stalls)]]
    firsts = [first for first, _ in groups]
    parts = {}
    for i in wanted:
        spans, ends = groups[max(0, bisect.bisect_right(firsts, i) - 1)][1]
        parts[i] = _take_apart(rec, i, rows.get(i, ()), spans, ends, pool)
    bands = tuple(
        _band(label, [(lats[i], parts[i]) for i in band]) for label, band in chosen.items() if band
    )
    exemplars = tuple(
        Exemplar(
            request=labels[rec.endpoint[i]] if rec.endpoint[i] < len(labels) else "?",
            status=rec.status[i],
            latency_ms=lats[i] / 1000,
            sent_s=(rec.start[i] - measure_from_us) / 1e6,
            parts=_shares(parts[i], lats[i], 1),
        )
        for i in slowest
    )
    return Attribution(bands, exemplars)


def _spans(
    stalls: Sequence[tuple[float, float]], origin: float
) -> tuple[list[tuple[int, int]], array[int]]:
    """Stalls in µs from the origin, and their ends (for a bisect)."""
    spans = [(int((a - origin) * 1e6), int((b - origin) * 1e6)) for a, b in stalls]
    return spans, array("q", (b for _, b in spans))


#: Slack around the histogram's values (3 significant digits: buckets of at most 0.1 %).
_SLACK = 0.01


def _between(
    rec: Recorder,
    keep: Sequence[int],
    first: int,
    last: int,
    histogram: HdrHistogram,
    lo: float,
    hi: float,
) -> list[int]:
    """The requests of ranks *first* to *last* (1-based, by latency) among *keep*.

    Without sorting every request: the histogram bounds their latencies, the requests
    below the bound are counted, and only those within it are sorted.
    """
    lats = rec.latency
    low = int(histogram.get_value_at_percentile(lo * 100) * (1 - _SLACK))
    high = int(histogram.get_value_at_percentile(hi * 100) * (1 + _SLACK)) + 1
    below = 0
    within = array("I")
    for i in keep:
        value = lats[i]
        if value < low:
            below += 1
        elif value <= high:
            within.append(i)
    ordered = sorted(within, key=lats.__getitem__)
    if below >= first or below + len(ordered) < last:  # pragma: no cover - the bounds hold
        ordered = sorted(keep, key=lats.__getitem__)
        below = 0
    return ordered[first - 1 - below : last - below]


def _band(label: str, requests: list[tuple[int, _Parts]]) -> Breakdown:
    total: _Parts = defaultdict(float)
    latency = 0
    for lat, parts in requests:
        latency += lat
        for key, us in parts.items():
            total[key] += us
    count = len(requests)
    return Breakdown(label, count, latency / count / 1000, _shares(total, latency, count))


def _shares(parts: _Parts, latency: int, count: int) -> tuple[WaitShare, ...]:
    ordered = sorted(parts.items(), key=lambda item: -item[1])
    return tuple(
        WaitShare(kind, name, us / count / 1000, us / latency if latency else 0.0)
        for (kind, name), us in ordered
        if us > 0
    )


def _take_apart(
    rec: Recorder,
    i: int,
    rows: Sequence[int],
    spans: Sequence[tuple[int, int]],
    ends: array[int],
    pool: str | None,
) -> _Parts:
    """Request *i*'s latency (µs) split by (kind, name); the parts sum to it."""
    start = rec.start[i]
    lat = rec.latency[i]
    stop = start + lat
    waits: list[tuple[tuple[str, str], int, int]] = []
    own: list[tuple[int, int]] = []
    queue = rec.queue[i]
    if pool is not None and queue > 0:
        waits.append((("worker", pool), start, start + min(queue, lat)))
    names = rec.wait_names
    for row in rows:
        kind, name = names[rec.wait_key[row]]
        end = rec.wait_end[row]
        a, b = max(start, end - rec.wait_us[row]), min(stop, end)
        if b <= a:
            continue
        if kind == OWN_STEP:
            own.append((a, b))
        else:
            waits.append(((kind, name), a, b))
    parts: _Parts = defaultdict(float)
    waited = _merged([(a, b) for _, a, b in waits])
    covered = sum(b - a for a, b in waited)
    charged = sum(b - a for _, a, b in waits)
    if charged:
        # Waits that overlap count once: their union, shared in proportion.
        scale = covered / charged
        for key, a, b in waits:
            parts[key] += (b - a) * scale
    loop = 0
    if spans:
        first = bisect.bisect_right(ends, start)
        outside = _merged(waited + own)
        for began, ended in spans[first:]:
            if began >= stop:
                break
            a, b = max(began, start), min(ended, stop)
            if b > a:
                loop += (b - a) - _overlap(outside, a, b)
    if loop > 0:
        parts[("loop", "")] = float(loop)
    parts[(SERVICE, "")] = float(max(0, lat - covered - loop))
    return parts


def _merged(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            if b > merged[-1][1]:
                merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def _overlap(merged: list[tuple[int, int]], lo: int, hi: int) -> int:
    return sum(max(0, min(b, hi) - max(a, lo)) for a, b in merged)
