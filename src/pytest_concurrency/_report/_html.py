"""One self-contained HTML page of a session's storms, with plotly charts (no network needed).

Plotly is the optional extra ``pytest-storm[html]``; it is imported only when a page is
written, so the plugin itself never pays for it.
"""

from __future__ import annotations

import datetime as _dt
import html
import importlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hdrh.histogram import HdrHistogram

from .._errors import ConfigError
from .._model.result import Verdict
from .._version import __version__
from ._fidelity import differences, rows_of
from ._files import write_atomic
from ._records import StormRecord, StormRow, as_records, comparison_of
from ._terminal import compared_with, comparison_cell, users_cell, verdict_cell
from ._text import diagnosis, format_number, headline, machine_line, part_words, verdict_word

__all__ = ["PERCENTILE_TICKS", "comparison_card", "percentile_curve", "render_html", "write_html"]

#: Ticks of the percentile axis: 1/(1-p) -> label.
PERCENTILE_TICKS: dict[float, str] = {
    2.0: "50%",
    10.0: "90%",
    100.0: "99%",
    1_000.0: "99.9%",
    10_000.0: "99.99%",
    100_000.0: "99.999%",
    1_000_000.0: "99.9999%",
}

_POINTS_PER_DECADE = 40
_CHART_HEIGHT = 380
_CURVES = (
    ("latency", "latency", "solid"),
    ("queue_wait", "queue wait", "dot"),
    ("service_time", "service time", "dash"),
)
_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
_CSS = """
:root { color-scheme: light; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0;
  --ok: #1a7f37; --bad: #cf222e; --bg2: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); margin: 0 auto; max-width: 1320px; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 6px; padding-top: 12px; border-top: 1px solid var(--line);
  overflow-wrap: anywhere; }
h3 { font-size: 14px; margin: 16px 0 6px; }
.muted, .headline { color: var(--muted); }
nav ol { columns: 2; margin: 8px 0; padding-left: 20px; }
nav a { overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { padding: 3px 10px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { background: var(--bg2); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: var(--ok); } .bad { color: var(--bad); font-weight: 600; }
.cards { display: flex; flex-wrap: wrap; gap: 8px; margin: 10px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px; min-width: 96px; }
.card b { display: block; font-size: 17px; font-variant-numeric: tabular-nums; }
.card span { color: var(--muted); font-size: 12px; }
.charts { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.chart { border: 1px solid var(--line); border-radius: 6px; min-width: 0; }
.wide { grid-column: 1 / -1; }
ul.diagnosis { margin: 4px 0; padding-left: 20px; }
tr.endpoint td { color: var(--muted); padding-left: 26px; }
pre { background: var(--bg2); padding: 8px; overflow-x: auto; font-size: 12px; }
.fidelity { border: 1px solid var(--line); border-radius: 6px; padding: 4px 14px 8px;
  margin: 10px 0; }
.fidelity h3 { margin-top: 8px; }
.vs { border: 1px solid var(--line); border-radius: 6px; padding: 4px 14px 8px; margin: 10px 0; }
.vs h3 { margin-top: 8px; }
.vs.regressed { border-color: var(--bad); }
.breakdown { margin: 8px 0 12px; }
.breakdown .row { display: grid; grid-template-columns: 170px 1fr; gap: 10px;
  align-items: center; margin: 3px 0; }
.breakdown .bar { display: flex; height: 18px; border-radius: 3px; overflow: hidden;
  background: var(--bg2); }
.breakdown .bar span { display: block; height: 100%; }
.breakdown .key { color: var(--muted); font-size: 12px; }
.breakdown .key i { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 10px; }
@media (max-width: 900px) { .charts { grid-template-columns: 1fr; } }
"""


def _plotly() -> SimpleNamespace:
    try:
        go = importlib.import_module("plotly.graph_objects")
        pio = importlib.import_module("plotly.io")
        offline = importlib.import_module("plotly.offline")
        subplots = importlib.import_module("plotly.subplots")
    except ImportError:
        raise ConfigError(
            "the HTML report (--concurrency-html) needs plotly, which is not installed: "
            "pip install 'pytest-storm[html]'"
        ) from None
    return SimpleNamespace(
        go=go, pio=pio, plotlyjs=offline.get_plotlyjs, make_subplots=subplots.make_subplots
    )


def _axis_end(count: int) -> float:
    # Past 1/(1-p) = count every percentile is the maximum; stop one decade on, at 99.99% or more.
    decades = max(4, min(6, math.ceil(math.log10(max(count, 1))) + 1))
    return float(10**decades)


def percentile_curve(
    histogram: HdrHistogram, *, end: float | None = None
) -> tuple[list[float], list[float]]:
    """Points ``(1/(1-p), latency ms)`` of an HDR percentile distribution, evenly spaced on a log axis."""
    count = int(histogram.get_total_count())
    if count == 0:
        return [], []
    stop = end if end is not None else _axis_end(count)
    steps = round(math.log10(stop) * _POINTS_PER_DECADE)
    xs = [10 ** (i / _POINTS_PER_DECADE) for i in range(steps + 1)]
    percentiles = [100.0 * (1.0 - 1.0 / x) for x in xs]
    # One pass over the counts for all points; get_value_at_percentile would rescan per point.
    values = histogram.get_percentile_to_value_dict(percentiles)
    return xs, [values[p] / 1000.0 for p in percentiles]


def _percentile_label(x: float) -> str:
    p = 100.0 * (1.0 - 1.0 / x)
    return f"p{p:.4f}".rstrip("0").rstrip(".")


def _percentile_axis(end: float) -> dict[str, Any]:
    ticks = {x: label for x, label in PERCENTILE_TICKS.items() if x <= end}
    return {
        "type": "log",
        "title": {"text": "percentile (axis is 1/(1-p))"},
        "tickvals": list(ticks),
        "ticktext": list(ticks.values()),
        # A little past the last tick, so its label is not clipped at the edge.
        "range": [0, math.log10(end) + 0.06],
        "showgrid": True,
    }


def _percentile_trace(
    go: Any, record: StormRecord, name: str, label: str, *, end: float | None = None, **line: Any
) -> Any:
    histogram = record.histograms.get(name)
    if histogram is None or histogram.get_total_count() == 0:
        return None
    count = int(histogram.get_total_count())
    xs, ys = percentile_curve(histogram, end=end or _axis_end(count))
    return go.Scatter(
        x=xs,
        y=ys,
        mode="lines",
        name=html.escape(label),
        line={"width": 2, **line},
        customdata=[_percentile_label(x) for x in xs],
        hovertemplate="%{customdata}: %{y:.3f} ms<extra>" + html.escape(label) + "</extra>",
    )


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": html.escape(title), "x": 0.01, "font": {"size": 14}},
        "template": "plotly_white",
        "height": _CHART_HEIGHT,
        "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
        "legend": {"orientation": "h", "y": -0.22},
        **extra,
    }


def _percentile_figure(p: SimpleNamespace, record: StormRecord) -> Any:
    fig = p.go.Figure()
    latency = record.histograms.get("latency")
    end = _axis_end(int(latency.get_total_count()) if latency is not None else 0)
    for name, label, dash in _CURVES:
        trace = _percentile_trace(p.go, record, name, label, end=end, dash=dash)
        if trace is not None:
            fig.add_trace(trace)
    fig.update_layout(
        _layout(
            "latency by percentile",
            xaxis=_percentile_axis(end),
            yaxis={"title": {"text": "ms"}, "rangemode": "tozero"},
        )
    )
    return fig


def _coverage(second: int, duration: float) -> float:
    # The timeline buckets whole seconds; the last one of a storm is usually cut short,
    # so per-second rates are divided by the part of that second the storm covered.
    covered = min(1.0, duration - second)
    return covered if covered > 0.05 else 1.0


def _timeline_figure(p: SimpleNamespace, record: StormRecord) -> Any:
    timeline = record.data.get("timeline") or []
    duration = float(record.data.get("duration") or 0.0)
    busy_known = any(point.get("busy_workers") is not None for point in timeline)
    rows = 3 if busy_known else 2
    titles = ["latency per second (ms)", "throughput (requests/s)"]
    if busy_known:
        titles.append("busy workers (mean)")
    fig = p.make_subplots(
        rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.09, subplot_titles=titles
    )
    xs = [point["second"] + 0.5 for point in timeline]
    for key, dash in (("p50", "solid"), ("p99", "solid"), ("max", "dot")):
        fig.add_trace(
            p.go.Scatter(
                x=xs,
                y=[point.get(key) for point in timeline],
                name=key,
                mode="lines+markers",
                line={"dash": dash},
                hovertemplate=f"{key} %{{y:.3f}} ms<extra></extra>",
            ),
            row=1,
            col=1,
        )
    cover = [_coverage(point["second"], duration) for point in timeline]
    good = [(pt["requests"] - pt["errors"]) / c for pt, c in zip(timeline, cover, strict=True)]
    bad = [pt["errors"] / c for pt, c in zip(timeline, cover, strict=True)]
    fig.add_trace(
        p.go.Bar(x=xs, y=good, name="ok/s", marker_color="#2f81f7", width=0.8), row=2, col=1
    )
    if any(bad):
        fig.add_trace(
            p.go.Bar(x=xs, y=bad, name="errors/s", marker_color="#cf222e", width=0.8),
            row=2,
            col=1,
        )
    if busy_known:
        size = (record.data.get("pool") or {}).get("size")
        busy = [
            pt["busy_workers"] / c if pt.get("busy_workers") is not None else None
            for pt, c in zip(timeline, cover, strict=True)
        ]
        fig.add_trace(
            p.go.Scatter(x=xs, y=busy, name="busy workers", mode="lines+markers", line_shape="hv"),
            row=3,
            col=1,
        )
        if size:
            fig.add_hline(
                y=size,
                line_dash="dash",
                line_color="#8c959f",
                annotation_text=f"pool size {size}",
                annotation_position="bottom right",
                row=3,
                col=1,
            )
    fig.update_layout(
        _layout("over time", barmode="stack", height=_CHART_HEIGHT + 140 * (rows - 1))
    )
    # Stacked bars reverse the legend by default; keep it in the order the traces read.
    fig.update_layout(legend_traceorder="normal", margin_t=64)
    fig.update_xaxes(title_text="seconds since measurement began", row=rows, col=1)
    fig.update_yaxes(rangemode="tozero")
    return fig


def _comparison_figure(p: SimpleNamespace, records: Sequence[StormRecord]) -> Any:
    fig = p.go.Figure()
    latencies = [r.histograms.get("latency") for r in records]
    counts = [int(h.get_total_count()) for h in latencies if h is not None]
    # One axis end for all, so every curve runs to the right edge of the chart.
    end = max((_axis_end(c) for c in counts), default=10_000.0)
    low = [h.get_min_value() for h in latencies if h is not None and h.get_total_count()]
    high = [h.get_max_value() for h in latencies if h is not None and h.get_total_count()]
    # Frameworks can differ by orders of magnitude; only then is a log scale worth its
    # harder reading.
    spread = max(high, default=1) / max(1, min(low, default=1))
    for record in records:
        trace = _percentile_trace(p.go, record, "latency", record.title, end=end)
        if trace is not None:
            fig.add_trace(trace)
    fig.update_layout(
        _layout(
            "latency by percentile, every storm",
            xaxis=_percentile_axis(end),
            yaxis={"title": {"text": "ms"}, "type": "log" if spread > 30 else "linear"},
            height=_CHART_HEIGHT + 20 * len(records),
            legend={"orientation": "h", "y": -0.18, "yanchor": "top"},
        )
    )
    return fig


def _div(p: SimpleNamespace, fig: Any, div_id: str, *, wide: bool = False) -> str:
    height = int(fig.layout.height or _CHART_HEIGHT)
    body = p.pio.to_html(
        fig,
        full_html=False,
        include_plotlyjs=False,
        config=_PLOTLY_CONFIG,
        div_id=div_id,
        default_height=f"{height}px",
    )
    return f'<div class="chart{" wide" if wide else ""}">{body}</div>'


def _bullets(lines: Sequence[str]) -> str:
    """A list of sentences ('' when there are none)."""
    if not lines:
        return ""
    return "<ul class='diagnosis'>" + "".join(f"<li>{_e(x)}</li>" for x in lines) + "</ul>"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, unit: str = "") -> str:
    if not isinstance(value, int | float) or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{format_number(value)}{unit}"


def _verdict_row(v: Mapping[str, Any]) -> str:
    measured = v.get("measured")
    verdict = Verdict(
        str(v.get("name")),
        float(v.get("limit", math.nan)),
        float(measured) if isinstance(measured, int | float) else math.nan,
        bool(v.get("ok", True)),
    )
    css = "ok" if verdict.ok else "bad"
    return (
        f"<tr><td>{_e(verdict.name)}</td><td class='num'>{_num(verdict.limit)}</td>"
        f"<td class='num'>{_num(measured)}</td>"
        f"<td class='{css}'>{_e(verdict_word(verdict))}</td></tr>"
    )


def _cards(d: Mapping[str, Any]) -> str:
    lat = d.get("latency") or {}
    items = [
        ("requests", f"{d.get('requests', 0):,}"),
        ("seconds", _num(d.get("duration"))),
        ("requests/s", _num(d.get("throughput"))),
        ("p50 ms", _num(lat.get("p50"))),
        ("p90 ms", _num(lat.get("p90"))),
        ("p99 ms", _num(lat.get("p99"))),
        ("p99.9 ms", _num(lat.get("p999"))),
        ("max ms", _num(lat.get("max"))),
        ("errors", f"{d.get('error_rate', 0):.2%}"),
    ]
    pool = d.get("pool")
    if pool:
        items.append(("saturation", f"{pool.get('saturation', 0):.0%}"))
    queue = d.get("queue_wait")
    if queue:
        items.append(("queue p99 ms", _num(queue.get("p99"))))
    connections = [c for c in d.get("connection_pools") or [] if isinstance(c, Mapping)]
    if connections:
        worst = max(connections, key=lambda c: float(c.get("saturation") or 0))
        size = worst.get("size")
        items.append(
            (
                f"{worst.get('library', 'pool')} connections in use (peak)",
                f"{worst.get('peak_in_use', 0)} of {size if size is not None else '∞'}",
            )
        )
        items.append(("connection wait p99 ms", _num(worst.get("wait_p99_ms"))))
    return (
        '<div class="cards">'
        + "".join(f"<div class='card'><b>{_e(v)}</b><span>{_e(k)}</span></div>" for k, v in items)
        + "</div>"
    )


#: Why a figure is inconclusive, by how the rounds ended (the start of ``ended``).
_UNSETTLED = {
    "noise too wide": "its interval straddles the threshold, and more pairs within the "
    "time budget could not narrow it enough",
    "time cap": "its interval still straddled the threshold when the time budget ran out",
    "cap of": "its interval still straddled the threshold after the most pairs allowed",
}


def _ratio_cell(value: Any) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    change = (value - 1) * 100
    return (f"{change:+.1f}%" if abs(change) < 1000 else f"×{value:.1f}").replace("-", "−")


def _verdict_td(said: str, reason: str = "") -> str:
    css = {"regressed": "'bad'", "improved": "'ok'", "unchanged": "'ok'"}.get(said, "")
    return f"<td{f' class={css}' if css else ''}>{_e(said)}{_e(reason)}</td>"


def _figure_cells(figure: Mapping[str, Any], then: str, now: str) -> str:
    """A compared figure's name, its two values (keys *then* and *now* of its change) and
    their ratio as a change."""
    change = figure.get("change") or {}
    unit = str(figure.get("unit") or "")
    return (
        f"<td>{_e(figure.get('figure'))}</td>"
        f"<td class='num'>{_num(change.get(then), ' ' + unit if unit else '')}</td>"
        f"<td class='num'>{_num(change.get(now), ' ' + unit if unit else '')}</td>"
        f"<td class='num'>{_e(_ratio_cell(change.get('ratio')))}</td>"
    )


def _card(block: Mapping[str, Any], about: str, heads: Sequence[str], rows: Sequence[str]) -> str:
    """A comparison card: the verdict against what was compared, its line, *about* (already
    escaped), the table of figures and the notes."""
    verdict = str(block.get("verdict", ""))
    notes = [str(n) for n in block.get("notes") or ()]
    return (
        f"<div class='vs {_e(verdict)}'><h3>vs {_e(block.get('against', ''))}: "
        f"<span class='{'bad' if verdict == 'regressed' else ''}'>{_e(verdict)}</span></h3>"
        f"<p class='muted'>{_e(block.get('line', ''))}</p>"
        f"<p class='muted'>{about}</p><table class='comparison'><tr>"
        + "".join(f"<th>{_e(h)}</th>" for h in heads)
        + "</tr>"
        + "".join(rows)
        + "</table>"
        + _bullets(notes)
        + "</div>"
    )


def comparison_card(block: Mapping[str, Any]) -> str:
    """A storm's comparison: the verdict and its line, then per figure the two sides, the
    change, its interval, the threshold and the verdict. Paired with a control: medians over
    their rounds, the change Hodges-Lehmann, and why an inconclusive one did not settle;
    against a saved baseline (``mode: saved``): the baseline's figure and this session's."""
    if block.get("mode") == "saved":
        return _saved_card(block)
    ended = str(block.get("ended", ""))
    unsettled = next((why for start, why in _UNSETTLED.items() if ended.startswith(start)), "")
    rows = []
    for figure in block.get("figures") or ():
        change = figure.get("change") or {}
        low, high = change.get("low"), change.get("high")
        interval = (
            f"[{_ratio_cell(low)}, {_ratio_cell(high)}] at "
            f"{float(change.get('confidence') or 0):.0%}"
            if isinstance(low, int | float) and isinstance(high, int | float)
            else "unbounded (too few pairs)"
        )
        said = str(figure.get("verdict", ""))
        reason = f": {unsettled}" if said == "inconclusive" and unsettled else ""
        rows.append(
            "<tr>"
            + _figure_cells(figure, "control", "experiment")
            + f"<td class='num'>{_e(interval)}</td><td>{_e(figure.get('threshold'))}</td>"
            + _verdict_td(said, reason)
            + "</tr>"
        )
    about = (
        f"{_e(block.get('pairs', 0))} pairs of rounds in the order "
        f"{_e(block.get('order', ''))} (A control, B experiment), {_e(ended)}"
        + (
            f"; {_e(round(float(block['seconds']), 1))} s"
            if isinstance(block.get("seconds"), int | float)
            else ""
        )
    )
    heads = ("figure", "control", "experiment", "change", "interval", "threshold", "verdict")
    return _card(block, about, heads, rows)


def _saved_card(block: Mapping[str, Any]) -> str:
    rows = [
        "<tr>"
        + _figure_cells(figure, "baseline", "current")
        + f"<td>{_e(figure.get('interval') or '')}</td>"
        + f"<td>{_e(figure.get('threshold') or '')}</td>"
        + _verdict_td(str(figure.get("verdict") or ""))
        + "</tr>"
        for figure in block.get("figures") or ()
    ]
    about = f"baseline saved {_e(block.get('saved', '?'))}; figures of this session against it" + (
        "; a regression fails the storm's test" if block.get("fails") else ""
    )
    heads = ("figure", "baseline", "now", "change", "interval", "threshold", "verdict")
    return _card(block, about, heads, rows)


def _fidelity_card(d: Mapping[str, Any], number: int, seen: dict[str, int]) -> str:
    """The side-by-side table of a compared storm: figure, in-process, real, ratio, and
    the sentences on where the two must differ.

    Every storm of one comparison carries the same table: it is drawn at the first of
    them, and the others link to it.
    """
    extras = d.get("extras") or {}
    data = extras.get("fidelity") if isinstance(extras, Mapping) else None
    if not isinstance(data, Mapping) or not data.get("rows"):
        return ""
    key = json.dumps(data, sort_keys=True, default=str)
    if key in seen:
        first = seen[key]
        return (
            f"<p class='muted fidelity-link'>in-process against real servers: see "
            f"<a href='#fidelity-{first}'>storm {first}</a></p>"
        )
    seen[key] = number
    servers: Mapping[str, Any] = data.get("servers") or {}
    body = []
    for row in rows_of(data):
        ratio = row.ratio
        agrees = row.agrees or not math.isfinite(ratio)
        shown = f"{ratio:.2f}×" if math.isfinite(ratio) else "n/a"
        described = str(servers.get(row.server, row.server)).split(", over loopback")[0]
        body.append(
            f"<tr><td>{_e(row.figure)}</td><td>{_e(described)}</td>"
            f"<td class='num'>{_num(row.inprocess)}</td><td class='num'>{_num(row.real)}</td>"
            f"<td class='num {'ok' if agrees else 'bad'}'>{_e(shown)}"
            f"{'' if agrees else ' ≠'}</td></tr>"
        )
    # This storm's own server usage, when it is one of the real servers compared.
    usage = {
        name: extras.get("server_usage")
        for name, described in servers.items()
        if described == d.get("server") and name != "inprocess"
    }
    sentences = differences(data, usage)
    return (
        f"<div class='fidelity' id='fidelity-{number}'><h3>in-process against real servers</h3>"
        "<table class='fidelity-table'><tr><th>figure</th><th>server</th><th>in-process</th>"
        "<th>real</th><th>real / in-process</th></tr>"
        + "".join(body)
        + "</table>"
        + _bullets(sentences)
        + "</div>"
    )


#: Colours of the parts of a request's time, by kind.
_PART_COLOURS = {
    "worker": "#d1242f",
    "pool": "#8250df",
    "connect": "#bf3989",
    "upstream": "#0969da",
    "proxy": "#1b7c83",
    "loop": "#bc4c00",
    "service": "#8c959f",
}


def _breakdown(d: Mapping[str, Any]) -> str:
    """A stacked bar per band of requests (p50, p99) and per slowest request: where their
    time went."""
    attribution = d.get("attribution")
    if not attribution:
        return ""
    rows: list[tuple[str, list[Mapping[str, Any]]]] = [
        (
            f"{b.get('label')} requests · {format_number(b.get('latency_ms'))} ms",
            list(b.get("parts") or ()),
        )
        for b in attribution.get("bands") or ()
    ]
    rows += [
        (
            f"slowest {i} · {format_number(e.get('latency_ms'))} ms · {e.get('status')}",
            list(e.get("parts") or ()),
        )
        for i, e in enumerate(attribution.get("slowest") or (), 1)
    ]
    if not rows:
        return ""
    keys: dict[tuple[str, str], str] = {}
    where = " in the server's app" if attribution.get("side") == "server" else ""
    html = [f"<div class='breakdown'><h3>where the requests' time went{where}</h3>"]
    for title, parts in rows:
        segments = []
        for part in parts:
            kind, name = str(part.get("kind")), str(part.get("name"))
            words = part_words(kind, name)
            keys[(kind, words)] = _PART_COLOURS.get(kind, "#6e7781")
            share = float(part.get("share") or 0)
            segments.append(
                f"<span style='width:{share * 100:.2f}%;background:{keys[(kind, words)]}' "
                f"title='{_e(words)}: {share:.0%}, {format_number(part.get('ms'))} ms'></span>"
            )
        html.append(
            f"<div class='row'><span>{_e(title)}</span><div class='bar'>{''.join(segments)}</div></div>"
        )
    html.append(
        "<p class='key'>"
        + "".join(f"<i style='background:{colour}'></i>{_e(w)}" for (_, w), colour in keys.items())
        + "</p></div>"
    )
    return "".join(html)


def _storm_section(
    p: SimpleNamespace, number: int, record: StormRecord, fidelity_seen: dict[str, int]
) -> str:
    d = record.data
    verdicts = d.get("verdicts") or []
    compared = comparison_of(d)
    failed = [str(v.get("name")) for v in verdicts if not v.get("ok", True)]
    passed = verdict_cell(failed, compared) == "pass"
    parts = [
        f'<section class="storm" id="storm-{number}">',
        f"<h2>{number}. {_e(record.title)} "
        f"<span class='{'ok' if passed else 'bad'}'>{'✓' if passed else '✗'}</span></h2>",
        f"<p class='headline'>{_e(headline(d))}</p>",
        _cards(d),
    ]
    if verdicts:
        parts.append(
            "<table class='budgets'><tr><th>budget</th><th>limit</th><th>measured</th>"
            "<th>verdict</th></tr>" + "".join(_verdict_row(v) for v in verdicts) + "</table>"
        )
    else:
        parts.append("<p class='muted'>no budgets set</p>")
    endpoints = _endpoint_cells(d)
    if endpoints:
        parts.append(
            "<table class='summary endpoints'><tr><th>endpoint</th><th>requests</th><th>rps</th>"
            "<th>p50 ms</th><th>p99 ms</th><th>max ms</th><th>errors</th><th>verdict</th></tr>"
            + "".join(f"<tr><td>{_e(name)}</td>{cells}</tr>" for name, cells in endpoints)
            + "</table>"
        )
    lines = diagnosis(d, record.result)
    if lines:
        parts.append(
            "<ul class='diagnosis'>" + "".join(f"<li>{_e(x)}</li>" for x in lines) + "</ul>"
        )
    if compared is not None:
        parts.append(comparison_card(compared))
    parts.append(_breakdown(d))
    card = _fidelity_card(d, number, fidelity_seen)
    if card:
        parts.append(card)
    parts.append('<div class="charts">')
    parts.append(_div(p, _percentile_figure(p, record), f"storm-{number}-percentiles"))
    parts.append(_div(p, _timeline_figure(p, record), f"storm-{number}-timeline"))
    parts.append("</div>")
    statuses = d.get("status_counts") or {}
    if statuses:
        parts.append(
            "<p class='muted'>status codes: "
            + ", ".join(f"{_e(code)} ×{count:,}" for code, count in statuses.items())
            + "</p>"
        )
    for name, error in (d.get("errors") or {}).items():
        parts.append(
            f"<details><summary>{_e(name)} ×{error.get('count', 0):,}</summary>"
            f"<pre>{_e(error.get('example', ''))}</pre></details>"
        )
    params = {k: v for k, v in (d.get("params") or {}).items() if v is not None}
    if params:
        parts.append(
            "<details><summary>workload</summary><pre>"
            + _e(json.dumps(params, indent=1, ensure_ascii=False))
            + "</pre></details>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _summary_table(records: Sequence[StormRecord]) -> str:
    blocks = [b for b in (comparison_of(record.data) for record in records) if b is not None]
    compared = bool(blocks)
    head = (
        "<tr><th>#</th><th>test · storm</th><th>app</th><th>users</th><th>requests</th>"
        "<th>rps</th><th>p50 ms</th><th>p99 ms</th><th>max ms</th><th>errors</th>"
        "<th>verdict</th>"
        + (f"<th>{_e(compared_with(blocks[0]))}</th>" if compared else "")
        + "</tr>"
    )
    body = []
    for number, record in enumerate(records, 1):
        d = record.data
        lat = d.get("latency") or {}
        failed = [str(v["name"]) for v in d.get("verdicts") or [] if not v.get("ok", True)]
        cell = verdict_cell(failed, comparison_of(d))
        verdict = f"<span class='{'ok' if cell == 'pass' else 'bad'}'>{_e(cell.replace(',', ', '))}</span>"
        if compared:
            vs = comparison_cell(comparison_of(d))
            css = "bad" if vs.startswith("regressed") else "muted" if not vs else ""
            verdict += f"</td><td class='{css}'>{_e(vs)}"
        body.append(
            f"<tr><td>{number}</td><td><a href='#storm-{number}'>{_e(record.title)}</a></td>"
            f"<td>{_e(d.get('app', ''))} ({_e(d.get('interface', ''))}, "
            f"{_e(d.get('server', ''))})</td>"
            f"<td class='num'>{_e(users_cell(d))}</td>"
            f"<td class='num'>{d.get('requests', 0):,}</td>"
            f"<td class='num'>{_num(d.get('throughput'))}</td>"
            f"<td class='num'>{_num(lat.get('p50'))}</td>"
            f"<td class='num'>{_num(lat.get('p99'))}</td>"
            f"<td class='num'>{_num(lat.get('max'))}</td>"
            f"<td class='num'>{d.get('error_rate', 0):.1%}</td><td>{verdict}</td></tr>"
        )
        body.extend(
            f"<tr class='endpoint'><td></td><td colspan='3'>{_e(name)}</td>{cells}</tr>"
            for name, cells in _endpoint_cells(d)
        )
    return f"<table class='summary'>{head}{''.join(body)}</table>"


def _endpoint_cells(d: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Each endpoint of a mix: its name and its cells (requests, rps, p50, p99, max, errors,
    verdict of its own budgets)."""
    verdicts = d.get("verdicts") or []
    out = []
    for name, endpoint in (d.get("endpoints") or {}).items():
        lat = endpoint.get("latency") or {}
        count = int(endpoint.get("requests") or 0)
        errors = int(endpoint.get("errors") or 0)
        own = [v for v in verdicts if str(v.get("name", "")).startswith(f"{name} ")]
        failed = [str(v["name"])[len(name) + 1 :] for v in own if not v.get("ok", True)]
        if not own:
            verdict = ""
        elif failed:
            verdict = f"<span class='bad'>FAIL {_e(', '.join(failed))}</span>"
        else:
            verdict = "<span class='ok'>pass</span>"
        out.append(
            (
                str(name),
                f"<td class='num'>{count:,}</td>"
                f"<td class='num'>{_num(endpoint.get('throughput'))}</td>"
                f"<td class='num'>{_num(lat.get('p50'))}</td>"
                f"<td class='num'>{_num(lat.get('p99'))}</td>"
                f"<td class='num'>{_num(lat.get('max'))}</td>"
                f"<td class='num'>{(errors / count if count else 0):.1%}</td>"
                f"<td>{verdict}</td>",
            )
        )
    return out


def render_html(
    rows: Sequence[StormRow | StormRecord],
    *,
    title: str = "pytest-storm report",
    machine: Mapping[str, Any] | None = None,
) -> str:
    """The report page as a string: every storm, then all percentile curves overlaid."""
    p = _plotly()
    records = as_records(rows)
    created = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    about = [f"{len(records)} storm{'s' if len(records) != 1 else ''}", created]
    about.append(f"pytest-storm {__version__}")
    if machine:
        about.append(machine_line(machine))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style>",
        # Inlined once for the whole page: the report must open without a network.
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>",
        f'<script type="text/javascript">{p.plotlyjs()}</script>',
        "</head><body>",
        f"<header><h1>{_e(title)}</h1><p class='muted'>{_e(' · '.join(about))}</p></header>",
    ]
    if not records:
        parts.append("<p>No storms were fired in this session.</p>")
    else:
        parts.append('<section id="comparison"><h2>All storms</h2>')
        parts.append(_summary_table(records))
        parts.append(
            '<div class="charts">'
            + _div(p, _comparison_figure(p, records), "comparison-percentiles", wide=True)
            + "</div></section>"
        )
        seen: dict[str, int] = {}
        parts.extend(_storm_section(p, n, r, seen) for n, r in enumerate(records, 1))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(
    path: str | os.PathLike[str],
    rows: Sequence[StormRow | StormRecord],
    *,
    title: str = "pytest-storm report",
    machine: Mapping[str, Any] | None = None,
) -> Path:
    """Write the self-contained report page to *path* (parent directories created; atomically)."""
    text = render_html(rows, title=title, machine=machine)
    return write_atomic(path, text)
