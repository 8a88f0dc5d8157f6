"""Raw records on the hot path, folded after each round into HDR histograms and figures."""

from .records import (
    HISTOGRAM_MAX_US,
    STATUS_EXCEPTION,
    STATUS_TIMEOUT,
    ErrorBook,
    ErrorSummary,
    LatencyStats,
    Moments,
    Recorder,
    latency_stats,
    new_histogram,
    record_many,
)

__all__ = [
    "HISTOGRAM_MAX_US",
    "STATUS_EXCEPTION",
    "STATUS_TIMEOUT",
    "ErrorBook",
    "ErrorSummary",
    "LatencyStats",
    "Moments",
    "Recorder",
    "latency_stats",
    "new_histogram",
    "record_many",
]
