"""pytest-storm: fire concurrent request storms at in-process ASGI/WSGI apps and hold budgets.

Import package ``pytest_concurrency``; the pytest plugin is ``pytest_concurrency.plugin``
(entry point ``concurrency``), with the marker ``concurrency`` and the fixture ``storm``.
"""

from ._api import arun_storm, capacity, compare, run_storm, run_websocket_storm
from ._capacity import CapacityResult, CapacityTrial
from ._engine.websocket import WebSocketResult
from ._errors import BudgetExceeded, ConcurrencyWarning, ConfigError, StormError
from ._fidelity import Fidelity
from ._metrics import ErrorSummary, LatencyStats
from ._model.result import EndpointStats, Knee, PoolStats, StormResult, TimelinePoint, Verdict
from ._simio import (
    Latency,
    Route,
    UndeclaredUpstreamError,
    Upstream,
    blocking_io,
    constant,
    empirical,
    exponential,
    lognormal,
    normal,
    simulated_io,
    uniform,
    with_latency,
)
from ._version import __version__
from ._workload import Request

__all__ = [
    "BudgetExceeded",
    "CapacityResult",
    "CapacityTrial",
    "ConcurrencyWarning",
    "ConfigError",
    "EndpointStats",
    "ErrorSummary",
    "Fidelity",
    "Knee",
    "Latency",
    "LatencyStats",
    "PoolStats",
    "Request",
    "Route",
    "StormError",
    "StormResult",
    "TimelinePoint",
    "UndeclaredUpstreamError",
    "Upstream",
    "Verdict",
    "WebSocketResult",
    "__version__",
    "arun_storm",
    "blocking_io",
    "capacity",
    "compare",
    "constant",
    "empirical",
    "exponential",
    "lognormal",
    "normal",
    "run_storm",
    "run_websocket_storm",
    "simulated_io",
    "uniform",
    "with_latency",
]
