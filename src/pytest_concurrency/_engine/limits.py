"""What a storm will cost, checked against what the machine has, before any load.

A storm that cannot fit is refused with an error naming the parameter, the estimate
and the limit, in well under a second — rather than exhausting memory or threads
halfway and taking the test session down with it. The per-unit costs are measured
figures of this engine (resident memory per waiting ASGI user, per WSGI user token,
per worker thread), rounded up.
"""

from __future__ import annotations

import math
import random
import resource
import threading
from pathlib import Path

from .._errors import ConfigError
from .._params import StormConfig

__all__ = ["check_limits", "check_listeners"]

#: Resident bytes per ASGI virtual user waiting on I/O (measured ≈ 18.6 KB, rounded up).
ASGI_USER_BYTES = 24 * 1024
#: Resident bytes per closed-model user of the WSGI pool (a token in a queue; rounded up).
WSGI_USER_BYTES = 1024
#: Resident bytes per worker thread (its Python frame and a touched stack; rounded up).
THREAD_BYTES = 256 * 1024
#: Share of the available memory a storm may plan to use.
MEMORY_SHARE = 0.5
#: Arrivals per second one loop can schedule at all (≈ 1 µs each, far above any useful rate).
MAX_RATE = 1_000_000.0
#: Worker threads per process: past ~50 threads a pool measures the interpreter lock, and
#: the operating system's own limits come long before this one matters.
MAX_THREADS = 10_000
#: Open files kept free for everything else (logs, the server's own files).
_FILES_SPARE = 200
#: Longest per-request timeout, ms (a day): beyond it, deadlines overflow the clock.
MAX_TIMEOUT_MS = 86_400_000.0


def _proc_bytes(path: str, key: str) -> int | None:
    """A ``key: N kB`` figure of a /proc file, in bytes (None where it cannot be read)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _available_memory() -> int | None:
    return _proc_bytes("/proc/meminfo", "MemAvailable")


def _stack_bytes() -> int:
    """Address space one new thread reserves for its stack (glibc: the stack rlimit, 8 MiB
    when unlimited, or what ``threading.stack_size`` set)."""
    chosen = threading.stack_size()
    if chosen:
        return chosen
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    return 8 * 2**20 if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


def _address_space_used() -> int:
    return _proc_bytes("/proc/self/status", "VmSize") or 0


def _thread_room() -> tuple[int, str]:
    """Threads this process may still start, by the tightest limit known, and that limit."""
    room, limit = MAX_THREADS, f"at most {MAX_THREADS:,} threads per storm"
    current = threading.active_count()

    def tighter(candidate: int, what: str) -> None:
        nonlocal room, limit
        if candidate < room:
            room, limit = candidate, what

    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY:
        tighter(soft - current, "ulimit -u")
    for path in ("/sys/fs/cgroup/pids.max", "/proc/sys/kernel/threads-max"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            tighter(int(text) - current, path)
    # Each thread reserves its whole stack in the address space, touched or not.
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        stack = _stack_bytes()
        tighter(
            (soft - _address_space_used()) // stack,
            f"ulimit -v: {soft / 2**20:,.0f} MB of address space, {stack / 2**20:g} MB of stack "
            "per thread",
        )
    return max(0, room), limit


def _where(config: StormConfig, name: str) -> str:
    return f"{name}={getattr(config, name)!r} (from {config.origin_of(name)})"


def _open_files() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def check_limits(config: StormConfig, interface: str, *, real_server: bool = False) -> None:
    """Raise :class:`ConfigError` for a storm this machine cannot carry."""
    if config.timeout_ms > MAX_TIMEOUT_MS:
        raise ConfigError(
            f"{_where(config, 'timeout_ms')} is longer than a day ({MAX_TIMEOUT_MS:,.0f} ms)"
        )
    peak = max([config.rate or 0.0, *(target for _, target in config.stages)])
    if config.rate is not None:
        name = "stages" if config.stages else "rate"
        if peak > MAX_RATE:
            raise ConfigError(
                f"{name} asks for {peak:,.0f} arrivals per second; one load generator schedules "
                f"at most {MAX_RATE:,.0f} (spread the storm with processes=, or lower the rate)"
            )
        users = config.max_in_flight
        unit = "in_flight_cap"
    else:
        users = max(config.users, math.ceil(peak))
        unit = "stages" if config.stages and peak > config.users else "users"
    if real_server:
        # One loopback connection per user costs two descriptors (client and server).
        files = _open_files()
        if files is not None and 2 * users + _FILES_SPARE > files:
            raise ConfigError(
                f"{unit}={users:,} over real connections needs ≈{2 * users + _FILES_SPARE:,} open "
                f"files (two per loopback connection) but this process may open {files:,} "
                "(ulimit -n): raise the limit or lower the load"
            )
    per_user = ASGI_USER_BYTES if interface == "asgi" or real_server else WSGI_USER_BYTES
    threads = config.workers * config.threads if interface == "wsgi" and not real_server else 0
    room, limit = _thread_room()
    if threads > room:
        raise ConfigError(
            f"workers={config.workers} × threads={config.threads} (from "
            f"{config.origin_of('workers')}) asks for {threads:,} threads; this process may "
            f"start about {room:,} more ({limit})"
        )
    needed = users * per_user + threads * THREAD_BYTES
    available = _available_memory()
    if available is not None and needed > MEMORY_SHARE * available:
        raise ConfigError(
            f"{unit}={users:,} would need ≈{needed / 2**20:,.0f} MB "
            f"(≈{per_user / 1024:.0f} KB per user"
            + (f", {THREAD_BYTES // 1024} KB per thread" if threads else "")
            + f"), more than half of the {available / 2**20:,.0f} MB available"
        )
    if config.think is not None:
        try:
            draw = config.think.sample(random.Random(0))
        except Exception as exc:
            raise ConfigError(
                f"{_where(config, 'think_ms')} raised {type(exc).__name__}: {exc} when sampled"
            ) from exc
        if isinstance(draw, bool) or not isinstance(draw, int | float) or math.isnan(draw):
            raise ConfigError(
                f"think_ms={config.think!r} (from {config.origin_of('think_ms')}) drew {draw!r}; "
                "a think-time distribution must draw a number of seconds"
            )
    if (
        config.ramp
        and config.duration is not None
        and config.ramp > config.warmup + config.duration
    ):
        raise ConfigError(
            f"{_where(config, 'ramp')} is longer than the storm ({config.warmup + config.duration:g} s): "
            "most users would never start"
        )


def check_listeners(listeners: int, origin: str, *, real_server: bool = False) -> None:
    """Raise :class:`ConfigError` for more listen-only connections than the machine can hold."""
    if real_server:
        files = _open_files()
        if files is not None and 2 * listeners + _FILES_SPARE > files:
            raise ConfigError(
                f"listeners={listeners:,} (from {origin}) over real connections needs "
                f"≈{2 * listeners + _FILES_SPARE:,} open files (two per loopback connection) but "
                f"this process may open {files:,} (ulimit -n): raise the limit or lower the room"
            )
    needed = listeners * ASGI_USER_BYTES
    available = _available_memory()
    if available is not None and needed > MEMORY_SHARE * available:
        raise ConfigError(
            f"listeners={listeners:,} (from {origin}) would need ≈{needed / 2**20:,.0f} MB "
            f"(≈{ASGI_USER_BYTES / 1024:.0f} KB per connection), more than half of the "
            f"{available / 2**20:,.0f} MB available"
        )
