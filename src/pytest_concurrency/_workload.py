"""What the virtual users send: request specs, the request mix, and closed-model schedules."""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._errors import ConfigError

__all__ = ["Request", "RequestMix", "build_mix", "split_requests", "start_offsets"]

_BASE_URL = "http://testserver"


@dataclass(frozen=True)
class Request:
    """One request of a storm's mix: method, path, body and headers, and its weight in the mix."""

    method: str = "GET"
    path: str = "/"
    headers: Mapping[str, str] | None = None
    json: Any = None
    content: bytes | str | None = None
    data: Mapping[str, Any] | None = None
    query: Mapping[str, Any] | str | None = None
    weight: float = 1.0
    name: str | None = None

    @property
    def label(self) -> str:
        """Name used for the per-endpoint breakdown and per-endpoint budgets."""
        return self.name or f"{self.method.upper()} {self.path}"

    def validate(self, origin: str) -> None:
        """Raise :class:`ConfigError` for a request that cannot be sent."""
        if not isinstance(self.method, str) or not self.method.isalpha():
            raise ConfigError(
                f"method={self.method!r} (from {origin}) must be an HTTP method such as 'GET'"
            )
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ConfigError(
                f"path={self.path!r} (from {origin}) must start with '/': the storm targets the "
                "mounted app itself, not a URL on the network"
            )
        if (
            isinstance(self.weight, bool)
            or not isinstance(self.weight, int | float)
            or not self.weight > 0
        ):
            raise ConfigError(
                f"weight={self.weight!r} (from {origin}) must be a number greater than 0"
            )
        bodies = [n for n in ("json", "content", "data") if getattr(self, n) is not None]
        if len(bodies) > 1:
            raise ConfigError(
                f"{' and '.join(bodies)} (from {origin}) are exclusive: give one request body"
            )

    def to_httpx(self) -> httpx.Request:
        """Encode the request once with httpx (headers, body, query string)."""
        params: Any = self.query
        return httpx.Request(
            self.method.upper(),
            _BASE_URL + self.path,
            params=params,
            headers=dict(self.headers) if self.headers else None,
            json=self.json,
            content=self.content,
            data=dict(self.data) if self.data is not None else None,
        )


@dataclass
class RequestMix:
    """Weighted choice among request specs, seeded; O(log n) per pick, free for a single spec."""

    requests: Sequence[Request]
    seed: int | None = None
    _cumulative: list[float] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        total = 0.0
        for request in self.requests:
            total += float(request.weight)
            self._cumulative.append(total)

    def picker(self) -> Callable[[], int]:
        """Return a function that picks the index of the next request (one per user or thread)."""
        if len(self.requests) == 1:
            return lambda: 0
        rng = random.Random(self.seed)
        cumulative = self._cumulative
        total = cumulative[-1]
        uniform = rng.random
        last = len(cumulative) - 1

        def pick() -> int:
            return min(bisect.bisect_right(cumulative, uniform() * total), last)

        return pick


def split_requests(
    requests: int | Sequence[Request] | None, params: Mapping[str, Any]
) -> tuple[Sequence[Request] | None, dict[str, Any]]:
    """``requests=`` is either a stop condition (a count) or a request mix (a list of specs)."""
    if requests is None or (
        isinstance(requests, Sequence) and not isinstance(requests, str | bytes)
    ):
        return requests, dict(params)
    return None, {**params, "requests": requests}


def build_mix(
    method: str | None,
    path: str | None,
    requests: Sequence[Request] | None,
    request_options: Mapping[str, Any],
    seed: int | None,
) -> RequestMix:
    """Validate the storm's request arguments and return its mix."""
    if requests is not None:
        if method is not None or path is not None:
            raise ConfigError(
                "requests=[...] (from keyword argument) replaces method and path: pass one or the other"
            )
        if isinstance(requests, Request) or not isinstance(requests, Sequence) or not requests:
            raise ConfigError(
                f"requests={requests!r} (from keyword argument) must be a non-empty list of "
                "pytest_concurrency.Request"
            )
        for index, spec in enumerate(requests):
            if not isinstance(spec, Request):
                raise ConfigError(
                    f"requests[{index}]={spec!r} (from keyword argument) must be a pytest_concurrency.Request"
                )
            spec.validate(f"requests[{index}]")
        return RequestMix(list(requests), seed)
    spec = Request(method=method or "GET", path="/" if path is None else path, **request_options)
    spec.validate("storm() arguments")
    return RequestMix([spec], seed)


def start_offsets(users: int, ramp: float) -> list[float]:
    """Seconds after the storm's start at which each user sends its first request.

    Without a ramp, starts are still staggered over up to 100 ms: thousands of timers
    expiring in one instant take several milliseconds just to wake, which would show
    up as latency of the scheduler rather than of the app.
    """
    window = ramp if ramp > 0 else min(0.1, users * 20e-6)
    if users <= 1 or window <= 0:
        return [0.0] * users
    step = window / users
    return [i * step for i in range(users)]
