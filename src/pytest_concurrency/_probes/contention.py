"""How long a storm's threads waited for a CPU while they were ready to run.

On a shared machine other processes take CPU from a storm, and every figure that
depends on CPU (latency of a CPU-bound handler, throughput, loop lag) reads worse
than the code deserves. Linux keeps, per thread, the time it ran and the time it sat
runnable on a run queue (``/proc/<pid>/task/<tid>/schedstat``: run ns, wait ns,
timeslices). Summed over the process's threads across a round, ``wait / (run + wait)``
is the share of the storm's CPU demand the machine did not serve at once — measured,
not guessed from a load average. Elsewhere (no ``schedstat``) nothing is measured.

Threads that end before the round does take their figures with them: a thread started
for the round (the WSGI pool's workers) runs its target through :meth:`CpuContention.watch`,
which reads the thread's own figures at its start and end.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._model.extras import ContentionFigures

__all__ = ["Contention", "CpuContention"]


@dataclass(frozen=True)
class Contention:
    """CPU run time and run-queue wait of the process's threads over one round."""

    run_s: float
    wait_s: float

    @property
    def slowdown(self) -> float:
        """Ready time over run time: how much longer CPU work took than the CPU it got (≥ 1)."""
        return (self.run_s + self.wait_s) / self.run_s if self.run_s > 0 else 1.0

    @property
    def wait_share(self) -> float:
        """Share of the time the threads were ready to run that they spent waiting for a CPU."""
        ready = self.run_s + self.wait_s
        return self.wait_s / ready if ready > 0 else 0.0

    def record(self) -> ContentionFigures:
        """The figures as a result keeps them (``result.cpu_contention``)."""
        return ContentionFigures(
            run_s=round(self.run_s, 6),
            wait_s=round(self.wait_s, 6),
            wait_share=round(self.wait_share, 4),
            slowdown=round(self.slowdown, 4),
        )


def _schedstat(path: Path) -> tuple[int, int] | None:
    """A thread's run and run-queue wait in ns from its ``schedstat`` (None: unreadable)."""
    try:
        run, wait, _ = path.read_text().split()
    except (OSError, ValueError):
        return None  # no schedstat here, or a thread that ended meanwhile
    return int(run), int(wait)


def _read() -> dict[str, tuple[int, int]] | None:
    tasks = Path(f"/proc/{os.getpid()}/task")  # the pid of this process, forked shards included
    try:
        names = os.listdir(tasks)
    except OSError:
        return None
    figures = {name: _schedstat(tasks / name / "schedstat") for name in names}
    return {name: found for name, found in figures.items() if found is not None} or None


def _read_self() -> tuple[int, int] | None:
    return _schedstat(Path("/proc/thread-self/schedstat"))


class CpuContention:
    """Reads the threads' schedstat at :meth:`start` and :meth:`stop` of a round."""

    def __init__(self) -> None:
        self._before: dict[str, tuple[int, int]] | None = None
        # Threads that ran through watch(): their own figures, by thread id.
        self._watched: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def watch(self, target: Callable[..., None]) -> Callable[..., None]:
        """*target* as a thread's target whose figures count even if the thread ends first."""

        def run(*args: object) -> None:
            before = _read_self()
            try:
                target(*args)
            finally:
                after = _read_self()
                if before is not None and after is not None:
                    spent = (max(0, after[0] - before[0]), max(0, after[1] - before[1]))
                    with self._lock:
                        self._watched[str(threading.get_native_id())] = spent

        return run

    def start(self) -> CpuContention:
        """Note where every thread stands now."""
        self._before = _read()
        return self

    def stop(self) -> Contention | None:
        """The run and wait time since :meth:`start`, or None where Linux does not say."""
        before, after = self._before, _read()
        if before is None or after is None:
            return None
        with self._lock:
            watched = dict(self._watched)
        run = sum(spent[0] for spent in watched.values())
        wait = sum(spent[1] for spent in watched.values())
        for tid, (run_now, wait_now) in after.items():
            if tid in watched:
                continue  # counted by the thread itself (it may still be exiting)
            # A thread started during the round counts from zero; one that ended is lost.
            run_then, wait_then = before.get(tid, (0, 0))
            run += max(0, run_now - run_then)
            wait += max(0, wait_now - wait_then)
        return Contention(run / 1e9, wait / 1e9)
