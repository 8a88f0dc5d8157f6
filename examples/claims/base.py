"""What every claim shares: verdicts, the claim row, the demo's sizes and its storms."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from examples.fastapi_app import IO_SECONDS
from pytest_concurrency import StormResult, run_storm
from pytest_concurrency._report._records import StormRecord
from pytest_concurrency._report._text import format_number

__all__ = [
    "EXAMPLES",
    "HOLDS",
    "IO_WAIT_MS",
    "NOT_HERE",
    "PARTLY",
    "WSGI_WORKERS",
    "ClaimRow",
    "Demo",
    "DemoSettings",
    "DemoStorm",
    "Judgement",
    "available_memory_mb",
    "count",
    "format_number",
    "peak_rss_growth",
    "rounded",
    "users_text",
]

HOLDS = "holds"
PARTLY = "holds partly"
NOT_HERE = "does not hold here"

#: Every /io endpoint of the examples waits this long on simulated I/O (the apps' own figure).
IO_WAIT_MS = IO_SECONDS * 1000
#: WSGI server model of the storms on sync apps: gunicorn with this many sync workers.
WSGI_WORKERS = 8

#: The example apps the claims storm: framework -> (module, attribute).
EXAMPLES: dict[str, tuple[str, str]] = {
    "FastAPI": ("examples.fastapi_app", "app"),
    "Starlette": ("examples.starlette_app", "app"),
    "Flask": ("examples.flask_app", "app"),
    "Django ASGI": ("examples.django_app", "asgi_app"),
    "Django WSGI": ("examples.django_app", "wsgi_app"),
}


@dataclass(frozen=True)
class Judgement:
    """A verdict and the reason for it, computed from measured figures."""

    verdict: str
    reason: str


@dataclass
class ClaimRow:
    """One claim: what it says, where it is read, the scenario, the figures and the verdict."""

    number: str
    claim: str
    source: str
    scenario: str
    figures: list[str]
    judgement: Judgement
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        """``holds``, ``holds partly`` or ``does not hold here``."""
        return self.judgement.verdict

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "number": self.number,
            "claim": self.claim,
            "source": self.source,
            "scenario": self.scenario,
            "figures": self.figures,
            "verdict": self.judgement.verdict,
            "reason": self.judgement.reason,
            "notes": self.notes,
            "measured": self.data,
            "seconds": round(self.seconds, 1),
        }


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo's storms: the full run (≈ 2 min) or ``--quick`` (under a minute)."""

    quick: bool
    duration: float
    warmup: float
    capacity_workers: range
    scale_users: tuple[int, ...]
    scale_duration: float
    claimed_scale: bool
    """Storm FastAPI at the articles' own scale (claim 2) when memory allows."""
    blocking_duration: float

    @classmethod
    def full_run(cls) -> DemoSettings:
        """The settings of ``make demo``."""
        return cls(
            quick=False,
            duration=2.5,
            warmup=0.3,
            capacity_workers=range(1, 65),
            scale_users=(100, 1_000, 5_000, 10_000),
            scale_duration=2.0,
            claimed_scale=True,
            blocking_duration=2.5,
        )

    @classmethod
    def quick_run(cls) -> DemoSettings:
        """The settings of ``python -m examples.claims --quick``."""
        return cls(
            quick=True,
            duration=0.6,
            warmup=0.2,
            capacity_workers=range(1, 33),
            scale_users=(100, 1_000, 5_000),
            scale_duration=0.6,
            claimed_scale=False,
            blocking_duration=1.0,
        )


@dataclass
class DemoStorm:
    """One storm of the demo, the claim it served and how much memory it took."""

    claim: str
    framework: str
    result: StormResult
    rss_growth_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (histograms left out)."""
        return {
            "claim": self.claim,
            "framework": self.framework,
            "rss_growth_mb": self.rss_growth_mb,
            "storm": self.result.to_dict(histograms=False),
        }

    def record(self) -> StormRecord:
        """The storm as a row of the library's storms table, named by claim and framework."""
        data = self.result.to_dict(histograms=False)
        if self.rss_growth_mb is not None:
            data["rss_growth_mb"] = self.rss_growth_mb
        return StormRecord(f"{self.claim} {self.framework}", 0, data, self.result)


def rounded(value: float) -> str:
    """*value* to the unit, as ``format_number`` writes it; ∞ and NaN (not measured) as such."""
    # round() raises on both, and a scale storm that completed no request has an infinite p99.
    return format_number(round(value)) if math.isfinite(value) else format_number(value)


def users_text(n: int) -> str:
    """``5,000``: a user count as the claims write it."""
    return f"{n:,}"


def count(n: int, noun: str) -> str:
    """``1 thread`` / ``12 threads``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _status_kb(name: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return float(line.split()[1])
    return None


def available_memory_mb() -> float | None:
    """Memory the kernel says is available to new allocations (Linux), in MB."""
    try:
        text = Path("/proc/meminfo").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return float(line.split()[1]) / 1024
    return None


@contextmanager
def peak_rss_growth() -> Iterator[list[float]]:
    """Yield a list that receives the growth of resident memory (MB) at the peak of the block.

    Linux only: writing 5 to ``/proc/self/clear_refs`` resets the process's peak (VmHWM),
    so the peak of each storm is its own and not the largest of the run so far. Elsewhere
    the list stays empty.
    """
    found: list[float] = []
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        yield found
        return
    base = _status_kb("VmRSS")
    yield found
    peak = _status_kb("VmHWM")
    if base is not None and peak is not None:
        found.append(max(0.0, (peak - base) / 1024))


class Demo:
    """The claims' shared runner: loads each example once and keeps every storm for the report."""

    def __init__(self, settings: DemoSettings, progress: Callable[[str], None]) -> None:
        self.settings = settings
        self.progress = progress
        self.apps: dict[str, Any] = {}
        self.storms: list[DemoStorm] = []

    def app(self, framework: str) -> Any:
        """The example app of *framework*, imported on first use (Django sets itself up then)."""
        if framework not in self.apps:
            module, attr = EXAMPLES[framework]
            self.apps[framework] = getattr(importlib.import_module(module), attr)
        return self.apps[framework]

    def storm(
        self,
        claim: str,
        framework: str,
        method: str | None = None,
        path: str | None = None,
        **params: Any,
    ) -> DemoStorm:
        """Storm *framework*'s example (budgets not enforced), measure its memory, keep it."""
        label = path or (params["requests"][0].label if "requests" in params else "?")
        users = params.get("users", 10)
        self.progress(f"  claim {claim}: {framework} {label}, {users:,} users")
        params.setdefault("seed", 1)
        app = params.pop("app", None) or self.app(framework)
        with peak_rss_growth() as growth:
            result = run_storm(app, method, path, check=False, **params)
        record = DemoStorm(claim, framework, result, growth[0] if growth else None)
        self.storms.append(record)
        return record

    def keep(self, claim: str, framework: str, result: StormResult) -> None:
        """Keep a storm fired elsewhere (a capacity search's) for the storms table."""
        self.storms.append(DemoStorm(claim, framework, result))
