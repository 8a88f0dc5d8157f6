"""Stateful virtual users (on_start, cookies, tokens), checks on responses, default error budget."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from typing import Any
from urllib.parse import parse_qs

import pytest

from pytest_concurrency import BudgetExceeded, ConfigError, Request, run_storm


def _cookie_asgi() -> Any:
    sessions: set[str] = set()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        cookie = headers.get(b"cookie", b"").decode()
        if scope["path"] == "/login":
            body = (await receive())["body"]
            name = json.loads(body)["user"]
            sessions.add(name)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"set-cookie", f"session={name}; Path=/; HttpOnly".encode())],
                }
            )
            await send({"type": "http.response.body", "body": b"{}"})
            return
        ok = cookie.startswith("session=") and cookie.split("=", 1)[1] in sessions
        await send({"type": "http.response.start", "status": 200 if ok else 401, "headers": []})
        await send({"type": "http.response.body", "body": b"me" if ok else b"who are you?"})

    app.sessions = sessions  # type: ignore[attr-defined]
    return app


def _cookie_wsgi() -> Any:
    sessions: set[str] = set()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/login":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            name = json.loads(environ["wsgi.input"].read(length))["user"]
            sessions.add(name)
            start_response("200 OK", [("Set-Cookie", f"session={name}; Path=/")])
            return [b"{}"]
        cookie = environ.get("HTTP_COOKIE", "")
        ok = cookie.startswith("session=") and cookie.split("=", 1)[1] in sessions
        start_response("200 OK" if ok else "401 Unauthorized", [])
        return [b"me" if ok else b"who are you?"]

    app.sessions = sessions  # type: ignore[attr-defined]
    return app


@pytest.mark.parametrize("make", [_cookie_asgi, _cookie_wsgi], ids=["asgi", "wsgi"])
def test_every_user_logs_in_once_and_its_cookie_is_sent_back(make: Any) -> None:
    app = make()
    logins: list[int] = []

    def login(user: Any) -> None:
        logins.append(user.index)
        response = user.post("/login", json={"user": f"u{user.index}"})
        assert response.status == 200

    result = run_storm(app, "GET", "/me", users=8, workers=4, requests=200, on_start=login)
    assert sorted(logins) == list(range(8))
    assert app.sessions == {f"u{i}" for i in range(8)}
    assert result.status_counts == {200: 200}
    start = result.extras["on_start"]
    assert start["requests"] == 8
    assert start["status_counts"] == {200: 8}
    # Start-hook requests are not mixed into the storm's own figures.
    assert result.requests == 200


def test_async_start_hook_carries_a_token_into_a_request_factory() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/token":
            user = parse_qs(scope["query_string"].decode())["user"][0]
            body = json.dumps({"access_token": f"t-{user}"}).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        auth = dict(scope["headers"]).get(b"authorization", b"")
        ok = auth.startswith(b"Bearer t-")
        await send({"type": "http.response.start", "status": 200 if ok else 401, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def login(user: Any) -> None:
        response = await user.get("/token", query={"user": user.index})
        user.state["token"] = response.json()["access_token"]

    def me(user: Any, iteration: int) -> Request:
        return Request("GET", "/me", headers={"Authorization": f"Bearer {user.state['token']}"})

    result = run_storm(app, requests=me, users=5, duration=0.3, on_start=login)
    assert result.requests > 0
    assert result.status_counts == {200: result.requests}


def test_default_headers_per_user_are_sent() -> None:
    seen: set[bytes] = set()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.add(dict(scope["headers"]).get(b"x-tenant", b""))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def tenant(user: Any) -> None:
        user.headers["X-Tenant"] = f"t{user.index % 3}"

    run_storm(app, "GET", "/", users=6, requests=60, on_start=tenant)
    assert seen == {b"t0", b"t1", b"t2"}


def test_on_start_is_refused_for_the_open_model_and_must_be_callable() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    with pytest.raises(ConfigError, match=r"on_start .*needs the closed model"):
        run_storm(app, "GET", "/", rate=10, on_start=lambda user: None)
    with pytest.raises(ConfigError, match=r"on_start=5 .*must be a callable"):
        run_storm(app, "GET", "/", on_start=5)


def _flaky(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ["PATH_INFO"] == "/half":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"ok": false}']
    start_response("503 Service Unavailable", [])
    return [b"upstream is down"]


def test_checks_count_failures_with_a_sample_body() -> None:
    def body_ok(response: Any) -> bool:
        return bool(response.json()["ok"])

    result = run_storm(_flaky, "GET", "/half", requests=20, checks=[200, body_ok], check=False)
    assert result.failed == 20
    assert result.error_rate == 1.0
    failure = result.errors["CheckFailed"]
    assert failure.count == 20
    assert "body_ok returned False" in failure.example
    assert '{"ok": false}' in failure.example


def test_per_request_checks_and_status_sets() -> None:
    mix = [
        Request("GET", "/half", checks={200, 204}),
        Request("GET", "/half", checks=201, name="wrong"),
    ]
    result = run_storm(_flaky, requests=mix, users=2, duration=0.3, check=False)
    assert result.endpoints["GET /half"].errors == 0
    assert result.endpoints["wrong"].errors == result.endpoints["wrong"].requests > 0
    assert "status 200, expected 201" in result.errors["CheckFailed"].example


def test_a_storm_whose_requests_all_failed_fails_by_default() -> None:
    with pytest.raises(BudgetExceeded, match="max_error_rate") as failed:
        run_storm(_flaky, "GET", "/down", requests=10)
    result = failed.value.result
    assert result.extras["samples"] == {503: "upstream is down"}
    # An error budget lifts the default.
    run_storm(_flaky, "GET", "/down", requests=10, max_error_rate=1.0)


def test_bad_checks_are_refused_before_any_load() -> None:
    with pytest.raises(ConfigError, match=r"checks='ok' \(from keyword argument\)"):
        run_storm(_flaky, "GET", "/", checks="ok")
    with pytest.raises(ConfigError, match="999 is not an HTTP status"):
        run_storm(_flaky, "GET", "/", checks=999)


async def _answers_after_a_second(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await asyncio.sleep(1.0)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_a_storm_whose_every_request_timed_out_fails_whatever_its_error_budget() -> None:
    with pytest.raises(BudgetExceeded, match="max_error_rate") as failed:
        run_storm(
            _answers_after_a_second,
            "GET",
            "/",
            users=5,
            requests=5,
            timeout_ms=100,
            max_error_rate=1.0,
        )
    result = failed.value.result
    assert result.timeouts == result.requests == 5
    assert not result.passed
    assert "every one of the 5 requests timed out" in str(failed.value)


def test_a_storm_with_no_request_in_its_window_does_not_pass_without_budgets() -> None:
    # Each user's first request is sent during warm-up and answers after the window ends.
    with pytest.raises(BudgetExceeded, match="no request completed") as failed:
        run_storm(_answers_after_a_second, "GET", "/", users=2, warmup=0.5, duration=0.2)
    assert failed.value.result.requests == 0
    assert not failed.value.result.passed


def _who_asgi(seen: list[str]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(dict(scope["headers"]).get(b"x-user", b"").decode())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


def _who_wsgi(seen: list[str]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ.get("HTTP_X_USER", ""))
        start_response("200 OK", [])
        return [b""]

    return app


@pytest.mark.parametrize("make", [_who_asgi, _who_wsgi], ids=["asgi", "wsgi"])
def test_a_failed_start_hook_fails_its_user_and_the_storm(make: Any) -> None:
    seen: list[str] = []

    def login(user: Any) -> None:
        user.headers["X-User"] = str(user.index)
        if user.index % 2:
            raise ValueError(f"no account for user {user.index}")

    with pytest.raises(BudgetExceeded, match=r"on_start") as failed:
        run_storm(make(seen), "GET", "/", users=8, duration=0.3, on_start=login)
    result = failed.value.result
    start = result.extras["on_start"]
    assert start["hooks_failed_count"] == 4
    assert start["hook_errors"] == {"ValueError": 4}
    assert "raise ValueError" in start["example"]  # one example traceback
    # Users whose hook failed sent nothing; the others sent as usual.
    assert {int(u) for u in seen} == {0, 2, 4, 6}
    table = str(failed.value)
    assert "4 of 8 users' start hooks failed (ValueError ×4)" in table
    assert "no account for user" in table


def test_a_start_hook_that_exits_or_returns_a_generator_is_a_counted_failure() -> None:
    seen: list[str] = []

    def leaves(user: Any) -> Any:
        if user.index == 0:
            raise SystemExit(0)
        return (step for step in ("login",))  # a generator: nothing of it runs

    with pytest.raises(BudgetExceeded, match="on_start") as failed:
        run_storm(_who_asgi(seen), "GET", "/", users=3, requests=10, on_start=leaves)
    start = failed.value.result.extras["on_start"]
    assert start["hook_errors"] == {"SystemExit": 1, "NotRun": 2}
    assert seen == []


def test_start_hooks_that_cannot_run_as_hooks_are_refused_before_load() -> None:
    seen: list[str] = []

    def generator(user: Any) -> Any:
        yield user.get("/login")

    async def async_generator(user: Any) -> Any:
        yield await user.get("/login")

    def two(user: Any, other: Any) -> None: ...

    def none() -> None: ...

    for hook in (generator, async_generator):
        with pytest.raises(
            ConfigError, match=r"on_start=.* \(from keyword argument\) is a generator"
        ):
            run_storm(_who_asgi(seen), "GET", "/", requests=5, on_start=hook)
    for hook in (two, none):
        with pytest.raises(
            ConfigError, match=r"on_start=.* must take one argument, the virtual user"
        ):
            run_storm(_who_wsgi(seen), "GET", "/", requests=5, on_start=hook)
    assert seen == []


def test_a_start_hook_past_its_deadline_fails_its_user_and_the_storm_ends_on_time() -> None:
    seen: list[str] = []
    release = threading.Event()

    def stuck(user: Any) -> None:
        if user.index == 1:
            release.wait(10)  # far past its deadline (timeout_ms)

    started = time.perf_counter()
    try:
        with pytest.raises(BudgetExceeded, match="on_start") as failed:
            run_storm(
                _who_wsgi(seen), "GET", "/", users=3, duration=0.3, timeout_ms=200, on_start=stuck
            )
        elapsed = time.perf_counter() - started
    finally:
        release.set()
    # Before: the storm waited for the hook (10 s); now the user fails at 0.2 s.
    assert elapsed < 0.2 + 0.3 + 2.0
    start = failed.value.result.extras["on_start"]
    assert start["hook_errors"] == {"HookDeadline": 1}
    assert "still running at its 0.2 s deadline" in str(failed.value)


def test_an_async_start_hook_that_blocks_the_loop_is_named_with_its_overrun() -> None:
    seen: list[str] = []

    async def blocks(user: Any) -> None:
        time.sleep(0.3)  # holds the loop: no deadline can interrupt it

    with pytest.raises(BudgetExceeded, match="on_start") as failed:
        run_storm(_who_asgi(seen), "GET", "/", users=1, requests=3, timeout_ms=100, on_start=blocks)
    assert re.search(
        r"on_start hook blocked for \d+\.\d s past its 0\.1 s deadline", str(failed.value)
    )


def test_an_async_check_is_awaited_on_an_async_driver() -> None:
    seen: list[str] = []
    awaited: list[int] = []

    async def never_ok(response: Any) -> bool:
        await asyncio.sleep(0)
        awaited.append(response.status)
        return False

    with pytest.raises(BudgetExceeded, match="max_error_rate") as failed:
        run_storm(_who_asgi(seen), "GET", "/", requests=10, checks=never_ok)
    result = failed.value.result
    assert awaited == [200] * 10
    assert result.errors["CheckFailed"].count == 10
    assert "never_ok returned False" in result.errors["CheckFailed"].example

    # An async check that holds: the storm passes.
    async def ok(response: Any) -> bool:
        return response.status == 200

    assert run_storm(_who_asgi(seen), "GET", "/", requests=10, checks=ok).passed


def test_an_async_check_is_refused_before_load_on_the_wsgi_pool() -> None:
    seen: list[str] = []

    async def ok(response: Any) -> bool:
        return True

    with pytest.raises(
        ConfigError, match=r"checks: ok \(from keyword argument\) is an async def check"
    ):
        run_storm(_who_wsgi(seen), "GET", "/", requests=5, checks=ok)
    with pytest.raises(ConfigError, match=r"checks of GET /: ok .* is an async def check"):
        run_storm(_who_wsgi(seen), requests=[Request("GET", "/", checks=ok)], duration=0.2)
    assert seen == []


def test_a_check_that_is_no_plain_verdict_fails_its_request() -> None:
    seen: list[str] = []

    def says_yes(response: Any) -> str:
        return "yes"  # truthy, but no verdict

    def leaves(response: Any) -> bool:
        raise SystemExit(1)

    async def ok(response: Any) -> bool:
        return True

    def built(user: Any, iteration: int) -> Request:
        return Request("GET", "/", checks=ok)  # made mid-storm: not seen before load

    class bool_:  # numpy's bool, as numpy names it
        def __bool__(self) -> bool:
            return False

    def numpy_says_no(response: Any) -> Any:
        return bool_()

    for check, wanted in [
        (says_yes, "says_yes returned str, not True, False or None"),
        (leaves, "leaves raised SystemExit: 1"),
        (numpy_says_no, "numpy_says_no returned False"),
    ]:
        result = run_storm(_who_wsgi(seen), "GET", "/", requests=5, checks=check, check=False)
        assert result.errors["CheckFailed"].count == 5
        assert wanted in result.errors["CheckFailed"].example
    result = run_storm(_who_wsgi(seen), requests=built, users=1, duration=0.2, check=False)
    assert result.failed == result.requests > 0
    assert "an async check" in result.errors["CheckFailed"].example


def test_checks_that_cannot_judge_are_refused_before_load() -> None:
    def generator(response: Any) -> Any:
        yield response.status == 200

    def two(response: Any, other: Any) -> bool:
        return True

    with pytest.raises(ConfigError, match=r"checks=.*generator.* is a generator function"):
        run_storm(_flaky, "GET", "/", checks=generator)
    with pytest.raises(ConfigError, match=r"checks=.*two.* must take one argument, the response"):
        run_storm(_flaky, "GET", "/", checks=[200, two])


@pytest.mark.parametrize("make", [_who_asgi, _who_wsgi], ids=["asgi", "wsgi"])
def test_a_check_that_blocks_past_its_deadline_is_named(make: Any) -> None:
    seen: list[str] = []

    def slow(response: Any) -> bool:
        time.sleep(0.15)
        return True

    result = run_storm(
        make(seen), "GET", "/", users=1, requests=2, timeout_ms=100, checks=slow, check=False
    )
    assert result.failed == 2
    assert result.errors["CheckFailed"].count == 2
    assert re.search(
        r"check slow blocked for \d+\.\d s past its 0\.1 s deadline",
        result.errors["CheckFailed"].example,
    )
    assert result.latency.max == pytest.approx(100, abs=1)


def test_an_async_check_past_its_deadline_fails_its_request_on_time() -> None:
    seen: list[str] = []

    async def hangs(response: Any) -> bool:
        await asyncio.sleep(30)
        return True

    started = time.perf_counter()
    result = run_storm(
        _who_asgi(seen), "GET", "/", requests=2, timeout_ms=100, checks=hangs, check=False
    )
    assert time.perf_counter() - started < 5.0  # the check would hang for 30 s
    assert result.failed == 2
    assert "check hangs was still running at its 0.1 s deadline" in (
        result.errors["CheckFailed"].example
    )
