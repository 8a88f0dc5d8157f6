"""Claim 6: "FastAPI + WebSockets = butter; Django needs extras" — the chat server."""

from __future__ import annotations

import importlib
import math
from typing import Any

from pytest_concurrency import ConfigError, run_websocket_storm

from .base import HOLDS, NOT_HERE, PARTLY, ClaimRow, Demo, Judgement, format_number

__all__ = ["BUTTER_P99_MS", "HELD_SHARE", "judge_chat", "run"]

#: "Butter": every connection held and the round-trip p99 under this.
BUTTER_P99_MS = 250.0
#: Share of the connections that must be held through the storm.
HELD_SHARE = 0.99

_CHATS = {
    "FastAPI": ("examples.fastapi_app", "app"),
    "Starlette": ("examples.starlette_app", "app"),
    "Django + Channels": ("examples.django_channels_app", "application"),
}


def judge_chat(
    users: int, held: int, p99_ms: float, *, django_core_refused: bool, flask_refused: bool
) -> Judgement:
    """Claim 6 from FastAPI's chat under *users* connections and what Django and Flask need."""
    share = held / users if users else 0.0
    figures = (
        f"FastAPI held {held:,} of {users:,} connections, round-trip p99 "
        f"{format_number(round(p99_ms, 1))} ms"
    )
    extras = []
    if django_core_refused:
        extras.append("Django's own ASGI handler refuses WebSockets: it needs Channels")
    if flask_refused:
        extras.append("Flask (WSGI) cannot serve them at all")
    smooth = share >= HELD_SHARE and math.isfinite(p99_ms) and p99_ms <= BUTTER_P99_MS
    tail = f"; {'; '.join(extras)}" if extras else ""
    if smooth and django_core_refused:
        return Judgement(HOLDS, figures + tail)
    if share >= HELD_SHARE:
        return Judgement(PARTLY, f"{figures} (over {BUTTER_P99_MS:g} ms or Django served){tail}")
    return Judgement(NOT_HERE, f"{figures}: connections were lost{tail}")


def _app(framework: str) -> Any:
    module, attr = _CHATS[framework]
    return getattr(importlib.import_module(module), attr)


def run(demo: Demo) -> ClaimRow:
    """Echo chats at the same number of connections; Django without Channels; Flask."""
    s = demo.settings
    users = 200 if s.quick else 1_000
    figures = []
    data: dict[str, Any] = {}
    fastapi: Any = None
    for framework in _CHATS:
        demo.progress(f"  claim 6: {framework} /ws, {users:,} connections")
        result = run_websocket_storm(
            _app(framework), "/ws", users=users, duration=s.duration, warmup=1.0, check=False
        )
        demo.keep("6", framework, result)
        if framework == "FastAPI":
            fastapi = result
        figures.append(
            f"{framework} /ws: {result.held_connections:,} of {users:,} connections held, "
            f"round trip p50 {format_number(round(result.latency.p50, 1))} / p99 "
            f"{format_number(round(result.latency.p99, 1))} ms, "
            f"{format_number(round(result.throughput))} messages/s"
        )
        data[framework] = {
            "held": result.held_connections,
            "p50_ms": result.latency.p50,
            "p99_ms": result.latency.p99,
            "messages_per_s": result.throughput,
        }
    from examples import django_app, flask_app

    core = run_websocket_storm(
        django_app.asgi_app, "/ws", users=2, messages=2, check=False, timeout_ms=2000
    )
    django_core_refused = core.held_connections == 0
    figures.append(
        "Django's ASGI handler without Channels: "
        + ("refused every handshake" if django_core_refused else "served the handshakes")
    )
    try:
        run_websocket_storm(flask_app.app, "/ws", users=1, messages=1, check=False)
        flask_refused = False
    except ConfigError:
        flask_refused = True
    figures.append(
        "Flask: "
        + ("refused before any load (WSGI has no WebSockets)" if flask_refused else "served")
    )
    return ClaimRow(
        "6",
        "FastAPI + WebSockets = butter; Django needs extras",
        "the seeds' chat-server comparison",
        f"an echo chat ('You said: …') at {users:,} connections, each sending its next message "
        f"when the last answer arrives, {s.duration:g} s after 1 s of warm-up; Django with "
        "Channels (in-memory channel layer), then Django's own ASGI handler, then Flask",
        figures,
        judge_chat(
            users,
            fastapi.held_connections if fastapi is not None else 0,
            fastapi.latency.p99 if fastapi is not None else math.nan,
            django_core_refused=django_core_refused,
            flask_refused=flask_refused,
        ),
        [
            "in-process: the chat's own cost per message on one core, not a deployment's "
            "network; 'butter' is read as every connection held with round-trip p99 ≤ "
            f"{BUTTER_P99_MS:g} ms"
        ],
        data,
    )
