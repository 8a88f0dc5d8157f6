"""CPU and memory of a server's process tree (and of the client) sampled during a storm."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .._model.extras import ServerUsage

__all__ = ["ResourceSampler", "ResourceUsage"]


#: What the sampler saw: the result keeps it as ``server_usage``.
ResourceUsage = ServerUsage


class ResourceSampler:
    """Samples a process tree every *interval* seconds in a thread, between start() and stop().

    *pids* is called at each sample, so that workers a server restarts are followed.
    CPU is the change of user+system time of every process over the interval, summed
    over the tree; the client's CPU is this process's own, over the whole window.
    """

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.1) -> None:
        import psutil

        self._psutil = psutil
        self._pids = pids
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._procs: dict[int, Any] = {}
        self._last: dict[int, float] = {}
        self._cpu: list[float] = []
        self._rss_peak = 0
        self._started = 0.0
        self._client_cpu0 = 0.0
        self.usage: ResourceUsage | None = None

    def start(self) -> ResourceSampler:
        """Begin sampling in a daemon thread."""
        self._started = time.perf_counter()
        self._client_cpu0 = time.process_time()
        self._sample_cpu()  # baseline for the first interval
        self._thread = threading.Thread(target=self._run, name="pytest-storm-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> ResourceUsage:
        """Stop sampling and return the figures."""
        if self.usage is not None:
            return self.usage
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        seconds = max(time.perf_counter() - self._started, 1e-9)
        client = (time.process_time() - self._client_cpu0) / seconds
        cpu = self._cpu
        self.usage = ResourceUsage(
            server_cpu_mean=sum(cpu) / len(cpu) if cpu else 0.0,
            server_cpu_peak=max(cpu, default=0.0),
            server_rss_peak=self._rss_peak,
            client_cpu_mean=client,
            samples=len(cpu),
            seconds=seconds,
        )
        return self.usage

    def __enter__(self) -> ResourceSampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.wait(self.interval):
            now = time.perf_counter()
            used = self._sample_cpu()
            self._cpu.append(used / max(now - last, 1e-9))
            last = now
        # A storm shorter than one interval still gets one sample: the span since the last.
        now = time.perf_counter()
        if not self._cpu or now - last > self.interval / 10:
            self._cpu.append(self._sample_cpu() / max(now - last, 1e-9))

    def _sample_cpu(self) -> float:
        """CPU seconds used by the tree since the previous sample; updates the RSS peak."""
        psutil = self._psutil
        used = 0.0
        rss = 0
        current = set(self._pids())
        for pid in current:
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                with proc.oneshot():
                    times = proc.cpu_times()
                    total = times.user + times.system
                    rss += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._procs.pop(pid, None)
                self._last.pop(pid, None)
                continue
            previous = self._last.get(pid)
            # A process first seen now counts from its own start, not from zero at our start.
            used += total - previous if previous is not None else 0.0
            self._last[pid] = total
        for pid in list(self._procs):
            if pid not in current:
                self._procs.pop(pid, None)
                self._last.pop(pid, None)
        self._rss_peak = max(self._rss_peak, rss)
        return used
