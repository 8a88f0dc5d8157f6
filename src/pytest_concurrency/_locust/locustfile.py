"""Export a storm's workload as a locustfile that anyone who uses Locust can run as it is.

The file is plain Locust: a ``FastHttpUser`` with one weighted ``@task`` per request of
the mix (named with the storm's endpoint labels), a ``wait_time`` for think time, and a
``LoadTestShape`` for k6-style stages. Distributions are inlined as numbers, so the
machines that run it need Locust and nothing of pytest-storm.

Locust itself is never imported here: importing it patches the whole process with gevent.
"""

from __future__ import annotations

import itertools
import math
import os
import pprint
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from .._simio.distributions import (
    ConstantLatency,
    EmpiricalLatency,
    ExponentialLatency,
    Latency,
    LognormalLatency,
    NormalLatency,
    UniformLatency,
)
from .._workload import Request

__all__ = ["REPORT_FILE_ENV", "USER_CLASS", "Locustfile", "build_locustfile", "task_weights"]

#: Name of the generated user class (Locust prints it in its task table).
USER_CLASS = "StormUser"
#: Environment variable naming where the master writes status codes and failures (JSON).
REPORT_FILE_ENV = "PYTEST_STORM_REPORT_FILE"

#: Largest denominator kept when float weights become Locust's integer task weights.
_WEIGHT_PRECISION = 1000


@dataclass(frozen=True)
class Locustfile:
    """A generated locustfile: its text and the figures a run of it needs."""

    text: str
    users: int
    duration: float
    endpoints: tuple[str, ...]
    #: True when stages drive the users (a ``LoadTestShape``): ``-u``, ``-r`` and ``-t`` do not apply;
    #: ``users`` is then the stages' peak and ``duration`` their length.
    has_shape: bool = False

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the locustfile to *path* and return it."""
        target = Path(path)
        target.write_text(self.text, encoding="utf-8")
        return target


def task_weights(requests: Sequence[Request]) -> list[int]:
    """Locust's integer task weights for the mix's float weights, in the same proportions.

    Weights are read to three decimals and divided by their greatest common divisor,
    so ``[1, 3]`` stays ``[1, 3]`` and ``[0.25, 0.75]`` becomes ``[1, 3]``.
    """
    fractions = [Fraction(float(r.weight)).limit_denominator(_WEIGHT_PRECISION) for r in requests]
    for index, (request, value) in enumerate(zip(requests, fractions, strict=True)):
        if value <= 0:
            raise ConfigError(
                f"requests[{index}].weight={request.weight!r} (from the request mix) is too "
                f"small for Locust's integer task weights (resolution 1/{_WEIGHT_PRECISION})"
            )
    denominator = math.lcm(*(f.denominator for f in fractions))
    integers = [int(f * denominator) for f in fractions]
    divisor = math.gcd(*integers)
    return [i // divisor for i in integers]


def build_locustfile(
    requests: Sequence[Request],
    *,
    users: int = 10,
    duration: float = 10.0,
    think_ms: float | Latency | None = None,
    stages: Sequence[tuple[float, float]] = (),
    start_users: int = 0,
    timeout_ms: float | None = None,
    label: str = "storm",
    origin: str = "keyword argument",
) -> Locustfile:
    """Write the storm's workload as locustfile source: the mix, think time, stages, users and length.

    ``stages`` follow k6: from ``start_users``, each ``(seconds, target)`` ramps the users
    linearly to ``target``; the stages then set the length of the run.
    """
    if not requests:
        raise ConfigError("requests=[] (from the request mix) must hold at least one Request")
    for index, request in enumerate(requests):
        if not isinstance(request, Request):
            raise ConfigError(
                f"requests[{index}]={request!r} (from the request mix) must be a "
                "pytest_concurrency.Request"
            )
        request.validate(f"requests[{index}]")
    if isinstance(users, bool) or not isinstance(users, int) or users < 0:
        raise ConfigError(f"users={users!r} (from {origin}) must be a whole number >= 0")
    if not stages and users < 1:
        raise ConfigError(f"users={users!r} (from {origin}) must be at least 1")
    if not (isinstance(duration, int | float) and math.isfinite(duration) and duration > 0):
        raise ConfigError(f"duration={duration!r} (from {origin}) must be a number > 0")
    knots = _knots(start_users, stages, origin)
    weights = task_weights(requests)
    parts = [
        _header(label, requests, users, duration, knots) + "\n\n" + _imports(think_ms, bool(knots)),
        _user_class(requests, weights, think_ms, timeout_ms),
        _status_counts(),
    ]
    if knots:
        parts.append(_shape(knots))
    text = "\n\n\n".join(part.strip("\n") for part in parts) + "\n"
    length = knots[-1][0] if knots else float(duration)
    peak = max(v for _, v in knots) if knots else users
    return Locustfile(
        text=text,
        users=math.ceil(peak) if knots else users,
        duration=length,
        endpoints=tuple(dict.fromkeys(r.label for r in requests)),
        has_shape=bool(knots),
    )


def _knots(
    start: int, stages: Sequence[tuple[float, float]], origin: str
) -> list[tuple[float, float]]:
    if not stages:
        return []
    points = [(0.0, float(start))]
    t = 0.0
    for index, stage in enumerate(stages):
        try:
            seconds, target = stage
        except (TypeError, ValueError):
            raise ConfigError(
                f"stages[{index}]={stage!r} (from {origin}) must be a (seconds, target_users) pair"
            ) from None
        for name, value in (("seconds", seconds), ("target_users", target)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(
                    f"stages[{index}]={stage!r} (from {origin}): {name}={value!r} must be "
                    "a number >= 0"
                )
        t += float(seconds)
        points.append((t, float(target)))
    if t <= 0:
        raise ConfigError(f"stages={list(stages)!r} (from {origin}) last 0 seconds in all")
    return points


def _header(
    label: str,
    requests: Sequence[Request],
    users: int,
    duration: float,
    knots: list[tuple[float, float]],
) -> str:
    if knots:
        run = (
            "#   locust -f THIS_FILE --headless --host http://HOST:PORT\n"
            f"# The users follow the stages of StormShape below (k6 semantics), {knots[-1][0]:g} s in all."
        )
    else:
        run = (
            f"#   locust -f THIS_FILE --headless --host http://HOST:PORT -u {users} -r {users} "
            f"-t {_run_time(duration)}"
        )
    endpoints = "\n".join(f"#   {r.label}" for r in requests)
    return f'''"""Locust workload exported by pytest-storm from the storm {label!r}."""

# Run it on one machine:
{run}
# or over many: add --processes N, or start --master here and, on other machines,
#   locust -f THIS_FILE --worker --master-host MASTER_HOST
# Endpoints (Locust's "Name" column):
{endpoints}'''


def _run_time(seconds: float) -> str:
    # Locust's -t takes whole seconds at best ("10s", "1m30s").
    return f"{max(1, math.ceil(seconds))}s"


def _imports(think: float | Latency | None, shape: bool) -> str:
    lines = ["import json", "import os"]
    if isinstance(think, Latency) and not isinstance(think, ConstantLatency | UniformLatency):
        lines.append("import random")
    lines += ["from collections import Counter", ""]
    names = ["FastHttpUser", "events", "task"]
    if shape:
        names.append("LoadTestShape")
    if isinstance(think, UniformLatency):
        names.append("between")
    elif think is None or isinstance(think, int | float | ConstantLatency):
        names.append("constant")
    lines.append(
        f"from locust import {', '.join(sorted(names, key=lambda n: (not n[0].isupper(), n)))}"
    )
    lines.append("from locust.runners import WorkerRunner")
    return "\n".join(lines)


def _wait_time(think: float | Latency | None) -> tuple[str, str]:
    """The ``wait_time`` line of the user class, and any module-level helper it needs."""
    if think is None:
        return "wait_time = constant(0)", ""
    if isinstance(think, bool) or not isinstance(think, int | float | Latency):
        raise ConfigError(
            f"think_ms={think!r} (from keyword argument) must be a number of milliseconds or a "
            "latency distribution"
        )
    if isinstance(think, int | float):
        if not math.isfinite(think) or think < 0:
            raise ConfigError(f"think_ms={think!r} (from keyword argument) must be a number >= 0")
        return f"wait_time = constant({think / 1000:g})  # think_ms={think:g}", ""
    if isinstance(think, ConstantLatency):
        return f"wait_time = constant({think.ms / 1000:g})  # {think.describe()}", ""
    if isinstance(think, UniformLatency):
        return (
            f"wait_time = between({think.low_ms / 1000:g}, {think.high_ms / 1000:g})  "
            f"# {think.describe()}"
        ), ""
    if isinstance(think, NormalLatency):
        body = (
            f"    # {think.describe()}: negative draws are drawn again, not clipped to 0.\n"
            "    while True:\n"
            f"        ms = random.gauss({think.mu_ms!r}, {think.sigma_ms!r})\n"
            "        if ms >= 0:\n"
            "            return ms / 1000"
        )
    elif isinstance(think, LognormalLatency):
        body = (
            f"    # {think.describe()}: ln(ms) is normal with these mu and sigma.\n"
            f"    return random.lognormvariate({think.mu!r}, {think.sigma!r}) / 1000"
        )
    elif isinstance(think, ExponentialLatency):
        body = f"    # {think.describe()}\n    return random.expovariate(1000 / {think.scale_ms!r})"
    elif isinstance(think, EmpiricalLatency):
        samples = _wrapped_list(think.samples_ms).replace("\n", "\n    ")
        body = (
            f"    # {think.describe()}: one recorded value, uniformly.\n"
            "    return random.choice(user.think_samples_ms) / 1000"
        )
        helper = 'def think_time(user):\n    """Seconds a user pauses between requests."""\n' + body
        return f"wait_time = think_time\n    think_samples_ms = {samples}", helper
    else:
        raise ConfigError(
            f"think_ms={think!r} (from keyword argument): {type(think).__name__} cannot be "
            "written into a locustfile; use constant, uniform, normal, lognormal, exponential "
            "or empirical"
        )
    return "wait_time = think_time", (
        'def think_time(user):\n    """Seconds a user pauses between requests."""\n' + body
    )


def _wrapped_list(values: Sequence[float]) -> str:
    """A list literal of numbers, a few to a line."""
    lines: list[str] = []
    line = ""
    for value in values:
        item = f"{value!r}, "
        if len(line) + len(item) > 88:
            lines.append(line.rstrip())
            line = ""
        line += item
    if line:
        lines.append(line.rstrip())
    return "[\n" + "\n".join(f"    {text}" for text in lines) + "\n]"


def _literal(value: Any) -> str:
    return pprint.pformat(value, width=88, sort_dicts=False)


def _call(request: Request) -> str:
    """The ``self.client.request(...)`` call that sends *request* as pytest-storm would."""
    encoded = request.to_httpx()
    # The query string is baked into the path, encoded as httpx encodes it in a storm.
    target = encoded.url.raw_path.decode("ascii")
    args = [repr(request.method.upper()), repr(target), f"name={request.label!r}"]
    headers = dict(request.headers) if request.headers else {}
    if request.json is not None:
        args.append(f"json={_literal(request.json)}")
    elif request.content is not None:
        args.append(f"data={request.content!r}")
    elif request.data is not None:
        # Form fields, urlencoded once as httpx does for a storm.
        args.append(f"data={encoded.content.decode('ascii')!r}")
        headers.setdefault("Content-Type", encoded.headers["content-type"])
    if headers:
        args.insert(3, f"headers={_literal(headers)}")
    one_line = f"self.client.request({', '.join(args)})"
    if len(one_line) <= 80 and "\n" not in one_line:
        return one_line
    inner = ",\n".join("    " + a.replace("\n", "\n    ") for a in args)
    return f"self.client.request(\n{inner},\n)"


def _user_class(
    requests: Sequence[Request],
    weights: list[int],
    think: float | Latency | None,
    timeout_ms: float | None,
) -> str:
    wait_line, helper = _wait_time(think)
    lines = [
        f"class {USER_CLASS}(FastHttpUser):",
        '    """One virtual user: picks a weighted request, sends it, thinks, again."""',
        "",
        f"    {wait_line}",
    ]
    if timeout_ms is not None:
        seconds = timeout_ms / 1000
        lines.append(f"    connection_timeout = {seconds:g}")
        lines.append(f"    network_timeout = {seconds:g}")
    lines += [
        "",
        "    def on_start(self):",
        "        # Per-user set-up (log in, fetch a token) goes here.",
        "        pass",
    ]
    used: dict[str, int] = {}
    for request, weight in zip(requests, weights, strict=True):
        name = _method_name(request, used)
        call = _call(request).replace("\n", "\n        ")
        lines += ["", f"    @task({weight})", f"    def {name}(self):", f"        {call}"]
    body = "\n".join(lines)
    return f"{helper}\n\n\n{body}" if helper else body


def _method_name(request: Request, used: dict[str, int]) -> str:
    raw = "".join(c if c.isalnum() else "_" for c in request.label.lower())
    base = "_".join(part for part in raw.split("_") if part) or "request"
    if base[0].isdigit():
        base = f"r_{base}"
    count = used.get(base, 0)
    used[base] = count + 1
    return base if count == 0 else f"{base}_{count + 1}"


def _status_counts() -> str:
    return f'''# Status codes: Locust's statistics keep none. Each worker counts them and sends them
# with its reports. When {REPORT_FILE_ENV} names a file, the master (or a single
# process) writes there, on quit, the status codes and Locust's final failure messages.
status_counts = Counter()
runner = None


@events.request.add_listener
def count_status(response=None, **kwargs):
    status_counts[str(getattr(response, "status_code", None) or 0)] += 1


@events.report_to_master.add_listener
def send_status(client_id, data):
    data["storm_status_counts"] = dict(status_counts)
    status_counts.clear()


@events.worker_report.add_listener
def receive_status(client_id, data):
    status_counts.update(data.get("storm_status_counts", {{}}))


@events.init.add_listener
def remember_runner(environment, **kwargs):
    global runner
    runner = environment.runner


@events.quit.add_listener
def write_report(exit_code, **kwargs):
    # On quit, after the workers' last reports have reached the master.
    path = os.environ.get("{REPORT_FILE_ENV}")
    if path and runner is not None and not isinstance(runner, WorkerRunner):
        report = {{
            "status_counts": dict(status_counts),
            "errors": list(runner.stats.serialize_errors().values()),
        }}
        with open(path, "w") as file:
            json.dump(report, file)'''


def _shape(knots: list[tuple[float, float]]) -> str:
    stages = "\n".join(
        f"        ({t - t0:g}, {v:g})," for (t0, _), (t, v) in itertools.pairwise(knots)
    )
    return f'''class StormShape(LoadTestShape):
    """k6-style stages: from START_USERS, ramp linearly to each target over its seconds."""

    START_USERS = {knots[0][1]:g}
    # (seconds, target users), one stage after the other.
    STAGES = [
{stages}
    ]

    def tick(self):
        t = self.get_run_time()
        start, begin = self.START_USERS, 0.0
        for seconds, target in self.STAGES:
            if t < begin + seconds:
                slope = (target - start) / seconds
                users = start + slope * (t - begin)
                # Spawn fast enough to follow the ramp within a tick (Locust ticks each second).
                return round(users), max(1.0, abs(slope), abs(target - users))
            start, begin = target, begin + seconds
        return None'''
