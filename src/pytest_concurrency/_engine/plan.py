"""A storm's plan: everything validated before any load is fired, and its live figures."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from .._apps import Interface, app_label, detect_interface
from .._metrics import Recorder
from .._metrics.fold import is_failure
from .._params import Layer, StormConfig, resolve
from .._workload import Request, RequestFactory, RequestMix, build_mix
from .limits import check_limits

__all__ = ["LiveFigures", "Progress", "StormPlan", "plan_storm"]


@dataclass
class StormPlan:
    """A validated storm, ready to fire: nothing has been sent yet."""

    app: Any
    interface: Interface
    label: str
    app_name: str
    mix: RequestMix
    config: StormConfig

    @property
    def requests(self) -> Sequence[Request]:
        """The request specs of the mix."""
        return self.mix.requests


def plan_storm(
    app: Any,
    method: str | None = None,
    path: str | None = None,
    *,
    requests: Sequence[Request] | RequestFactory | None = None,
    layers: Sequence[Layer] = (),
    scale: tuple[float, str] | None = None,
) -> StormPlan:
    """Validate everything about a storm before any load is fired.

    *scale* is ``(factor, origin)``: users, rates and durations scaled for a quick run.
    """
    config = resolve(layers)
    if scale is not None and scale[0] != 1:
        config.scaled(*scale)
    mix = build_mix(method, path, requests, config.request_options, config.seed)
    if config.interface is not None:
        if not callable(app):
            detect_interface(app)  # raises the not-callable error
        interface: Interface = "asgi" if config.interface == "asgi" else "wsgi"
    else:
        interface = detect_interface(app)
    check_limits(config, interface)
    if mix.factory is not None:
        label = f"templated requests ({mix.labels[0] if mix.labels else '?'} …)"
    elif len(mix.requests) == 1:
        label = mix.requests[0].label
    else:
        label = f"mix of {len(mix.requests)} requests"
    return StormPlan(app, interface, config.name or label, app_label(app), mix, config)


class LiveFigures:
    """Figures of the storm in progress, for a live status line (read from another thread).

    Reads only lengths and the tail of the record arrays, which the storm appends to:
    cheap, and safe under the GIL.
    """

    def __init__(self, plan: StormPlan) -> None:
        self.plan = plan
        self.recorders: list[Recorder] = []
        self.started = perf_counter()
        self.in_flight: Callable[[], int] | None = None

    def snapshot(self) -> dict[str, Any]:
        """Elapsed seconds, requests, rps, p99 of the latest requests, in flight, errors."""
        elapsed = perf_counter() - self.started
        requests = errors = 0
        tail: list[int] = []
        for rec in list(self.recorders):
            n = len(rec.latency)
            requests += n
            start = max(0, n - 500)
            tail.extend(rec.latency[start:n])
            statuses = rec.status[start:n]
            errors += sum(1 for st in statuses if is_failure(st, 0))
        tail.sort()
        figures: dict[str, Any] = {"elapsed": elapsed, "requests": requests, "errors": errors}
        if elapsed > 0:
            figures["rps"] = requests / elapsed
        if tail:
            figures["p99_ms"] = tail[int(0.99 * (len(tail) - 1))] / 1000
        if self.in_flight is not None:
            figures["in_flight"] = self.in_flight()
        return figures

    @property
    def expected_seconds(self) -> float | None:
        """How long the storm should take, when known."""
        config = self.plan.config
        if config.stages:
            return sum(seconds for seconds, _ in config.stages)
        if config.duration is not None:
            return config.duration + config.warmup
        return None


#: A progress line: called with the live figures, returns a context manager around the storm.
Progress = Callable[[LiveFigures], AbstractContextManager[Any]]
