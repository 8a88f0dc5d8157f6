"""Simulated I/O: latency distributions, waits, latency middleware and a fake upstream.

``distributions`` turns milliseconds into sampled waits; ``waits`` holds the process-wide
generator, the two ways of waiting (``anyio.sleep`` and ``time.sleep``) and the recorder
of how late they come back; ``middleware`` puts a wait in front of any ASGI or WSGI app;
``upstream`` answers the app's own outbound ``httpx`` and ``httpx2`` calls in-process;
``loopback`` serves the same routes over real HTTP on 127.0.0.1 to every other client during
a storm, and ``egress`` refuses every other connection off the machine while a storm runs.
"""

from .distributions import (
    ConstantLatency,
    EmpiricalLatency,
    ExponentialLatency,
    Latency,
    LatencyLike,
    LognormalLatency,
    NormalLatency,
    UniformLatency,
    as_latency,
    constant,
    empirical,
    exponential,
    lognormal,
    normal,
    uniform,
)
from .middleware import ASGILatencyMiddleware, WSGILatencyMiddleware, with_latency
from .upstream import INSTALLED, Route, UndeclaredUpstreamError, Upstream
from .waits import (
    WaitErrors,
    WaitRecorder,
    WaitReport,
    blocking_io,
    seed_latency,
    simulated_io,
    wait_recorder,
)

__all__ = [
    "INSTALLED",
    "ASGILatencyMiddleware",
    "ConstantLatency",
    "EmpiricalLatency",
    "ExponentialLatency",
    "Latency",
    "LatencyLike",
    "LognormalLatency",
    "NormalLatency",
    "Route",
    "UndeclaredUpstreamError",
    "UniformLatency",
    "Upstream",
    "WSGILatencyMiddleware",
    "WaitErrors",
    "WaitRecorder",
    "WaitReport",
    "as_latency",
    "blocking_io",
    "constant",
    "empirical",
    "exponential",
    "lognormal",
    "normal",
    "seed_latency",
    "simulated_io",
    "uniform",
    "wait_recorder",
    "with_latency",
]
