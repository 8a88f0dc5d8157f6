"""The words of every report: numbers, verdicts, the storm headline, the failure table and
its diagnosis, and aligned text tables (a capacity search and a baseline comparison word
themselves beside their types, in ``_capacity`` and ``_baseline``, with these helpers).

Shared by the failure message of :class:`BudgetExceeded`, the terminal, the command line
and the HTML page, so a storm reads the same wherever it is shown. Everything here reads
a storm in its dict form (``StormResult.to_dict()``), which live results and storms sent
back by xdist workers or read from a saved file all have.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from .._budget import pool_verdict_name, within_noise
from .._model.probes import ConnectionPoolUsage, PoolUsage
from .._model.result import StormResult, Verdict
from .._params import FLOOR_BUDGETS
from .._spec.measures import find_pool, pools_measured
from .._spec.table import BUDGETS
from ._blocking_text import diagnose

__all__ = [
    "aligned",
    "breakdown_lines",
    "budget_failure",
    "diagnosis",
    "failure_lines",
    "fit_line",
    "format_number",
    "headline",
    "machine_line",
    "part_words",
    "side_by_side",
    "status_table",
    "unmeasured_reason",
    "verdict_table",
    "verdict_word",
]

#: Error kinds the engine records without an exception from the app.
_TIMEOUT = "Timeout"
#: How many kinds of exception and of status a failure line names before "…".
_SHOWN = 3
#: Characters of a sample response body shown in the failure table.
_SAMPLE_WIDTH = 100


def format_number(value: float | None) -> str:
    """1,412.6 / 0.02 / 160 — readable at a glance."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "∞"
    if value == int(value) and abs(value) >= 1:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    if abs(value) >= 1:
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def fit_line(head: str, parts: Sequence[str], tail: str, limit: int, *, keep: int = 0) -> str:
    """*head*, *parts* joined by ``, `` and *tail* in at most *limit* characters: parts are
    dropped from the end (``, …`` in their place) down to *keep*, and a line still too long
    is cut with ``…``."""
    kept = list(parts)
    body = ", ".join(kept)
    while len(kept) > keep and len(head) + len(body) + len(tail) > limit:
        kept.pop()
        body = ", ".join(kept) + ", …"
    line = head + body + tail
    return line if len(line) <= limit else line[: limit - 1] + "…"


def aligned(rows: Sequence[Sequence[str]], *, right: Collection[int] = ()) -> list[str]:
    """Rows as lines of aligned columns: columns in *right* right-justified, the rest left."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


def _is_floor(name: str) -> bool:
    # An endpoint's budget is named "GET /a min_rps".
    return name.rsplit(" ", 1)[-1] in FLOOR_BUDGETS


def verdict_word(v: Verdict) -> str:
    """``✓``, ``✗ 14.1x over``, ``✗ 1.01x over``, ``✗ 30% short`` or ``✗ not measured``."""
    if math.isnan(v.measured):
        return "✗ not measured"
    if v.ok:
        return "✓"
    if _is_floor(v.name):
        short = 1 - v.measured / v.limit if v.limit else 1.0
        return f"✗ {short:.0%} short"
    if v.limit == 0:
        return "✗ over"
    ratio = v.ratio
    # One decimal would call 202.8 against 200 "1.0x over": near the limit, show two.
    return f"✗ {ratio:.2f}x over" if ratio < 1.1 else f"✗ {ratio:.1f}x over"


def headline(data: Mapping[str, Any]) -> str:
    """``storm GET /io on app (WSGI, 8 sync workers) — 50 users, 3.0 s, 480 requests``."""
    load = (
        f"{float(data.get('rate') or 0):g} arrivals/s"
        if data.get("model") == "open"
        else f"{int(data.get('users') or 0):,} users"
    )
    return (
        f"storm {data.get('label', '')} on {data.get('app', '')} ({data.get('interface', '')}, "
        f"{data.get('server', '')}) — {load}, "
        f"{float(data.get('duration') or 0):.1f} s, {int(data.get('requests') or 0):,} requests"
    )


def _error_message(kind: str, error: Mapping[str, Any]) -> str:
    """``TypeError: message`` from the example traceback, else the kind alone."""
    lines = [line.strip() for line in str(error.get("example") or "").splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if last.startswith(kind.rsplit(".", 1)[-1]) and len(last) > len(kind):
        return last if len(last) <= 120 else last[:119] + "…"
    return kind


def failure_lines(data: Mapping[str, Any]) -> list[str]:
    """What failed: requests that raised, timed out, and responses with status ≥ 400.

    Built from ``errors`` and ``status_counts``. An engine that also counts an exception
    as a status 500 shows it once, as raised: the 500s beyond the requests that got a
    response are those exceptions.
    """
    failed = int(data.get("failed") or 0)
    if not failed:
        return []
    errors: Mapping[str, Mapping[str, Any]] = data.get("errors") or {}
    statuses = {int(k): int(n) for k, n in (data.get("status_counts") or {}).items()}
    requests = int(data.get("requests") or 0)
    timeouts = int(data.get("timeouts") or 0)
    raised = {k: e for k, e in errors.items() if k != _TIMEOUT}
    raised_count = sum(int(e.get("count", 0)) for e in raised.values())
    counted_twice = sum(statuses.values()) + timeouts - (requests - raised_count)
    if counted_twice > 0 and 500 in statuses:
        statuses[500] -= min(counted_twice, statuses[500])
    bad = {s: n for s, n in sorted(statuses.items()) if s >= 400 and n}
    parts = [f"{failed:,} failed ({float(data.get('error_rate') or 0):.1%})"]
    if raised_count:
        kinds = sorted(raised.items(), key=lambda item: -int(item[1].get("count", 0)))
        shown = "; ".join(
            f"{_error_message(kind, e)} ×{int(e.get('count', 0)):,}" for kind, e in kinds[:_SHOWN]
        )
        more = " …" if len(kinds) > _SHOWN else ""
        parts.append(f"{_plural(raised_count, 'request')} raised ({shown}{more})")
    if timeouts:
        parts.append(f"{_plural(timeouts, 'request')} timed out")
    if bad:
        listed = ", ".join(f"{s} ×{n:,}" for s, n in list(bad.items())[:_SHOWN])
        more = " …" if len(bad) > _SHOWN else ""
        parts.append(f"{_plural(sum(bad.values()), 'response')} with status ≥ 400 ({listed}{more})")
    return ["; ".join(parts)]


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _pool_line(data: Mapping[str, Any]) -> list[str]:
    pool = data.get("pool")
    if not pool or not data.get("requests"):
        return []
    return [
        f"workers were saturated {float(pool.get('saturation') or 0):.0%} of the time "
        f"(all {pool.get('size')} busy with requests queued; "
        f"{float(pool.get('mean_busy') or 0):.1f} busy on average); mean queue wait "
        f"{format_number(pool.get('mean_queue_ms'))} ms "
        f"({float(pool.get('queue_share') or 0):.0%} of latency)"
    ]


#: Parts of a breakdown below this share are left out of its line.
_SMALLEST_PART = 0.01
#: Parts a breakdown line names at most (the rest are summed as "other").
_PARTS_SHOWN = 4


def part_words(kind: str, name: str) -> str:
    """What a part of a request's time was spent on, in words."""
    if kind == "worker":
        return (
            f"waiting for a thread of the {name}"
            if "thread" in name or "executor" in name
            else (f"waiting for one of {name}")
        )
    if kind == "pool":
        return f"waiting for a connection from {name}"
    if kind == "connect":
        return f"opening {name} connections"
    if kind == "upstream":
        return f"waiting on {name}"
    if kind == "proxy":
        return f"delayed by the proxy {name}"
    if kind == "loop":
        return "waiting for the event loop (held by other requests)"
    if kind == "service":
        return "in the app (its own code and awaits)"
    return f"{kind} {name}".strip()


def _breakdown_line(band: Mapping[str, Any], side: str) -> str:
    parts = [p for p in band.get("parts") or () if float(p.get("share") or 0) >= _SMALLEST_PART]
    shown = parts[:_PARTS_SHOWN]
    words = [f"{float(p['share']):.0%} {part_words(str(p['kind']), str(p['name']))}" for p in shown]
    rest = sum(float(p.get("share") or 0) for p in (band.get("parts") or ())[len(shown) :])
    if rest >= _SMALLEST_PART:
        words.append(f"{rest:.0%} other")
    where = " in the server's app" if side == "server" else ""
    return (
        f"{band.get('label')} requests{where} ({format_number(band.get('latency_ms'))} ms, "
        f"{int(band.get('requests') or 0):,} of them): {', '.join(words)}"
    )


def breakdown_lines(data: Mapping[str, Any]) -> list[str]:
    """Where the p50 and p99 requests' time went, one line each (in-process storms)."""
    attribution = data.get("attribution")
    if not attribution or not data.get("requests"):
        return []
    side = str(attribution.get("side") or "storm")
    return [_breakdown_line(band, side) for band in attribution.get("bands") or ()]


def diagnosis(
    data: Mapping[str, Any], result: StormResult | None = None, *, remarks: bool = True
) -> list[str]:
    """Lines that say why the figures are what they are, then the storm's warnings and
    notes (unless *remarks* is False: the caller shows them its own way).

    What blocked the event loop needs the live *result*; a storm known only as a dict
    (from an xdist worker or a file) is diagnosed without it.
    """
    lines = _pool_line(data) + breakdown_lines(data) + failure_lines(data)
    if result is None:
        # Known only as a dict: the connection pools describe themselves from it.
        connections = [
            ConnectionPoolUsage.from_dict(c)
            for c in data.get("connection_pools") or []
            if isinstance(c, Mapping)
        ]
        latency = data.get("latency") or {}
        p50 = latency.get("p50") if isinstance(latency, Mapping) else None
        lines.extend(diagnose(None, [], connections, float(p50) if p50 is not None else None))
    if result is not None:
        lines.extend(
            diagnose(
                result.loop_lag,
                result.thread_pools,
                result.connection_pools,
                result.latency.p50 if result.requests else None,
            )
        )
    if not remarks:
        return lines
    lines.extend(str(w) for w in data.get("warnings") or [])
    # A storm saved before notes existed has none: .get, not [].
    lines.extend(f"note: {n}" for n in data.get("notes") or [])
    return lines


def unmeasured_reason(name: str, data: Mapping[str, Any]) -> str:
    """Why budget *name* could not be measured on the storm *data* (its dict form)."""
    budget = name.rsplit(" ", 1)[-1]
    wsgi = str(data.get("interface", "")).upper() == "WSGI"
    if not data.get("requests"):
        return "no request completed in the measured window, so there is nothing to judge"
    if int(data.get("timeouts") or 0) >= int(data.get("requests") or 0):
        return (
            f"every one of the {int(data.get('requests') or 0):,} requests timed out, so no "
            "request completed and there is nothing to judge"
        )
    row = BUDGETS.get(budget)
    if row is None:
        return "the storm recorded no such figure"
    selector = name.removeprefix("pool ").removesuffix(f" {budget}")
    if row.pool is not None and name == pool_verdict_name(selector, budget):
        return _pool_unmeasured(selector, budget, data)
    if wsgi and row.unmeasured_wsgi:
        return row.unmeasured_wsgi
    if row.probed and budget in ("max_loop_lag_ms", "max_blocking_calls"):
        probes = (data.get("extras") or {}).get("server_probes") or {}
        if isinstance(probes, Mapping) and probes.get("reason"):
            return f"the probes inside the server sent no figures: {probes['reason']}"
    if budget == "p99_ratio":
        waits = (data.get("extras") or {}).get("simulated_waits") or {}
        if any(isinstance(w, Mapping) and w.get("count") for w in waits.values()):
            return "the simulated waits were 0 ms long, so no ratio to them means anything"
    return row.unmeasured


def _pool_unmeasured(selector: str, budget: str, data: Mapping[str, Any]) -> str:
    """Why the budget *budget* of the pool *selector* names was not measured."""
    pools = pools_measured(
        [PoolUsage.from_dict(p) for p in data.get("thread_pools") or ()],
        [ConnectionPoolUsage.from_dict(p) for p in data.get("connection_pools") or ()],
    )
    names, why = find_pool(selector, [p.name for p in pools])
    if not names:
        return why
    name = names[0] if len(names) == 1 else f"{selector} (every copy)"
    if budget == "max_saturation":
        return f"the pool {name!r} has no size limit: it is never full"
    if budget == "max_queue_p99_ms":
        if any(isinstance(p, PoolUsage) for p in pools if p.name in names):
            return f"the pool {name!r} recorded no wait: no request waited for one of its threads"
        return f"the pool {name!r} recorded no wait: no request took one of its connections"
    return f"the pool {name!r} recorded no such figure"


def start_hooks_failed(start: Mapping[str, Any]) -> str:
    """Which ``on_start`` hooks failed, how many times, and one example."""
    count = int(start.get("hooks_failed_count") or 0)
    kinds = start.get("hook_errors") or {}
    listed = ", ".join(f"{kind} ×{int(n):,}" for kind, n in list(kinds.items())[:_SHOWN])
    lines = str(start.get("example") or "").strip().splitlines()
    example = _one_line(lines[-1], 160) if lines else ""
    text = (
        f"{count:,} of {int(start.get('users') or count):,} users' start hooks failed "
        f"({listed}), so those users sent nothing"
    )
    return f"{text}; e.g. {example}" if example else text


def _noise_note(result: StormResult, v: Verdict, aggregate: str) -> str:
    spread = within_noise(result, v)
    if spread is None:
        return ""
    unit = "" if v.name in ("min_rps", "max_error_rate") else " ms"
    return (
        f" (within noise: over {len(result.rounds)} rounds it ranged "
        f"{format_number(spread[0])}–{format_number(spread[1])}{unit}, across the limit; "
        f"judged on the {aggregate} round)"
    )


def _one_line(text: str, width: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def status_table(data: Mapping[str, Any], *, sample_width: int = _SAMPLE_WIDTH) -> list[str]:
    """Status code → count, with one sample body per code when the storm kept some.

    Samples come from ``extras["samples"]`` (status code → body text), filled by the
    drivers' response checks where they run; without them the table has no sample column.
    """
    statuses = {int(k): int(n) for k, n in (data.get("status_counts") or {}).items()}
    timeouts = int(data.get("timeouts") or 0)
    if not statuses and not timeouts:
        return []
    extras = data.get("extras") or {}
    raw_samples = extras.get("samples") if isinstance(extras, Mapping) else None
    samples = (
        {str(k): v for k, v in raw_samples.items()} if isinstance(raw_samples, Mapping) else {}
    )
    header = ("status", "count", "sample body") if samples else ("status", "count")
    rows: list[tuple[str, ...]] = [header]
    for code, count in sorted(statuses.items()):
        row: tuple[str, ...] = (str(code), f"{count:,}")
        if samples:
            sample = samples.get(str(code))
            row += (_one_line(sample, sample_width) if sample is not None else "",)
        rows.append(row)
    if timeouts:
        rows.append(("timeout", f"{timeouts:,}", *([""] if samples else [])))
    return aligned(rows, right={1})


def egress_lines(data: Mapping[str, Any]) -> list[str]:
    """One line per refused destination: ``refused egress: host:port ×n from client at site``."""
    refused: Sequence[Mapping[str, Any]] = data.get("refused_egress") or []
    lines = [
        f"refused egress: {r.get('host')}{':' + str(r['port']) if r.get('port') else ''} "
        f"×{int(r.get('count') or 0):,} from {r.get('client')} at {r.get('site')}"
        for r in refused[:_SHOWN]
    ]
    if len(refused) > _SHOWN:
        lines.append(f"refused egress: {len(refused) - _SHOWN} more destinations")
    if refused:
        lines.append(
            "nothing leaves the machine during a storm: declare the host with upstream.route(...) "
            "or open it with allow_hosts=[...]"
        )
    return lines


def verdict_table(result: StormResult, *, indent: str = "  ", remarks: bool = True) -> str:
    """The budget table of DESIGN.md: headline, limit, measured, verdict, status codes and
    diagnosis (with the warnings and notes unless *remarks* is False).

    A budget that was not measured says why; with ``rounds=``, a limit inside the rounds'
    spread says "within noise" (the verdict still rests on the judged round).
    """
    data = result.to_dict(histograms=False)
    aggregate = str((data.get("params") or {}).get("aggregate") or "median")
    rows = [("budget", "limit", "measured", "verdict")]
    for v in result.verdicts:
        word = verdict_word(v)
        if math.isnan(v.measured):
            word += f": {unmeasured_reason(v.name, data)}"
        elif v.name == "on_start":
            word += f": {start_hooks_failed((data.get('extras') or {}).get('on_start') or {})}"
        else:
            word += _noise_note(result, v, aggregate)
        rows.append((v.name, format_number(v.limit), format_number(v.measured), word))
    lines = [
        headline(data),
        *aligned(rows),
        *status_table(data),
        *egress_lines(data),
        *diagnosis(data, result, remarks=remarks),
    ]
    return "\n".join((indent + line).rstrip() for line in lines)


def budget_failure(result: StormResult) -> str:
    """The message of :class:`BudgetExceeded`: which budgets broke, then the table."""
    broken = ", ".join(v.name for v in result.failed_verdicts)
    return f"storm broke its budget ({broken})\n{verdict_table(result)}"


def side_by_side(results: Sequence[StormResult]) -> str:
    """One column per storm, one row per figure."""
    rows: list[tuple[str, ...]] = [("", *[r.app for r in results])]

    def row(name: str, values: Iterable[str]) -> None:
        rows.append((name, *values))

    row("kind", [f"{r.interface}, {r.server}" for r in results])
    row(
        "storm",
        [
            f"{r.label}, {r.rate:g} arrivals/s"
            if r.rate is not None
            else f"{r.label}, {r.users:,} users"
            for r in results
        ],
    )
    row("requests", [f"{r.requests:,}" for r in results])
    row("rps", [format_number(r.throughput) for r in results])
    for pct in ("p50", "p90", "p99", "max"):
        row(f"{pct} ms", [format_number(getattr(r.latency, pct)) for r in results])
    row("errors", [f"{r.error_rate:.1%}" for r in results])
    row("saturation", [f"{r.saturation:.0%}" if r.saturation is not None else "-" for r in results])
    row(
        "verdict",
        [
            "pass" if r.passed else "FAIL " + ",".join(v.name for v in r.failed_verdicts)
            for r in results
        ],
    )
    return "\n".join(aligned(rows, right=range(1, len(rows[0]))))


def machine_line(machine: Mapping[str, Any]) -> str:
    """``cpython 3.12.1 on Linux-6.1-x86_64 (AMD EPYC 7B13), 8 cores`` from ``machine_info()``."""
    cpu = machine.get("cpu_model") or machine.get("machine") or "?"
    cores = machine.get("cpu_usable") or machine.get("cpu_count")
    return (
        f"{machine.get('implementation', '')} {machine.get('python', '')} on "
        f"{machine.get('platform', '')} ({cpu}), {cores} cores"
    )
