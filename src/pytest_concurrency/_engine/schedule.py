"""The one schedule every executor follows: who sends when, and when a round ends.

Closed model: a user's next request is *intended* at the completion of its previous
one plus think time, moved later while the stages want fewer users than its index,
and dropped (the user retires) once it would fall after the end of the round.
Open model: arrivals follow the profile's integrated rate (constant spacing or a
Poisson process), each timed from its scheduled instant; one that finds
``max_in_flight`` requests in flight is dropped and counted.

Executors (tasks on an event loop for async drivers, the WSGI pool's threads) only
carry these decisions out; none of them decides anything of its own. Nothing here
blocks or sleeps, and every method is safe to call from several threads under the
GIL.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .._errors import StormError
from .._params import StormConfig
from .._workload import Profile

__all__ = ["GRACE", "Schedule", "Window", "load_profile", "start_offsets"]

#: Extra seconds a round may run past its stop time plus one request timeout.
GRACE = 2.0
#: Without a ramp, first sends are spread over at most this many seconds.
_STAGGER_MAX = 0.1
#: Seconds of stagger per user (5,000 users reach the 100 ms cap).
_STAGGER_PER_USER = 20e-6


@dataclass(frozen=True)
class Window:
    """The time frame of one round, in ``perf_counter()`` seconds.

    Requests intended before *measure_from* are warm-up; none is intended at or after
    *stop_at* (``inf`` for a request-count storm, which ends at *total* requests); the
    round is cut off at *deadline* whatever happens.
    """

    origin: float
    measure_from: float
    stop_at: float
    total: int | None
    deadline: float


def load_profile(config: StormConfig) -> Profile:
    """The target over time: users (closed model) or arrivals per second (open model)."""
    base = config.rate if config.rate is not None else float(config.users)
    if config.stages:
        return Profile.stages(base, config.stages)
    if config.ramp > 0:
        return Profile.ramp(base, config.ramp)
    return Profile.constant(base)


def start_offsets(users: int) -> list[float]:
    """Seconds after the round's start at which each user sends its first request.

    Starts are staggered over up to 100 ms: thousands of timers expiring in one
    instant take several milliseconds just to wake, which would show up as latency
    of the scheduler rather than of the app.
    """
    spread = min(_STAGGER_MAX, users * _STAGGER_PER_USER)
    if users <= 1 or spread <= 0:
        return [0.0] * users
    step = spread / users
    return [i * step for i in range(users)]


def _window(config: StormConfig, origin: float, profile: Profile) -> Window:
    measure_from = origin + config.warmup
    timeout = config.timeout_ms / 1000
    if config.stages:
        # Stages set the whole run; warm-up, if any, is its first seconds.
        stop_at = origin + profile.end
        return Window(origin, measure_from, stop_at, None, stop_at + timeout + GRACE)
    if config.duration is not None:
        stop_at = measure_from + config.duration
        return Window(origin, measure_from, stop_at, None, stop_at + timeout + GRACE)
    total = (config.requests or 0) + config.warmup_requests
    deadline = origin + config.warmup + max(600.0, timeout * 10)
    return Window(origin, measure_from, math.inf, total, deadline)


class Schedule:
    """Closed- and open-model decisions for one round of a storm."""

    def __init__(self, config: StormConfig, origin: float) -> None:
        self.config = config
        self.origin = origin
        self.profile = profile = load_profile(config)
        self.window = _window(config, origin, profile)
        self.open = config.rate is not None
        self.users = 0 if self.open else max(config.users, math.ceil(profile.peak))
        self.timeout = config.timeout_ms / 1000
        self.max_in_flight = config.max_in_flight
        self.dropped: list[float] = []
        self._stop_at = self.window.stop_at
        self._limit = self.window.total
        self._issued = itertools.count()  # next() is atomic under the GIL
        self._gated = profile.varies
        rng = random.Random(config.seed)
        think_ms = config.think_ms
        sampler = config.think
        self.thinks = sampler is not None or think_ms > 0
        self.think: Callable[[], float]
        if sampler is not None:
            self.think = lambda: _pause(sampler.sample(rng), sampler)
        else:
            self.think = lambda: think_ms / 1000

    # -- closed model ---------------------------------------------------------------------

    def first_sends(self) -> list[tuple[int, float]]:
        """Each closed-model user's first intended send time, staggered and stage-gated."""
        if self.open:
            return []
        offsets = start_offsets(self.users)
        sends = []
        for uid in range(self.users):
            intended = self.admit(uid, self.origin + offsets[uid])
            if intended is not None:
                sends.append((uid, intended))
        return sends

    def next_send(self, uid: int, done: float) -> float | None:
        """When user *uid* sends again after a request that completed at *done*; None: it
        retires (its next send would fall after the end of the round)."""
        intended = done + self.think() if self.thinks else done
        if self._gated:
            return self.admit(uid, intended)
        return intended if intended < self._stop_at else None

    def admit(self, uid: int, intended: float) -> float | None:
        """*intended*, moved later while the stages want fewer users than *uid*; None when
        that falls after the end of the round."""
        if self._gated:
            at = intended - self.origin
            profile = self.profile
            if profile.value(at) <= uid:
                later = profile.next_above(uid, at)
                if later is None:
                    return None
                intended = self.origin + later
        return intended if intended < self._stop_at else None

    @property
    def counter(self) -> Iterator[int]:
        """The counter that :meth:`take` spends (executors may inline ``next(counter) < total``)."""
        return self._issued

    def take(self) -> bool:
        """Count one request against a request-count stop; False once the count is spent."""
        return self._limit is None or next(self._issued) < self._limit

    @property
    def spent(self) -> bool:
        """True once a request-count stop has handed out every request (no side effect)."""
        return self._limit is not None and self._peek() >= self._limit

    def _peek(self) -> int:
        # itertools.count has no peek: read its repr ("count(N)").
        return int(repr(self._issued)[6:-1])

    # -- open model -----------------------------------------------------------------------

    def arrivals(self) -> Iterator[float]:
        """Scheduled arrival instants (``perf_counter()`` seconds) of an open-model round."""
        end = self._stop_at - self.origin
        rng = random.Random(self.config.seed)
        origin = self.origin
        poisson = self.config.arrivals == "poisson"
        for offset in self.profile.arrivals(end, poisson=poisson, rng=rng):
            yield origin + offset

    def admits_arrival(self, at: float, in_flight: int) -> bool:
        """Whether an arrival at *at* is sent with *in_flight* requests already out; a
        refused one is recorded as dropped."""
        if in_flight >= self.max_in_flight:
            self.dropped.append(at)
            return False
        return True


def _pause(sample: float, sampler: object) -> float:
    """Think time in seconds from a sampler's draw (seconds), checked: never negative."""
    if isinstance(sample, bool) or not isinstance(sample, int | float) or math.isnan(sample):
        raise StormError(
            f"think_ms={sampler!r} drew {sample!r}: a think-time distribution must draw a "
            "number of seconds"
        )
    return max(0.0, float(sample))
