"""The in-process WSGI driver and its worker-pool model."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

import pytest

from pytest_concurrency import StormError, run_storm

from .apps import ClosingBody, wsgi_hello, wsgi_sleep


def test_environ_is_built_by_werkzeug_from_the_spec() -> None:
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append({**environ, "body": environ["wsgi.input"].read()})
        start_response("201 Created", [])
        return [b""]

    result = run_storm(app, "POST", "/items", json={"a": 1}, query={"q": "x"}, requests=3)
    environ = seen[0]
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["PATH_INFO"] == "/items"
    assert environ["QUERY_STRING"] == "q=x"
    assert environ["CONTENT_TYPE"] == "application/json"
    assert environ["body"] == b'{"a":1}'
    assert seen[1]["body"] == b'{"a":1}'  # each request reads a fresh input stream
    assert result.status_counts[201] == 3
    assert result.server == "1 sync worker"


def test_iterable_is_consumed_and_closed() -> None:
    ClosingBody.closed = 0

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return ClosingBody([b"a", b"b"])

    run_storm(app, "GET", "/", users=2, requests=25, workers=2)
    assert ClosingBody.closed == 25


def test_exception_is_a_recorded_500() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        raise KeyError("missing")

    result = run_storm(app, "GET", "/", requests=10, check=False)
    assert result.status_counts[500] == 10
    assert "KeyError" in result.errors
    assert "missing" in result.errors["KeyError"].example


def test_pool_describes_the_server_model() -> None:
    result = run_storm(wsgi_hello, "GET", "/", requests=10, workers=2, threads=4)
    assert result.server == "2 workers × 4 threads"
    assert result.pool is not None
    assert result.pool.size == 8


@pytest.mark.usefixtures("no_leaked_threads")
def test_no_worker_thread_outlives_its_storm() -> None:
    before = threading.active_count()
    run_storm(wsgi_sleep(0.001), "GET", "/", users=20, workers=4, threads=2, duration=0.3)
    assert threading.active_count() == before


def test_slow_handler_is_counted_as_timeout_and_storm_ends() -> None:
    started = time.perf_counter()
    result = run_storm(
        wsgi_sleep(0.3), "GET", "/", users=2, workers=2, duration=0.2, timeout_ms=100, check=False
    )
    assert result.timeouts == result.requests >= 2
    assert result.throughput == 0  # nothing completed for its client
    assert result.latency.max == pytest.approx(100, abs=1)
    assert time.perf_counter() - started < 0.2 + 0.3 + 2.0


def test_handler_that_never_returns_is_reported_not_hung() -> None:
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        release.wait(10)
        start_response("200 OK", [])
        return [b""]

    started = time.perf_counter()
    try:
        with pytest.raises(StormError, match=r"still running the app.*storm-wsgi-0 in app\(\)"):
            run_storm(app, "GET", "/", users=1, duration=0.1, timeout_ms=50)
    finally:
        release.set()
    # duration + timeout + grace, plus the join allowance
    assert time.perf_counter() - started < 0.1 + 0.05 + 2.0 + 1.5


def test_requests_stop_condition_with_threads() -> None:
    result = run_storm(wsgi_hello, "GET", "/", users=10, workers=4, requests=500)
    assert result.requests == 500


def test_window_shorter_than_a_round_of_users_is_flagged() -> None:
    # 50 users on 2 workers × 50 ms: one round takes 1.25 s, the window is 0.3 s.
    result = run_storm(wsgi_sleep(0.05), "GET", "/", users=50, workers=2, duration=0.3)
    assert any("shorter than one round of users" in w for w in result.warnings)
    steady = run_storm(wsgi_sleep(0.005), "GET", "/", users=4, workers=2, duration=0.3)
    assert not any("one round" in w for w in steady.warnings)


# -- response headers and lengths, held to gunicorn and PEP 3333 ---------------------------


def _answer(headers: list[Any], *chunks: bytes, written: bytes = b"") -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", headers)
        if written:
            write(written)
        return list(chunks)

    return app


@pytest.mark.parametrize(
    ("header", "kind"),
    [
        (("X-A", "v\r\nSet-Cookie: evil=1"), "InvalidHeader"),
        (("X-A", "a\x00b"), "InvalidHeader"),
        (("X-A", "snow \u2603"), "InvalidHeader"),
        (("X A", "v"), "InvalidHeader"),
        (("Content-Length", "two"), "InvalidHeader"),
        (("Connection", "close"), "HopByHopHeader"),
        (("Keep-Alive", "timeout=5"), "HopByHopHeader"),
        (("Transfer-Encoding", "chunked"), "HopByHopHeader"),
        (("upgrade", "websocket"), "HopByHopHeader"),
    ],
    ids=repr,
)
def test_a_response_header_gunicorn_or_pep_3333_refuses_is_a_protocol_error(
    header: tuple[str, str], kind: str
) -> None:
    app = _answer([("Content-Type", "text/plain"), header], b"ok")
    result = run_storm(app, "GET", "/", requests=10, check=False)
    assert result.errors[kind].count == result.failed == 10
    assert header[0].lower() in result.errors[kind].example.lower()


@pytest.mark.parametrize(
    ("declared", "chunks", "written", "word"),
    [
        ("5", (b"ok",), b"", "shorter"),
        ("1", (b"ok",), b"", "longer"),
        ("3", (b"ok",), b"ab", "longer"),
    ],
)
def test_a_content_length_that_lies_is_a_protocol_error(
    declared: str, chunks: tuple[bytes, ...], written: bytes, word: str
) -> None:
    app = _answer([("Content-Length", declared)], *chunks, written=written)
    result = run_storm(app, "GET", "/", requests=10, check=False)
    mismatch = result.errors["ContentLengthMismatch"]
    assert mismatch.count == result.failed == 10
    assert f"the body is {word} than its content-length" in mismatch.example


@pytest.mark.parametrize(
    ("method", "headers", "chunks", "written"),
    [
        ("GET", [("Content-Length", "4")], (b"cd",), b"ab"),
        ("HEAD", [("Content-Length", "100")], (), b""),
        ("GET", [("X-Latin", "caf\u00e9"), ("X-Tab", "a\tb")], (b"ok",), b""),
    ],
)
def test_responses_gunicorn_sends_pass(
    method: str, headers: list[Any], chunks: tuple[bytes, ...], written: bytes
) -> None:
    app = _answer(headers, *chunks, written=written)
    result = run_storm(app, method, "/", requests=10)
    assert result.status_counts == {200: 10}


def test_a_response_that_turns_malformed_after_many_good_ones_is_still_caught() -> None:
    # Checked headers and statuses are remembered; a response that changes after hundreds
    # of good ones is checked again.
    served = [0]
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with lock:
            served[0] += 1
            n = served[0]
        if n > 700:
            start_response("OK", [("Content-Type", "text/plain")])
        elif n > 400:
            start_response("200 OK", [("Content-Type", "text/plain"), ("X-A", "v\r\nX-B: 1")])
        else:
            start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    result = run_storm(app, "GET", "/", users=4, workers=2, requests=1000, check=False)
    assert result.status_counts[200] == 400
    assert result.errors["InvalidHeader"].count == 300
    assert result.errors["BadStatus"].count == 300


def test_start_response_with_exc_info_replaces_headers_not_yet_sent() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("late failure")
        except ValueError:
            start_response("503 Service Unavailable", [("Retry-After", "1")], sys.exc_info())
        return [b"busy"]

    result = run_storm(app, "GET", "/", requests=20, check=False)
    assert result.status_counts == {503: 20}


def test_start_response_with_exc_info_after_the_body_started_raises_the_apps_error() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"partial")
        try:
            raise ValueError("failed mid-body")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"never"]

    result = run_storm(app, "GET", "/", requests=20, check=False)
    assert result.errors["ValueError"].count == result.failed == 20
    assert "failed mid-body" in result.errors["ValueError"].example


@pytest.mark.parametrize(("sleep", "timeout_ms"), [(0.35, 300), (0.15, 100)])
def test_handlers_slower_than_the_timeout_are_timeouts_not_a_crash(
    sleep: float, timeout_ms: int, no_leaked_threads: None
) -> None:
    # 20 users on 8 threads, each handler slower than the timeout: the backlog drains past
    # the storm's end; every late completion is a timeout, and no handler is "stuck" while
    # it is inside its own deadline.
    started = time.perf_counter()
    result = run_storm(
        wsgi_sleep(sleep),
        "GET",
        "/",
        users=20,
        workers=8,
        duration=0.2,
        timeout_ms=timeout_ms,
        check=False,
    )
    assert result.timeouts == result.requests >= 8
    assert result.latency.max == pytest.approx(timeout_ms, abs=1)
    assert result.queue_wait is not None
    assert result.queue_wait.max <= timeout_ms + 1
    assert not result.passed
    # The storm's end, its timeout, then at most one handler each past that.
    assert time.perf_counter() - started < 0.2 + 2 * timeout_ms / 1000 + sleep + 2.0


def test_a_pool_that_cannot_start_its_threads_stops_those_it_started(
    monkeypatch: pytest.MonkeyPatch, no_leaked_threads: None
) -> None:
    real_start = threading.Thread.start
    started: list[str] = []

    def start(self: threading.Thread) -> None:
        if self.name.removeprefix("storm-wsgi-").isdigit():  # a worker thread of the pool
            if len(started) >= 5:
                raise RuntimeError("can't start new thread")
            started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(
        StormError, match=r"could start only 5 of its 16 threads \(workers=4 × threads=4\)"
    ):
        run_storm(wsgi_hello, "GET", "/", workers=4, threads=4, users=4, duration=0.2)
    monkeypatch.undo()
    # The process can still storm: nothing of the failed pool is left running.
    assert run_storm(wsgi_hello, "GET", "/", users=4, requests=20).requests == 20


def test_a_live_line_reads_a_wsgi_storm_while_it_runs() -> None:
    from pytest_concurrency._engine.plan import LiveFigures, plan_storm
    from pytest_concurrency._engine.rounds import run_pool_round
    from pytest_concurrency._params import Layer

    plan = plan_storm(
        wsgi_sleep(0.005),
        "GET",
        "/",
        layers=[Layer("test", {"users": 4, "workers": 4, "requests": 40})],
    )
    live = LiveFigures(plan)
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(live.snapshot())
            stop.wait(0.002)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        result = run_pool_round(plan, live)
    finally:
        stop.set()
        reader.join()
    final = live.snapshot()
    assert final["requests"] == result.requests == 40
    assert final["errors"] == 0
    # Every latency read live is a whole request's: at least the handler's sleep.
    assert final["p99_ms"] >= 1.0
    counts = [figures["requests"] for figures in seen]
    assert counts == sorted(counts)
    assert any(0 < count < 40 for count in counts)


def test_a_worker_records_become_the_same_integer_records() -> None:
    from pytest_concurrency._drivers.wsgi import _Tape
    from pytest_concurrency._metrics import Recorder

    tape = _Tape()
    origin, timeout = 64.0, 1.0  # instants that binary floats hold exactly
    # intended, picked, first byte (0.0: none), finished; status | endpoint << 16 | error << 32
    rows = [
        ((64.5, 64.515625, 64.53125, 64.5625), 200),
        ((65.0, 65.25, 0.0, 65.5), 500 | 3 << 32),
        ((66.0, 67.5, 0.0, 67.625), 0 | 1 << 16 | 2 << 32),  # queued past its timeout
        ((67.0, 67.125, 67.25, 68.5), 404 | 1 << 16),  # finished after its deadline
    ]
    for times, code in rows:
        tape.add(*times, code)
    rec = Recorder()
    tape.into(rec, origin, timeout)
    assert list(rec.start) == [500_000, 1_000_000, 2_000_000, 3_000_000]
    # A latency is capped at the client's deadline, a queue wait at the latency.
    assert list(rec.latency) == [62_500, 500_000, 1_000_000, 1_000_000]
    assert list(rec.ttfb) == [31_250, -1, -1, 250_000]
    assert list(rec.queue) == [15_625, 250_000, 1_000_000, 125_000]
    assert list(rec.status) == [200, 500, 0, 404]
    assert list(rec.endpoint) == [0, 0, 1, 1]
    assert list(rec.error) == [0, 3, 2, 0]
    assert tape.tail(2) == (4, [1_625_000, 1_500_000], [0, 404])
