"""What the virtual users send: request specs, the request mix, and closed-model schedules."""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._checks import NO_CHECKS, Checks, parse_checks
from ._errors import ConfigError, StormError
from ._headers import request_header_fault

__all__ = [
    "InvalidRequestHeader",
    "Profile",
    "Request",
    "RequestMix",
    "build_mix",
    "checked_user_headers",
    "split_requests",
]

_BASE_URL = "http://testserver"


class InvalidRequestHeader(ValueError):
    """A request built during the storm carries a header that cannot be sent.

    The request is counted as failed under this kind and never reaches the app or the server.
    """


def checked_user_headers(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A user's own headers and cookies (set by its start hook), checked before each send.

    Raises :class:`InvalidRequestHeader` for one that could not be sent as it is.
    """
    for name, value in pairs:
        reason = request_header_fault(name, value)
        if reason is not None:
            given = (
                f"user.cookies (cookie: {value!r})"
                if name == "cookie"
                else f"user.headers[{name!r}] = {value!r}"
            )
            raise InvalidRequestHeader(f"{given}, set by on_start: {reason}")
    return pairs


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
    cookies: Mapping[str, str] | None = None
    #: Checks on this request's responses (on top of the storm's ``checks=``).
    checks: Any = None
    _checks: Checks = field(default=NO_CHECKS, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_checks", parse_checks(self.checks, f"Request({self.label!r})"))

    @property
    def parsed_checks(self) -> Checks:
        """This request's own checks, parsed."""
        return self._checks

    @property
    def label(self) -> str:
        """Name used for the per-endpoint breakdown and per-endpoint budgets."""
        return self.name or f"{self.method.upper()} {self.path}"

    def validate(self, origin: str) -> None:
        """Raise :class:`ConfigError` for a request that cannot be sent."""
        if (
            not isinstance(self.method, str)
            or not self.method.isalpha()
            or not self.method.isascii()
        ):
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
        try:
            built = self.to_httpx()
            built.read()
        except Exception as exc:
            raise ConfigError(
                f"{self._culprit()} (from {origin}) cannot be encoded as an HTTP request: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        fault = self._header_fault(built)
        if fault is not None:
            given, reason = fault
            raise ConfigError(f"{given} of request {self.label!r} (from {origin}): {reason}")

    def _header_fault(self, built: httpx.Request) -> tuple[str, str] | None:
        """The header of the encoded request that cannot be sent, as given, and why; or None."""
        for name, value in built.headers.raw:
            reason = request_header_fault(name, value)
            if reason is None:
                continue
            if name.lower() == b"cookie" and self.cookies:
                given = f"cookies={dict(self.cookies)!r}"
            else:
                given = f"headers={{{name.decode('latin-1')!r}: {value.decode('latin-1')!r}}}"
            return given, reason
        return None

    def checked_httpx(self) -> httpx.Request:
        """:meth:`to_httpx` for a request built during the storm, its headers checked.

        Raises :class:`InvalidRequestHeader` (the request is counted as failed, not sent)
        for a header that could not be sent as it is.
        """
        built = self.to_httpx()
        fault = self._header_fault(built)
        if fault is not None:
            given, reason = fault
            raise InvalidRequestHeader(
                f"{given} of request {self.label!r}, built during the storm: {reason}; "
                "the request was not sent"
            )
        return built

    def _culprit(self) -> str:
        """The field that stops this request from encoding, as ``name=value``."""
        for name in ("path", "headers", "query", "json", "content", "data", "cookies"):
            value = getattr(self, name)
            if name != "path" and value is None:
                continue
            bare = Request(method=self.method, path="/" if name != "path" else self.path)
            try:
                Request(**{**_fields(bare), name: value}).to_httpx().read()
            except Exception:
                return f"{name}={value!r}"
        return f"request {self.label!r}"

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
            cookies=dict(self.cookies) if self.cookies else None,
        )


def _fields(request: Request) -> dict[str, Any]:
    return {
        "method": request.method,
        "path": request.path,
        "headers": request.headers,
        "json": request.json,
        "content": request.content,
        "data": request.data,
        "query": request.query,
        "cookies": request.cookies,
    }


RequestFactory = Callable[[int, int], Request]

#: Distinct endpoints a templated mix reports separately; give requests a ``name`` to group them.
MAX_ENDPOINTS = 50
OTHER_ENDPOINT = "(other)"


@dataclass
class RequestMix:
    """Weighted choice among request specs, seeded; O(log n) per pick, free for a single spec.

    With a *factory*, each request is built by ``factory(user_index, iteration)`` instead
    (unique ids, templated bodies), and endpoints are named by the labels it returns.
    """

    requests: Sequence[Request]
    seed: int | None = None
    factory: RequestFactory | None = None
    labels: list[str] = field(default_factory=list, init=False)
    _cumulative: list[float] = field(default_factory=list, init=False)
    _index: dict[str, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        total = 0.0
        for request in self.requests:
            total += float(request.weight)
            self._cumulative.append(total)
            self.labels.append(request.label)

    def intern(self, label: str) -> int:
        """Endpoint index of a label produced by the factory.

        Past :data:`MAX_ENDPOINTS` distinct labels (a factory that puts ids in paths
        without naming its requests), the rest are counted together as ``(other)``.
        """
        index = self._index.get(label)
        if index is None:
            if len(self.labels) >= MAX_ENDPOINTS and label != OTHER_ENDPOINT:
                return self.intern(OTHER_ENDPOINT)
            index = self._index[label] = len(self.labels)
            self.labels.append(label)
        return index

    def build(self, user: int, iteration: int) -> Request:
        """Call the factory, checking what it returns."""
        if self.factory is None:  # pragma: no cover - guarded by callers
            raise RuntimeError("not a templated mix")
        try:
            request = self.factory(user, iteration)
        except (Exception, SystemExit) as exc:  # sys.exit() in a factory: no silent end
            raise StormError(
                f"requests={self.factory!r} raised {type(exc).__name__}: {exc} for user {user}, "
                f"iteration {iteration}; the storm was stopped"
            ) from exc
        if not isinstance(request, Request):
            # Mid-storm: the storm stops, as for a factory that raises.
            raise StormError(
                f"requests={self.factory!r} returned {request!r} for user {user}, iteration "
                f"{iteration}; it must return a pytest_concurrency.Request; the storm was stopped"
            )
        return request

    def picker(self) -> Callable[[], int]:
        """Return a function that picks the index of the next request (one per user or thread)."""
        if len(self.requests) <= 1:
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
    requests: Any, params: Mapping[str, Any]
) -> tuple[Sequence[Request] | RequestFactory | None, dict[str, Any]]:
    """``requests=`` is a stop condition (a count), a request mix (a list of specs) or a
    factory ``(user_index, iteration) -> Request``."""
    if requests is None or callable(requests):
        return requests, dict(params)
    if isinstance(requests, Sequence) and not isinstance(requests, str | bytes):
        return requests, dict(params)
    return None, {**params, "requests": requests}


def build_mix(
    method: str | None,
    path: str | None,
    requests: Sequence[Request] | RequestFactory | None,
    request_options: Mapping[str, Any],
    seed: int | None,
    *,
    probe_factory: bool = True,
) -> RequestMix:
    """Validate the storm's request arguments and return its mix."""
    if callable(requests):
        if method is not None or path is not None:
            raise ConfigError(
                "requests=<factory> (from keyword argument) replaces method and path: pass one or the other"
            )
        mix = RequestMix([], seed, factory=requests)
        if not probe_factory:
            # Users have no state before their start hook ran: requests are checked as built.
            return mix
        try:
            first = requests(0, 0)
        except (Exception, SystemExit) as exc:  # sys.exit() in a factory: no silent end
            raise ConfigError(
                f"requests={requests!r} (from keyword argument) raised "
                f"{type(exc).__name__}: {exc} when called with (0, 0) before the storm"
            ) from exc
        if not isinstance(first, Request):
            raise ConfigError(
                f"requests={requests!r} (from keyword argument) returned {first!r} when called "
                "with (0, 0) before the storm; it must return a pytest_concurrency.Request"
            )
        first.validate("requests=<factory>(0, 0)")
        return mix
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


@dataclass(frozen=True)
class Profile:
    """Target load over time (users or arrivals per second), piecewise linear.

    ``points`` are ``(seconds, value)`` knots from 0 upwards; the value holds after the
    last knot. Used for ramps, k6-style stages and the open model's arrival schedule.
    """

    points: tuple[tuple[float, float], ...]

    @classmethod
    def constant(cls, value: float) -> Profile:
        """The same target all the time."""
        return cls(((0.0, float(value)),))

    @classmethod
    def ramp(cls, value: float, seconds: float) -> Profile:
        """From 0 to *value* over *seconds*, then steady."""
        if seconds <= 0:
            return cls.constant(value)
        return cls(((0.0, 0.0), (seconds, float(value))))

    @classmethod
    def stages(cls, start: float, stages: Sequence[tuple[float, float]]) -> Profile:
        """k6 stages: from *start*, reach each ``target`` linearly over its ``seconds``."""
        points = [(0.0, float(start))]
        t = 0.0
        for seconds, target in stages:
            t += float(seconds)
            points.append((t, float(target)))
        return cls(tuple(points))

    @property
    def end(self) -> float:
        """Time of the last knot."""
        return self.points[-1][0]

    @property
    def peak(self) -> float:
        """Largest target."""
        return max(v for _, v in self.points)

    @property
    def varies(self) -> bool:
        """True when the target changes over time."""
        return len({v for _, v in self.points}) > 1

    def value(self, t: float) -> float:
        """Target at *t* seconds."""
        points = self.points
        if t <= points[0][0]:
            return points[0][1]
        for (t0, v0), (t1, v1) in itertools.pairwise(points):
            if t < t1:
                return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1
        return points[-1][1]

    def next_above(self, level: float, t: float) -> float | None:
        """Earliest time from *t* on at which the target exceeds *level*, or None."""
        if self.value(t) > level:
            return t
        points = self.points
        for (t0, v0), (t1, v1) in itertools.pairwise(points):
            if t1 <= t or v1 <= level:
                continue
            # Rising through level on [t0, t1]: solve v(x) = level, step just past it.
            start = max(t, t0)
            if v1 == v0:
                return start
            x = t0 + (level - v0) * (t1 - t0) / (v1 - v0)
            return max(start, x + 1e-9)
        return None

    def arrivals(self, end: float, *, poisson: bool, rng: random.Random) -> Iterator[float]:
        """Arrival times in ``[0, end)`` for an arrival rate following this profile.

        Arrivals are placed where the integrated rate crosses 0, 1, 2, … (constant
        spacing) or the points of a unit-rate Poisson process (time rescaling), so the
        same code serves steady, ramping and random arrivals.
        """
        target = 0.0 if not poisson else rng.expovariate(1.0)
        knots = [*self.points, (math.inf, self.points[-1][1])]
        area = 0.0  # integrated rate at the start of the segment
        for (t0, v0), (t1, v1) in itertools.pairwise(knots):
            if t0 >= end:
                return
            width = t1 - t0
            slope = (v1 - v0) / width if math.isfinite(width) and width > 0 else 0.0
            seg_end = min(t1, end)
            span = seg_end - t0
            # A flat segment's area alone: with no end (a request-count storm) the span is
            # infinite, and 0 × inf² would make the area NaN and end the arrivals at once.
            seg_area = v0 * span + (0.5 * slope * span**2 if slope else 0.0)
            while target <= area + seg_area:
                need = target - area
                if slope == 0.0:
                    if v0 <= 0:
                        break
                    d = need / v0
                else:
                    d = (-v0 + math.sqrt(max(0.0, v0 * v0 + 2 * slope * need))) / slope
                at = t0 + d
                if at >= end:
                    return
                yield at
                target += rng.expovariate(1.0) if poisson else 1.0
            area += seg_area
            if seg_end >= end:
                return
