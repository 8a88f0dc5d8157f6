"""Workload models: open arrivals, stages, request mixes, think time, timeouts and rounds."""

from __future__ import annotations

import random
import time
from typing import Any

import anyio
import pytest

from pytest_concurrency import BudgetExceeded, ConfigError, Request, StormError, run_storm
from pytest_concurrency._workload import Profile

from .apps import asgi_hello, asgi_sleep, wsgi_hello, wsgi_sleep


def test_profile_arrivals_follow_the_rate() -> None:
    rng = random.Random(1)
    steady = list(Profile.constant(200).arrivals(2.0, poisson=False, rng=rng))
    assert len(steady) == 400
    assert steady[1] - steady[0] == pytest.approx(0.005)
    # A ramp 0 -> 100 rps over 2 s integrates to 100 arrivals, bunched towards the end.
    ramp = list(Profile.ramp(100, 2.0).arrivals(2.0, poisson=False, rng=rng))
    assert len(ramp) == 100
    assert sum(1 for t in ramp if t >= 1.0) == 75
    # Poisson arrivals at 1,000/s over 20 s: 20,000 ± 3 sigma (sigma = sqrt(20,000) ≈ 141).
    poisson = list(Profile.constant(1000).arrivals(20.0, poisson=True, rng=rng))
    assert abs(len(poisson) - 20_000) < 3 * 141


def test_profile_stages_and_next_above() -> None:
    profile = Profile.stages(10, [(5, 500), (2, 500), (3, 0)])
    assert profile.value(0) == 10
    assert profile.value(2.5) == pytest.approx(255)
    assert profile.value(6) == 500
    assert profile.value(8.5) == pytest.approx(250)
    assert profile.next_above(9, 0) == 0
    assert profile.next_above(255, 0) == pytest.approx(2.5, abs=1e-6)
    assert profile.next_above(600, 0) is None
    assert profile.end == 10


def test_request_mix_follows_its_weights() -> None:
    # 5,000+ requests split 80/20: the count of each is binomial, sigma = sqrt(n·0.8·0.2) ≈ 0.57 %
    # of n, so ±3 % is more than five sigma.
    mix = [
        Request("GET", "/items/1", weight=8),
        Request("POST", "/items", json={"name": "x"}, weight=2),
    ]
    result = run_storm(asgi_hello, requests=mix, users=20, duration=0.6, seed=7)
    assert result.requests >= 5000
    share = result.endpoints["GET /items/1"].requests / result.requests
    assert share == pytest.approx(0.8, abs=0.03)
    assert (
        result.endpoints["POST /items"].requests + result.endpoints["GET /items/1"].requests
        == result.requests
    )
    assert result.method == "MIX"


def test_per_endpoint_budgets() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "POST":
            await anyio.sleep(0.02)
        await asgi_hello(scope, receive, send)

    mix = [Request("GET", "/a"), Request("POST", "/b")]
    with pytest.raises(BudgetExceeded, match=r"POST /b p99_ms") as raised:
        run_storm(
            app,
            requests=mix,
            users=10,
            duration=0.4,
            budgets={"POST /b": {"p99_ms": 10}, "GET /a": {"p99_ms": 500}},
        )
    verdicts = {v.name: v.ok for v in raised.value.result.verdicts}  # type: ignore[attr-defined]
    assert verdicts == {"POST /b p99_ms": False, "GET /a p99_ms": True}
    with pytest.raises(
        ConfigError, match=r"'p99' is not a per-endpoint budget; did you mean 'p99_ms'\?"
    ):
        run_storm(app, requests=mix, budgets={"POST /b": {"p99": 10}})


def test_templated_requests_get_unique_ids() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(scope["path"])
        await asgi_hello(scope, receive, send)

    def request(user: int, iteration: int) -> Request:
        return Request(
            "GET", f"/users/{user}/orders/{iteration}", name="GET /users/{id}/orders/{n}"
        )

    result = run_storm(app, requests=request, users=5, duration=0.2)
    assert len(seen) == len(set(seen)) >= 50
    assert list(result.endpoints) == ["GET /users/{id}/orders/{n}"]


def test_templated_requests_on_wsgi() -> None:
    def request(user: int, iteration: int) -> Request:
        return Request("GET", f"/u/{user}/{iteration}")

    result = run_storm(wsgi_sleep(0.001), requests=request, users=4, workers=4, duration=0.2)
    # Unnamed templated requests: the first 50 paths are endpoints, the rest "(other)".
    assert len(result.endpoints) == 51
    assert result.endpoints["(other)"].requests == result.requests - 50


def test_think_time_as_a_distribution() -> None:
    from pytest_concurrency._simio import constant

    # 10 users, each thinking 20 ms between near-instant requests: 10 / 0.02 = 500 rps.
    result = run_storm(asgi_hello, "GET", "/", users=10, think_ms=constant(20), duration=1.0)
    assert result.throughput == pytest.approx(500, rel=0.2)


def test_open_model_drops_arrivals_beyond_max_in_flight() -> None:
    # 5 in flight at most, each taking 100 ms: at most 50 rps are served of the 200 arriving.
    with pytest.raises(BudgetExceeded, match="max_dropped") as raised:
        run_storm(
            asgi_sleep(0.1), "GET", "/", rate=200, in_flight_cap=5, duration=1.0, max_dropped=0
        )
    result = raised.value.result  # type: ignore[attr-defined]
    assert result.model == "open"
    assert result.dropped == pytest.approx(150, abs=30)
    assert result.requests + result.dropped == pytest.approx(200, abs=10)
    assert sum(p.dropped for p in result.timeline) == result.dropped


def test_open_model_on_wsgi_counts_drops() -> None:
    result = run_storm(
        wsgi_sleep(0.1), "GET", "/", rate=100, in_flight_cap=3, workers=2, duration=1.0, check=False
    )
    assert result.dropped > 0
    assert result.requests + result.dropped == pytest.approx(100, abs=5)


def test_users_and_rate_are_exclusive() -> None:
    with pytest.raises(ConfigError, match=r"users=5 and rate=10 are both set"):
        run_storm(asgi_hello, "GET", "/", users=5, rate=10)


def test_bad_stages() -> None:
    with pytest.raises(ConfigError, match=r"stage 1 lasts -1 s"):
        run_storm(asgi_hello, "GET", "/", stages=[(1, 10), (-1, 5)])
    with pytest.raises(ConfigError, match=r"stages and duration=1 are both set"):
        run_storm(asgi_hello, "GET", "/", stages=[(1, 10)], duration=1)


def test_asgi_timeout_disconnects_the_app_and_the_storm_ends_on_time() -> None:
    disconnects: list[float] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()  # the request body
        with anyio.move_on_after(2.0):
            message = await receive()  # a long poll: wait for the client to go
            if message["type"] == "http.disconnect":
                disconnects.append(time.perf_counter())
                return
        await asgi_hello(scope, receive, send)

    started = time.perf_counter()
    result = run_storm(app, "GET", "/", users=4, duration=0.5, timeout_ms=100, check=False)
    elapsed = time.perf_counter() - started
    assert result.timeouts == result.requests >= 4 * 3
    assert result.status_counts == {}
    assert len(disconnects) >= result.timeouts - 4
    assert elapsed < 0.5 + 0.1 + 2.0


def test_asgi_timeout_cancels_an_app_that_does_not_listen() -> None:
    cancelled: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            await anyio.sleep(2.0)
        except anyio.get_cancelled_exc_class():
            cancelled.append(True)
            raise

    started = time.perf_counter()
    result = run_storm(app, "GET", "/", users=3, duration=0.4, timeout_ms=100, check=False)
    assert result.timeouts >= 9
    assert len(cancelled) >= result.timeouts - 3
    assert time.perf_counter() - started < 0.4 + 0.1 + 2.0


def test_rounds_are_judged_on_the_median() -> None:
    result = run_storm(asgi_sleep(0.005), "GET", "/", users=5, duration=0.3, rounds=3, p99_ms=1000)
    assert len(result.rounds) == 3
    p99s = sorted(r["p99"] for r in result.rounds)
    assert result.latency.p99 == p99s[1]
    assert any("3 rounds, judged on the median one" in w for w in result.notes)


def _fast_or_slow_asgi() -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await anyio.sleep(1.0)
        await asgi_hello(scope, receive, send)

    return app


def _fast_or_slow_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ["PATH_INFO"] == "/slow":
        time.sleep(0.3)
    start_response("200 OK", [])
    return [b"ok"]


@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
def test_timeouts_are_booked_to_their_own_endpoint(interface: str) -> None:
    mix = [Request("GET", "/fast", weight=1), Request("GET", "/slow", weight=1)]
    app = _fast_or_slow_asgi() if interface == "asgi" else _fast_or_slow_wsgi
    result = run_storm(
        app, requests=mix, users=4, workers=4, duration=0.6, timeout_ms=100, check=False, seed=3
    )
    slow, fast = result.endpoints["GET /slow"], result.endpoints["GET /fast"]
    # Every /slow request outlives the 100 ms timeout; no /fast request does.
    assert slow.requests > 0
    assert slow.errors == slow.requests
    assert fast.errors == 0
    assert result.timeouts == slow.requests


# -- request headers that cannot be sent ---------------------------------------------------

SMUGGLED = {"X": "v\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x"}
BAD_HEADERS = [
    SMUGGLED,
    {"X\r\nInjected": "v"},
    {"X": "a\x00b"},
    {"X": "a\nb"},
    {"Two words": "v"},
    {"": "v"},
]


def _listener() -> Any:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    return sock


@pytest.mark.parametrize("target", ["asgi", "wsgi", "server"])
@pytest.mark.parametrize("headers", BAD_HEADERS, ids=repr)
def test_a_header_with_cr_lf_nul_or_a_bad_name_is_refused_before_load(
    headers: dict[str, str], target: str
) -> None:
    listener = _listener()
    try:
        params: dict[str, Any] = {"duration": 0.1, "users": 1}
        app: Any = asgi_hello
        if target == "wsgi":
            app = wsgi_sleep(0.0)
        elif target == "server":
            params["server"] = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(ConfigError) as info:
            run_storm(app, "GET", "/", headers=headers, **params)
        message = str(info.value)
        name, value = next(iter(headers.items()))
        assert f"headers={{{name!r}: {value!r}}}" in message
        assert "of request 'GET /'" in message
        assert "(from storm() arguments)" in message
        # Nothing reached the server: no connection was even made.
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_a_bad_header_in_a_mix_names_its_request_and_a_bad_cookie_its_field() -> None:
    mix = [Request(path="/ok"), Request(path="/bad", headers=SMUGGLED)]
    with pytest.raises(
        ConfigError, match=r"headers=\{'X': .* of request 'GET /bad' \(from requests\[1\]\)"
    ):
        run_storm(asgi_hello, requests=mix, duration=0.1)
    cookies = {"session": "a\r\nX-Injected: 1"}
    with pytest.raises(
        ConfigError, match=r"cookies=\{'session': .* must not contain CR, LF or NUL"
    ):
        run_storm(asgi_hello, requests=[Request(cookies=cookies)], duration=0.1)


def test_a_body_that_is_not_bytes_is_a_config_error_naming_content() -> None:
    with pytest.raises(ConfigError, match=r"content=\(1, 2\) \(from storm\(\) arguments\)"):
        run_storm(asgi_hello, "POST", "/", content=(1, 2), duration=0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
def test_a_factory_header_that_cannot_be_sent_fails_its_request_and_is_never_sent(
    interface: str,
) -> None:
    seen: list[Any] = []

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(dict(scope["headers"]).get(b"x"))
        await asgi_hello(scope, receive, send)

    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ.get("HTTP_X"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def factory(user: int, iteration: int) -> Request:
        if iteration % 2:
            return Request(path="/", headers=SMUGGLED)
        return Request(path="/", headers={"X": "fine"})

    app: Any = asgi if interface == "asgi" else wsgi
    result = run_storm(app, requests=factory, users=2, duration=0.2, check=False)
    failed = result.errors["InvalidRequestHeader"]
    assert "headers={'X': 'v\\r\\n\\r\\nGET /smuggled" in failed.example
    assert failed.count >= 10
    # Only the good requests reached the app; every bad one was counted, none sent.
    assert set(seen) <= {b"fine", "fine"}
    assert result.requests == len(seen) + failed.count


@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
def test_a_factory_returning_something_else_mid_storm_stops_the_storm_naming_it(
    interface: str,
) -> None:
    def factory(user: int, iteration: int) -> Any:
        return Request(path="/") if iteration < 3 else 42

    app: Any = asgi_hello if interface == "asgi" else wsgi_sleep(0.0)
    with pytest.raises(StormError, match=r"requests=<function .*factory.* returned 42 for user"):
        run_storm(app, requests=factory, users=2, duration=0.5, check=False)


@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
def test_a_header_a_start_hook_sets_that_cannot_be_sent_fails_every_request_unsent(
    interface: str,
) -> None:
    seen: list[Any] = []

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(scope["path"])
        await asgi_hello(scope, receive, send)

    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"ok"]

    def on_start(user: Any) -> None:
        user.headers["X-Token"] = "t\r\nX-Admin: 1"

    app: Any = asgi if interface == "asgi" else wsgi
    result = run_storm(app, "GET", "/", users=2, duration=0.2, on_start=on_start, check=False)
    failed = result.errors["InvalidRequestHeader"]
    assert "user.headers['X-Token'] = 't\\r\\nX-Admin: 1'" in failed.example
    assert failed.count == result.requests > 0
    assert seen == []


def test_a_method_outside_ascii_is_a_config_error_naming_method() -> None:
    with pytest.raises(ConfigError, match=r"method='GÉT' \(from storm\(\) arguments\)"):
        run_storm(asgi_hello, "GÉT", "/", duration=0.1)


@pytest.mark.parametrize("app", [asgi_hello, wsgi_hello], ids=["asgi", "wsgi"])
def test_a_request_factory_that_exits_stops_the_storm_with_an_error_naming_it(app: Any) -> None:
    def leaves(user: Any, iteration: int) -> Request:
        if iteration == 3:
            raise SystemExit(0)  # would end a script with status 0 and no output
        return Request("GET", "/")

    with pytest.raises(StormError, match=r"requests=<function .*leaves.* raised SystemExit"):
        run_storm(app, requests=leaves, users=1, duration=0.3)

    def at_once(user: Any, iteration: int) -> Request:
        raise SystemExit(2)

    with pytest.raises(ConfigError, match=r"requests=<function .*at_once.* raised SystemExit: 2"):
        run_storm(app, requests=at_once, users=1, duration=0.3)


def test_a_budget_for_an_endpoint_the_mix_does_not_have_is_named_before_load() -> None:
    mix = [Request("GET", "/ok", name="health"), Request("GET", "/items/1")]
    with pytest.raises(
        ConfigError,
        match=(
            r"budgets=\{'GET /ok': \.\.\.\} \(from keyword argument\) names an endpoint that no "
            r"request of the storm has; the storm's endpoints are 'health', 'GET /items/1' "
            r"\(a request's name= is its endpoint\)"
        ),
    ):
        run_storm(asgi_hello, requests=mix, duration=0.1, budgets={"GET /ok": {"p99_ms": 50}})
    with pytest.raises(ConfigError, match=r"did you mean 'GET /items/1'\?"):
        run_storm(asgi_hello, requests=mix, duration=0.1, budgets={"GET /items/2": {"p99_ms": 50}})
    named = run_storm(asgi_hello, requests=mix, duration=0.1, budgets={"health": {"p99_ms": 5000}})
    assert [v.name for v in named.verdicts if v.name.startswith("health")] == ["health p99_ms"]
