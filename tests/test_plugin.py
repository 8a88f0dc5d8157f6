"""Plugin wiring, checked in real pytest sessions with pytester."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")

APPS = """
import time

async def fast_app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

def slow_wsgi(environ, start_response):
    time.sleep(0.02)
    start_response("200 OK", [])
    return [b"ok"]
"""


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(apps=APPS)

    def runner(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess(
            "-p", "pytest_concurrency.plugin", "-p", "no:cacheprovider", *args
        )

    return runner


def test_marker_is_registered_with_its_parameters(run) -> None:  # type: ignore[no-untyped-def]
    result = run("--markers")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.concurrency(users=*duration=*): *Budgets: p50_ms*max_saturation*"]
    )


def test_budget_failure_fails_the_right_test_with_the_table(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        test_storms="""
        import pytest
        from apps import fast_app, slow_wsgi

        @pytest.mark.concurrency(users=10, duration=0.6, p99_ms=25, max_error_rate=0)
        def test_pool_queues(storm):
            storm(slow_wsgi, "GET", "/io", workers=1)

        @pytest.mark.concurrency(users=5, requests=200, p99_ms=1000)
        def test_fast_holds(storm):
            result = storm(fast_app, "GET", "/")
            assert result.status_counts[200] == 200
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*storm broke its budget (p99_ms)*",
            "*storm GET /io on apps:slow_wsgi (WSGI, 1 sync worker) — 10 users, 0.6 s, * requests*",
            "*budget*limit*measured*verdict*",
            "*p99_ms*25*✗ *x over*",
            "*max_error_rate*0*✓*",
            "*workers were saturated *% of the time*mean queue wait*% of latency)*",
            "*FAILED test_storms.py::test_pool_queues*",
        ]
    )
    assert "test_fast_holds FAILED" not in result.stdout.str()


def test_terminal_summary_lists_every_storm(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        test_summary="""
        from apps import fast_app, slow_wsgi

        def test_two(storm):
            storm(fast_app, "GET", "/a", requests=50)
            storm(slow_wsgi, "GET", "/b", requests=20, workers=4, users=8)
        """
    )
    result = run()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= storms =*",
            "test*storm*app*users*requests*rps*p50 ms*p99 ms*max ms*errors*saturation*verdict",
            "test_summary.py::test_two*GET /a*ASGI event loop (asyncio)*10*50*pass",
            "test_summary.py::test_two*GET /b*WSGI 4 sync workers*8*20*%*pass",
        ]
    )


def test_figures_are_in_junit_xml(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        test_junit="""
        from apps import fast_app

        def test_one(storm):
            storm(fast_app, "GET", "/", requests=100, p99_ms=1000)
        """
    )
    xml_path = pytester.path / "junit.xml"
    result = run(f"--junitxml={xml_path}", "-o", "junit_family=xunit1")
    result.assert_outcomes(passed=1)
    properties = {p.get("name"): p.get("value") for p in ET.parse(xml_path).iter("property")}
    assert properties["storm.requests"] == "100"
    assert float(properties["storm.p99_ms"]) > 0
    assert properties["storm.passed"] == "True"


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (
            "concurrency(50)",
            "*@pytest.mark.concurrency(50) on test_bad.py::test_it takes keyword arguments only*",
        ),
        (
            "concurrency(user=5)",
            "*unknown storm parameter 'user' (from @pytest.mark.concurrency on test_bad.py::test_it); did you mean 'users'?*",
        ),
        (
            "concurrency(users=-1)",
            "*users=-1 (from @pytest.mark.concurrency on test_bad.py::test_it) must be at least 1*",
        ),
        (
            "concurrency(p99_ms='fast')",
            "*budget p99_ms='fast' (from @pytest.mark.concurrency on test_bad.py::test_it) must be a number*",
        ),
    ],
)
def test_bad_marker_fails_before_any_load(
    pytester: pytest.Pytester, run, marker: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        test_bad=f"""
        import pytest

        CALLS = []

        async def app(scope, receive, send):
            CALLS.append(scope)

        @pytest.mark.{marker}
        def test_it(storm):
            storm(app, "GET", "/")

        def test_no_load_was_fired():
            assert CALLS == []
        """
    )
    result = run()
    # A bad marker is an error at setup: the test body, and so the storm, never runs.
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([message])


def test_bad_ini_value_names_the_ini_option(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makeini("[pytest]\nconcurrency_duration = soon\n")
    pytester.makepyfile(
        test_ini="""
        import pytest
        from apps import fast_app

        @pytest.mark.concurrency(users=2)
        def test_it(storm):
            storm(fast_app, "GET", "/")
        """
    )
    result = run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*duration='soon' (from ini option concurrency_duration in *tox.ini) must be a float*"]
    )


def test_option_and_ini_defaults_and_precedence(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makeini("[pytest]\nconcurrency_users = 3\nconcurrency_duration = 0.2\n")
    pytester.makepyfile(
        test_prec="""
        import pytest
        from apps import fast_app

        def test_ini(storm):
            assert storm(fast_app, "GET", "/").users == 4  # the option beats the ini

        @pytest.mark.concurrency(users=6)
        def test_marker(storm):
            assert storm(fast_app, "GET", "/").users == 6

        @pytest.mark.concurrency(users=6)
        def test_keyword(storm):
            result = storm(fast_app, "GET", "/", users=7)
            assert result.users == 7
            assert result.params["duration"] == 0.2
        """
    )
    run("--concurrency-users=4").assert_outcomes(passed=3)


def test_bad_path_and_app_are_errors_in_the_test(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        test_input="""
        import pytest
        from pytest_concurrency import ConfigError
        from apps import fast_app

        def test_path(storm):
            with pytest.raises(ConfigError, match="path='items' .* must start with '/'"):
                storm(fast_app, "GET", "items")

        def test_app(storm):
            with pytest.raises(ConfigError, match="is not callable"):
                storm(42, "GET", "/")
            with pytest.raises(ConfigError, match="app='myapi:app' .* No module named 'myapi'"):
                storm("myapi:app", "GET", "/")
        """
    )
    run().assert_outcomes(passed=2)


def test_async_test_uses_arun_and_sync_form_names_it(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        test_async="""
        import anyio
        import pytest
        from apps import fast_app

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.anyio
        async def test_arun(storm):
            result = await storm.arun(fast_app, "GET", "/", requests=100)
            assert result.requests == 100

        @pytest.mark.anyio
        async def test_sync_form(storm):
            storm(fast_app, "GET", "/", requests=10)
        """
    )
    result = run("-p", "anyio")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*storm() was called inside a running event loop; in an async test use `await storm.arun(...)` instead*"
        ]
    )


def test_concurrency_warning_is_a_pytest_warning(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        test_warn="""
        import pytest
        from pytest_concurrency import ConcurrencyWarning

        def test_it():
            assert issubclass(ConcurrencyWarning, pytest.PytestWarning)
        """
    )
    run().assert_outcomes(passed=1)


def test_scale_shrinks_the_load_and_says_so(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        test_scale="""
        import pytest
        from apps import fast_app

        @pytest.mark.concurrency(users=40, duration=2.0, p99_ms=1000)
        def test_it(storm):
            result = storm(fast_app, "GET", "/")
            assert result.users == 4
            assert result.duration == pytest.approx(0.2)
            assert any("scaled ×0.1" in w for w in result.notes)
        """
    )
    run("--concurrency-scale=0.1").assert_outcomes(passed=1)
    result = run("--concurrency-scale=zero")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*scale='zero' (from command-line option --concurrency-scale) must be a number greater than 0*"
        ]
    )


def test_disable_skips_storms_with_a_reason(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        test_disable="""
        from apps import fast_app

        def test_storm(storm):
            storm(fast_app, "GET", "/")

        def test_plain():
            pass
        """
    )
    result = run("--concurrency-disable", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*storms disabled (--concurrency-disable)*"])
    pytester.makeini("[pytest]\nconcurrency_disable = true\n")
    run().assert_outcomes(passed=1, skipped=1)


def test_capacity_storms_are_scaled_and_reported(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        test_capacity="""
        from apps import slow_wsgi

        def test_it(storm):
            found = storm.capacity(
                slow_wsgi, "GET", "/", workers=[1, 2], users=20, requests=40, p99_ms=10_000
            )
            assert found.storms == 2  # bisection: 2 workers pass, then 1 does
            for result in found.results.values():
                assert (result.users, result.requests) == (2, 4)
        """
    )
    result = run("--concurrency-scale=0.1", "--concurrency-json=storms.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= storms =*",
            "test*",
            "test_capacity.py::test_it*GET /*2 sync workers*",
            "test_capacity.py::test_it*GET /*1 sync worker*",
        ]
    )
    doc = json.loads((pytester.path / "storms.json").read_text())
    assert [s["nodeid"] for s in doc["storms"]] == ["test_capacity.py::test_it"] * 2
    assert doc["scaled"] == 0.1


def test_ini_scale_is_the_scale_of_the_reports(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makeini("[pytest]\nconcurrency_scale = 0.5\n")
    pytester.makepyfile(
        test_ini="""
        from apps import fast_app

        def test_it(storm):
            assert storm(fast_app, "GET", "/", users=4, requests=10).requests == 5
        """
    )
    run("--concurrency-json=storms.json").assert_outcomes(passed=1)
    doc = json.loads((pytester.path / "storms.json").read_text())
    assert doc["scaled"] == 0.5


def test_processes_and_server_have_options_and_ini_twins(pytester: pytest.Pytester, run) -> None:  # type: ignore[no-untyped-def]
    pytester.makeini("[pytest]\nconcurrency_processes = 2\n")
    pytester.makepyfile(
        test_shards="""
        from apps import fast_app

        def test_sharded(storm):
            result = storm(fast_app, "GET", "/", users=4, requests=40)
            assert result.extras["shards"]["processes"] == 2

        def test_option_wins(storm):
            result = storm(fast_app, "GET", "/", users=4, requests=40)
            assert "shards" not in result.extras
        """
    )
    run("-k", "sharded").assert_outcomes(passed=1)
    run("-k", "option_wins", "--concurrency-processes=1").assert_outcomes(passed=1)
    run("--concurrency-processes=zero").stdout.fnmatch_lines(
        ["*processes='zero' (from command-line option*"]
    )
