"""Terminal output: the storms table, a statement of this machine's timer noise, a live line.

The noise itself is measured in ``_probes.noise``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TextIO

from .._model.remarks import contention_summary, is_contention_note
from .._probes.noise import noise_figures
from ._records import StormRecord, StormRow, as_records, comparison_of
from ._text import aligned, format_number

__all__ = [
    "LiveProgress",
    "compared_with",
    "comparison_cell",
    "noise_figures",
    "noise_statement",
    "storm_notes",
    "storms_table",
    "users_cell",
    "verdict_cell",
]


def users_cell(d: Mapping[str, Any]) -> str:
    """A closed storm's users; an open one's arrival rate (it has no users)."""
    rate = d.get("rate")
    if d.get("model") == "open" and isinstance(rate, int | float):
        return f"{rate:,.6g}/s"
    return f"{d.get('users', 0):,}"


def _cell(value: Any, fmt: Callable[[float], str] = format_number) -> str:
    return fmt(float(value)) if isinstance(value, int | float) else "n/a"


def _endpoint_verdict(name: str, verdicts: Sequence[Mapping[str, Any]]) -> str:
    """``pass``/``FAIL p99_ms`` from the endpoint's own budgets (named ``"GET /a p99_ms"``)."""
    own = [v for v in verdicts if str(v.get("name", "")).startswith(name + " ")]
    if not own:
        return ""
    failed = [str(v["name"])[len(name) + 1 :] for v in own if not v.get("ok", True)]
    return "FAIL " + ",".join(failed) if failed else "pass"


def compared_with(comparison: Mapping[str, Any]) -> str:
    """``vs control`` for a paired comparison, ``vs baseline`` for a saved baseline's."""
    return "vs baseline" if comparison.get("mode") == "saved" else "vs control"


def verdict_cell(failed: Sequence[str], comparison: Mapping[str, Any] | None) -> str:
    """``pass`` / ``FAIL p99_ms`` / ``FAIL vs control`` or ``FAIL vs baseline`` (a regression
    that failed the test)."""
    if (
        comparison is not None
        and comparison.get("fails")
        and comparison.get("verdict") == "regressed"
    ):
        failed = [*failed, compared_with(comparison)]
    return "FAIL " + ",".join(failed) if failed else "pass"


def comparison_cell(comparison: Mapping[str, Any] | None) -> str:
    """The paired verdict and the change it rests on, such as ``regressed: cpu +21.4%``."""
    if comparison is None:
        return ""
    verdict = str(comparison.get("verdict", ""))
    figures = [f for f in comparison.get("figures") or [] if isinstance(f, Mapping)]
    ranked = [f for f in figures if f.get("verdict") == verdict] or figures
    for figure in ranked:
        change = figure.get("change") or {}
        ratio = change.get("ratio")
        if isinstance(ratio, int | float):
            shown = f"{(ratio - 1) * 100:+.1f}%".replace("-", "−")
            return f"{verdict}: {figure.get('figure')} {shown}"
    return verdict


def storms_table(
    rows: Sequence[StormRow | StormRecord], *, first_header: str = "test"
) -> list[str]:
    """One line per storm (test, storm, app, users, requests, rps, p50/p99/max, errors, verdict),
    and under a request mix one indented line per endpoint with its own figures and budgets.

    *first_header* names the first column (the records' node ids) for callers whose storms
    are not tests. A ``+RSS MB`` column is added when some record's data carries
    ``rss_growth_mb`` (resident-memory growth over the storm, which the caller measures).
    """
    records = as_records(rows)
    memory = any("rss_growth_mb" in record.data for record in records)
    blocks = [b for b in (comparison_of(record.data) for record in records) if b is not None]
    compared = bool(blocks)
    header = (
        first_header,
        "storm",
        "app",
        "users",
        "requests",
        "rps",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "saturation",
        "verdict",
    ) + (("+RSS MB",) if memory else ())
    if compared:
        header += (compared_with(blocks[0]),)
    table = [header]
    for record in records:
        d = record.data
        latency = d.get("latency") or {}
        pool = d.get("pool")
        verdicts = d.get("verdicts") or []
        failed = [v["name"] for v in verdicts if not v.get("ok", True)]
        table.append(
            (
                record.nodeid,
                record.label,
                f"{d.get('interface', '')} {d.get('server', '')}".strip(),
                users_cell(d),
                f"{d.get('requests', 0):,}",
                _cell(d.get("throughput")),
                _cell(latency.get("p50")),
                _cell(latency.get("p99")),
                _cell(latency.get("max")),
                _cell(d.get("error_rate"), lambda v: f"{v:.1%}"),
                _cell(pool.get("saturation"), lambda v: f"{v:.0%}") if pool else "-",
                verdict_cell(failed, comparison_of(d)),
            )
            + ((_cell(d.get("rss_growth_mb"), lambda v: f"{v:,.0f}"),) if memory else ())
            + ((comparison_cell(comparison_of(d)),) if compared else ())
        )
        endpoints: Mapping[str, Mapping[str, Any]] = d.get("endpoints") or {}
        for name, endpoint in endpoints.items():
            lat = endpoint.get("latency") or {}
            count = int(endpoint.get("requests") or 0)
            errors = int(endpoint.get("errors") or 0)
            table.append(
                (
                    "",
                    "  " + name,
                    "",
                    "",
                    f"{count:,}",
                    _cell(endpoint.get("throughput")),
                    _cell(lat.get("p50")),
                    _cell(lat.get("p99")),
                    _cell(lat.get("max")),
                    f"{errors / count:.1%}" if count else "n/a",
                    "",
                    _endpoint_verdict(name, verdicts),
                )
                + (("",) if memory else ())
            )
    return aligned(table, right=[*range(3, 11), 12])


def storm_notes(rows: Sequence[StormRow | StormRecord]) -> list[str]:
    """The notes of every storm, one line each, to print under the storms table.

    The note that the machine's other threads kept a storm waiting for a CPU is about the
    machine, not the storm: said by several storms, it is one line for all of them (each
    result keeps its own).
    """
    lines = []
    contended: list[tuple[StormRecord, str]] = []
    for record in as_records(rows):
        # A storm saved before notes existed has none.
        for note in record.data.get("notes") or []:
            if is_contention_note(str(note)):
                contended.append((record, str(note)))
            else:
                lines.append(f"note: {record.title}: {note}")
    if len(contended) == 1:
        record, note = contended[0]
        lines.append(f"note: {record.title}: {note}")
    elif contended:
        shares = [_wait_share(record) for record, _ in contended]
        known = [share for share in shares if share is not None]
        lines.append(f"note: {contention_summary(len(contended), known)}")
    return lines


def _wait_share(record: StormRecord) -> float | None:
    extras = record.data.get("extras")
    measured = extras.get("cpu_contention") if isinstance(extras, Mapping) else None
    share = measured.get("wait_share") if isinstance(measured, Mapping) else None
    return float(share) if isinstance(share, int | float) else None


def noise_statement() -> str:
    """One sentence on this machine's timer and scheduler noise, from :func:`noise_figures`."""
    f = noise_figures()
    floor = max(f["sleep_p99_ms"], f["asyncio_p99_ms"])
    return (
        f"timer noise on this machine: {int(f['samples'])} × 1 ms sleeps overshoot by "
        f"{f['sleep_p50_ms']:.2f} ms at p50 and {f['sleep_p99_ms']:.2f} ms at p99 (time.sleep), "
        f"{f['asyncio_p50_ms']:.2f} ms and {f['asyncio_p99_ms']:.2f} ms (asyncio.sleep), "
        f"so latency differences under {floor:.2f} ms are within noise."
    )


def _progress_wanted(stream: TextIO) -> bool:
    # A rewritten line is noise in a CI log and garbage in a file or a pipe.
    if os.environ.get("CI") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


class LiveProgress:
    """A single live status line for a running storm, rewritten in place on a terminal.

    *snapshot* returns the storm's figures so far; the keys shown when present are
    ``elapsed`` (s), ``requests``, ``rps``, ``p99_ms``, ``in_flight`` and ``errors``.
    It is called from a daemon thread, at most four times a second, so it must be cheap
    and thread-safe. The line is cleared on :meth:`stop`. Nothing is shown when ``CI``
    is set or *stream* is not a terminal.
    """

    MIN_INTERVAL = 0.25

    def __init__(
        self,
        snapshot: Callable[[], Mapping[str, Any]],
        *,
        label: str = "storm",
        total: float | None = None,
        stream: TextIO | None = None,
        interval: float = MIN_INTERVAL,
        enabled: bool | None = None,
        capture: Any = None,
    ) -> None:
        # pytest's capture manager, when output is captured: each refresh briefly lets the
        # line through to the real terminal, the way pytest's own reporter does.
        self._capture = capture
        self._snapshot = snapshot
        self._label = label
        self._total = total
        self._stream: TextIO = stream if stream is not None else sys.stderr
        self._interval = max(interval, self.MIN_INTERVAL)
        with self._uncaptured():
            self.enabled = _progress_wanted(self._stream) if enabled is None else enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = 0

    def render(self, figures: Mapping[str, Any]) -> str:
        """The status line for *figures* (without the carriage return)."""
        parts = [self._label]
        elapsed = figures.get("elapsed")
        if isinstance(elapsed, int | float):
            total = f"/{self._total:.1f}" if self._total else ""
            parts.append(f"{elapsed:.1f}{total} s")
        if isinstance(figures.get("requests"), int):
            parts.append(f"{figures['requests']:,} requests")
        if isinstance(figures.get("rps"), int | float):
            parts.append(f"{format_number(round(figures['rps']))} rps")
        if isinstance(figures.get("p99_ms"), int | float):
            parts.append(f"p99 {format_number(figures['p99_ms'])} ms")
        if isinstance(figures.get("in_flight"), int):
            parts.append(f"{figures['in_flight']:,} in flight")
        if isinstance(figures.get("errors"), int):
            parts.append(f"{figures['errors']:,} errors")
        return "  ".join(parts)

    def _uncaptured(self) -> Any:
        if self._capture is None:
            return contextlib.nullcontext()
        return self._capture.global_and_fixture_disabled()

    def _write(self, text: str) -> None:
        # Wider than the terminal would wrap, and \r only returns to the last row.
        width = shutil.get_terminal_size((80, 24)).columns - 1
        line = text[:width]
        padding = " " * max(0, self._shown - len(line))
        with self._uncaptured():
            self._stream.write("\r" + line + padding)
            self._stream.flush()
        self._shown = len(line)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._write(self.render(self._snapshot()))
            except Exception:
                # The live line is a courtesy: it must never break or slow the storm.
                return

    def start(self) -> LiveProgress:
        """Start refreshing the line (no-op when disabled)."""
        if self.enabled and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="pytest-storm-progress", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop refreshing, wait for the thread, and clear the line."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join()
        if self._shown:
            try:
                with self._uncaptured():
                    self._stream.write("\r" + " " * self._shown + "\r")
                    self._stream.flush()
            except (OSError, ValueError):
                pass
            self._shown = 0

    def __enter__(self) -> LiveProgress:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
