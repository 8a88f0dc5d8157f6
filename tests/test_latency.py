"""Simulated I/O: latency distributions, waits, latency middleware and the fake upstream."""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from pytest_concurrency._apps import detect_interface
from pytest_concurrency._errors import ConfigError
from pytest_concurrency._simio import (
    ConstantLatency,
    Latency,
    UndeclaredUpstreamError,
    Upstream,
    WSGILatencyMiddleware,
    as_latency,
    blocking_io,
    constant,
    empirical,
    exponential,
    lognormal,
    normal,
    seed_latency,
    simulated_io,
    uniform,
    wait_recorder,
    with_latency,
)

N = 20_000
# Tolerances are this many standard errors of the estimate, derived from the model below;
# with a fixed seed the draw is the same every run, and 4 SE would admit almost any seed.
K_SE = 4.0
# A sleep returns no earlier than asked, but the clocks that time it may differ by a tick.
CLOCK_SLACK_S = 0.001

Message = dict[str, Any]


def draw_ms(latency: Latency, *, seed: int = 1, n: int = N) -> list[float]:
    rng = random.Random(seed)
    return [latency.sample(rng) * 1000.0 for _ in range(n)]


def quantile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def std_normal_pdf(x: float) -> float:
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def std_normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


# ------------------------------------------------------------------------ distributions


def test_constant_is_exact() -> None:
    latency = constant(40)
    assert set(draw_ms(latency, n=100)) == {40.0}
    assert latency.mean_ms == 40.0
    assert str(latency) == latency.describe() == "constant(40 ms)"


def test_uniform_stays_in_bounds_and_centres_on_midpoint() -> None:
    latency = uniform(10, 50)
    values = draw_ms(latency)
    assert min(values) >= 10.0
    assert max(values) <= 50.0
    # Standard error of the mean of U(a, b) over n draws: (b - a) / sqrt(12 n).
    se = (50 - 10) / math.sqrt(12 * N)
    assert statistics.fmean(values) == pytest.approx(30.0, abs=K_SE * se)
    assert latency.mean_ms == 30.0


def test_normal_mean_and_stdev() -> None:
    latency = normal(40, 5)
    values = draw_ms(latency)
    # Truncation is negligible eight stdevs above zero; SE(mean) = s/√n, SE(stdev) ≈ s/√(2n).
    assert statistics.fmean(values) == pytest.approx(40.0, abs=K_SE * 5 / math.sqrt(N))
    assert statistics.stdev(values) == pytest.approx(5.0, abs=K_SE * 5 / math.sqrt(2 * N))
    assert latency.mean_ms == pytest.approx(40.0)
    assert latency.describe() == "normal(mean=40 ms, stdev=5 ms)"


def test_normal_is_truncated_at_zero_by_resampling() -> None:
    latency = normal(5, 10)
    values = draw_ms(latency)
    assert min(values) >= 0.0
    # Clipping would put P(X < 0) = Φ(-0.5) ≈ 31 % of draws at exactly 0 ms; resampling
    # leaves (Φ(-0.45) - Φ(-0.5)) / Φ(0.5) ≈ 2.6 % below 0.5 ms.
    below_half_ms = sum(v < 0.5 for v in values) / N
    assert below_half_ms < 0.05
    expected = 5 + 10 * std_normal_pdf(0.5) / std_normal_cdf(0.5)
    assert latency.mean_ms == pytest.approx(expected)
    # The truncated distribution's spread is below the untruncated 10 ms, so 10/√n bounds SE.
    assert statistics.fmean(values) == pytest.approx(expected, abs=K_SE * 10 / math.sqrt(N))
    assert latency.describe() == "normal(mean=5 ms, stdev=10 ms, truncated at 0)"


@pytest.mark.parametrize(("p50", "p99"), [(40, 250), (5, 20)])
def test_lognormal_hits_requested_percentiles(p50: float, p99: float) -> None:
    latency = lognormal(p50, p99)
    assert latency.mu == pytest.approx(math.log(p50))
    assert latency.sigma == pytest.approx((math.log(p99) - math.log(p50)) / 2.3263478740408408)
    values = draw_ms(latency)
    for fraction, target, z in ((0.5, p50, 0.0), (0.99, p99, 2.3263478740408408)):
        # SE of an empirical quantile is √(p(1-p)/n) / f(q); on the log scale f is the
        # normal density / sigma, so the relative error is sigma·√(p(1-p)/n) / φ(z):
        # 0.7 % at p50 and 2.1 % at p99 for (40, 250) over 20k draws.
        relative_se = latency.sigma * math.sqrt(fraction * (1 - fraction) / N) / std_normal_pdf(z)
        assert quantile(values, fraction) == pytest.approx(target, rel=K_SE * relative_se)
    assert latency.mean_ms == pytest.approx(math.exp(latency.mu + latency.sigma**2 / 2))
    assert latency.describe() == f"lognormal(p50={p50} ms, p99={p99} ms)"


def test_lognormal_with_equal_percentiles_is_constant() -> None:
    assert draw_ms(lognormal(40, 40), n=100) == [pytest.approx(40.0)] * 100


def test_exponential_mean_and_median() -> None:
    latency = exponential(20)
    values = draw_ms(latency)
    # For an exponential the standard deviation equals the mean, so SE(mean) = mean/√n;
    # the median's SE is √(0.25/n) / f(median) = mean/√n as well.
    se = 20 / math.sqrt(N)
    assert statistics.fmean(values) == pytest.approx(20.0, abs=K_SE * se)
    assert quantile(values, 0.5) == pytest.approx(20 * math.log(2), abs=K_SE * se)
    assert latency.mean_ms == 20.0
    assert latency.describe() == "exponential(mean=20 ms)"


def test_empirical_draws_only_recorded_values_uniformly() -> None:
    recorded = [1.0, 2.0, 5.0, 40.0]
    latency = empirical(recorded)
    values = draw_ms(latency)
    assert set(values) == set(recorded)
    # Each value's share is binomial(n, 1/4): SE = √(p(1-p)/n).
    se = math.sqrt(0.25 * 0.75 / N)
    for value in recorded:
        assert values.count(value) / N == pytest.approx(0.25, abs=K_SE * se)
    assert latency.mean_ms == 12.0
    assert latency.describe() == "empirical(4 samples, p50=2 ms, p99=40 ms)"


def test_empirical_reads_one_number_a_line(tmp_path: Path) -> None:
    path = tmp_path / "latencies.txt"
    path.write_text("# from production\n12.5\n\n30\n 7 \n", encoding="utf-8")
    for source in (path, str(path)):
        latency = empirical(source)
        assert latency.samples_ms == (12.5, 30.0, 7.0)
        assert latency.source == str(path)
    assert latency.describe() == "empirical(latencies.txt: 3 samples, p50=12.5 ms, p99=30 ms)"
    assert "n=3" in repr(latency)


@pytest.mark.parametrize(
    "make",
    [
        lambda: uniform(1, 50),
        lambda: normal(20, 8),
        lambda: lognormal(40, 250),
        lambda: exponential(30),
        lambda: empirical([1, 2, 3, 4, 5]),
    ],
    ids=["uniform", "normal", "lognormal", "exponential", "empirical"],
)
def test_same_seed_same_waits(make: Callable[[], Latency]) -> None:
    latency = make()
    assert draw_ms(latency, seed=7, n=200) == draw_ms(latency, seed=7, n=200)
    assert draw_ms(latency, seed=7, n=200) != draw_ms(latency, seed=8, n=200)


def test_as_latency() -> None:
    latency = lognormal(40, 250)
    assert as_latency(latency) is latency
    assert as_latency(20) == constant(20)
    assert as_latency(2.5) == ConstantLatency(2.5)
    assert as_latency(None).sample(random.Random(0)) == 0.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: constant(-1), "constant(ms=-1) must be >= 0"),
        (
            lambda: constant("5"),  # type: ignore[arg-type]
            "constant(ms='5') must be a number of milliseconds, got str",
        ),
        (lambda: constant(True), "constant(ms=True) must be a number of milliseconds, got bool"),
        (lambda: uniform(-1, 5), "uniform(low_ms=-1) must be >= 0"),
        (lambda: uniform(10, 5), "uniform(high_ms=5) must be >= low_ms=10"),
        (lambda: normal(-3, 1), "normal(mean_ms=-3) must be >= 0"),
        (lambda: normal(40, -1), "normal(stdev_ms=-1) must be >= 0"),
        (lambda: lognormal(0, 10), "lognormal(p50_ms=0) must be > 0"),
        (lambda: lognormal(40, 10), "lognormal(p99_ms=10) must be >= p50_ms=40"),
        (lambda: lognormal(40, math.inf), "lognormal(p99_ms=inf) must be finite"),
        (lambda: lognormal(math.nan, 10), "lognormal(p50_ms=nan) must be finite"),
        (lambda: exponential(0), "exponential(mean_ms=0) must be > 0"),
        (lambda: empirical([]), "empirical: samples_ms must not be empty"),
        (lambda: empirical([1, -2]), "empirical(samples_ms[1]=-2) must be >= 0"),
        (lambda: as_latency(-5), "constant(ms=-5) must be >= 0"),
        (lambda: as_latency("fast"), "latency='fast' must be a Latency"),
    ],
)
def test_bad_parameters_are_named(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        make()


def test_bad_sample_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("10\n20 ms\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.txt'\) line 2 is not a number .*'20 ms'"):
        empirical(path)
    with pytest.raises(ConfigError, match="cannot be read"):
        empirical(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------- waiting


def test_waits_are_recorded_only_while_started() -> None:
    wait_recorder.stop()
    blocking_io(1)
    wait_recorder.start()
    report_empty = wait_recorder.stop()
    assert report_empty.blocking_waits.count == 0
    assert report_empty.async_waits.count == 0

    async def many() -> list[float]:
        waited: list[float] = []

        async def one() -> None:
            waited.append(await simulated_io(constant(5)))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
        return waited

    wait_recorder.start()
    waited = anyio.run(many)
    blocked = [blocking_io(2) for _ in range(3)]
    report = wait_recorder.stop()
    assert not wait_recorder.active
    assert min(waited) >= 0.005 - CLOCK_SLACK_S
    assert min(blocked) >= 0.002 - CLOCK_SLACK_S
    assert report.async_waits.count == 20
    assert report.blocking_waits.count == 3
    for errors in (report.async_waits, report.blocking_waits):
        assert -1.0 <= errors.p50_ms <= errors.p99_ms <= errors.max_ms
    assert set(report.to_dict()) == {"async", "blocking"}


def test_zero_blocking_wait_returns_at_once() -> None:
    assert blocking_io(None) == 0.0
    assert blocking_io(0) == 0.0


def test_seed_latency_makes_default_draws_reproducible() -> None:
    def statuses() -> list[int]:
        with Upstream() as upstream, httpx.Client() as client:
            upstream.route("http://flaky/", error_rate=0.5)
            return [client.get("http://flaky/x").status_code for _ in range(100)]

    try:
        seed_latency(11)
        first = statuses()
        seed_latency(11)
        assert statuses() == first
        assert 0 < first.count(503) < 100
    finally:
        seed_latency()


# ------------------------------------------------------------------------- middleware


async def tiny_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def tiny_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"ok"]


async def call_asgi(app: Any, scope_type: str = "http") -> list[tuple[float, Message]]:
    """Run one request (or a lifespan cycle) and time each message the app sends."""
    incoming: list[Message]
    if scope_type == "lifespan":
        incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    else:
        incoming = [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[tuple[float, Message]] = []
    start = time.perf_counter()

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append((time.perf_counter() - start, message))

    scope = {"type": scope_type, "asgi": {"version": "3.0"}, "method": "GET", "path": "/"}
    await app(scope, receive, send)
    return sent


def test_asgi_middleware_waits_before_the_app() -> None:
    wrapped = with_latency(tiny_asgi, 20)
    assert detect_interface(wrapped) == "asgi"
    sent = anyio.run(call_asgi, wrapped)
    assert [m["type"] for _, m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0][0] >= 0.020 - CLOCK_SLACK_S
    assert "with_latency(" in repr(wrapped)
    assert "constant(20 ms)" in repr(wrapped)


def test_asgi_middleware_after_holds_the_final_body() -> None:
    wrapped = with_latency(tiny_asgi, 10, after=constant(15))
    sent = anyio.run(call_asgi, wrapped)
    (started, _), (finished, body) = sent
    assert body["body"] == b"ok"
    assert started >= 0.010 - CLOCK_SLACK_S
    assert finished - started >= 0.015 - CLOCK_SLACK_S


def test_asgi_middleware_passes_lifespan_through() -> None:
    wrapped = with_latency(tiny_asgi, 200)
    wait_recorder.start()
    sent = anyio.run(call_asgi, wrapped, "lifespan")
    report = wait_recorder.stop()
    assert [m["type"] for _, m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert report.async_waits.count == report.blocking_waits.count == 0


def test_asgi2_app_is_wrapped() -> None:
    class Asgi2:
        def __init__(self, scope: dict[str, Any]) -> None:
            self.scope = scope

        async def __call__(self, receive: Any, send: Any) -> None:
            await tiny_asgi(self.scope, receive, send)

    sent = anyio.run(call_asgi, with_latency(Asgi2, 5))
    assert sent[-1][1]["body"] == b"ok"


@pytest.mark.parametrize("blocking", [False, True])
def test_asgi_blocking_wait_stalls_the_event_loop(blocking: bool) -> None:
    wrapped = with_latency(tiny_asgi, 20, blocking=blocking)

    async def two_at_once() -> float:
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_asgi, wrapped)
            tg.start_soon(call_asgi, wrapped)
        return time.perf_counter() - start

    wait_recorder.start()
    elapsed = anyio.run(two_at_once)
    report = wait_recorder.stop()
    assert elapsed >= 0.020 - CLOCK_SLACK_S
    if blocking:
        # time.sleep on the loop thread: the second request cannot start its wait until
        # the first has finished, so the two waits add up.
        assert report.blocking_waits.count == 2
        assert elapsed >= 0.040 - CLOCK_SLACK_S
    else:
        assert report.async_waits.count == 2


def test_wsgi_middleware_blocks_before_and_after() -> None:
    wrapped = with_latency(tiny_wsgi, 20, after=10)
    assert isinstance(wrapped, WSGILatencyMiddleware)
    assert detect_interface(wrapped) == "wsgi"
    statuses: list[str] = []
    wait_recorder.start()
    start = time.perf_counter()
    body = wrapped({"REQUEST_METHOD": "GET"}, lambda status, headers: statuses.append(status))
    elapsed = time.perf_counter() - start
    report = wait_recorder.stop()
    assert list(body) == [b"ok"]
    assert statuses == ["200 OK"]
    assert elapsed >= 0.030 - CLOCK_SLACK_S
    assert report.blocking_waits.count == 2


def test_with_latency_rejects_non_apps() -> None:
    with pytest.raises(ConfigError, match="is not callable"):
        with_latency(42, 10)


# --------------------------------------------------------------------------- upstream


def test_upstream_answers_async_client_created_before_install() -> None:
    async def main() -> None:
        async with httpx.AsyncClient() as client:
            with Upstream() as upstream:
                route = upstream.route("http://model-server/generate", latency=10, json={"a": 1})
                start = time.perf_counter()
                response = await client.get("http://model-server/generate?q=1")
                elapsed = time.perf_counter() - start
        assert response.status_code == 200
        assert response.json() == {"a": 1}
        assert response.headers["content-type"] == "application/json"
        assert elapsed >= 0.010 - CLOCK_SLACK_S
        assert (route.calls, route.in_flight, route.max_in_flight) == (1, 0, 1)
        assert route.waited_s >= 0.010 - CLOCK_SLACK_S

    anyio.run(main)


def test_upstream_answers_sync_clients_on_many_threads() -> None:
    with Upstream() as upstream, httpx.Client() as client:
        route = upstream.route("http://search", latency=5, content="hit")

        def calls() -> None:
            for _ in range(10):
                response = client.get("http://search/q")
                assert response.text == "hit"

        wait_recorder.start()
        threads = [threading.Thread(target=calls) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        report = wait_recorder.stop()
    assert route.calls == 80
    assert route.in_flight == 0
    assert 2 <= route.max_in_flight <= 8
    assert report.blocking_waits.count == 80
    assert report.async_waits.count == 0


def test_upstream_handler_and_status() -> None:
    def echo(request: httpx.Request) -> dict[str, Any]:
        return {"method": request.method, "got": request.content.decode()}

    async def ahandler(request: httpx.Request) -> str:
        await anyio.sleep(0)
        return "async"

    async def main(upstream: Upstream) -> None:
        async with httpx.AsyncClient() as client:
            response = await client.post("http://svc/echo", content=b"hi")
            assert response.status_code == 201
            assert response.json() == {"method": "POST", "got": "hi"}
            assert (await client.get("http://svc/async")).text == "async"

    with Upstream() as upstream:
        upstream.route("http://svc/echo", handler=echo, status=201)
        upstream.route("http://svc/bytes", handler=lambda r: b"\x00\x01")
        upstream.route("http://svc/raw", handler=lambda r: httpx.Response(418, text="teapot"))
        upstream.route("http://svc/async", handler=ahandler)
        upstream.route("http://svc/none", handler=lambda r: None)
        anyio.run(main, upstream)
        with httpx.Client() as client:
            assert client.get("http://svc/bytes").content == b"\x00\x01"
            assert client.get("http://svc/raw").status_code == 418
            with pytest.raises(TypeError, match=r"awaitable to a sync httpx\.Client"):
                client.get("http://svc/async")
            with pytest.raises(TypeError, match=r"must give an httpx\.Response, dict"):
                client.get("http://svc/none")


def test_upstream_longest_prefix_and_method_win() -> None:
    with Upstream() as upstream, httpx.Client() as client:
        anything = upstream.route("http://svc/", content="any")
        nested = upstream.route("http://svc/a/b", content="nested")
        posts = upstream.route("http://svc/a/b", method="post", content="post")
        assert client.get("http://svc/a/b/c").text == "nested"
        assert client.get("http://svc/a/b").text == "nested"
        assert client.post("http://svc/a/b/c").text == "post"
        # Prefixes match whole path segments: /a/bc is not under /a/b.
        assert client.get("http://svc/a/bc").text == "any"
        assert (anything.calls, nested.calls, posts.calls) == (1, 2, 1)
        assert posts.label == "POST http://svc/a/b"
        with pytest.raises(UndeclaredUpstreamError):
            client.get("http://svc:8080/a")  # another port is another host


def test_upstream_streams_chunks_async() -> None:
    async def main() -> None:
        with Upstream() as upstream:
            route = upstream.route(
                "http://llm/generate",
                latency=5,
                stream=["tok1 ", b"tok2 ", "tok3"],
                chunk_latency=10,
            )
            arrivals: list[float] = []
            chunks: list[bytes] = []
            async with httpx.AsyncClient() as client:
                start = time.perf_counter()
                async with client.stream("POST", "http://llm/generate", json={}) as response:
                    assert route.in_flight == 1
                    async for chunk in response.aiter_bytes():
                        chunks.append(chunk)
                        arrivals.append(time.perf_counter() - start)
            assert route.in_flight == 0
        assert chunks == [b"tok1 ", b"tok2 ", b"tok3"]
        assert response.headers["transfer-encoding"] == "chunked"
        assert arrivals[0] >= 0.005 - CLOCK_SLACK_S
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
        assert min(gaps) >= 0.010 - CLOCK_SLACK_S

    anyio.run(main)


def test_upstream_streams_chunks_sync_and_counts_early_close() -> None:
    with Upstream() as upstream, httpx.Client() as client:
        route = upstream.route("http://llm/", stream=["a", "b", "c"], chunk_latency=5)
        start = time.perf_counter()
        assert client.get("http://llm/x").content == b"abc"
        assert time.perf_counter() - start >= 0.010 - CLOCK_SLACK_S
        with client.stream("GET", "http://llm/x") as response:
            assert next(response.iter_raw()) == b"a"
            assert route.in_flight == 1
        assert route.in_flight == 0
        assert route.calls == 2


def test_upstream_error_rate() -> None:
    async def main() -> list[int]:
        async with httpx.AsyncClient() as client:
            return [(await client.get("http://svc/x")).status_code for _ in range(2000)]

    with Upstream() as upstream:
        route = upstream.route("http://svc/", error_rate=0.1, seed=3)
        statuses = anyio.run(main)
    failed = statuses.count(503)
    # Binomial(2000, 0.1): SE = √(0.1·0.9/2000) = 0.67 %, so ±3 % is 4.5 SE.
    assert failed / 2000 == pytest.approx(0.1, abs=0.03)
    assert route.errors == failed
    assert statuses.count(200) == 2000 - failed


def test_upstream_timeouts() -> None:
    async def main() -> None:
        with Upstream() as upstream:
            hung = upstream.route("http://slow/hung", timeout_rate=1.0)
            late = upstream.route("http://slow/late", latency=200)
            async with httpx.AsyncClient(timeout=0.02) as client:
                start = time.perf_counter()
                with pytest.raises(httpx.ReadTimeout, match="simulated read timeout"):
                    await client.get("http://slow/hung")
                assert time.perf_counter() - start >= 0.020 - CLOCK_SLACK_S
                start = time.perf_counter()
                with pytest.raises(httpx.ReadTimeout):
                    await client.get("http://slow/late")
                elapsed = time.perf_counter() - start
        assert (hung.timeouts, late.timeouts) == (1, 1)
        # A 200 ms answer to a 20 ms read timeout costs the timeout, not the answer.
        assert 0.020 - CLOCK_SLACK_S <= elapsed < 0.150

    anyio.run(main)
    with Upstream() as upstream, httpx.Client(timeout=0.01) as client:
        route = upstream.route("http://slow/", timeout_rate=1.0)
        with pytest.raises(httpx.ReadTimeout):
            client.get("http://slow/x")
        assert route.timeouts == 1


def test_undeclared_host_is_an_error_that_says_how_to_declare_it() -> None:
    async def main(upstream: Upstream) -> None:
        async with httpx.AsyncClient() as client:
            message = (
                "undeclared upstream host 'api.example.com': "
                "GET http://api.example.com/v1/items was not answered"
            )
            with pytest.raises(UndeclaredUpstreamError, match=re.escape(message)) as info:
                await client.get("http://api.example.com/v1/items")
            assert 'upstream.route("http://api.example.com/"' in str(info.value)
            assert isinstance(info.value, httpx.TransportError)
            # An app that swallows the error still leaves a trace for the report.
            for _ in range(3):
                with contextlib.suppress(httpx.HTTPError):
                    await client.get("http://api.example.com/v1/items")
            with pytest.raises(UndeclaredUpstreamError, match=r"no route for this path"):
                await client.get("http://model-server/other")

    with Upstream() as upstream:
        upstream.route("http://model-server/generate")
        anyio.run(main, upstream)
    assert upstream.undeclared == [
        "http://api.example.com/v1/items",
        "http://model-server/other",
    ]
    assert upstream.undeclared_calls == 5


def test_undeclared_list_is_bounded() -> None:
    with Upstream(max_undeclared=3) as upstream, httpx.Client() as client:
        for index in range(5):
            with pytest.raises(UndeclaredUpstreamError):
                client.get(f"http://nowhere/{index}")
    assert len(upstream.undeclared) == 3
    assert upstream.undeclared_calls == 5


def test_max_in_flight_counts_concurrent_async_calls() -> None:
    async def main(upstream: Upstream) -> None:
        async with httpx.AsyncClient() as client, anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(client.get, "http://model-server/generate")

    with Upstream() as upstream:
        route = upstream.route("http://model-server/generate", latency=20)
        anyio.run(main, upstream)
    assert route.max_in_flight == 50
    assert route.in_flight == 0
    assert route.calls == 50


def test_stats_and_reset() -> None:
    with Upstream() as upstream, httpx.Client() as client:
        upstream.route("http://svc/a", method="GET", latency=lognormal(1, 2), error_rate=0.0)
        for _ in range(3):
            client.get("http://svc/a")
        with pytest.raises(UndeclaredUpstreamError):
            client.get("http://elsewhere/")
        stats = upstream.stats()
        figures = stats["GET http://svc/a"]
        assert figures["calls"] == 3
        assert figures["latency"] == "lognormal(p50=1 ms, p99=2 ms)"
        assert figures["waited_ms_p50"] >= 1.0 - 1.0
        assert figures["waited_ms_max"] >= figures["waited_ms_p99"] >= figures["waited_ms_p50"]
        upstream.reset()
        assert upstream.stats()["GET http://svc/a"]["calls"] == 0
        assert upstream.undeclared == []
        assert upstream.undeclared_calls == 0


def test_uninstall_restores_httpx() -> None:
    originals = (
        httpx.HTTPTransport.handle_request,
        httpx.AsyncHTTPTransport.handle_async_request,
    )

    def current() -> tuple[object, object]:
        return (httpx.HTTPTransport.handle_request, httpx.AsyncHTTPTransport.handle_async_request)

    outer, inner = Upstream(), Upstream()
    outer.route("http://svc/", content="outer")
    inner.route("http://svc/", content="inner")
    with outer, httpx.Client() as client:
        assert current() != originals
        with pytest.raises(RuntimeError, match="already installed"):
            outer.install()
        with inner:
            assert client.get("http://svc/").text == "inner"
        assert client.get("http://svc/").text == "outer"
    assert current() == originals
    assert not outer.installed

    with pytest.raises(KeyError), Upstream():
        raise KeyError("boom")
    assert current() == originals


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"error_rate": 1.5}, "error_rate=1.5 must be between 0.0 and 1.0"),
        (
            {"error_rate": 0.6, "timeout_rate": 0.6},
            "error_rate=0.6 + timeout_rate=0.6 must not exceed 1.0",
        ),
        ({"json": {}, "content": "x"}, "give at most one of json, content, handler, stream"),
        ({"status": 42}, "status=42 must be an HTTP status"),
        ({"latency": -1}, "constant(ms=-1) must be >= 0"),
    ],
)
def test_bad_route_parameters_are_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Upstream().route("http://svc/", **kwargs)


def test_bad_route_urls() -> None:
    upstream = Upstream()
    with pytest.raises(ConfigError, match="must be an absolute http"):
        upstream.route("/generate")
    with pytest.raises(ConfigError, match="must not have a query"):
        upstream.route("http://svc/a?b=1")
    upstream.route("http://svc/a")
    with pytest.raises(ConfigError, match="already declared"):
        upstream.route("http://svc/a/")


# --------------------------------------------------------------------------- latency units


def test_a_bare_latency_below_one_is_refused_with_the_unit_spelled_out() -> None:
    upstream = Upstream()
    message = (
        "upstream.route('http://model-server/generate'): latency=0.05 is a bare number below "
        "1, and latencies are in milliseconds: this would be 0.05 ms, not 50 ms; for 0.05 "
        "seconds write latency=50 or latency='0.05s', for 0.05 milliseconds write "
        "latency='0.05ms' or latency=constant(0.05)"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        upstream.route("http://model-server/generate", latency=0.05)
    with pytest.raises(ConfigError, match=r"chunk_latency=0\.5 is a bare number below 1"):
        upstream.route("http://model-server/stream", stream=["a"], chunk_latency=0.5)
    # A refused route is not declared (nor shipped to a server's processes).
    assert upstream.routes == []
    assert upstream.declarations == []
    with pytest.raises(ConfigError, match=r"latency=0\.2 is a bare number below 1"):
        with_latency(lambda environ, start_response: [], 0.2)
    with pytest.raises(ConfigError, match=r"latency=0\.05 is a bare number below 1"):
        blocking_io(0.05)


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (0, 0.0),
        (1, 1.0),
        (50, 50.0),
        ("0.05s", 50.0),
        ("50ms", 50.0),
        (" 50 ms ", 50.0),
        ("0.05ms", 0.05),
        ("500us", 0.5),
        ("500µs", 0.5),
        ("1e-3s", 1.0),
    ],
)
def test_latency_with_a_unit_or_a_bare_number_of_milliseconds(value: Any, ms: float) -> None:
    route = Upstream().route("http://model-server/", latency=value)
    assert route.latency.mean_ms == pytest.approx(ms)


@pytest.mark.parametrize("value", ["50", "50 sec", "fast", "-5ms", "ms"])
def test_a_latency_string_needs_a_unit(value: str) -> None:
    message = f"latency={value!r} must be a Latency (constant, uniform, normal, lognormal, "
    with pytest.raises(ConfigError, match=re.escape(message)):
        as_latency(value)


def test_a_simulated_wait_never_ends_before_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # uvloop's timers count whole milliseconds and may fire up to one early.
    import time

    import anyio

    from pytest_concurrency import simulated_io

    real_sleep = anyio.sleep

    async def early(delay: float) -> None:
        await real_sleep(max(0.0, delay - 0.001))

    monkeypatch.setattr(anyio, "sleep", early)

    async def main() -> list[float]:
        out = []
        for _ in range(5):
            start = time.perf_counter()
            await simulated_io(5)
            out.append(time.perf_counter() - start)
        return out

    assert min(anyio.run(main)) >= 0.005
