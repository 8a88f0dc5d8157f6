"""Mistakes a first-time user makes with frameworks and clients the examples do not use:
each is refused or said before it can mislead."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pytest_concurrency._errors import ConfigError
from pytest_concurrency._simio.upstream import Upstream


@pytest.mark.parametrize(
    ("url", "segment", "prefix"),
    [
        ("http://prices.invalid/price/{sku}", "{sku}", "http://prices.invalid/price"),
        ("http://prices.invalid/v1/<int:sku>/stock", "<int:sku>", "http://prices.invalid/v1"),
        ("https://llm.invalid/v1/*", "*", "https://llm.invalid/v1"),
        ("http://llm.invalid/{model}:generate", "{model}:generate", "http://llm.invalid"),
    ],
)
def test_a_route_written_as_a_template_is_refused_with_the_prefix_to_use(
    url: str, segment: str, prefix: str
) -> None:
    # A route matches a literal path prefix; '{sku}' never matches '/price/abc', so the
    # storm would only fail every request with an undeclared-route warning at its end.
    with pytest.raises(ConfigError) as caught:
        Upstream().route(url, json={"price": 1})
    message = str(caught.value)
    assert f"upstream.route({url!r})" in message
    assert f"path segment {segment!r}" in message
    assert re.search(rf"declare {re.escape(repr(prefix))}", message)


@pytest.mark.parametrize(
    "url",
    [
        "http://prices.invalid/price",
        "http://prices.invalid/price/",
        "http://llm.invalid/v1/models/gemini:generateContent",
        "http://prices.invalid/a%7Bb%7D",
        "http://prices.invalid",
    ],
)
def test_literal_prefixes_stay_accepted(url: str) -> None:
    Upstream().route(url, json={"price": 1})


PLAIN_TEST = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

def test_plain(storm):
    storm(app, "GET", "/", users=2, requests=20)
"""


def test_a_markdown_summary_asked_for_without_a_comparison_says_why_it_is_empty(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the file was silently not written: a CI job summary showed nothing at all.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_plain=PLAIN_TEST)
    result = pytester.runpytest(
        "-p", "pytest_concurrency.plugin", "-p", "no:cacheprovider",
        "--concurrency-markdown=out/summary.md",
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    lines = (pytester.path / "out" / "summary.md").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "### pytest-storm: storms"
    assert lines[2].startswith("No storm was compared: this session had no comparison")
    assert "--concurrency-compare=NAME" in lines[2]
    assert "--concurrency-control=REF" in lines[2]
    result.stdout.fnmatch_lines(
        ["Markdown summary (--concurrency-markdown, *summary.md): this session had no comparison*"]
    )


def test_a_request_in_the_server_s_app_ends_with_its_response_not_with_the_app_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Quart behind uvicorn with a blocking handler: the app's coroutine returns one round of
    # blocking calls after the response went out, so "p99 requests in the server's app"
    # read 830 ms while the storm's slowest request took 439 ms.
    import asyncio
    import types

    from pytest_concurrency._servers import agent

    clock = [1.0]
    monkeypatch.setattr(agent, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        clock[0] = 1.02
        await send({"type": "http.response.start", "status": 200, "headers": []})
        clock[0] = 1.05
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        clock[0] = 1.1
        await send({"type": "http.response.body", "body": b"b"})
        clock[0] = 3.0  # the framework's teardown, after the client has its answer

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    requests = agent._Requests()
    scope = {"type": "http", "method": "GET", "path": "/slow"}
    asyncio.run(requests.serve(app, scope, receive, send))
    assert len(sent) == 3
    assert list(requests.rec.latency) == [100_000]  # 1.0 → 1.1 s, in µs
    assert list(requests.rec.status) == [200]


def test_a_request_whose_app_never_finished_its_response_ends_when_the_app_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio
    import types

    from pytest_concurrency._servers import agent

    clock = [1.0]
    monkeypatch.setattr(agent, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        clock[0] = 1.5

    async def ignore(*_: Any) -> Any:
        return {"type": "http.disconnect"}

    requests = agent._Requests()
    asyncio.run(requests.serve(app, {"type": "http", "method": "GET", "path": "/"}, ignore, ignore))
    assert list(requests.rec.latency) == [500_000]


async def _asgi_ok(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _wsgi_ok(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_workers_on_an_asgi_app_in_process_are_said_to_change_nothing() -> None:
    # Before, workers=4 on a Quart or Litestar app in-process was dropped without a word,
    # and the storm read as if four workers had served it.
    from pytest_concurrency import run_storm

    result = run_storm(_asgi_ok, "GET", "/", users=2, requests=20, workers=4, threads=2)
    assert result.requests == 20
    said = [n for n in result.notes if "was not applied" in n]
    assert len(said) == 2
    assert said[0].startswith("workers=4 (from keyword argument) was not applied: an ASGI app")
    assert said[1].startswith("threads=2 (from keyword argument) was not applied")
    assert "processes=N" in said[0]
    assert "server='uvicorn' with workers=N" in said[0]


def test_workers_on_a_wsgi_app_or_left_at_one_say_nothing() -> None:
    from pytest_concurrency import run_storm

    wsgi = run_storm(_wsgi_ok, "GET", "/", users=2, requests=20, workers=4)
    asgi = run_storm(_asgi_ok, "GET", "/", users=2, requests=20, workers=1)
    for result in (wsgi, asgi):
        assert not [n for n in result.notes if "was not applied" in n]


def test_a_capacity_answer_that_failed_one_of_its_storms_gives_a_range_above_it() -> None:
    # Falcon + requests, 30 users: 8 workers failed 2 of 2 storms, 9 passed 2 of 3. The
    # search said "the answer lies between 9 and 9 workers"; 9 may not be enough, and 10
    # passed every storm it had.
    from pytest_concurrency._capacity import search_capacity
    from pytest_concurrency._model.result import StormResult

    from .test_gates import pool_result

    calls: dict[int, int] = {}
    script = {9: [True, False, True]}

    def run(workers: int) -> StormResult:
        calls[workers] = calls.get(workers, 0) + 1
        seq = script.get(workers)
        ok = seq.pop(0) if seq else workers >= 9
        return pool_result(workers, 10.0 if ok else 500.0)

    found = search_capacity(run, range(1, 31), budgets={"p99_ms": 100}, repeats=3)
    assert found.best == 9
    assert calls[9] == 3
    assert found.confidence == "uncertain"
    assert found.answer_range == (9, 10)
    summary = "\n".join(found.summary())
    assert "the answer lies between 9 and 10 workers" in summary


def _fake_module(name: str, filename: str, source: str, **names: Any) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": name, **names}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def test_a_refusal_in_a_task_under_a_server_names_the_app_line_not_the_server() -> None:
    # Litestar + aiohttp behind uvicorn: aiohttp resolves names in a task of its own, and
    # uvloop runs tasks from C, so below aiohttp's frames the stack held uvicorn's
    # asyncio_run. The refusal was blamed on "uvicorn/_compat.py:30 in asyncio_run"; the
    # line the app called aiohttp from (kept when the call began) is what it must name.
    import sys

    from pytest_concurrency._simio import egress

    resolver = _fake_module(
        "aiohttp.resolver",
        "/venv/site-packages/aiohttp/resolver.py",
        "def resolve():\n    return caller(sys._getframe())\n",
        caller=egress._caller,
        sys=sys,
    )
    for server in (
        "uvicorn._compat",
        "hypercorn.asyncio.run",
        "granian._loops",
        "gunicorn.arbiter",
    ):
        top = server.partition(".")[0]
        runner = _fake_module(
            server, f"/venv/site-packages/{top}/run.py", "def run(task):\n    return task()\n"
        )
        token = egress._ORIGIN.set("/srv/app.py:45 in evil")
        try:
            client, site = runner["run"](resolver["resolve"])
        finally:
            egress._ORIGIN.reset(token)
        assert client == "aiohttp"
        assert site == "/srv/app.py:45 in evil", server


AIOHTTP_SERVER_APP = """
import aiohttp


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get("http://not-declared.invalid/x") as response:
                status = response.status
        except aiohttp.ClientError:
            status = 502
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})
"""


def test_an_aiohttp_refusal_behind_a_real_server_names_the_apps_line(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server process installs the guard before it imports the app, so aiohttp's
    # session was not there to be wrapped, and the name lookup's own task (whose stack ends
    # in uvicorn's loop) was all the guard saw: "uvicorn/_compat.py:30 in asyncio_run".
    pytest.importorskip("uvicorn")
    pytest.importorskip("aiohttp")
    from pytest_concurrency import run_storm

    (tmp_path / "aiohttp_server_app.py").write_text(AIOHTTP_SERVER_APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run_storm(
        "aiohttp_server_app:app",
        "GET",
        "/",
        users=1,
        requests=3,
        server="uvicorn",
        max_error_rate=1,
        check=False,
    )
    assert result.status_counts == {502: 3}
    (refusal,) = result.refused_egress
    assert refusal["host"] == "not-declared.invalid"
    assert refusal["client"] == "aiohttp"
    line = (
        AIOHTTP_SERVER_APP.splitlines().index(
            '            async with session.get("http://not-declared.invalid/x") as response:'
        )
        + 1
    )
    assert refusal["site"].endswith(f"aiohttp_server_app.py:{line} in app"), refusal["site"]


def test_concurrent_aiohttp_calls_sharing_one_refused_lookup_are_each_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Litestar + aiohttp, 5 users: aiohttp makes one name lookup for concurrent calls to a
    # host, so 1,029 failed requests read "refused egress ×512".
    aiohttp = pytest.importorskip("aiohttp")
    import asyncio

    from pytest_concurrency._simio.egress import EgressGuard

    from .test_egress import Spy

    spy = Spy(monkeypatch)

    async def main() -> list[BaseException | None]:
        async with aiohttp.ClientSession() as session:

            async def call() -> BaseException | None:
                try:
                    async with session.get("http://not-declared.invalid/x"):
                        return None
                except aiohttp.ClientError as exc:
                    return exc

            return await asyncio.gather(*(call() for _ in range(5)))

    with EgressGuard() as guard:
        errors = asyncio.run(main())
    assert all(isinstance(e, aiohttp.ClientConnectorError) for e in errors)
    (refusal,) = guard.refusals()
    assert refusal["host"] == "not-declared.invalid"
    assert refusal["count"] == 5
    assert spy.lookups == []
    assert spy.off_machine == []


def test_aiohttp_on_the_virtual_clock_is_told_to_use_the_wall_clock() -> None:
    # Litestar + aiohttp with clock='virtual': the loopback upstream is not started under
    # virtual time, so every call was refused with "declare the host with upstream.route",
    # though it was declared, and "declared but never called ... through the storm's
    # loopback server", which was not running.
    aiohttp = pytest.importorskip("aiohttp")
    from pytest_concurrency import run_storm
    from pytest_concurrency._simio.upstream import Upstream

    url = "http://llm.internal.invalid/v1/generate"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            async with aiohttp.ClientSession() as session, session.post(url) as response:
                status = response.status
        except aiohttp.ClientError:
            status = 502
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with Upstream() as upstream:
        upstream.route(url, latency=200, json={"text": "Hello!"})
        result = run_storm(app, "POST", "/", users=2, requests=4, clock="virtual", check=False)
    assert result.status_counts == {502: 4}
    assert sum(r["count"] for r in result.refused_egress) == 4
    (said,) = [w for w in result.warnings if "clock='virtual'" in w]
    assert said.startswith(
        "clock='virtual' answers declared upstream routes for httpx and httpx2 only, in-process:"
        " 4 call(s) to llm.internal.invalid from aiohttp at "
    )
    assert "run this storm with clock='wall'" in said
    assert not [w for w in result.warnings if "never called" in w]


GROUP_TRACEBACK = """  + Exception Group Traceback (most recent call last):
  |   File "/venv/litestar/app.py", line 645, in lifespan
  |     async with AsyncExitStack() as exit_stack:
  | ExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)
  +-+---------------- 1 ----------------
    | Traceback (most recent call last):
    |   File "/srv/broken_app.py", line 4, in boom
    |     raise RuntimeError("database unreachable at startup")
    | RuntimeError: database unreachable at startup
    +------------------------------------
"""


@pytest.mark.parametrize(
    ("message", "first_line"),
    [
        (GROUP_TRACEBACK, "RuntimeError: database unreachable at startup"),
        (
            'Traceback (most recent call last):\n  File "app.py", line 3, in startup\n'
            "    connect()\nsqlalchemy.exc.OperationalError: unable to open database file\n",
            "sqlalchemy.exc.OperationalError: unable to open database file",
        ),
        ("the cache is cold", "the cache is cold"),
    ],
)
def test_a_failed_lifespan_startup_leads_with_the_exception_the_app_sent(
    message: str, first_line: str
) -> None:
    # Litestar sends its whole traceback as the lifespan.startup.failed message: the cause
    # was the last of some 30 lines.
    from pytest_concurrency import StormError, run_storm

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": message})

    with pytest.raises(StormError) as caught:
        run_storm(app, "GET", "/", users=1, requests=1)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"the app's lifespan startup failed: {first_line}"
    assert message.strip() in str(caught.value)


def _fidelity_data(inprocess: float, real: float) -> dict[str, Any]:
    return {
        "servers": {"inprocess": {}, "uvicorn": {}},
        "rows": [{"figure": "rps", "inprocess": inprocess, "real": real, "server": "uvicorn"}],
    }


def test_an_in_process_storm_slower_than_the_real_server_is_not_explained_as_faster() -> None:
    # Litestar + aiohttp to a loopback upstream: 457 rps in-process, 604 behind uvicorn. The
    # sentence said the in-process model leaves out the server's per-request costs, which
    # explains the opposite difference.
    from pytest_concurrency._report._fidelity import differences

    (slower,) = differences(_fidelity_data(457, 604))
    assert slower.startswith("uvicorn: in-process throughput is 0.8× the real server's: ")
    assert "shares one process and its interpreter lock with the load generator" in slower
    assert "leaves out" not in slower
    (faster,) = differences(_fidelity_data(10_768, 5_693))
    assert faster.startswith("uvicorn: in-process throughput is 1.9× the real server's: ")
    assert "which the in-process model leaves out" in faster
