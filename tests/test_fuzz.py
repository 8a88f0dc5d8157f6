"""A fuzz of the whole parameter space: bad input is a ConfigError, never a raw exception.

Every parameter name, with values of every shape (numbers out of range, NaN, infinities,
strings, lists, dicts, None, booleans), through each layer (keyword, marker, command-line
option, ini). Planning a storm validates everything before any load, so the fuzz plans
storms; a small marked run also fires the storms that validated, capped in size and time.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_concurrency import ConfigError, StormError, run_storm
from pytest_concurrency._engine.plan import plan_storm
from pytest_concurrency._params import BUDGET_NAMES, WORKLOAD_NAMES, Layer

from .apps import asgi_hello, wsgi_hello

settings.register_profile("default", max_examples=60, deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

NAMES = sorted({*WORKLOAD_NAMES, *BUDGET_NAMES} - {"budgets", "on_start", "checks"})
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 1e300, -1e300, 1e-300, 10**9, "auto", "on", "off", "", "x"]),
    st.text(max_size=8),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    st.lists(st.tuples(st.floats(-10, 10), st.floats(-10, 10)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
ORIGINS = st.sampled_from(["keyword argument", "marker", "command-line option", "ini file"])


@given(
    params=st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=4),
    origin=ORIGINS,
    wsgi=st.booleans(),
)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_planning_any_parameters_raises_only_config_errors(
    params: dict[str, Any], origin: str, wsgi: bool
) -> None:
    app = wsgi_hello if wsgi else asgi_hello
    started = time.perf_counter()
    message = ""
    try:
        plan_storm(app, "GET", "/", layers=[Layer(origin, params)])
    except ConfigError as exc:
        message = str(exc)
    # An error names a parameter and where it came from.
    assert not message or "(from" in message or "=" in message, message
    assert time.perf_counter() - started < 1.0


SMALL = st.fixed_dictionaries(
    {},
    optional={
        "users": st.integers(min_value=-2, max_value=20),
        "rate": st.one_of(st.floats(min_value=-5, max_value=300), st.just(math.nan)),
        "duration": st.floats(min_value=-0.1, max_value=0.2),
        "think_ms": st.floats(min_value=-5, max_value=50),
        "timeout_ms": st.floats(min_value=-1, max_value=200),
        "warmup": st.floats(min_value=-0.1, max_value=0.1),
        "stages": st.lists(
            st.tuples(st.floats(-0.1, 0.2), st.floats(-2, 20)), min_size=0, max_size=2
        ),
        "in_flight_cap": st.integers(min_value=-1, max_value=50),
        "workers": st.integers(min_value=-1, max_value=8),
        "threads": st.integers(min_value=-1, max_value=4),
        "ramp": st.floats(min_value=-0.1, max_value=0.2),
        "p99_ms": st.floats(min_value=-1, max_value=1e6),
        "max_error_rate": st.floats(min_value=-0.5, max_value=1.5),
    },
)


@pytest.mark.timing
@given(params=SMALL, wsgi=st.booleans())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_small_storms_of_any_shape_end_with_a_result_or_a_named_error(
    params: dict[str, Any], wsgi: bool
) -> None:
    app = wsgi_hello if wsgi else asgi_hello
    started = time.perf_counter()
    with contextlib.suppress(ConfigError, StormError):
        run_storm(app, "GET", "/", check=False, **params)
    # Every storm here is under half a second of load, or the default 2 s: none may hang.
    # A hung round would run past its deadline (2 s + the 10 s timeout + 2 s of grace)
    # forever; a default storm on this do-nothing app folds over a million requests,
    # about 4 s on a quiet 2-core machine and twice that on a busy one.
    assert time.perf_counter() - started < 20
