"""Raw per-request records, folded after the storm into HDR histograms and a timeline.

The hot path only appends integers to ``array('q')`` buffers (≈ 0.07 µs each);
histograms are filled afterwards, one ``record_value(value, count)`` per distinct
value, and queried for all percentiles in one pass.
"""

from __future__ import annotations

import math
import threading
import traceback
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hdrh.histogram import HdrHistogram

from .._model.result import ErrorSummary, LatencyStats

__all__ = [
    "HISTOGRAM_MAX_US",
    "ErrorBook",
    "ErrorSummary",
    "LatencyStats",
    "LiveRecords",
    "Moments",
    "RawRecords",
    "Recorder",
    "is_failure",
    "latency_stats",
    "new_histogram",
    "record_many",
]

HISTOGRAM_MIN_US = 1
HISTOGRAM_MAX_US = 3_600_000_000  # one hour
HISTOGRAM_DIGITS = 3

#: Status code stored for a request cut off by its timeout.
STATUS_TIMEOUT = 0
#: Status code stored for a request whose app raised before answering.
STATUS_EXCEPTION = 500

_PERCENTILES = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9)


def is_failure(status: int, error: int) -> bool:
    """A request failed for its client: an exception, a timeout or a status >= 400."""
    return bool(error) or status >= 400 or status == STATUS_TIMEOUT


def new_histogram() -> HdrHistogram:
    """An empty latency histogram in microseconds, 1 µs to one hour, 3 significant digits."""
    return HdrHistogram(HISTOGRAM_MIN_US, HISTOGRAM_MAX_US, HISTOGRAM_DIGITS)


@dataclass
class Moments:
    """Count, mean and standard deviation of recorded values, kept beside a histogram.

    HdrHistogram_py computes its mean and deviation by iterating every bucket (about
    0.2 s each for a µs histogram up to an hour); the raw values give them for free.
    """

    count: int = 0
    total: float = 0.0
    squares: float = 0.0
    out_of_range: int = 0

    @property
    def mean(self) -> float:
        """Mean of the values."""
        return self.total / self.count if self.count else math.nan

    @property
    def stdev(self) -> float:
        """Population standard deviation of the values."""
        if not self.count:
            return math.nan
        mean = self.mean
        return math.sqrt(max(0.0, self.squares / self.count - mean * mean))


def record_many(histogram: HdrHistogram, values: Iterable[int]) -> Moments:
    """Record *values* (µs), one ``record_value`` per distinct value; out-of-range ones are
    clamped and counted, never dropped."""
    moments = Moments()
    out_of_range = 0
    for raw, count in Counter(values).items():
        moments.count += count
        moments.total += raw * count
        moments.squares += raw * raw * count
        value = raw
        if raw < HISTOGRAM_MIN_US:
            value = HISTOGRAM_MIN_US
        elif raw > HISTOGRAM_MAX_US:
            out_of_range += count
            value = HISTOGRAM_MAX_US
        if not histogram.record_value(value, count):
            out_of_range += count
    moments.out_of_range = out_of_range
    return moments


def latency_stats(histogram: HdrHistogram, moments: Moments | None = None) -> LatencyStats:
    """Query all percentiles of a µs histogram in one pass; figures in ms.

    Pass the :class:`Moments` of the recorded values when you have them: without them
    the mean and deviation come from iterating the histogram, which is slow.
    """
    count = int(histogram.get_total_count())
    if count == 0:
        return LatencyStats()
    values = histogram.get_percentile_to_value_dict(list(_PERCENTILES))
    ms = 1000.0
    if moments is not None and moments.count:
        mean, stdev = moments.mean, moments.stdev
    else:
        mean, stdev = histogram.get_mean_value(), histogram.get_stddev()
    return LatencyStats(
        count=count,
        min=histogram.get_min_value() / ms,
        mean=mean / ms,
        stdev=stdev / ms,
        p50=values[50.0] / ms,
        p75=values[75.0] / ms,
        p90=values[90.0] / ms,
        p95=values[95.0] / ms,
        p99=values[99.0] / ms,
        p999=values[99.9] / ms,
        max=histogram.get_max_value() / ms,
    )


class ErrorBook:
    """Kinds of failure seen in a storm, shared by all its recorders (cold path, locked)."""

    TIMEOUT = "Timeout"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.kinds: list[str] = [""]
        self.examples: list[str] = [""]
        self._index: dict[str, int] = {}

    def kind(self, exc: BaseException | None, name: str | None = None) -> int:
        """Index of the failure kind of *exc* (or *name*), registering it with its traceback."""
        key = name or (type(exc).__qualname__ if exc is not None else "Error")
        index = self._index.get(key)
        if index is not None:
            return index
        with self._lock:
            index = self._index.get(key)
            if index is None:
                example = "".join(traceback.format_exception(exc)) if exc is not None else key
                self.kinds.append(key)
                self.examples.append(example)
                index = len(self.kinds) - 1
                self._index[key] = index
        return index

    def adopt(self, kind: str, example: str) -> int:
        """Index of *kind* in this book, registering it with *example* (merging books)."""
        index = self._index.get(kind)
        if index is None:
            with self._lock:
                self.kinds.append(kind)
                self.examples.append(example)
                index = self._index[kind] = len(self.kinds) - 1
        return index

    def __getstate__(self) -> dict[str, Any]:
        return {"kinds": self.kinds, "examples": self.examples}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        for kind, example in zip(state["kinds"][1:], state["examples"][1:], strict=True):
            self.adopt(kind, example)

    def summaries(self, indices: Iterable[int]) -> dict[str, ErrorSummary]:
        """Count failures by kind among the given per-request kind indices."""
        counts = Counter(i for i in indices if i)
        return {
            self.kinds[i]: ErrorSummary(self.kinds[i], n, self.examples[i])
            for i, n in sorted(counts.items(), key=lambda item: -item[1])
        }


class LiveRecords(Protocol):
    """Records a live status line may read while a storm appends to them."""

    def tail(self, count: int) -> tuple[int, list[int], list[int]]:
        """Requests recorded so far, and the latencies (µs) and statuses of the last *count*."""
        ...


@dataclass
class Recorder:
    """Per-request raw records of one user group or worker thread (not shared across threads).

    Times are integer microseconds relative to the storm's origin; ``start`` is the
    intended send time. ``ttfb`` and ``queue`` are -1 where they do not apply;
    ``error`` is 0 or an index into the storm's :class:`ErrorBook`.

    The waits charged to a request (see ``_probes/attribution.py``) are kept apart, one
    row per wait and only for requests that waited: ``wait_at`` is the request's index,
    ``wait_key`` an index into ``wait_names`` (``(kind, name)``), ``wait_us`` the wait
    and ``wait_end`` the instant it ended (µs from the origin, like ``start``).
    """

    start: array[int] = field(default_factory=lambda: array("q"))
    latency: array[int] = field(default_factory=lambda: array("q"))
    ttfb: array[int] = field(default_factory=lambda: array("q"))
    queue: array[int] = field(default_factory=lambda: array("q"))
    status: array[int] = field(default_factory=lambda: array("i"))
    endpoint: array[int] = field(default_factory=lambda: array("H"))
    error: array[int] = field(default_factory=lambda: array("H"))
    wait_at: array[int] = field(default_factory=lambda: array("I"))
    wait_key: array[int] = field(default_factory=lambda: array("H"))
    wait_us: array[int] = field(default_factory=lambda: array("q"))
    wait_end: array[int] = field(default_factory=lambda: array("q"))
    wait_names: list[tuple[str, str]] = field(default_factory=list)
    _wait_index: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)

    def wait_key_of(self, kind: str, name: str) -> int:
        """The index of ``(kind, name)`` in ``wait_names``, registering it."""
        key = (kind, name)
        index = self._wait_index.get(key)
        if index is None:
            index = self._wait_index[key] = len(self.wait_names)
            self.wait_names.append(key)
        return index

    def add_waits(
        self, entries: Iterable[tuple[str, str, float, float]], origin: float, at: int = -1
    ) -> None:
        """Keep a ledger's entries as the waits of request *at* (default: the last recorded)."""
        if at < 0:
            at = len(self.latency) - 1
        for kind, name, seconds, ended in entries:
            self.wait_at.append(at)
            self.wait_key.append(self.wait_key_of(kind, name))
            self.wait_us.append(int(seconds * 1e6))
            self.wait_end.append(int((ended - origin) * 1e6))

    def __len__(self) -> int:
        return len(self.latency)

    def tail(self, count: int) -> tuple[int, list[int], list[int]]:
        """Requests recorded so far, and the latencies (µs) and statuses of the last *count*."""
        n = len(self.latency)
        first = max(0, n - count)
        return n, self.latency[first:n].tolist(), self.status[first:n].tolist()

    def extend(self, other: Recorder, error_map: Sequence[int] | None = None) -> None:
        """Append *other*'s records; *error_map* renumbers its error kinds (merging books)."""
        if other.wait_at:
            offset = len(self.latency)
            keys = [self.wait_key_of(kind, name) for kind, name in other.wait_names]
            self.wait_at.extend(i + offset for i in other.wait_at)
            self.wait_key.extend(keys[k] for k in other.wait_key)
            self.wait_us.extend(other.wait_us)
            self.wait_end.extend(other.wait_end)
        self.start.extend(other.start)
        self.latency.extend(other.latency)
        self.ttfb.extend(other.ttfb)
        self.queue.extend(other.queue)
        self.status.extend(other.status)
        self.endpoint.extend(other.endpoint)
        if error_map is None:
            self.error.extend(other.error)
        else:
            self.error.extend(error_map[e] for e in other.error)

    @classmethod
    def merge(cls, recorders: Sequence[Recorder]) -> Recorder:
        """Concatenate several recorders (for example, one per worker thread)."""
        if len(recorders) == 1:
            return recorders[0]
        merged = cls()
        for rec in recorders:
            merged.extend(rec)
        return merged


class RawRecords:
    """An async round's records as its requests complete: instants in seconds, kept as read.

    Turning instants into integer microseconds costs more than the appends themselves;
    it waits until the round has ended (:meth:`recorder`), which gives exactly the
    integers a :class:`Recorder` filled on the way would hold. ``start`` is the intended
    send time, ``latency`` the latency in seconds, ``first`` the first byte's instant
    (0.0: none). A live line reads :meth:`tail` meanwhile.
    """

    __slots__ = ("_waits", "endpoint", "error", "first", "latency", "start", "status")

    def __init__(self) -> None:
        self.start = array("d")
        self.latency = array("d")
        self.first = array("d")
        self.status = array("i")
        self.endpoint = array("H")
        self.error = array("H")
        #: The waits charged to the requests, already in their final form.
        self._waits = Recorder()

    def __len__(self) -> int:
        return len(self.latency)

    def add_waits(
        self, entries: Iterable[tuple[str, str, float, float]], origin: float, at: int = -1
    ) -> None:
        """Keep a ledger's entries as the waits of request *at* (default: the last recorded)."""
        self._waits.add_waits(entries, origin, len(self.latency) - 1 if at < 0 else at)

    def tail(self, count: int) -> tuple[int, list[int], list[int]]:
        """Requests recorded so far, and the latencies (µs) and statuses of the last *count*."""
        n = len(self.latency)
        first = max(0, n - count)
        return n, [int(x * 1e6) for x in self.latency[first:n]], self.status[first:n].tolist()

    def recorder(self, origin: float) -> Recorder:
        """The records as a :class:`Recorder`: times in µs, ``start`` from *origin*."""
        # The Recorder owns copies, cut at the requests recorded now: a request abandoned
        # at the round's end that completes later appends here, not to the folded records.
        rec, self._waits = self._waits, Recorder()
        n = len(self.latency)
        starts = self.start[:n]
        rec.start = array("q", [int((s - origin) * 1e6) for s in starts])
        rec.latency = array("q", [int(x * 1e6) for x in self.latency[:n]])
        pairs = zip(starts, self.first[:n], strict=True)
        rec.ttfb = array("q", [int((f - s) * 1e6) if f else -1 for s, f in pairs])
        rec.queue = array("q", [-1]) * n
        rec.status = self.status[:n]
        rec.endpoint = self.endpoint[:n]
        rec.error = self.error[:n]
        return rec
