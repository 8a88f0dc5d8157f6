"""Run a locustfile with Locust in child processes and read its figures back as a storm result.

Locust is never imported into this process: importing it patches sockets, threads and
time with gevent for the whole interpreter. It runs as ``python -m locust`` in a new
session (its own process group), so the master and the workers it forks are stopped
together, on every way out: SIGTERM to the group, SIGKILL after a grace period, and a
last SIGKILL to the group even after a clean exit, for a worker that outlived its master.

Figures come from ``--json``: per endpoint, Locust's whole response-time histogram
(rounded milliseconds → count), the exact sum, minimum and maximum of response times,
and requests and failures per wall-clock second. The CSV statistics only hold
percentiles Locust computed at fixed ranks (and, in their history, over a rolling
window), so the JSON histogram is the more faithful source: every percentile here
comes from one HDR histogram, as for native storms. The CSV files are also rewritten
only once a second while Locust runs, so their last second may be missing. Status codes
(Locust keeps none) and the final failure messages come from the generated locustfile's
own report, written by the master on quit.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .._errors import ConfigError, StormError
from .._metrics import ErrorSummary, LatencyStats, latency_stats, new_histogram, record_many
from .._model.extras import LocustInvocation
from .._model.remarks import LOCUST_NOTES, locust_no_status_warning
from .._model.result import EndpointStats, StormResult, TimelinePoint
from .locustfile import REPORT_FILE_ENV, USER_CLASS, Locustfile

__all__ = [
    "LOCUST_NOTES",
    "LocustEntry",
    "LocustRun",
    "locust_available",
    "locust_version",
    "read_back",
    "run_locust",
]

#: Seconds between SIGTERM and SIGKILL when stopping Locust's process group.
STOP_GRACE = 5.0
#: Seconds allowed on top of the run's length for Locust to start, gather and write its figures.
START_GRACE = 30.0
#: Characters of stderr quoted in a :class:`StormError`.
STDERR_TAIL = 2000


def locust_available() -> bool:
    """True when Locust can be run from this interpreter (checked without importing it)."""
    return importlib.util.find_spec("locust") is not None


def locust_version() -> str:
    """Installed Locust version, read from its distribution metadata (no import)."""
    try:
        return importlib.metadata.version("locust")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class LocustEntry:
    """Locust's statistics of one endpoint (one ``name=`` and method)."""

    method: str
    name: str
    requests: int
    failures: int
    total_ms: float
    min_ms: float | None
    max_ms: float
    start_time: float
    last_request: float | None
    #: Rounded response time in ms → number of requests.
    response_times: dict[int, int]
    per_second: dict[int, int]
    failures_per_second: dict[int, int]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LocustEntry:
        """One entry of ``locust --json``."""

        def ints(key: str) -> dict[int, int]:
            return {int(float(k)): int(v) for k, v in (data.get(key) or {}).items()}

        return cls(
            method=str(data.get("method") or ""),
            name=str(data.get("name") or ""),
            requests=int(data.get("num_requests") or 0),
            failures=int(data.get("num_failures") or 0),
            total_ms=float(data.get("total_response_time") or 0.0),
            min_ms=None
            if data.get("min_response_time") is None
            else float(data["min_response_time"]),
            max_ms=float(data.get("max_response_time") or 0.0),
            start_time=float(data.get("start_time") or 0.0),
            last_request=None
            if data.get("last_request_timestamp") is None
            else float(data["last_request_timestamp"]),
            response_times=ints("response_times"),
            per_second=ints("num_reqs_per_sec"),
            failures_per_second=ints("num_fail_per_sec"),
        )

    @property
    def label(self) -> str:
        """The endpoint label: the ``name=`` given to Locust (the storm's label in exports)."""
        return self.name


@dataclass
class LocustRun:
    """One finished Locust run: what was started, what it printed, and its figures."""

    command: list[str]
    returncode: int
    entries: list[LocustEntry]
    #: Locust's failure records (method, name, error, occurrences); None when the locustfile gave none.
    failures: list[dict[str, Any]] | None
    status_counts: Counter[int]
    workers: int
    version: str
    host: str
    users: int
    duration: float
    elapsed: float
    stderr_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def server(self) -> str:
        """Who produced the figures, e.g. ``Locust 2.47.0 (1 master + 2 workers, FastHttpUser)``."""
        if self.workers:
            shape = f"1 master + {self.workers} worker{'s' if self.workers != 1 else ''}"
        else:
            shape = "1 process"
        return f"Locust {self.version} ({shape}, FastHttpUser)"

    def result(self, *, label: str = "locust storm") -> StormResult:
        """The run's figures as a :class:`StormResult` (budgets not yet judged)."""
        return read_back(self, label=label)


def _error_tail(text: str) -> str:
    tail = text[-STDERR_TAIL:].strip()
    return tail if tail else "(nothing on stderr)"


def _positive_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{name}={value!r} (from keyword argument) must be a whole number >= {minimum}"
        )
    return value


def _positive_number(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{name}={value!r} (from keyword argument) must be a number > 0")
    return float(value)


def _address(host: Any) -> tuple[str, int]:
    """(hostname, port) of *host*, a ``http(s)://`` URL."""
    where = f"host={host!r} (from keyword argument)"
    if not isinstance(host, str):
        raise ConfigError(f"{where} must be a URL such as 'http://127.0.0.1:8000'")
    parts = urllib.parse.urlsplit(host)
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{where} has an invalid port: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where} must be a URL such as 'http://127.0.0.1:8000'")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _check_reachable(host: str, address: tuple[str, int], timeout: float = 2.0) -> None:
    try:
        with socket.create_connection(address, timeout=timeout):
            pass
    except OSError as exc:
        raise StormError(
            f"host={host!r} (from keyword argument) is not reachable from this machine "
            f"({address[0]}:{address[1]}: {exc}); Locust was not started"
        ) from None


def _command(
    path: Path,
    host: str,
    *,
    users: int,
    duration: float,
    spawn_rate: float,
    processes: int,
    shape: bool,
    expect_workers_from_elsewhere: bool,
    bind_host: str,
    bind_port: int,
    wait_for_workers: float,
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(path),
        "--headless",
        "--host",
        host,
        "--json",
        "--only-summary",
        # Failed requests are figures to report, not a failed run: exit 1 only for errors.
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
    ]
    if not shape:
        # Locust's -t takes whole seconds. A shape sets users and length itself (and ends
        # by returning None); the run's timeout bounds it all the same.
        command += [
            "-u",
            str(users),
            "-r",
            f"{spawn_rate:g}",
            "-t",
            f"{max(1, math.ceil(duration))}s",
        ]
    if expect_workers_from_elsewhere:
        command += [
            "--master",
            "--expect-workers",
            str(processes),
            "--expect-workers-max-wait",
            f"{max(1, math.ceil(wait_for_workers))}",
            "--master-bind-host",
            bind_host,
            "--master-bind-port",
            str(bind_port),
        ]
    elif processes > 0:
        # Local workers: a free port on loopback, so that storms running side by side (xdist,
        # two suites on one machine) do not fight over Locust's default 5557.
        port = str(_free_port())
        command += [
            "--processes",
            str(processes),
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            port,
            "--master-host",
            "127.0.0.1",
            "--master-port",
            port,
        ]
    return command


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group, SIGKILL it after *grace*, and wait until none of it runs."""
    pgid = proc.pid  # start_new_session=True: the master leads its own group
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # Workers forked by the master stay in its group and may outlive it.
    deadline = time.monotonic() + grace
    while True:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        # A killed orphan takes a moment to die; return only once none of the group runs.
        if not _running_in_group(pgid) or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def _running_in_group(pgid: int) -> bool:
    """True while a process of group *pgid* runs (zombies waiting for init do not count)."""
    try:
        import psutil  # a dependency of Locust, and free of gevent
    except ImportError:  # pragma: no cover - Locust brings it
        return False
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                return True
        except (psutil.Error, OSError):
            continue
    return False


def _wait(proc: subprocess.Popen[bytes], deadline: float) -> int:
    """Wait for the master to exit; a timeout past *deadline* is a :class:`StormError`."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise subprocess.TimeoutExpired(proc.args, 0)
        try:
            return proc.wait(timeout=min(0.2, remaining))
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def _locust_process(
    command: list[str], *, env: Mapping[str, str], cwd: Path, grace: float
) -> Iterator[subprocess.Popen[bytes]]:
    """Start Locust in its own session; stop its whole group however the block ends."""
    stdout = (cwd / "stdout.txt").open("wb")
    stderr = (cwd / "stderr.txt").open("wb")
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    except BaseException:
        stdout.close()
        stderr.close()
        raise
    try:
        yield proc
    finally:
        try:
            _stop_group(proc, grace)
        finally:
            stdout.close()
            stderr.close()


def run_locust(
    locustfile: Locustfile | str | os.PathLike[str],
    host: str,
    *,
    users: int | None = None,
    duration: float | None = None,
    processes: int = 0,
    spawn_rate: float | None = None,
    expect_workers_from_elsewhere: bool = False,
    master_bind_host: str = "*",
    master_bind_port: int = 5557,
    timeout: float | None = None,
    stop_grace: float = STOP_GRACE,
) -> LocustRun:
    """Run *locustfile* headless against *host* and read its figures back.

    ``processes`` local workers (``--processes``; 0 runs one process with no master), or,
    with ``expect_workers_from_elsewhere``, a master that waits for ``processes`` workers
    started on other machines (``--master-bind-host``/``--master-bind-port``) and runs
    none itself. ``users`` and ``duration`` default to the generated locustfile's;
    ``spawn_rate`` to all users within one second. The run is bounded by ``timeout``
    (default: its length plus 30 s); a Locust that fails to start, exits non-zero or
    overruns is a :class:`StormError` quoting its stderr.
    """
    if not locust_available():
        raise StormError(
            "engine='locust' needs Locust in this interpreter: pip install 'pytest-storm[locust]'"
        )
    address = _address(host)
    generated = locustfile if isinstance(locustfile, Locustfile) else None
    users, duration = _users_and_duration(generated, users, duration)
    processes = _positive_int("processes", processes, 1 if expect_workers_from_elsewhere else 0)
    rate = _positive_number("spawn_rate", spawn_rate if spawn_rate is not None else users)
    limit = _positive_number(
        "timeout", timeout if timeout is not None else math.ceil(duration) + START_GRACE
    )
    shape = generated.has_shape if generated is not None else False
    if not expect_workers_from_elsewhere:
        # Workers here would only record a storm of connection errors: say so in a second.
        _check_reachable(host, address)

    with tempfile.TemporaryDirectory(prefix="pytest-storm-locust-") as tmp:
        work = Path(tmp)
        path = _locustfile_path(locustfile, work)
        report_file = work / "storm_report.json"
        command = _command(
            path,
            host,
            users=users,
            duration=duration,
            spawn_rate=rate,
            processes=processes,
            shape=shape,
            expect_workers_from_elsewhere=expect_workers_from_elsewhere,
            bind_host=master_bind_host,
            bind_port=master_bind_port,
            wait_for_workers=limit,
        )
        code, elapsed = _run_watched(command, work, report_file, stop_grace, limit)
        stdout = (work / "stdout.txt").read_text(encoding="utf-8", errors="replace")
        stderr = (work / "stderr.txt").read_text(encoding="utf-8", errors="replace")
        code = _check_exit(code, stderr, limit=limit, duration=duration, host=host, path=path)
        entries = _parse_json(stdout, stderr)
        status_counts, failures = _read_report(report_file)
    return LocustRun(
        command=command,
        returncode=code,
        entries=entries,
        failures=failures,
        status_counts=status_counts,
        workers=processes,
        version=locust_version(),
        host=host,
        users=users,
        duration=duration,
        elapsed=elapsed,
        stderr_tail=stderr[-STDERR_TAIL:],
        extra={"shape": shape, "spawn_rate": rate, "remote_workers": expect_workers_from_elsewhere},
    )


def _users_and_duration(
    generated: Locustfile | None, users: int | None, duration: float | None
) -> tuple[int, float]:
    """The run's users and duration: as given, or the generated locustfile's."""
    if users is None:
        if generated is None:
            raise ConfigError(
                "users=None (from keyword argument): give users for a locustfile path"
            )
        users = generated.users
    if duration is None:
        if generated is None:
            raise ConfigError(
                "duration=None (from keyword argument): give duration for a locustfile path"
            )
        duration = generated.duration
    return _positive_int("users", users, 1), _positive_number("duration", duration)


def _locustfile_path(locustfile: Locustfile | str | os.PathLike[str], work: Path) -> Path:
    """The locustfile to run: a generated one written into *work*, or the file given."""
    if isinstance(locustfile, Locustfile):
        return locustfile.write(work / "storm_locustfile.py")
    path = Path(locustfile).resolve()
    if not path.is_file():
        raise ConfigError(f"locustfile={str(locustfile)!r} (from keyword argument) is not a file")
    return path


def _run_watched(
    command: list[str], work: Path, report_file: Path, stop_grace: float, limit: float
) -> tuple[int | None, float]:
    """Run Locust's *command* in *work* under its watcher; its exit code (None when it
    overran *limit* seconds and was stopped) and the seconds it took."""
    env = {**os.environ, REPORT_FILE_ENV: str(report_file), "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    # A watcher leads the group: Locust stops with the storm's process, even a killed one.
    watched = [sys.executable, str(Path(__file__).with_name("_watch.py"))]
    watched += [str(os.getpid()), f"{stop_grace:g}", str(work), "--", *command]
    with _locust_process(watched, env=env, cwd=work, grace=stop_grace) as proc:
        try:
            code: int | None = _wait(proc, started + limit)
        except subprocess.TimeoutExpired:
            code = None
    return code, time.monotonic() - started


def _check_exit(
    code: int | None, stderr: str, *, limit: float, duration: float, host: str, path: Path
) -> int:
    """Locust's exit code when it is 0; otherwise a :class:`StormError` quoting its stderr."""
    if code is None:
        raise StormError(
            f"Locust did not finish within timeout={limit:g} s (run of {duration:g} s against "
            f"{host}); stopped it. Its stderr ends with:\n{_error_tail(stderr)}"
        )
    if code != 0:
        raise StormError(
            f"Locust exited with code {code} (locustfile {path.name}, host={host!r}). "
            f"Its stderr ends with:\n{_error_tail(stderr)}"
        )
    return code


def _parse_json(stdout: str, stderr: str) -> list[LocustEntry]:
    """The master's ``--json`` array: the last non-empty one on stdout.

    Workers forked by ``--processes`` share the master's stdout and print their own,
    empty, arrays (their figures went to the master) before the master prints its own.
    """
    decoder = json.JSONDecoder()
    found: list[list[dict[str, Any]]] = []
    for start in (
        i for i, c in enumerate(stdout) if c == "[" and (i == 0 or stdout[i - 1] == "\n")
    ):
        try:
            data, _ = decoder.raw_decode(stdout, start)
        except json.JSONDecodeError:
            continue
        if isinstance(data, list) and all(isinstance(item, dict) for item in data):
            found.append(data)
    if not found:
        raise StormError(
            "Locust exited without its --json statistics on stdout. Its stderr ends with:\n"
            f"{_error_tail(stderr)}"
        )
    chosen = next((data for data in reversed(found) if data), found[-1])
    return [LocustEntry.from_json(item) for item in chosen]


def _read_report(path: Path) -> tuple[Counter[int], list[dict[str, Any]] | None]:
    """Status codes and failure messages written by the generated locustfile, if it ran."""
    counts: Counter[int] = Counter()
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return counts, None
    for code, count in (report.get("status_counts") or {}).items():
        counts[int(code)] += int(count)
    errors = [e for e in report.get("errors") or [] if isinstance(e, dict)]
    return counts, errors


def _stats(
    response_times: Mapping[int, int], total_ms: float, count: int, low: float | None, high: float
) -> tuple[LatencyStats, Any]:
    """Percentiles from Locust's rounded histogram; mean, min and max from its exact figures."""
    histogram = new_histogram()
    # Locust's buckets are ms; the histogram counts µs, one record per distinct value.
    moments = record_many(
        histogram,
        itertools.chain.from_iterable(
            itertools.repeat(int(ms * 1000), n) for ms, n in response_times.items()
        ),
    )
    stats = latency_stats(histogram, moments)
    if stats.count and count:
        low = low if low is not None else stats.min
        # Locust rounds each time into a bucket (to 1 ms below 100 ms, 10 ms to 1 s): a
        # percentile read from the buckets may lie past the exact slowest or below the
        # exact fastest request, which bound every percentile.
        bounded = {
            name: min(max(getattr(stats, name), low), high)
            for name in ("p50", "p75", "p90", "p95", "p99", "p999")
        }
        stats = replace(stats, mean=total_ms / count, min=low, max=high, **bounded)
    return stats, histogram


def _error_type(message: str) -> str:
    head = message.split("(", 1)[0].strip()
    return head if head.isidentifier() else message


def _errors(
    failures: list[dict[str, Any]] | None, entries: list[LocustEntry]
) -> tuple[dict[str, ErrorSummary], int]:
    """Failures by Locust's message (its own grouping), with every endpoint that saw them."""
    errors: dict[str, ErrorSummary] = {}
    timeouts = 0
    if failures is None:
        # A locustfile without the report: Locust's counts, without messages.
        for entry in entries:
            if entry.failures:
                kind = "failure (no message from Locust)"
                summary = errors.setdefault(kind, ErrorSummary(kind, 0, ""))
                summary.count += entry.failures
                summary.example = "\n".join(filter(None, [summary.example, entry.label]))
        return errors, 0
    for row in failures:
        message = str(row.get("error") or "failure")
        try:
            occurrences = int(row.get("occurrences") or 0)
        except (TypeError, ValueError):
            occurrences = 0
        if "timeout" in message.lower() or "timed out" in message.lower():
            timeouts += occurrences
        example = f"{row.get('name', '')}: {message}"
        seen = errors.get(message)
        if seen is None:
            errors[message] = ErrorSummary(_error_type(message), occurrences, example)
        else:
            seen.count += occurrences
            seen.example += f"\n{example}"
    return dict(sorted(errors.items(), key=lambda item: -item[1].count)), timeouts


def _endpoints(
    entries: list[LocustEntry], duration: float, histograms: dict[str, Any]
) -> dict[str, EndpointStats]:
    """Each Locust entry's figures (its histogram added to *histograms*)."""
    endpoints: dict[str, EndpointStats] = {}
    for entry in entries:
        key = entry.label if entry.label not in endpoints else f"{entry.method} {entry.label}"
        stats, h = _stats(
            entry.response_times, entry.total_ms, entry.requests, entry.min_ms, entry.max_ms
        )
        rps = entry.requests / duration if duration > 0 else 0.0
        endpoints[key] = EndpointStats(key, entry.requests, entry.failures, stats, rps)
        histograms[f"latency:{key}"] = h
    return endpoints


def _timeline(entries: list[LocustEntry]) -> list[TimelinePoint]:
    """Requests and failures per second (Locust keeps no per-second latency)."""
    per_second: Counter[int] = Counter()
    bad_per_second: Counter[int] = Counter()
    for entry in entries:
        per_second.update(entry.per_second)
        bad_per_second.update(entry.failures_per_second)
    seconds = sorted(per_second.keys() | bad_per_second.keys())
    return [
        TimelinePoint(
            second=second - seconds[0],
            requests=per_second[second],
            errors=bad_per_second[second],
            p50=math.nan,
            p99=math.nan,
            max=math.nan,
        )
        for second in seconds
    ]


def read_back(run: LocustRun, *, label: str = "locust storm") -> StormResult:
    """Build a :class:`StormResult` from a Locust run's statistics."""
    entries = [e for e in run.entries if e.requests or e.failures]
    requests = sum(e.requests for e in entries)
    failed = sum(e.failures for e in entries)
    starts = [e.start_time for e in entries if e.start_time]
    lasts = [e.last_request for e in entries if e.last_request]
    duration = max(lasts) - min(starts) if starts and lasts else 0.0
    duration = max(duration, 0.0)
    throughput = requests / duration if duration > 0 else 0.0

    merged: Counter[int] = Counter()
    for entry in entries:
        merged.update(entry.response_times)
    total_ms = sum(e.total_ms for e in entries)
    mins = [e.min_ms for e in entries if e.min_ms is not None]
    latency, histogram = _stats(
        merged,
        total_ms,
        requests,
        min(mins) if mins else None,
        max((e.max_ms for e in entries), default=0.0),
    )
    histograms = {"latency": histogram}

    endpoints = _endpoints(entries, duration, histograms)
    errors, timeouts = _errors(run.failures, entries)
    timeline = _timeline(entries)

    single = len(entries) == 1
    method = entries[0].method.upper() if single else "MIX"
    path = entries[0].label if single else "*"
    if single and path.upper().startswith(f"{method} "):
        path = path[len(method) + 1 :]
    status_counts = Counter({code: n for code, n in run.status_counts.items() if code})
    result = StormResult(
        label=label,
        app=run.host,
        interface="HTTP",
        server=run.server,
        method=method,
        path=path,
        users=run.users,
        requests=requests,
        duration=duration,
        throughput=throughput,
        latency=latency,
        ttfb=LatencyStats(),
        queue_wait=None,
        service_time=None,
        status_counts=status_counts,
        errors=errors,
        failed=failed,
        timeouts=timeouts,
        pool=None,
        timeline=timeline,
        endpoints=endpoints,
        histograms=histograms,
        params={
            "engine": "locust",
            "users": run.users,
            "duration": run.duration,
            "processes": run.workers,
            "host": run.host,
            **{k: v for k, v in run.extra.items() if isinstance(v, int | float | str | bool)},
        },
        budgets={},
        model="closed",
    )
    # What Locust cannot measure is said on every result: notes, since nothing went wrong.
    result.notes.extend(LOCUST_NOTES)
    if not run.status_counts and requests:
        result.warnings.append(locust_no_status_warning(USER_CLASS))
    result.locust = LocustInvocation(run.version, tuple(run.command), run.elapsed)
    return result
