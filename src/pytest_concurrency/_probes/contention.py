"""How long a storm's threads waited for a CPU while they were ready to run.

On a shared machine other processes take CPU from a storm, and every figure that
depends on CPU (latency of a CPU-bound handler, throughput, loop lag) reads worse
than the code deserves. Linux keeps, per thread, the time it ran and the time it sat
runnable on a run queue (``/proc/<pid>/task/<tid>/schedstat``: run ns, wait ns,
timeslices). Summed over the process's threads across a round, ``wait / (run + wait)``
is the share of the storm's CPU demand the machine did not serve at once — measured,
not guessed from a load average. Elsewhere (no ``schedstat``) nothing is measured.

Threads that end before the round does take their figures with them, so this suits a
round on an event loop (the loop thread and the thread pools outlive it), not the WSGI
pool, whose worker threads end with the round.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Contention", "CpuContention"]


@dataclass(frozen=True)
class Contention:
    """CPU run time and run-queue wait of the process's threads over one round."""

    run_s: float
    wait_s: float

    @property
    def wait_share(self) -> float:
        """Share of the time the threads were ready to run that they spent waiting for a CPU."""
        ready = self.run_s + self.wait_s
        return self.wait_s / ready if ready > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        """Plain data for ``result.extras["cpu_contention"]``."""
        return {
            "run_s": round(self.run_s, 6),
            "wait_s": round(self.wait_s, 6),
            "wait_share": round(self.wait_share, 4),
        }


def _read() -> dict[str, tuple[int, int]] | None:
    tasks = Path(f"/proc/{os.getpid()}/task")  # the pid of this process, forked shards included
    try:
        names = os.listdir(tasks)
    except OSError:
        return None
    figures: dict[str, tuple[int, int]] = {}
    for name in names:
        try:
            run, wait, _ = (tasks / name / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
        figures[name] = (int(run), int(wait))
    return figures or None


class CpuContention:
    """Reads the threads' schedstat at :meth:`start` and :meth:`stop` of a round."""

    def __init__(self) -> None:
        self._before: dict[str, tuple[int, int]] | None = None

    def start(self) -> CpuContention:
        """Note where every thread stands now."""
        self._before = _read()
        return self

    def stop(self) -> Contention | None:
        """The run and wait time since :meth:`start`, or None where Linux does not say."""
        before, after = self._before, _read()
        if before is None or after is None:
            return None
        run = wait = 0
        for tid, (run_now, wait_now) in after.items():
            # A thread started during the round counts from zero; one that ended is lost.
            run_then, wait_then = before.get(tid, (0, 0))
            run += max(0, run_now - run_then)
            wait += max(0, wait_now - wait_then)
        return Contention(run / 1e9, wait / 1e9)
