"""WebSocket storms: the engine's schedule carried out over WebSocket connections.

The one :class:`Schedule` still decides who sends when. Closed model: one connection
per user, opened at the user's first send; its next message is intended at the end of
the previous round trip plus think time. Open model: messages arrive at ``rate``, each
on an idle connection, or on a new one while fewer than ``max_in_flight`` are busy.
A round trip counts from the message's intended send time to the first message the
server sends back that answers it: by default its echo (the same kind, text or binary,
equal to the message or carrying it, as in "You said: …"), or what ``expect=`` accepts
(a literal, or a callable on the received message). Anything else the server sends while
a message waits — a heartbeat, a flood, a reply of the wrong kind — is counted as
``unmatched`` and never ends the round trip. The handshake is timed on its own (``connect``).

A broadcast room (``listeners=N``): N connections only listen, opened before the first
message; a sender's message is delivered when the last listener has it, and that is
its latency. Messages are matched by their text (made unique with a ``#n`` suffix
when they come from ``message=``; a ``factory`` must make them unique itself); a
listener's message matches when it equals or contains a pending one.

Connections stay open to the end of the round (a chat keeps its connections): the
figures say how many the server held at the peak and at the end, how many it closed
and with which codes, and how many handshakes it refused.

In-process, the app runs on the round's event loop (loop lag and thread pools probed
as for HTTP); with ``server=``, the same round drives a real server over sockets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from array import array
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, cast

import anyio

from .._apps import app_label
from .._budget import _verdict
from .._drivers.base import AsyncDriver
from .._drivers.websocket import (
    AsgiWebSocketDriver,
    ConnectionClosed,
    ConnectionCounts,
    Data,
    SocketWebSocketDriver,
    WebSocketConnection,
    WebSocketDriver,
)
from .._errors import ConfigError, StormError
from .._metrics import (
    STATUS_EXCEPTION,
    STATUS_TIMEOUT,
    LatencyStats,
    Recorder,
    latency_stats,
    new_histogram,
    record_many,
)
from .._metrics.fold import RunFigures
from .._model.extras import WebSocketConnections
from .._model.remarks import shared_loop_warning, unmatched_messages_note
from .._model.result import StormResult, Verdict
from .._params import WEBSOCKET_BUDGETS, WEBSOCKET_NAMES, Layer, budget_limit
from .._probes.attribution import Ledger, bind
from .._spec.table import PARAMS
from .._workload import RequestMix
from .interrupts import app_interrupt
from .limits import check_listeners
from .plan import LiveFigures, Progress, StormPlan, plan_storm
from .rounds import execute_async, finish
from .runner import AsyncRunner, Slot
from .schedule import Schedule
from .storm import Executor, run_plan

__all__ = [
    "WEBSOCKET_BUDGETS",
    "WEBSOCKET_NAMES",
    "WebSocketPlan",
    "WebSocketResult",
    "plan_websocket",
    "run_websocket_plan",
]

#: HTTP parameters a WebSocket storm has no use for.
_HTTP_ONLY = ("requests", "json", "content", "data", "budgets")

#: Status recorded for a message whose round trip completed (the connection's 101).
STATUS_MESSAGE = 101
_DEFAULT_MESSAGE = "ping"
_LEAD = 0.001


@dataclass(frozen=True)
class WebSocketSpec:
    """What each connection sends, validated."""

    message: Data
    factory: Callable[[int, int], Data] | None
    connect_timeout: float
    subprotocols: tuple[str, ...]
    listeners: int
    budgets: dict[str, float]
    #: What answers a message: None for its echo, a literal, or a callable on the reply.
    expect: Data | Callable[[Data], Any] | None = None


@dataclass
class WebSocketPlan:
    """A validated WebSocket storm: the storm plan and the WebSocket side of it."""

    plan: StormPlan
    spec: WebSocketSpec


@dataclass(repr=False)
class WebSocketResult(StormResult):
    """Figures of a WebSocket storm: ``latency`` is the round trip, ``requests`` the messages.

    ``connect`` times the handshakes; the connection figures cover the whole round.
    """

    connect: LatencyStats = field(default_factory=LatencyStats)
    #: Handshakes the server accepted, and refused (close before accept, a denial response).
    connections: int = 0
    refused: int = 0
    peak_connections: int = 0
    #: Connections still open when the last message was done (before the client closed them).
    held_connections: int = 0
    #: Connections the server closed after accepting them.
    disconnects: int = 0
    close_codes: Counter[int] = field(default_factory=Counter)
    #: Messages the server sent that answered no message of the client.
    server_messages: int = 0
    listeners: int = 0
    #: Messages the server sent while a round trip waited that did not answer it (not its
    #: echo, nor what ``expect=`` accepts): heartbeats, floods, replies of the wrong kind.
    unmatched: int = 0

    @property
    def round_trip(self) -> LatencyStats:
        """Round-trip latency of the messages (delivery to the last listener in a room), ms."""
        return self.latency

    @property
    def messages(self) -> int:
        """Measured messages."""
        return self.requests

    @property
    def disconnect_rate(self) -> float:
        """Fraction of accepted connections the server closed."""
        return self.disconnects / self.connections if self.connections else 0.0

    def __repr__(self) -> str:
        return (
            f"<WebSocketResult {self.label} on {self.app}: {self.messages:,} messages, "
            f"{self.throughput:,.1f}/s, round trip p50 {self.latency.p50:,.2f} ms, "
            f"p99 {self.latency.p99:,.2f} ms, {self.peak_connections:,} connections at the peak, "
            f"{'passed' if self.passed else 'FAILED'}>"
        )

    def websocket_figures(self) -> WebSocketConnections:
        """The WebSocket figures as reports read them (``result.websocket``)."""
        return WebSocketConnections(
            connect={k: _finite(v) for k, v in self.connect.to_dict().items()},
            connections=self.connections,
            refused=self.refused,
            peak_connections=self.peak_connections,
            held_connections=self.held_connections,
            disconnects=self.disconnects,
            disconnect_rate=self.disconnect_rate,
            close_codes={str(k): v for k, v in sorted(self.close_codes.items())},
            server_messages=self.server_messages,
            unmatched=self.unmatched,
            listeners=self.listeners,
        )


def _finite(value: float | int) -> float | int | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value


# -- planning ----------------------------------------------------------------------------


def _split_layers(layers: Sequence[Layer]) -> tuple[list[Layer], dict[str, tuple[Any, str]]]:
    """Storm layers without the WebSocket names, and those names' values (highest layer wins)."""
    ours = (*WEBSOCKET_NAMES, *WEBSOCKET_BUDGETS)
    storm_layers: list[Layer] = []
    merged: dict[str, tuple[Any, str]] = {}
    for layer in layers:
        values = dict(layer.values)
        for name in _HTTP_ONLY:
            if values.get(name) is not None:
                raise ConfigError(
                    f"{name}={values[name]!r} (from {layer.origin}) does not apply to a WebSocket "
                    f"storm{'; give messages= to stop after a count' if name == 'requests' else ''}"
                )
        if values.get("messages") is not None:
            if values.get("duration") is not None:
                raise ConfigError(
                    f"duration={values['duration']!r} and messages={values['messages']!r} are both "
                    f"set (from {layer.origin}); give one stop condition, not both"
                )
            # The schedule's count stop: messages are a WebSocket storm's requests.
            values["requests"] = values["messages"]
        for name in ours:
            if name in values:
                value = values.pop(name)
                if value is not None:
                    merged.setdefault(name, (value, layer.origin))
        if "min_messages_per_s" in layer.values and layer.values["min_messages_per_s"] is not None:
            values.setdefault("min_rps", layer.values["min_messages_per_s"])
        storm_layers.append(Layer(layer.origin, values))
    return storm_layers, merged


def _spec(merged: Mapping[str, tuple[Any, str]], timeout_ms: float) -> WebSocketSpec:
    """The WebSocket options, each validated by its row of ``_spec.table``, and how they combine."""
    valid: dict[str, Any] = {}
    for name, (value, origin) in merged.items():
        if name in PARAMS:
            valid[name] = PARAMS[name].validate(name, value, origin)
    message: Data = valid.get("message", _DEFAULT_MESSAGE)
    factory = valid.get("factory")
    if factory is not None:
        origin = merged["factory"][1]
        if "message" in merged:
            raise ConfigError(
                f"message and factory are both set (from {origin}): give one or the other"
            )
        try:
            _call_factory(factory, 0, 0)
        except StormError as exc:
            raise ConfigError(f"{exc} (from {origin}), before the storm") from exc.__cause__
    connect_ms = valid.get("connect_timeout_ms")
    connect_timeout = (connect_ms if connect_ms is not None else timeout_ms) / 1000
    listeners = valid.get("listeners", 0)
    expect: Data | Callable[[Data], Any] | None = valid.get("expect")
    if expect is not None and listeners:
        raise ConfigError(
            f"expect={expect!r} (from {merged['expect'][1]}) does not apply to a broadcast room "
            "(listeners=): a room matches each delivery to the message sent"
        )
    budgets = {
        name: budget_limit(name, *item)
        for name, item in merged.items()
        if name in WEBSOCKET_BUDGETS and name != "min_messages_per_s"
    }
    return WebSocketSpec(
        message, factory, connect_timeout, valid.get("subprotocols", ()), listeners, budgets, expect
    )


def _echo(sent: Data, received: Data) -> bool:
    """The default match: *received* is *sent*'s echo, the same kind and carrying it."""
    return type(received) is type(sent) and (
        received == sent or sent in received  # type: ignore[operator]
    )


class _Unmatched:
    """Messages that did not answer the message waiting, and the first of them."""

    __slots__ = ("count", "example")

    def __init__(self) -> None:
        self.count = 0
        self.example: Data | None = None

    def add(self, data: Data) -> None:
        self.count += 1
        if self.example is None:
            self.example = data


def _call_factory(factory: Callable[[int, int], Data], user: int, i: int) -> Data:
    try:
        data = factory(user, i)
    except Exception as exc:
        raise StormError(
            f"factory={factory!r} raised {type(exc).__name__}: {exc} when called with ({user}, {i})"
        ) from exc
    if not isinstance(data, str | bytes):
        raise StormError(
            f"factory={factory!r} returned {data!r} for ({user}, {i}); it must return str "
            "(a text frame) or bytes (a binary frame)"
        )
    return data


def plan_websocket(
    app: Any,
    path: str,
    *,
    layers: Sequence[Layer],
    scale: tuple[float, str] | None = None,
) -> WebSocketPlan:
    """Validate a WebSocket storm before any connection is opened."""
    storm_layers, merged = _split_layers(layers)
    plan = plan_storm(app, "WEBSOCKET", path, layers=storm_layers, scale=scale)
    if plan.interface == "wsgi":
        raise ConfigError(
            f"app={app_label(app)} is a WSGI app and WSGI has no WebSockets: a WebSocket storm "
            "needs an ASGI app (Django needs Channels, Flask an ASGI server of its own)"
        )
    config = plan.config
    if config.processes > 1:
        raise ConfigError(
            f"processes={config.processes} (from {config.origin_of('processes')}): WebSocket "
            "storms run in one process"
        )
    if config.engine != "native":
        raise ConfigError(
            f"engine={config.engine!r} (from {config.origin_of('engine')}) sends HTTP requests; "
            "a WebSocket storm runs on the native engine"
        )
    for name in ("on_start", "checks"):
        if getattr(config, name) is not None:
            raise ConfigError(
                f"{name} (from {config.origin_of(name)}) applies to HTTP requests, not to a "
                "WebSocket storm"
            )
    spec = _spec(merged, config.timeout_ms)
    if spec.listeners:
        real = plan.url is not None or plan.server is not None
        check_listeners(spec.listeners, merged["listeners"][1], real_server=real)
    # Any failed message fails a storm without an error budget: the engine's own default.
    return WebSocketPlan(plan, spec)


# -- broadcast rooms -----------------------------------------------------------------------


class _Delivery:
    __slots__ = ("done", "key", "last", "remaining")

    def __init__(self, key: Data, remaining: int) -> None:
        self.key = key
        self.remaining = remaining
        self.last = 0.0
        self.done = anyio.Event()


class Room:
    """Listen-only connections and the messages on their way to all of them."""

    def __init__(self, listeners: int) -> None:
        self.size = listeners
        self.connections: list[WebSocketConnection] = []
        self.pending: dict[Data, _Delivery] = {}
        self.other = 0  # listener messages that matched no pending message

    async def open(
        self, driver: WebSocketDriver, timeout: float, on_connect: Callable[[float, float], None]
    ) -> None:
        """Open the listeners (before the first message); a refused one is a :class:`StormError`."""
        for number in range(self.size):
            started = perf_counter()
            try:
                conn = await driver.connect(timeout)
            except TimeoutError as exc:
                raise StormError(f"room listener {number} could not connect: {exc}") from None
            if not conn.handshake.accepted:
                raise StormError(
                    f"room listener {number} could not connect: the app refused the handshake "
                    f"(status {conn.handshake.status}, close code {conn.handshake.close_code})"
                )
            on_connect(started, conn.handshake.done)
            conn.on_message = self.receive
            self.connections.append(conn)

    def expect(self, key: Data) -> _Delivery:
        """Wait for *key* at every listener open now."""
        if key in self.pending:
            raise StormError(
                f"message {key!r} was sent again while still on its way to the room's listeners: "
                "room messages must be unique (let the factory number them)"
            )
        live = sum(1 for conn in self.connections if conn.open)
        delivery = self.pending[key] = _Delivery(key, live)
        if not live:
            delivery.done.set()
        return delivery

    def forget(self, delivery: _Delivery) -> None:
        """Stop waiting for a message (its sender gave up)."""
        if self.pending.get(delivery.key) is delivery:
            del self.pending[delivery.key]

    def receive(self, data: Data, at: float) -> None:
        """A listener received *data* at *at*."""
        pending = self.pending
        delivery = pending.get(data)
        if delivery is None:
            for key, candidate in pending.items():
                if type(key) is type(data) and key in data:  # type: ignore[operator]
                    delivery = candidate
                    break
            else:
                self.other += 1
                return
        delivery.remaining -= 1
        if delivery.remaining <= 0:
            delivery.last = at
            del pending[delivery.key]
            delivery.done.set()


# -- the round -------------------------------------------------------------------------------


class _Client:
    """A slot's connection and whose messages it sends."""

    __slots__ = ("conn", "user")

    def __init__(self, conn: WebSocketConnection, user: int) -> None:
        self.conn = conn
        self.user = user


@dataclass
class WebSocketFigures(RunFigures):
    """A WebSocket round's figures: the messages' records plus the connections'."""

    connect: array[int] = field(default_factory=lambda: array("q"))
    counts: ConnectionCounts = field(default_factory=ConnectionCounts)
    held: int = 0
    server_messages: int = 0
    unmatched: int = 0
    unmatched_example: Data | None = None


class WebSocketRunner(AsyncRunner):
    """The engine's runner with a WebSocket message in place of an HTTP request."""

    def __init__(
        self,
        schedule: Schedule,
        driver: WebSocketDriver,
        mix: RequestMix,
        spec: WebSocketSpec,
        *,
        room: Room | None = None,
        recorders: list[Recorder] | None = None,
        connect: array[int] | None = None,
    ) -> None:
        # serve() below replaces the HTTP exchange: the runner never calls an HTTP driver.
        super().__init__(schedule, cast(AsyncDriver, driver), mix, recorders=recorders)
        self.ws = driver
        self.spec = spec
        self.room = room
        self.connect_us = connect if connect is not None else array("q")
        self.server_messages = 0
        self.unmatched = _Unmatched()
        self.sequence = 0
        self.connections = 0
        expect = spec.expect
        self.answers: Callable[[Data, Data], Any]
        if expect is None:
            self.answers = _echo
        elif isinstance(expect, str | bytes):
            literal = expect
            self.answers = lambda sent, received: (
                type(received) is type(literal) and received == literal
            )
        else:
            check = expect
            self.answers = lambda sent, received: check(received)

    def note_connect(self, started: float, done: float) -> None:
        """Record one accepted handshake."""
        self.connect_us.append(int((done - started) * 1e6))

    def payload(self, user: int) -> Data:
        """The user's next message."""
        iteration = self.iterations.get(user, 0)
        self.iterations[user] = iteration + 1
        spec = self.spec
        if spec.factory is not None:
            return _call_factory(spec.factory, user, iteration)
        if self.room is None:
            return spec.message
        # A room matches deliveries by text: number the messages.
        self.sequence += 1
        message = spec.message
        if isinstance(message, str):
            return f"{message} #{self.sequence}"
        return message + b" #%d" % self.sequence

    async def open(self, slot: Slot, intended: float, user: int) -> _Client | float:
        """Connect for *slot*; the client, or when its failure (recorded) was decided."""
        if perf_counter() - intended >= self.timeout:
            self.record_timeout(slot, intended)
            return intended + self.timeout
        try:
            conn = await self.ws.connect(self.spec.connect_timeout)
        except TimeoutError as exc:
            done = perf_counter()
            kind = self.book.kind(exc, "ConnectTimeout")
            self.record(intended, done - intended, 0.0, STATUS_TIMEOUT, kind, 0)
            return done
        handshake = conn.handshake
        if not handshake.accepted:
            failure = conn.failure
            if failure is not None:
                status, error = STATUS_EXCEPTION, self.book.kind(failure)
            else:
                status, error = handshake.status, 0
            self.record(intended, handshake.done - intended, 0.0, status, error, 0)
            return handshake.done
        self.note_connect(intended, handshake.done)
        if user < 0:  # open model: each connection sends as a user of its own
            user = self.connections
        self.connections += 1
        return _Client(conn, user)

    def ledger(self, slot: Slot) -> Ledger | None:
        """The ledger of the slot's user, bound to its task before its connection opens: the
        app's task for the connection inherits it, and charges its waits to the message."""
        book = slot.book
        if book is None and self.attributing:
            book = slot.book = Ledger()
            bind(book)
        return book

    async def serve(self, slot: Slot, intended: float, user: int) -> float:
        """Send one message on the slot's connection (opened first if needed) and record its
        round trip; return when it completed."""
        book = self.ledger(slot)
        client: _Client | None = slot.conn
        if client is None or not client.conn.open:
            opened = await self.open(slot, intended, user)
            if not isinstance(opened, _Client):
                slot.conn = None
                return opened
            slot.conn = client = opened
            # The message waited for the handshake: its clock starts once it could be sent.
            intended = max(intended, client.conn.handshake.done)
        conn = client.conn
        payload = self.payload(client.user)
        self.server_messages += conn.drain()
        if perf_counter() - intended >= self.timeout:
            self.record_timeout(slot, intended)
            return intended + self.timeout
        if book is not None:
            book.entries.clear()  # the handshake's and the last message's are not this one's
        slot.since = intended
        slot.exchange = conn
        room = self.room
        delivery = None
        error = 0
        done = 0.0
        try:
            if room is None:
                await conn.send(payload)
                answers = self.answers
                while True:
                    received = await conn.receive()
                    if answers(payload, received):
                        break
                    # Not the answer (a heartbeat, a flood, the wrong kind): counted, and
                    # the round trip goes on waiting.
                    self.unmatched.add(received)
                done = perf_counter()
            else:
                delivery = room.expect(payload)
                await conn.send(payload)
                await delivery.done.wait()
                done = delivery.last or perf_counter()
            status = STATUS_MESSAGE
        except ConnectionClosed as exc:
            failure = conn.failure
            status = STATUS_EXCEPTION
            error = self.book.kind(failure) if failure is not None else self.book.kind(exc)
            slot.conn = None
        except Exception as exc:
            status, error = STATUS_EXCEPTION, self.book.kind(exc)
        except (SystemExit, KeyboardInterrupt) as exc:
            if not app_interrupt(exc):
                raise
            status, error = STATUS_EXCEPTION, self.book.kind(exc)
        finally:
            if delivery is not None and room is not None:
                room.forget(delivery)
        return self.settle(slot, intended, done or perf_counter(), status, error, book)

    def settle(
        self, slot: Slot, intended: float, done: float, status: int, error: int, book: Ledger | None
    ) -> float:
        """Record the message that ended at *done*, with the waits charged to it."""
        slot.since = 0.0
        if slot.timed_out:
            return done  # the monitor counted it at its deadline
        latency = done - intended
        first = done
        if latency >= self.timeout:
            status, error, latency, first = STATUS_TIMEOUT, self.timeout_kind, self.timeout, 0.0
        self.record(intended, latency, first, status, error, 0)
        if book is not None and book.entries:
            self.rec.add_waits(book.entries, self.origin)
        return done

    async def run(self) -> RunFigures:
        """Run the round; the figures carry the connections' too."""
        if isinstance(self.ws, AsgiWebSocketDriver):
            # The app's own long steps are each message's service (set once a loop monitor
            # runs): a loop stall a message's handler caused is not its wait for the loop.
            self.ws.own_steps = self.own_steps
        figures = await super().run()
        counts = self.ws.counts
        return WebSocketFigures(
            figures.rec,
            figures.book,
            figures.window,
            figures.cpu,
            figures.wall,
            figures.dropped,
            figures.in_flight,
            figures.profile,
            connect=self.connect_us,
            counts=counts,
            held=counts.open,
            server_messages=self.server_messages,
            unmatched=self.unmatched.count,
            unmatched_example=self.unmatched.example,
        )


#: Loop-thread CPU share above which the event loop counts as saturated.
_SATURATED_CPU = 0.85


async def run_websocket_round(
    wplan: WebSocketPlan, live: LiveFigures | None = None
) -> WebSocketResult:
    """Run one round of a WebSocket storm on the running event loop."""
    plan, spec = wplan.plan, wplan.spec
    config = plan.config
    driver: WebSocketDriver
    if plan.url is not None:
        driver = SocketWebSocketDriver(
            plan.url, plan.requests[0], subprotocols=spec.subprotocols, served_by=plan.served_by
        )
    else:
        driver = AsgiWebSocketDriver(
            plan.app, plan.requests[0], subprotocols=spec.subprotocols, lifespan=config.lifespan
        )
    room = Room(spec.listeners) if spec.listeners else None
    connect_us: array[int] = array("q")

    def note(started: float, done: float) -> None:
        connect_us.append(int((done - started) * 1e6))

    async def origin() -> float:
        if room is not None:
            await room.open(driver, spec.connect_timeout, note)
        return perf_counter() + _LEAD

    def make_runner(schedule: Schedule, recorders: list[Recorder] | None) -> AsyncRunner:
        return WebSocketRunner(
            schedule,
            driver,
            plan.mix,
            spec,
            room=room,
            recorders=recorders,
            connect=connect_us,
        )

    output = await execute_async(plan, live, origin, driver=driver, runner_factory=make_runner)
    figures = output.figures
    if not isinstance(figures, WebSocketFigures):  # pragma: no cover - the factory's runner
        raise StormError("a WebSocket round ended without its connection figures")
    result = finish(plan, output)
    ws = _websocket_result(result, figures, room)
    busy = ws.loop_cpu_share
    # Behind a real server the client's own share is judged with the server's usage.
    if plan.url is None and busy is not None and busy >= _SATURATED_CPU:
        # A note, not a warning: the app's own work may be what kept the loop busy.
        ws.notes.append(shared_loop_warning(busy))
    return ws


def _websocket_result(
    result: StormResult, figures: WebSocketFigures, room: Room | None
) -> WebSocketResult:
    # Every handshake counts, warm-up or not: each connection is opened once.
    values = figures.connect
    histogram = new_histogram()
    connect = latency_stats(histogram, record_many(histogram, values))
    base = {name: getattr(result, name) for name in result.__dataclass_fields__}
    counts = figures.counts
    ws = WebSocketResult(
        **base,
        connect=connect,
        connections=counts.accepted,
        refused=counts.refused,
        peak_connections=counts.peak,
        held_connections=figures.held,
        disconnects=counts.disconnects,
        close_codes=Counter(counts.close_codes),
        server_messages=figures.server_messages + (room.other if room is not None else 0),
        listeners=room.size if room is not None else 0,
        unmatched=figures.unmatched,
    )
    if figures.unmatched:
        ws.notes.append(unmatched_messages_note(figures.unmatched, figures.unmatched_example))
    ws.histograms["connect"] = histogram
    ws.websocket = ws.websocket_figures()
    return ws


def websocket_executor(wplan: WebSocketPlan) -> Executor:
    """The executor of a WebSocket storm's rounds: one connection per user on the loop, and
    the connection budgets judged on the chosen round."""

    def run(plan: StormPlan, live: LiveFigures) -> StormResult:
        return anyio.run(run_websocket_round, dataclasses.replace(wplan, plan=plan), live)

    async def arun(plan: StormPlan, live: LiveFigures) -> StormResult:
        return await run_websocket_round(dataclasses.replace(wplan, plan=plan), live)

    def judge(chosen: StormResult) -> StormResult:
        if not isinstance(chosen, WebSocketResult):  # pragma: no cover - every round is one
            raise StormError("a WebSocket storm ended without its WebSocket figures")
        chosen.verdicts.extend(_websocket_verdicts(chosen, wplan.spec.budgets))
        chosen.budgets.update(wplan.spec.budgets)
        return chosen

    return Executor("websocket", run, arun, judge)


def run_websocket_plan(wplan: WebSocketPlan, progress: Progress | None = None) -> WebSocketResult:
    """Fire a WebSocket storm from synchronous code (no event loop may run in this thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise ConfigError(
            "a WebSocket storm was started inside a running event loop; run it from a "
            "synchronous test"
        )
    return cast(WebSocketResult, run_plan(wplan.plan, progress, websocket_executor(wplan)))


def _websocket_verdicts(result: WebSocketResult, budgets: Mapping[str, float]) -> list[Verdict]:
    measures: dict[str, Callable[[WebSocketResult], float]] = {
        "connect_p99_ms": lambda r: r.connect.p99 if r.connect.count else math.inf,
        "max_disconnect_rate": lambda r: r.disconnect_rate if r.connections else math.inf,
    }
    return [
        _verdict(name, budgets[name], measures[name](result))
        for name in measures
        if name in budgets
    ]
