"""A storm's plan: everything validated before any load is fired, and its live figures."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from .._apps import Interface, app_label, detect_interface, import_name, load_app
from .._checks import NO_CHECKS, Checks, is_async_callable, parse_checks
from .._errors import ConfigError
from .._metrics import Recorder
from .._metrics.percentile import quantile
from .._metrics.records import is_failure
from .._optional import require
from .._params import Layer, StormConfig, resolve
from .._servers import RunningServer, ServerSpec
from .._spec.rules import check_clock, check_kind, storm_kind
from .._workload import Request, RequestFactory, RequestMix, build_mix
from .limits import check_limits
from .users import is_async_hook

__all__ = ["LiveFigures", "Progress", "Serving", "StormPlan", "import_app", "plan_storm"]


@dataclass(frozen=True)
class Serving:
    """Where a storm's requests go while it runs: its running state, apart from its plan.

    A plan sent to a URL it was given knows its URL from the start; the rest (what
    serves the app, the real server started for the storm) is known once the storm has
    started it, and the round loop attaches it to the plan once (:meth:`StormPlan.serve_on`).
    """

    #: Where the storm is sent over HTTP (a loopback URL), or None for in-process.
    url: str | None = None
    #: What serves the app, in the field's words, once known.
    served_by: str | None = None
    #: The real server started for the storm, while it runs.
    running: RunningServer | None = None


@dataclass(frozen=True)
class StormPlan:
    """A validated storm, ready to fire: nothing has been sent yet.

    Frozen: firing it never changes it. Its running state (:class:`Serving`) is a record
    of its own, on the copy the round loop makes once, when the server is up.
    """

    app: Any
    interface: Interface
    label: str
    app_name: str
    mix: RequestMix
    config: StormConfig
    #: A real server to start for the storm (``server="uvicorn"`` …), or None.
    server: ServerSpec | None = None
    #: Where the requests go and what serves them, while the storm runs.
    serving: Serving = Serving()
    #: Per-user start hook (``on_start=``), or None.
    on_start: Any = None
    #: Checks on every response (``checks=``).
    checks: Checks = NO_CHECKS
    #: The import string the app was given as (what a server is handed), or None.
    import_string: str | None = None

    @property
    def url(self) -> str | None:
        """Where the storm is sent over HTTP (a loopback URL), or None for in-process."""
        return self.serving.url

    @property
    def served_by(self) -> str | None:
        """What serves the app, in the field's words, once known."""
        return self.serving.served_by

    @property
    def running(self) -> RunningServer | None:
        """The real server started for the storm, while it runs."""
        return self.serving.running

    def serve_on(self, serving: Serving) -> StormPlan:
        """The plan with its running state: what the rounds of a started storm run."""
        return dataclasses.replace(self, serving=serving)

    @property
    def on_loop(self) -> bool:
        """True when the storm runs on an event loop (ASGI in-process, or any real server)."""
        return self.interface == "asgi" or self.url is not None or self.server is not None

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
    _check_method_and_path(method, path)
    config = resolve(layers)
    if scale is not None and scale[0] != 1:
        config.scaled(*scale)
    mix = build_mix(
        method,
        path,
        requests,
        config.request_options,
        config.seed,
        probe_factory=config.on_start is None,
    )
    # An import string is what a real server is given, unchanged; in-process needs the
    # object, loaded by the same loader as the server's.
    named = app if isinstance(app, str) and ":" in app else None
    if named is not None:
        app = import_app(named)
    interface = _interface(app, config)
    server, url = _real_server(app, interface, config, named)
    check_limits(config, interface, real_server=url is not None or server is not None)
    check_clock(config, interface, on_start=config.on_start, is_async_hook=is_async_hook)
    _check_on_start(config)
    _check_endpoint_budgets(config, mix)
    checks = parse_checks(config.checks, config.origin_of("checks"))
    if interface == "wsgi" and url is None and server is None:
        _refuse_async_checks(checks, mix, config)
    if config.engine == "locust":
        _check_locust(config, mix, server, url)
    if method != "WEBSOCKET":  # a WebSocket storm checks its own (``plan_websocket``)
        check_kind(config, storm_kind(config, real_server=url is not None or server is not None))
    return StormPlan(
        app,
        interface,
        config.name or _mix_label(mix),
        named or app_label(app),
        mix,
        config,
        server=server,
        serving=Serving(url=url),
        on_start=config.on_start,
        checks=checks,
        import_string=named,
    )


def _check_method_and_path(method: str | None, path: str | None) -> None:
    for name, given in (("method", method), ("path", path)):
        if given is not None and not isinstance(given, str):
            raise ConfigError(
                f"{name}={given!r} (from argument {name}) must be a string, such as "
                f"{'GET' if name == 'method' else '/'!r}: storm(app, method, path, **params)"
            )


def _interface(app: Any, config: StormConfig) -> Interface:
    """The interface the storm was told (``interface=``), else the one the app shows."""
    if config.interface is None:
        return detect_interface(app)
    if not callable(app):
        detect_interface(app)  # raises the not-callable error
    return "asgi" if config.interface == "asgi" else "wsgi"


def _check_on_start(config: StormConfig) -> None:
    on_start = config.on_start
    if on_start is None:
        return
    if not callable(on_start):
        raise ConfigError(
            f"on_start={on_start!r} (from {config.origin_of('on_start')}) must be a callable "
            "taking the virtual user"
        )
    if config.rate is not None:
        raise ConfigError(
            f"on_start (from {config.origin_of('on_start')}) needs the closed model: "
            "open-model arrivals are not users with a session; use users= or stages="
        )
    _check_hook(on_start, config.origin_of("on_start"))


def _mix_label(mix: RequestMix) -> str:
    if mix.factory is not None:
        return f"templated requests ({mix.labels[0] if mix.labels else '?'} …)"
    if len(mix.requests) == 1:
        return mix.requests[0].label
    return f"mix of {len(mix.requests)} requests"


def _refuse_async_checks(checks: Checks, mix: RequestMix, config: StormConfig) -> None:
    """The in-process WSGI pool's threads run no event loop: an ``async def`` check could
    only be run on a loop of its own per response, which would time the loop, not the app."""
    for where, parsed, origin in [
        ("checks", checks, config.origin_of("checks")),
        *((f"checks of {r.label}", r.parsed_checks, "the request") for r in mix.requests),
    ]:
        for name, func in parsed.funcs:
            if is_async_callable(func):
                raise ConfigError(
                    f"{where}: {name} (from {origin}) is an async def check, which the "
                    "in-process WSGI pool cannot await (its threads run no event loop); make "
                    "it a plain def returning True, False or None, or storm the app behind a "
                    "server (server='gunicorn'), whose client awaits it"
                )


def _check_hook(hook: Any, origin: str) -> None:
    """Refuse a start hook that could never run as one: a generator, or the wrong arity."""
    target = hook if inspect.isfunction(hook) or inspect.ismethod(hook) else None
    if target is None:
        call = getattr(hook, "__call__", None)  # noqa: B004 - the object's own __call__
        target = call if inspect.ismethod(call) else hook
    if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
        raise ConfigError(
            f"on_start={hook!r} (from {origin}) is a generator function: calling it runs "
            "nothing of it; make it a plain def or an async def taking the virtual user"
        )
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):
        return  # a builtin without a signature: judged when it runs
    try:
        signature.bind(object())
    except TypeError as exc:
        raise ConfigError(
            f"on_start={hook!r} (from {origin}) must take one argument, the virtual user "
            f"(its signature is {signature}: {exc})"
        ) from None


def _check_endpoint_budgets(config: StormConfig, mix: RequestMix) -> None:
    """Refuse per-endpoint budgets for endpoints the storm's requests do not have.

    A factory names its endpoints as it builds requests, so only a fixed mix is checked
    before load; an endpoint a factory never produced fails its budgets as not measured.
    """
    if mix.factory is not None or not config.endpoint_budgets:
        return
    known = list(dict.fromkeys(mix.labels))
    for endpoint in config.endpoint_budgets:
        if endpoint in known:
            continue
        close = difflib.get_close_matches(endpoint, known, n=1, cutoff=0.8)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"budgets={{{endpoint!r}: ...}} (from {config.origin_of('budgets')}) names an "
            f"endpoint that no request of the storm has{hint}; the storm's endpoints are "
            f"{', '.join(repr(label) for label in known)} (a request's name= is its endpoint)"
        )


def _check_locust(
    config: StormConfig, mix: RequestMix, server: ServerSpec | None, url: str | None
) -> None:
    origin = config.origin_of("engine")
    if server is None and url is None:
        raise ConfigError(
            f"engine='locust' (from {origin}) sends real HTTP: give server='uvicorn', "
            "'gunicorn' … or the URL of a server on loopback"
        )
    if importlib.util.find_spec("locust") is None:
        raise ConfigError(
            f"engine='locust' (from {origin}) needs Locust: pip install 'pytest-storm[locust]'"
        )
    unsupported = [
        name
        for name, used in (
            ("requests=<factory>", mix.factory is not None),
            ("rate (Locust has no open model)", config.rate is not None),
            ("on_start (a Python hook cannot be written into a locustfile)", config.on_start),
            ("checks", config.checks is not None),
            ("requests=<count>", config.requests is not None),
        )
        if used
    ]
    if unsupported:
        raise ConfigError(
            f"engine='locust' (from {origin}) cannot carry {', '.join(unsupported)}; run "
            "those storms with the native engine"
        )


def import_app(spec: str) -> Any:
    """An app given as an import string ``module:attr`` (or ``path/to/file.py:attr``)."""
    return load_app(spec, origin="argument app")


def _real_server(
    app: Any, interface: Interface, config: StormConfig, named: str | None = None
) -> tuple[ServerSpec | None, str | None]:
    """The server to start, or the URL to send to, for ``server=``."""
    if config.server == "inprocess":
        return None, None
    origin = config.origin_of("server")
    if config.server.startswith("http://"):
        require(("httptools",), "servers", f"server={config.server!r} (from {origin})")
        return None, config.server
    # A name the caller gave is passed on unchanged; an object (a closure too) is found by
    # the one module variable that holds it, as a server would import it.
    target = named or import_name(app) or app_label(app)
    module, sep, attr = target.rpartition(":")
    if (
        not sep
        or " " in target
        or module == "__main__"
        or not attr.replace(".", "_").isidentifier()
    ):
        raise ConfigError(
            f"server={config.server!r} (from {origin}) starts a server process that imports the "
            f"app, but {target} cannot be imported by name: give the app as a module-level "
            "variable or as an import string 'module:attr'"
        )
    spec = ServerSpec(
        kind=config.server,  # type: ignore[arg-type]
        app=target,
        interface=interface,
        workers=config.workers,
        threads=config.threads,
    )
    spec.validate(origin, config.origin_of("workers"))
    return spec, None


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
            figures["p99_ms"] = quantile(tail, 0.99) / 1000
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
