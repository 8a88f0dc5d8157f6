"""One table per concept: every storm parameter and every budget is one row.

Everything else is derived from these rows: the resolver (``_params.resolve``), the
``--markers`` text, the run-wide options ``--concurrency-NAME`` and their ini twins, the
command line's flags, ``StormConfig.scaled``, the process shards' split, the budgets'
measures and the reasons a figure could not be measured, and which storms a parameter or
budget applies to (``rules``).

Naming rule. A *figure* is named by what it measures followed by its unit: ``p99_ms``,
``rps``, ``queue_p99_ms``, ``error_rate`` (a fraction has no unit). A *budget* on a figure
is the figure's name prefixed ``max_`` (a ceiling) or ``min_`` (a floor) -- ``min_rps``,
``max_queue_p99_ms``, ``max_error_rate`` -- except the latency statistics of the
requests themselves (``p99_ms``, ``max_ms``, ``mean_ms``, ``ttfb_p99_ms``), whose limit is
always a ceiling. Compare thresholds and JUnit properties use the figure's name.
A *parameter* never starts with ``max_`` or ``min_``: the open model's cap on requests in
flight is ``in_flight_cap``, beside the budget ``max_in_flight_peak`` on the figure
``in_flight_peak``.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from .._errors import ConfigError
from . import measures
from . import values as v

__all__ = [
    "ALL",
    "BUDGETS",
    "COMPARE_FIGURES",
    "HTTP",
    "INPROCESS",
    "LOCUST",
    "OLD_THRESHOLD_NAMES",
    "PARAMS",
    "REQUEST_NAMES",
    "SERVER",
    "SHARDS",
    "VIRTUAL",
    "WEBSOCKET",
    "Budget",
    "CliFlag",
    "Param",
    "budget_limit",
    "canonical",
    "check_budget_name",
    "endpoint_budgets",
    "pool_budgets",
    "registered",
    "warn_old_threshold_names",
]

# -- the storms a row applies to ---------------------------------------------------------------

#: HTTP in-process, wall clock.
INPROCESS = "in-process"
#: HTTP behind a real server (started for the storm or already running on loopback).
SERVER = "server"
#: HTTP from Locust's generated locustfile.
LOCUST = "locust"
#: In-process on the virtual clock.
VIRTUAL = "virtual"
#: Sharded over processes (``processes`` > 1).
SHARDS = "shards"
#: A WebSocket storm.
WEBSOCKET = "websocket"
HTTP = frozenset({INPROCESS, SERVER, LOCUST, VIRTUAL, SHARDS})
ALL = HTTP | {WEBSOCKET}

#: How a value changes under ``--concurrency-scale``.
Scaling = Literal["users", "factor", "count", "stages"]
#: How a value is split over process shards (absent: each shard keeps it).
Split = Literal["users", "divide", "count", "cap", "workers", "seed", "one", "clear"]


@dataclass(frozen=True)
class CliFlag:
    """The ``pytest-storm`` flag ``--NAME`` of a parameter."""

    type: Callable[[str], Any]
    help: str | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    #: The flag may be repeated; its values are joined with commas.
    repeat: bool = False


@dataclass(frozen=True)
class Param:
    """One storm parameter."""

    name: str
    help: str
    validate: v.Validator = v.anything
    #: The value when no layer sets it (the StormConfig field's default).
    default: Any = None
    unit: str = ""
    #: Where the value goes: a StormConfig field, the request options, the WebSocket
    #: options, or resolved by hand in ``_params.resolve`` (values that decide together).
    target: Literal["config", "request", "websocket", "resolve"] = "config"
    #: A value of None is validated (an error) instead of meaning "not set".
    none_is_value: bool = False
    scaling: Scaling | None = None
    split: Split | None = None
    #: Type of the run-wide option ``--concurrency-NAME`` and its ini twin, if it has one.
    run_wide: type | None = None
    run_help: str = ""
    cli: CliFlag | None = None
    storms: frozenset[str] = HTTP
    #: Old spellings, accepted with a DeprecationWarning.
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Budget:
    """One budget: a limit on one figure of the storm."""

    name: str
    help: str
    measure: Callable[[Any], float]
    unit: Literal["ms", "rps", "count", "fraction", "ratio", "per_s"]
    #: ``max``: the figure must stay at or below the limit; ``min``: reach it.
    direction: Literal["max", "min"] = "max"
    #: The figure's name (compare thresholds, JUnit properties), per the naming rule.
    figure: str = ""
    #: Measure of one endpoint of a request mix, if the budget applies per endpoint.
    endpoint: Callable[[Any], float] | None = None
    #: Measure of one named pool (a thread pool or a connection pool), if the budget can
    #: be aimed at one with ``pool_budgets``.
    pool: Callable[[Any], float] | None = None
    #: Key of the figure in each round of a ``rounds=`` storm.
    round_key: str | None = None
    #: Judged on the loop monitor's or thread-pool probe's figures (the probes run inside
    #: a real server only for a storm that sets such a budget).
    probed: bool = False
    #: Storms that can measure it; any other refuses it before load.
    storms: frozenset[str] = HTTP
    #: Why it was not measured, when nothing more particular is known.
    unmeasured: str = "the storm recorded no such figure"
    #: Why, for a WSGI app.
    unmeasured_wsgi: str | None = None
    aliases: tuple[str, ...] = ()


_NO_POOL = (
    "no worker pool was busy: the app's handlers ran on its event loop and none of its "
    "thread pools was used"
)
_NO_MONITOR = (
    "the event-loop monitor did not run for this storm (it watches in-process storms "
    "and real servers' event loops, not process shards)"
)
#: The storms whose event loop the monitor watches (inside a real server: its probes).
_PROBED = frozenset({INPROCESS, SERVER, LOCUST})


def _latency(name: str, field: str, help: str) -> Budget:
    return Budget(
        name,
        help,
        measures.latency(field),
        "ms",
        figure=name,
        endpoint=measures.latency(field),
        round_key=field if field in ("p50", "p99", "max") else None,
        storms=ALL,
    )


_BUDGET_ROWS: tuple[Budget, ...] = (
    _latency("p50_ms", "p50", "50th percentile latency, ms"),
    _latency("p90_ms", "p90", "90th percentile latency, ms"),
    _latency("p95_ms", "p95", "95th percentile latency, ms"),
    _latency("p99_ms", "p99", "99th percentile latency, ms"),
    _latency("p999_ms", "p999", "99.9th percentile latency, ms"),
    _latency("max_ms", "max", "slowest request, ms"),
    _latency("mean_ms", "mean", "mean latency, ms"),
    Budget(
        "ttfb_p99_ms",
        "99th percentile time to first body byte, ms",
        measures.ttfb_p99,
        "ms",
        figure="ttfb_p99_ms",
    ),
    Budget(
        "min_rps",
        "minimum throughput, requests per second",
        measures.throughput,
        "rps",
        direction="min",
        figure="rps",
        endpoint=measures.throughput,
        round_key="rps",
        storms=ALL,
    ),
    Budget(
        "max_error_rate",
        "largest fraction of failed requests (exceptions, timeouts, status >= 400)",
        measures.error_rate,
        "fraction",
        figure="error_rate",
        endpoint=measures.error_rate,
        round_key="error_rate",
        storms=ALL,
    ),
    Budget(
        "max_queue_p99_ms",
        "99th percentile wait for a free worker, ms",
        measures.queue_p99,
        "ms",
        figure="queue_p99_ms",
        pool=measures.pool_wait_p99,
        probed=True,
        storms=_PROBED | {SHARDS},
        unmeasured=_NO_POOL,
        unmeasured_wsgi="the WSGI pool recorded no figures",
    ),
    Budget(
        "max_saturation",
        "largest fraction of the storm with every worker busy",
        measures.saturation,
        "fraction",
        figure="saturation",
        pool=measures.pool_saturation,
        probed=True,
        storms=_PROBED | {SHARDS},
        unmeasured=_NO_POOL,
        unmeasured_wsgi="the WSGI pool recorded no figures",
    ),
    Budget(
        "max_loop_lag_ms",
        "longest time the event loop could not run, ms",
        measures.loop_lag,
        "ms",
        figure="loop_lag_ms",
        probed=True,
        storms=_PROBED,
        unmeasured=_NO_MONITOR,
        unmeasured_wsgi="a WSGI app has no event loop to watch (use max_queued or max_threads_busy)",
    ),
    Budget(
        "max_dropped",
        "most open-model arrivals dropped because in_flight_cap was reached",
        measures.dropped,
        "count",
        figure="dropped",
        storms=HTTP - {LOCUST},
        unmeasured="only an open-model storm (rate=) drops arrivals; this storm had users",
    ),
    Budget(
        "max_in_flight_peak",
        "most requests in flight at once (a count: does not scale with CPU speed)",
        measures.in_flight_peak,
        "count",
        figure="in_flight_peak",
        unmeasured="the storm kept no in-flight samples (its timeline has none)",
    ),
    Budget(
        "max_threads_busy",
        "most threads busy at once in the WSGI pool or the app's busiest thread pool",
        measures.threads_busy,
        "count",
        figure="threads_busy",
        pool=measures.pool_busy,
        probed=True,
        storms=_PROBED | {SHARDS},
        unmeasured="no worker pool or thread pool was watched during the storm",
    ),
    Budget(
        "max_blocking_calls",
        "most blocking calls that held the event loop past the monitor's threshold",
        measures.blocking_calls,
        "count",
        figure="blocking_calls",
        probed=True,
        storms=_PROBED,
        unmeasured=_NO_MONITOR,
        unmeasured_wsgi="a WSGI app has no event loop to watch (use max_queued or max_threads_busy)",
    ),
    Budget(
        "max_queued",
        "most requests that waited over 1 ms for a free worker or thread",
        measures.queued,
        "count",
        figure="queued",
        storms=HTTP - {VIRTUAL, LOCUST},
        unmeasured=(
            "only the WSGI pool records each request's wait for a worker (queued: over "
            f"{measures.QUEUED_AFTER_MS:g} ms); for an ASGI app use max_queue_p99_ms for "
            "its thread pools and max_blocking_calls for its event loop"
        ),
        unmeasured_wsgi="the WSGI pool's queue-wait histogram is missing from this result",
    ),
    Budget(
        "p99_ratio",
        "p99 latency at most this many times the p99 of the simulated I/O waits",
        measures.p99_ratio,
        "ratio",
        figure="p99_ratio",
        unmeasured=(
            "the storm made no simulated waits (simulated_io, blocking_io, the latency "
            "middleware or the upstream fixture) whose p99 its own could be compared with"
        ),
    ),
    Budget(
        "connect_p99_ms",
        "99th percentile handshake time, ms",
        measures.connect_p99,
        "ms",
        figure="connect_p99_ms",
        storms=frozenset({WEBSOCKET}),
    ),
    Budget(
        "min_messages_per_s",
        "minimum throughput, messages per second (judged as min_rps)",
        measures.throughput,
        "per_s",
        direction="min",
        figure="messages_per_s",
        storms=frozenset({WEBSOCKET}),
    ),
    Budget(
        "max_disconnect_rate",
        "largest fraction of accepted connections the server closed",
        measures.disconnect_rate,
        "fraction",
        figure="disconnect_rate",
        storms=frozenset({WEBSOCKET}),
    ),
)


def _budgets_field(name: str, value: Any, origin: str) -> dict[str, dict[str, float]]:
    where = v._where(name, value, origin)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must map an endpoint ('POST /items') to its budgets")
    result: dict[str, dict[str, float]] = {}
    for endpoint, budgets in value.items():
        if not isinstance(endpoint, str) or not isinstance(budgets, Mapping):
            raise ConfigError(f"{where}: {endpoint!r} must map to a dict of budgets")
        result[endpoint] = {}
        for budget, limit in budgets.items():
            check_budget_name(budget, where, endpoint=True)
            result[endpoint][budget] = budget_limit(f"{endpoint} {budget}", limit, origin)
    return result


def _pool_budgets_field(name: str, value: Any, origin: str) -> dict[str, dict[str, float]]:
    where = v._where(name, value, origin)
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where} must map a pool's name (or a part of it, such as 'SQLAlchemy') to its "
            "budgets: {'SQLAlchemy': {'max_queue_p99_ms': 50}}"
        )
    known = pool_budgets()
    result: dict[str, dict[str, float]] = {}
    for pool, budgets in value.items():
        if not isinstance(pool, str) or not pool.strip() or not isinstance(budgets, Mapping):
            raise ConfigError(
                f"{where}: {pool!r} must be a pool's name mapped to a dict of budgets"
            )
        result[pool] = {}
        for budget, limit in budgets.items():
            if budget not in known:
                raise ConfigError(
                    f"{where}: {budget!r} is not a budget of one pool; pool budgets: "
                    f"{', '.join(known)}"
                )
            result[pool][budget] = budget_limit(f"pool_budgets[{pool!r}] {budget}", limit, origin)
    return result


def _think(name: str, value: Any, origin: str) -> Any:
    if hasattr(value, "sample") and callable(value.sample):
        return value
    return v._number(name, value, origin)


def _callable(what: str) -> v.Validator:
    def check(name: str, value: Any, origin: str) -> Any:
        if not callable(value):
            raise ConfigError(f"{v._where(name, value, origin)} must be callable as {what}")
        return value

    return check


def _message(name: str, value: Any, origin: str) -> Any:
    if not isinstance(value, str | bytes):
        raise ConfigError(
            f"{v._where(name, value, origin)} must be str (a text frame) or bytes (a binary frame)"
        )
    return value


def _subprotocols(name: str, value: Any, origin: str) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not all(isinstance(p, str) for p in value):
        raise ConfigError(
            f"{v._where(name, value, origin)} must be a list of strings, e.g. ['chat']"
        )
    return tuple(value)


def _expect(name: str, value: Any, origin: str) -> Any:
    where = v._where(name, value, origin)
    if not callable(value) and not isinstance(value, str | bytes):
        raise ConfigError(
            f"{where} must be the reply as str (text) or bytes (binary), or a callable taking "
            "the received message and returning true when it answers the message sent"
        )
    if inspect.iscoroutinefunction(value):
        raise ConfigError(
            f"{where} is an async function: its coroutine would always be true; give a plain "
            "callable"
        )
    return value


_SERVERS_HELP = (
    "'inprocess' (default), 'uvicorn', 'hypercorn', 'granian', 'gunicorn' (started on "
    "127.0.0.1 for the storm), or the URL of a server already running on loopback"
)

_PARAM_ROWS: tuple[Param, ...] = (
    Param(
        "users",
        f"concurrent virtual users, closed model (default {v.DEFAULT_USERS})",
        v.positive_int(),
        v.DEFAULT_USERS,
        target="resolve",
        none_is_value=True,
        scaling="users",
        split="users",
        run_wide=int,
        run_help="default number of virtual users",
        cli=CliFlag(int, "concurrent virtual users (closed model)"),
        storms=ALL,
    ),
    Param(
        "duration",
        f"seconds of load after warm-up (default {v.DEFAULT_DURATION:g}); exclusive with requests",
        v.number(positive=True),
        v.DEFAULT_DURATION,
        "s",
        target="resolve",
        scaling="factor",
        run_wide=float,
        run_help="default storm duration in seconds when a storm gives neither duration nor requests",
        cli=CliFlag(float),
        storms=ALL,
    ),
    Param(
        "requests",
        "stop after this many measured requests; exclusive with duration",
        v.positive_int(),
        target="resolve",
        scaling="count",
        split="count",
        cli=CliFlag(int),
        storms=HTTP - {LOCUST},
    ),
    Param(
        "rate",
        "open model: arrivals per second (latency from each scheduled arrival); exclusive with users",
        v.number(),
        unit="1/s",
        target="resolve",
        scaling="factor",
        split="divide",
        cli=CliFlag(float, "arrivals per second (open model); exclusive with --users"),
        storms=ALL - {LOCUST},
    ),
    Param(
        "arrivals",
        "'constant' (default) or 'poisson' spacing of open-model arrivals",
        v.choice("constant", "poisson"),
        "constant",
        none_is_value=True,
        storms=ALL - {LOCUST},
    ),
    Param(
        "in_flight_cap",
        "open model: cap on requests in flight; arrivals beyond it are dropped (default 10000)",
        v.positive_int(),
        10_000,
        none_is_value=True,
        split="cap",
        storms=ALL - {LOCUST},
        aliases=("max_in_flight",),
    ),
    Param(
        "stages",
        "k6-style [(seconds, target), ...] ramping users (closed) or rate (open); sets the duration",
        v.stages,
        (),
        target="resolve",
        scaling="stages",
        split="divide",
        cli=CliFlag(
            v.cli_stages,
            "k6-style ramp: SECONDS:TARGET pairs of users (or of arrivals with --rate)",
            metavar="S:T,...",
        ),
        storms=ALL,
    ),
    Param(
        "ramp",
        "seconds over which users start (default: staggered over a few ms)",
        v.number(),
        0.0,
        "s",
        none_is_value=True,
        scaling="factor",
        storms=ALL - {LOCUST},
    ),
    Param(
        "think_ms",
        "pause of each user between its requests, ms, or a latency distribution (default 0)",
        _think,
        0.0,
        "ms",
        target="resolve",
        none_is_value=True,
        cli=CliFlag(float),
        storms=ALL,
    ),
    Param(
        "warmup",
        "seconds of load before measuring; those requests are discarded (default 0)",
        v.number(),
        0.0,
        "s",
        none_is_value=True,
        scaling="factor",
        run_wide=float,
        run_help="default warm-up in seconds, discarded from the figures",
        cli=CliFlag(float),
        storms=ALL,
    ),
    Param(
        "warmup_requests",
        "number of first requests discarded (default 0)",
        v.positive_int(0),
        0,
        none_is_value=True,
        split="count",
        storms=HTTP - {LOCUST},
    ),
    Param(
        "timeout_ms",
        f"per-request timeout, ms (default {v.DEFAULT_TIMEOUT_MS:g})",
        v.number(positive=True),
        v.DEFAULT_TIMEOUT_MS,
        "ms",
        none_is_value=True,
        run_wide=float,
        run_help="default per-request timeout in milliseconds",
        cli=CliFlag(float),
        storms=ALL,
    ),
    Param(
        "workers",
        "WSGI server model: worker processes, like gunicorn -w (default 1)",
        v.positive_int(),
        1,
        none_is_value=True,
        split="workers",
        run_wide=int,
        run_help="default WSGI worker count (server model)",
        cli=CliFlag(int, "WSGI worker processes of the server model"),
    ),
    Param(
        "threads",
        "WSGI server model: threads per worker, like gunicorn --threads (default 1)",
        v.positive_int(),
        1,
        none_is_value=True,
        run_wide=int,
        run_help="default threads per WSGI worker (server model)",
        cli=CliFlag(int, "threads per WSGI worker"),
    ),
    Param(
        "seed",
        "seed for request mixes and simulated latency",
        v.positive_int(0),
        split="seed",
        run_wide=int,
        run_help="default seed for request mixes and simulated latency",
        cli=CliFlag(int),
        storms=ALL,
    ),
    Param(
        "server",
        _SERVERS_HELP,
        v.server,
        "inprocess",
        run_wide=str,
        run_help="default server: inprocess, uvicorn, hypercorn, granian, gunicorn or a loopback URL",
        cli=CliFlag(
            str,
            "inprocess (default), uvicorn, hypercorn, granian, gunicorn or a loopback URL; "
            "compare takes a comma-separated list and prints the fidelity table",
        ),
        storms=ALL,
    ),
    Param(
        "on_start",
        "per-user start hook, sync or async, called once with each virtual user (a login); its requests are recorded apart",
        storms=HTTP - {LOCUST},
    ),
    Param(
        "checks",
        "checks on every response: a status, a set of statuses, a callable taking the response, or a list of those",
        storms=HTTP - {LOCUST},
    ),
    Param(
        "engine",
        "'native' (default) or 'locust': run the storm as a generated locustfile with Locust's master and local workers (needs a real server and pip install 'pytest-storm[locust]')",
        v.choice("native", "locust"),
        "native",
        run_wide=str,
        run_help="default load engine: native or locust",
        cli=CliFlag(str, "'locust' runs the storm with Locust", choices=("native", "locust")),
    ),
    Param(
        "processes",
        "shard the storm over this many processes, each with its own event loop and copy of the app, like N server worker processes; 'auto' = the cores available (default 1)",
        v.processes,
        1,
        split="one",
        run_wide=str,
        run_help="default process shards of every storm: a number or 'auto'",
        cli=CliFlag(v.cli_processes, "shard the storm over N processes ('auto': one per core)"),
    ),
    Param(
        "interface",
        "'asgi' or 'wsgi' when the app's kind cannot be detected",
        v.choice("asgi", "wsgi"),
        storms=ALL,
    ),
    Param(
        "lifespan",
        "'auto' (default), 'on' or 'off': run ASGI lifespan startup/shutdown",
        v.choice("auto", "on", "off"),
        "auto",
        none_is_value=True,
        storms=ALL,
    ),
    Param(
        "gc",
        "'off' (default: the cyclic collector paused during the storm) or 'on'",
        v.choice("off", "on"),
        "off",
        none_is_value=True,
        storms=ALL,
    ),
    Param("name", "label of the storm in reports", v.text, storms=ALL),
    Param(
        "rounds",
        "repeat the storm and judge budgets on the aggregate round (default 1)",
        v.positive_int(),
        1,
        none_is_value=True,
        split="one",
        storms=ALL,
    ),
    Param(
        "aggregate",
        "'median' (default), 'worst' or 'best' round, for rounds > 1",
        v.choice("median", "worst", "best"),
        "median",
        none_is_value=True,
        storms=ALL,
    ),
    Param(
        "budgets",
        "per-endpoint budgets of a request mix: {'POST /items': {'p99_ms': 200}}",
        _budgets_field,
        target="resolve",
        split="clear",
        storms=HTTP,
    ),
    Param(
        "pool_budgets",
        "budgets of one pool, by its name or a part of it (the app's thread pools and "
        "connection pools): {'SQLAlchemy': {'max_queue_p99_ms': 50, 'max_saturation': 0.5}}; "
        "the budgets themselves apply to the worst pool",
        _pool_budgets_field,
        {},
        split="clear",
        storms=_PROBED | {SHARDS},
    ),
    Param(
        "clock",
        "'wall' (default) or 'virtual': async in-process apps only; the loop's clock jumps over waits, so simulated I/O, think time and arrivals cost no wall time and the figures repeat exactly",
        v.choice("wall", "virtual"),
        "wall",
        run_wide=str,
        run_help="default clock of async storms: wall or virtual",
        # What cannot run on the virtual clock is refused by ``rules.check_clock``.
        storms=ALL,
    ),
    Param(
        "allow_hosts",
        "hosts the app may reach during the storm besides loopback: names, IP addresses or networks ('db.internal', '10.0.0.0/8'); every other connection is refused before it is made",
        v.allow_hosts,
        (),
        run_wide=str,
        run_help=(
            "hosts every storm's app may reach besides loopback, comma-separated: names, IP "
            "addresses or networks; any other connection is refused before it is made"
        ),
        cli=CliFlag(
            str,
            "hosts the app may reach besides loopback (comma-separated names, IP addresses "
            "or networks; repeat for more); every other connection is refused before it is made",
            metavar="HOSTS",
            repeat=True,
        ),
        storms=ALL,
    ),
    # -- WebSocket storms ----------------------------------------------------------------------
    Param(
        "messages",
        "stop after this many measured messages (all connections together); exclusive with duration",
        v.positive_int(),
        target="websocket",
        storms=frozenset({WEBSOCKET}),
    ),
    Param(
        "message",
        "the message every user sends: str (a text frame) or bytes (a binary frame); default 'ping'",
        _message,
        target="websocket",
        storms=frozenset({WEBSOCKET}),
    ),
    Param(
        "factory",
        "factory(user, i) -> str | bytes: user's i-th message, instead of message",
        _callable("factory(user, i) -> str | bytes"),
        target="websocket",
        storms=frozenset({WEBSOCKET}),
    ),
    Param(
        "connect_timeout_ms",
        "how long a handshake may take, ms (default: timeout_ms)",
        v.number(positive=True),
        unit="ms",
        target="websocket",
        storms=frozenset({WEBSOCKET}),
    ),
    Param(
        "subprotocols",
        "subprotocols the client offers, e.g. ['chat']",
        _subprotocols,
        target="websocket",
        storms=frozenset({WEBSOCKET}),
    ),
    Param(
        "listeners",
        "broadcast room: this many listen-only connections; latency is delivery to the last",
        v.positive_int(),
        target="websocket",
        storms=frozenset({WEBSOCKET}),
    ),
    Param(
        "expect",
        "what answers a message: a str or bytes literal, or a callable on the received "
        "message; default: its echo (same kind, equal to it or carrying it)",
        _expect,
        target="websocket",
        storms=frozenset({WEBSOCKET}),
    ),
)

#: Figures a compare threshold may name (``--concurrency-compare-fail``), by the naming
#: rule -> the key the baseline comparison files them under.
COMPARE_FIGURES: dict[str, str] = {
    "p50_ms": "p50",
    "p90_ms": "p90",
    "p95_ms": "p95",
    "p99_ms": "p99",
    "p999_ms": "p999",
    "max_ms": "max",
    "mean_ms": "mean",
    "rps": "rps",
    "error_rate": "error_rate",
}

#: Options of the request itself (not of the load), passed to the request as given.
REQUEST_NAMES = ("headers", "json", "content", "data", "query")

#: Every parameter by name, in the order of the help (a fixture may add rows: ``registered``).
PARAMS: dict[str, Param] = {row.name: row for row in _PARAM_ROWS}
#: Every budget by name, in the order of the verdict table.
BUDGETS: dict[str, Budget] = {row.name: row for row in _BUDGET_ROWS}


def endpoint_budgets() -> tuple[str, ...]:
    """Budgets that also apply to one endpoint of a request mix."""
    return tuple(name for name, row in BUDGETS.items() if row.endpoint is not None)


def pool_budgets() -> tuple[str, ...]:
    """Budgets that can be aimed at one named pool (``pool_budgets``)."""
    return tuple(name for name, row in BUDGETS.items() if row.pool is not None)


def check_budget_name(name: Any, where: str, *, endpoint: bool = False) -> str:
    """Raise :class:`ConfigError` unless *name* is a budget (of one endpoint, if *endpoint*)."""
    known = endpoint_budgets() if endpoint else tuple(BUDGETS)
    if name in known:
        return str(name)
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    if endpoint:
        raise ConfigError(
            f"{where}: {name!r} is not a per-endpoint budget{hint}; "
            f"per-endpoint budgets: {', '.join(known)}"
        )
    raise ConfigError(f"unknown budget {name!r} {where}; known: {', '.join(known)}{hint}")


def budget_limit(name: str, value: Any, origin: str = "") -> float:
    """The limit of budget *name* as a float; :class:`ConfigError` when it is no valid limit."""
    where = f"budget {name}={value!r}" + (f" (from {origin})" if origin else "")
    if not v._is_number(value):
        raise ConfigError(f"{where} must be a number, not {type(value).__name__}")
    if value < 0:
        raise ConfigError(f"{where} must not be negative")
    row = BUDGETS.get(name.rsplit(" ", 1)[-1])
    if row is not None and row.unit == "fraction" and value > 1:
        raise ConfigError(f"{where} is a fraction between 0 and 1")
    if row is not None and row.unit == "ratio" and value <= 0:
        raise ConfigError(f"{where} must be greater than 0 (a multiple of the waits' p99)")
    return float(value)


def _aliases() -> dict[str, str]:
    return {
        alias: row.name
        for table in (PARAMS, BUDGETS)
        for row in table.values()
        for alias in row.aliases
    }


def _deprecated(old: str, new: str, origin: str, stacklevel: int) -> None:
    """The one warning of an old spelling, whatever it names (parameter, budget, threshold)."""
    warnings.warn(
        f"{old!r} (from {origin}) is now called {new!r}; the old name will be removed",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )


def canonical(name: str, origin: str) -> str:
    """The name of parameter or budget *name*; an old spelling warns and gives the new one."""
    new = _aliases().get(name)
    if new is None:
        return name
    _deprecated(name, new, origin, stacklevel=4)
    return new


#: Old spellings of compare thresholds (the keys a baseline files a figure under, such as
#: ``p99``) -> the figure's name by the naming rule (``p99_ms``).
OLD_THRESHOLD_NAMES: dict[str, str] = {
    old: new for new, old in COMPARE_FIGURES.items() if old != new
}


def warn_old_threshold_names(expr: str, origin: str) -> None:
    """Warn of each old figure name in *expr* (``FIGURE:AMOUNT,…``, as
    ``--concurrency-compare-fail`` takes it), naming the new one and *origin*; the old names
    are still read (as the keys a baseline files its figures under)."""
    for item in expr.split(","):
        figure, sep, _ = (part.strip() for part in item.partition(":"))
        new = OLD_THRESHOLD_NAMES.get(figure)
        if sep and new is not None:
            _deprecated(figure, new, origin, stacklevel=3)


@contextmanager
def registered(*rows: Param | Budget) -> Iterator[None]:
    """Add *rows* to the tables for the duration of the block (a plugin's own, or a test's)."""
    added: list[tuple[dict[str, Any], str]] = []
    try:
        for row in rows:
            table: dict[str, Any] = PARAMS if isinstance(row, Param) else BUDGETS
            if row.name in PARAMS or row.name in BUDGETS or row.name in REQUEST_NAMES:
                raise ValueError(f"{row.name!r} is already a storm parameter or budget")
            table[row.name] = row
            added.append((table, row.name))
        yield
    finally:
        for table, name in added:
            table.pop(name, None)
