"""Claim 5: streaming responses serve tokens as they arrive."""

from __future__ import annotations

from typing import Any

from examples.fastapi_app import STREAM_URL
from pytest_concurrency import Request, Upstream, lognormal

from .base import (
    HOLDS,
    NOT_HERE,
    PARTLY,
    WSGI_WORKERS,
    ClaimRow,
    Demo,
    DemoStorm,
    Judgement,
    format_number,
)

__all__ = [
    "STREAM_CHUNKS",
    "STREAM_CHUNK_MS",
    "STREAM_EARLY_SHARE",
    "STREAM_FIRST_P50_MS",
    "STREAM_FIRST_P99_MS",
    "STREAM_MIN_GAP_MS",
    "STREAM_URL",
    "judge_streaming",
    "run",
]

#: The first byte must arrive at least this share of the streamed span before the end
#: (holds), or at least this many ms before it (holds partly).
STREAM_EARLY_SHARE = 0.5
STREAM_MIN_GAP_MS = 5.0

#: Streamed answer of the model server: chunks and the wait between them.
STREAM_CHUNKS = ("Hel", "lo", ",", " th", "ere", "!", " How", " can I help?")
STREAM_CHUNK_MS = 10.0
STREAM_FIRST_P50_MS = 20.0
STREAM_FIRST_P99_MS = 60.0


def judge_streaming(ttfb: dict[str, tuple[float, float]], *, span_ms: float) -> Judgement:
    """The first byte arrives well before the end; *ttfb* maps framework → (ttfb, total) p50."""
    if not ttfb:
        return Judgement(NOT_HERE, "no streaming storm ran")
    early_need = STREAM_EARLY_SHARE * span_ms
    streamed, partly, buffered = [], [], []
    for name, (first, total) in ttfb.items():
        gap = total - first
        text = f"{name} first byte {format_number(first)} ms, last {format_number(total)} ms"
        if gap >= early_need:
            streamed.append(text)
        elif gap >= STREAM_MIN_GAP_MS:
            partly.append(text)
        else:
            buffered.append(text)
    detail = "; ".join(streamed + partly + buffered)
    if not partly and not buffered:
        return Judgement(
            HOLDS,
            f"{detail}: first byte ≥ {format_number(early_need)} ms (half the "
            f"{format_number(span_ms)} ms token stream) before the end",
        )
    if streamed or partly:
        return Judgement(PARTLY, f"{detail}: not every framework streamed early")
    return Judgement(NOT_HERE, f"{detail}: the body arrived in one piece")


def run(demo: Demo) -> ClaimRow:
    """Relay a model stream through FastAPI and Flask; compare first byte and whole answer."""
    s = demo.settings
    users = 20
    prompt = Request("POST", "/stream", json={"prompt": "hi"})
    found: dict[str, DemoStorm] = {}
    with Upstream() as upstream:
        upstream.route(
            STREAM_URL,
            latency=lognormal(p50_ms=STREAM_FIRST_P50_MS, p99_ms=STREAM_FIRST_P99_MS),
            stream=list(STREAM_CHUNKS),
            chunk_latency=STREAM_CHUNK_MS,
            seed=1,
        )
        servers: list[tuple[str, dict[str, Any]]] = [
            ("FastAPI", {}),
            ("Flask", {"workers": WSGI_WORKERS}),
        ]
        for framework, extra in servers:
            found[framework] = demo.storm(
                "5",
                framework,
                requests=[prompt],
                users=users,
                duration=s.duration,
                warmup=s.warmup,
                **extra,
            )
    span = (len(STREAM_CHUNKS) - 1) * STREAM_CHUNK_MS
    pairs: dict[str, tuple[float, float]] = {}
    figures = []
    for name, record in found.items():
        r = record.result
        first, total = r.ttfb.p50, r.latency.p50
        queue = r.queue_wait.p50 if r.queue_wait is not None else 0.0
        # A WSGI request's first byte also waits for a worker; the stream starts after.
        key = f"{name} (after its queue)" if r.queue_wait is not None else name
        pairs[key] = (first - queue, total - queue)
        line = (
            f"{name}: first byte p50 {format_number(first)} ms, whole answer p50 "
            f"{format_number(total)} ms"
        )
        if r.queue_wait is not None and r.service_time is not None:
            line += (
                f" (of which {format_number(queue)} ms queued for one of {WSGI_WORKERS} "
                f"workers; each worker held {format_number(r.service_time.p50)} ms per stream)"
            )
        figures.append(line)
    return ClaimRow(
        "5",
        "Streaming responses serve tokens as they arrive",
        "LLM streaming (SSE) with FastAPI tutorials",
        f"POST /stream relaying a model stream: first chunk lognormal p50 "
        f"{STREAM_FIRST_P50_MS:g} / p99 {STREAM_FIRST_P99_MS:g} ms, then "
        f"{len(STREAM_CHUNKS) - 1} chunks {STREAM_CHUNK_MS:g} ms apart; {users} users",
        figures,
        judge_streaming(pairs, span_ms=span),
        [
            "a sync worker is held for the whole stream, not just until the first token: "
            "streaming improves time to first token, not how many users a worker serves"
        ],
        {name: {"ttfb_p50_ms": f, "total_p50_ms": t} for name, (f, t) in pairs.items()},
    )
