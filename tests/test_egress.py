"""Nothing leaves the machine during a storm: the egress guard.

Every destination here is under ``.invalid`` (RFC 6761: never resolves) or a TEST-NET
address, and the spies that stand in for ``socket.getaddrinfo`` and ``connect`` never call
through for them: a guard that let one pass would be caught by the spy, not by the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.server
import json
import os
import re
import socket
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import requests

from pytest_concurrency import BudgetExceeded, ConfigError, Upstream
from pytest_concurrency._api import run_storm
from pytest_concurrency._params import Layer, resolve
from pytest_concurrency._simio.egress import EgressGuard, EgressRefused, is_loopback

THIS_FILE = __file__


class Spy:
    """Stands in for the real ``getaddrinfo`` and ``connect``: records, calls through only for
    loopback, and answers a fake resolution for names it is told to."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fake: dict[str, str] | None = None):
        self.lookups: list[str] = []
        self.connects: list[Any] = []
        self.fake = fake or {}
        real_getaddrinfo = socket.getaddrinfo
        real_connect = socket.socket.connect

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            self.lookups.append(str(host))
            if isinstance(host, str) and host in self.fake:
                address = self.fake[host]
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))]
            if host is not None and not is_loopback(str(host)):
                raise socket.gaierror(socket.EAI_NONAME, "spy: no lookups off the machine")
            return real_getaddrinfo(host, port, *args, **kwargs)

        def connect(sock: socket.socket, address: Any) -> Any:
            self.connects.append(address)
            if isinstance(address, tuple) and not is_loopback(str(address[0])):
                raise ConnectionRefusedError("spy: no connections off the machine")
            return real_connect(sock, address)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(socket.socket, "connect", connect)
        self.getaddrinfo = getaddrinfo
        self.connect = connect

    @property
    def off_machine(self) -> list[Any]:
        """Lookups and connects to anything but loopback."""
        hosts = [*self.lookups, *(str(a[0]) for a in self.connects if isinstance(a, tuple))]
        return [h for h in hosts if not is_loopback(h)]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    return Spy(monkeypatch)


@contextlib.contextmanager
def loopback_server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 answering ``ok`` to every GET; its base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.evil.invalid", False),
        ("127.0.0.1.nip.invalid", False),
        ("192.0.2.7", False),
        ("0.0.0.0", False),
        ("2001:db8::1", False),
        ("model-server", False),
    ],
)
def test_only_loopback_is_allowed(host: str, allowed: bool) -> None:
    assert EgressGuard().allows(host) is allowed


def test_allow_hosts_opens_names_addresses_and_networks() -> None:
    guard = EgressGuard(["db.example.invalid", "192.0.2.7", "198.51.100.0/24"])
    assert guard.allows("DB.example.invalid.")
    assert guard.allows("192.0.2.7")
    assert guard.allows("198.51.100.99")
    assert not guard.allows("192.0.2.8")
    assert not guard.allows("other.invalid")


# --------------------------------------------------------------------------- every way out


def _refused(call: Callable[[], Any]) -> EgressRefused:
    with pytest.raises(EgressRefused) as info:
        call()
    return info.value


def test_sync_ways_out_are_refused_before_any_lookup_or_connect(spy: Spy) -> None:
    with EgressGuard() as guard:
        for call in (
            lambda: socket.getaddrinfo("api.example.invalid", 443),
            lambda: socket.gethostbyname("api.example.invalid"),
            lambda: socket.gethostbyname_ex("api.example.invalid"),
            lambda: socket.create_connection(("api.example.invalid", 443), timeout=1),
        ):
            error = _refused(call)
            assert error.host == "api.example.invalid"
            assert isinstance(error, ConnectionRefusedError)
        with socket.socket() as sock:
            error = _refused(lambda: sock.connect(("192.0.2.7", 80)))
            assert (error.host, error.port) == ("192.0.2.7", "80")
            _refused(lambda: sock.connect_ex(("192.0.2.7", 80)))
            # A name given to connect() is resolved by the C library: checked there too.
            _refused(lambda: sock.connect(("api.example.invalid", 80)))
    assert spy.lookups == []
    assert spy.connects == []
    assert guard.refused == 7


def test_the_error_names_host_port_client_and_call_site(spy: Spy) -> None:
    with EgressGuard() as guard, pytest.raises(urllib.error.URLError) as info:
        urllib.request.urlopen("http://model.invalid:8080/generate")
    error = info.value.reason
    assert isinstance(error, EgressRefused)
    line = test_the_error_names_host_port_client_and_call_site.__code__.co_firstlineno + 2
    site = f"{THIS_FILE}:{line} in test_the_error_names_host_port_client_and_call_site"
    message = str(error)
    assert "model.invalid:8080" in message
    assert site in message
    assert message.startswith(f"[Errno {errno.ECONNREFUSED}] egress refused: urllib")
    assert 'allow_hosts=["model.invalid"]' in message
    assert guard.refusals() == [
        {
            "host": "model.invalid",
            "port": "8080",
            "client": "urllib (http.client)",
            "site": site,
            "count": 1,
        }
    ]
    assert spy.off_machine == []


def test_requests_and_httpx_fail_cleanly_with_the_refusal(spy: Spy) -> None:
    with EgressGuard() as guard:
        with pytest.raises(requests.ConnectionError, match="egress refused: requests"):
            requests.get("http://api.example.invalid/v1", timeout=1)
        with pytest.raises(httpx.ConnectError, match="egress refused: httpx"):
            httpx.get("http://api.example.invalid/v1")
    clients = {r["client"] for r in guard.refusals()}
    assert clients == {"requests (urllib3)", "httpx"}
    assert spy.off_machine == []


def test_asyncio_paths_are_refused_on_the_callers_stack(spy: Spy) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(EgressRefused) as info:
            await loop.getaddrinfo("api.example.invalid", 443)
        assert f"{THIS_FILE}:" in info.value.site
        with pytest.raises(EgressRefused):
            await loop.create_connection(asyncio.Protocol, "api.example.invalid", 443)
        with pytest.raises(EgressRefused):
            await asyncio.open_connection("192.0.2.7", 443)
        # The executor path that loop.getaddrinfo takes is guarded too.
        with pytest.raises(EgressRefused):
            await loop.run_in_executor(None, socket.getaddrinfo, "api.example.invalid", 443)
        with socket.socket() as sock:
            sock.setblocking(False)
            with pytest.raises(EgressRefused):
                await loop.sock_connect(sock, ("192.0.2.7", 443))
        with pytest.raises(httpx.ConnectError, match="egress refused"):
            async with httpx.AsyncClient() as client:
                await client.get("http://api.example.invalid/")

    with EgressGuard() as guard:
        asyncio.run(main())
    assert guard.refused == 6
    assert spy.off_machine == []


def test_aiohttp_resolvers_are_guarded(spy: Spy) -> None:
    aiohttp = pytest.importorskip("aiohttp")

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectorError, match="egress refused: aiohttp"):
                await session.get("http://model-server.invalid/generate")

    with EgressGuard() as guard:
        asyncio.run(main())
    (refusal,) = guard.refusals()
    assert refusal["host"] == "model-server.invalid"
    assert refusal["client"] == "aiohttp"
    assert refusal["site"].startswith(f"{THIS_FILE}:")
    assert refusal["site"].endswith(" in main")
    assert spy.off_machine == []


def test_httpx2_is_guarded(spy: Spy) -> None:
    httpx2 = pytest.importorskip("httpx2")
    with (
        EgressGuard() as guard,
        pytest.raises(httpx2.ConnectError, match="egress refused: httpx2"),
    ):
        httpx2.get("http://api.example.invalid/v1")
    assert guard.refused == 1
    assert spy.off_machine == []


def test_an_allowed_name_opens_the_addresses_it_resolves_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = Spy(monkeypatch, fake={"db.example.invalid": "192.0.2.50"})
    with EgressGuard(["db.example.invalid"]) as guard:
        ((_, _, _, _, (address, port)),) = socket.getaddrinfo("db.example.invalid", 5432)
        with socket.socket() as sock, pytest.raises(ConnectionRefusedError, match="spy"):
            sock.connect((address, port))  # reaches the spy, which refuses for real
        with socket.socket() as sock:
            _refused(lambda: sock.connect(("192.0.2.51", 5432)))
    assert guard.refused == 1
    assert spy.lookups == ["db.example.invalid"]
    assert spy.connects == [("192.0.2.50", 5432)]


def test_a_declared_upstream_host_is_named_as_such(spy: Spy) -> None:
    with EgressGuard(declared=lambda: {"model-server.invalid"}):
        error = _refused(lambda: socket.getaddrinfo("model-server.invalid", 80))
    assert "is declared on the upstream, but this call cannot be answered" in str(error)


def test_the_guard_comes_off(spy: Spy) -> None:
    guard = EgressGuard()
    with pytest.raises(KeyboardInterrupt), guard:
        raise KeyboardInterrupt
    assert socket.getaddrinfo is spy.getaddrinfo
    assert socket.socket.connect is spy.connect
    assert asyncio.base_events.BaseEventLoop.getaddrinfo.__module__ == "asyncio.base_events"
    assert "connect_ex" not in vars(socket.socket)
    assert "gethostbyname" not in vars(socket) or socket.gethostbyname.__module__ != __name__


def test_the_error_survives_pickling() -> None:
    import pickle

    with EgressGuard():
        error = _refused(lambda: socket.getaddrinfo("api.example.invalid", 80))
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, EgressRefused)
    assert (str(copy), copy.host, copy.port) == (str(error), "api.example.invalid", "80")


# --------------------------------------------------------------------------- storms


def _calling(url: str) -> Callable[..., Any]:
    """A WSGI app that calls *url* with urllib and answers 200 whatever happened."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body = response.read()
        except OSError:
            body = b"fallback"  # an app that hides its failed call behind a 200
        start_response("200 OK", [("content-type", "text/plain")])
        return [body]

    return app


def test_a_storm_that_tried_to_leave_the_machine_fails(spy: Spy) -> None:
    app = _calling("http://api.example.invalid/v1/items")
    result = run_storm(app, "GET", "/", users=2, requests=20, check=False)
    assert result.status_counts[200] == 20  # every response hid the refusal
    assert not result.passed
    verdicts = {v.name: v for v in result.verdicts}
    assert verdicts["refused_egress"].measured == 20
    (refusal,) = result.refused_egress
    assert (refusal["host"], refusal["port"], refusal["count"]) == ("api.example.invalid", "80", 20)
    assert refusal["client"] == "urllib (http.client)"
    assert refusal["site"].startswith(f"{THIS_FILE}:")
    assert result.to_dict()["refused_egress"] == result.refused_egress
    with pytest.raises(BudgetExceeded) as info:
        run_storm(app, "GET", "/", users=2, requests=5)
    table = str(info.value)
    assert "refused_egress" in table
    assert "refused egress: api.example.invalid:80 ×5 from urllib (http.client) at" in table
    assert spy.off_machine == []
    # The guard came off with the storm.
    assert socket.getaddrinfo is spy.getaddrinfo


def test_an_async_app_is_refused_with_its_call_site(spy: Spy) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            async with httpx.AsyncClient() as client:
                await client.get("http://model.invalid/generate")
        except httpx.ConnectError:
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    result = run_storm(app, "GET", "/", users=3, requests=9, check=False)
    (refusal,) = result.refused_egress
    assert refusal["client"] == "httpx"
    assert refusal["count"] == 9
    assert refusal["site"].startswith(f"{THIS_FILE}:")
    assert refusal["site"].endswith(" in app")
    assert [v.name for v in result.failed_verdicts] == ["refused_egress"]
    assert spy.off_machine == []


def test_loopback_stays_open(spy: Spy) -> None:
    with loopback_server() as base:
        result = run_storm(_calling(base + "/dep"), "GET", "/", users=2, requests=10)
    assert result.passed
    assert result.refused_egress == []
    assert result.status_counts[200] == 10
    assert spy.off_machine == []
    assert spy.connects  # the app did connect, to loopback


def test_allow_hosts_opens_a_host_for_the_storm(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch, fake={"dep.example.invalid": "127.0.0.1"})
    with loopback_server() as base:
        port = base.rsplit(":", 1)[1]
        app = _calling(f"http://dep.example.invalid:{port}/")
        refused = run_storm(app, "GET", "/", users=1, requests=3, check=False)
        assert refused.refused_egress[0]["count"] == 3
        assert spy.lookups == []
        opened = run_storm(
            app, "GET", "/", users=1, requests=3, allow_hosts=["dep.example.invalid"]
        )
    assert opened.passed
    assert opened.refused_egress == []
    assert spy.lookups == ["dep.example.invalid"] * 3


def test_the_guard_is_off_between_storms(spy: Spy) -> None:
    run_storm(_calling("http://api.example.invalid/"), "GET", "/", requests=1, check=False)
    with pytest.raises(socket.gaierror, match="spy"):
        socket.getaddrinfo("api.example.invalid", 80)
    assert spy.lookups == ["api.example.invalid"]


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (42, "allow_hosts=42 (from keyword argument) must be a list of host names"),
        (["http://x.invalid"], "'http://x.invalid' must be a bare host name or address"),
        (["x.invalid:443"], "'x.invalid:443' must be a bare host name"),
        (["10.0.0.0/33"], "'10.0.0.0/33' is not an IP network"),
        ([""], "'' is not a host name"),
        ([None], "None is not a host name"),
    ],
)
def test_bad_allow_hosts_are_named(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve([Layer("keyword argument", {"allow_hosts": value})])


def test_allow_hosts_from_a_string() -> None:
    config = resolve([Layer("ini options", {"allow_hosts": " a.invalid, 10.0.0.0/8 ,::1"})])
    assert config.allow_hosts == ("a.invalid", "10.0.0.0/8", "::1")


PLUGIN_TEST = """
import socket, urllib.request
import pytest

LOOKUPS = []

def fake_getaddrinfo(host, port, *args, **kwargs):
    LOOKUPS.append(host)
    raise socket.gaierror(socket.EAI_NONAME, "fake resolver")

def app(environ, start_response):
    try:
        urllib.request.urlopen("http://opened.invalid/", timeout=1)
    except OSError:
        pass
    start_response("200 OK", [])
    return [b"ok"]

@pytest.fixture(autouse=True)
def resolver(monkeypatch):
    LOOKUPS.clear()
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)

@pytest.mark.concurrency(users=1, requests=2, allow_hosts=["opened.invalid"])
def test_marker(storm):
    storm(app)
    assert LOOKUPS == ["opened.invalid"] * 2

def test_option_or_refused(storm, request):
    try:
        storm(app, users=1, requests=2)
    except AssertionError as exc:
        assert "refused egress: opened.invalid:80" in str(exc)
        assert request.config.getoption("concurrency_allow_hosts") is None
        assert LOOKUPS == []
    else:
        assert LOOKUPS == ["opened.invalid"] * 2
"""


def test_allow_hosts_from_marker_option_and_ini(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_app=PLUGIN_TEST)
    base = ("-p", "pytest_concurrency.plugin", "-p", "no:cacheprovider", "-q")
    pytester.runpytest_subprocess(*base).assert_outcomes(passed=2)
    opened = pytester.runpytest_subprocess(
        *base, "--concurrency-allow-hosts=other.invalid, opened.invalid"
    )
    opened.assert_outcomes(passed=2)
    pytester.makeini("[pytest]\nconcurrency_allow_hosts = opened.invalid\n")
    pytester.runpytest_subprocess(*base).assert_outcomes(passed=2)
    bad = pytester.runpytest_subprocess(*base, "--concurrency-allow-hosts=x.invalid:80")
    bad.assert_outcomes(passed=1, failed=1)  # the marker's allow_hosts wins over the option
    bad.stdout.fnmatch_lines(
        ["*allow_hosts='x.invalid:80' (from command-line options)*bare host name*"]
    )


def test_every_client_reaches_a_declared_route(spy: Spy) -> None:
    """httpx in-process, urllib and requests over loopback: all answered, no lookup."""
    with Upstream() as upstream:
        upstream.route("http://model-server.invalid/generate", latency=1, json={"ok": True})

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            answers = [
                httpx.get("http://model-server.invalid/generate").json(),
                requests.get("http://model-server.invalid/generate", timeout=5).json(),
            ]
            with urllib.request.urlopen("http://model-server.invalid/generate") as response:
                answers.append(json.loads(response.read()))
            start_response("200 OK", [])
            return [b"ok" if answers == [{"ok": True}] * 3 else b"no"]

        result = run_storm(app, "GET", "/", users=1, requests=3, checks=[_says_ok])
    assert result.extras["upstream"]["http://model-server.invalid/generate"]["calls"] == 9
    assert result.refused_egress == []
    assert spy.off_machine == []
    assert "model-server.invalid" not in spy.lookups


def _says_ok(response: Any) -> bool:
    return bool(response.content == b"ok")


# --------------------------------------------------------------------------- saying what went wrong

MODEL = "http://model-server.invalid/generate"
#: Served in-process to httpx and httpx2 only: no loopback server answers https.
MODEL_TLS = "https://model-server.invalid/generate"


@pytest.fixture
def no_trustme(monkeypatch: pytest.MonkeyPatch) -> None:
    """As without the clients extra: https:// routes reach httpx and httpx2 only."""
    monkeypatch.setattr("pytest_concurrency._simio.tls.available", lambda: False)


def test_a_route_never_called_while_requests_failed_is_named(spy: Spy, no_trustme: None) -> None:
    aiohttp = pytest.importorskip("aiohttp")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        async with aiohttp.ClientSession() as session, session.post(MODEL_TLS) as response:
            body = await response.read()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    with Upstream() as upstream:
        upstream.route(MODEL_TLS, latency=50, json={"text": "Hello!"})
        result = run_storm(app, "GET", "/", users=2, requests=6, check=False)
    assert result.failed == 6
    assert result.extras["upstream"][MODEL_TLS]["calls_in_storm"] == 0
    (warning,) = [w for w in result.warnings if "never called" in w]
    assert warning.startswith(f"upstream route {MODEL_TLS} declared but never called, while 6 ")
    assert "ClientConnectorDNSError ×6" in warning
    assert "refused egress to model-server.invalid:443 from aiohttp at " in warning
    examples = [error.example for error in result.errors.values()]
    assert any("is declared on the upstream, but this call cannot be" in e for e in examples)
    assert "a call must match a route's scheme, host, port and path prefix" in warning
    assert "status 500" not in warning  # the same failures, counted once
    (refusal,) = result.refused_egress
    # aiohttp resolves names in a task of its own: the site is where the app entered it.
    line = app.__code__.co_firstlineno + 3
    assert refusal["site"] == f"{THIS_FILE}:{line} in app"
    assert spy.off_machine == []


def test_an_app_that_answers_its_own_status_shows_it(spy: Spy, no_trustme: None) -> None:
    with Upstream() as upstream:
        upstream.route(MODEL_TLS, latency=1)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            try:
                urllib.request.urlopen(MODEL_TLS, timeout=1)
            except OSError:
                start_response("502 Bad Gateway", [])
                return [b"model unreachable"]
            start_response("200 OK", [])
            return [b"ok"]

        result = run_storm(app, "GET", "/", users=1, requests=4, check=False)
    (warning,) = [w for w in result.warnings if "never called" in w]
    assert "(status 502 ×4; refused egress to model-server.invalid:443 from urllib" in warning


def test_a_called_route_or_a_clean_storm_says_nothing(spy: Spy) -> None:
    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        return [httpx.get(MODEL).content]

    with Upstream() as upstream:
        upstream.route(MODEL, latency=1, json={"text": "Hello!"})
        upstream.route("http://other.invalid/", latency=1)
        result = run_storm(wsgi, "GET", "/", users=1, requests=3)
    assert not [w for w in result.warnings if "never called" in w]
    assert result.extras["upstream"][MODEL]["calls_in_storm"] == 3


# --------------------------------------------------------------------------- other processes

SERVER_APP = """
import socket
import _socket

from pytest_concurrency._simio.egress import is_loopback

# A net below the guard: a lookup the guard let through is caught here, never sent.
LEAKED = []
_real = _socket.getaddrinfo


def _net(host, *args, **kwargs):
    if host is not None and not is_loopback(str(host)):
        LEAKED.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "net: no lookups off the machine")
    return _real(host, *args, **kwargs)


_socket.getaddrinfo = _net


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    try:
        socket.getaddrinfo("api.example.invalid", 443)
        outcome = b"resolved"
    except OSError as exc:
        outcome = b"refused" if "egress refused" in str(exc) else b"other"
    if LEAKED:
        outcome += b" leaked"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": outcome})
"""


def test_a_real_servers_processes_refuse_and_report(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("uvicorn")
    (tmp_path / "egress_server_app.py").write_text(SERVER_APP)
    monkeypatch.syspath_prepend(str(tmp_path))

    def refused_in_app(response: Any) -> bool:
        return response.content == b"refused"

    result = run_storm(
        "egress_server_app:app",
        "GET",
        "/",
        users=2,
        requests=10,
        server="uvicorn",
        checks=[refused_in_app],
        check=False,
    )
    assert result.status_counts == {200: 10}
    assert result.failed == 0  # every check saw the guard's refusal, none a leak
    (refusal,) = result.refused_egress
    assert (refusal["host"], refusal["port"], refusal["count"]) == (
        "api.example.invalid",
        "443",
        10,
    )
    line = (
        SERVER_APP.splitlines().index('        socket.getaddrinfo("api.example.invalid", 443)') + 1
    )
    assert refusal["site"].endswith(f"egress_server_app.py:{line} in app")
    assert [v.name for v in result.failed_verdicts] == ["refused_egress"]
    # allow_hosts reaches the server: the lookup goes through, to the net below the guard.
    opened = run_storm(
        "egress_server_app:app",
        "GET",
        "/",
        users=1,
        requests=2,
        server="uvicorn",
        allow_hosts=["api.example.invalid"],
        checks=[lambda response: response.content == b"other leaked"],
    )
    assert opened.refused_egress == []


def test_shards_refuse_and_report(spy: Spy) -> None:
    app = _calling("http://api.example.invalid/v1")
    result = run_storm(app, "GET", "/", users=4, requests=40, processes=2, check=False)
    assert result.status_counts == {200: 40}
    (refusal,) = result.refused_egress
    assert (refusal["host"], refusal["count"]) == ("api.example.invalid", 40)
    assert refusal["client"] == "urllib (http.client)"
    assert [v.name for v in result.failed_verdicts] == ["refused_egress"]
    assert spy.off_machine == []


def test_uvloop_ways_out_are_guarded(monkeypatch: pytest.MonkeyPatch) -> None:
    uvloop = pytest.importorskip("uvloop")
    reached: list[str] = []

    # Spies in place of uvloop's own resolving methods (libuv never calls socket.*).
    async def getaddrinfo(loop: Any, host: Any, *args: Any, **kwargs: Any) -> Any:
        reached.append(f"getaddrinfo {host}")
        raise OSError("spy: no lookups off the machine")

    async def create_connection(
        loop: Any, factory: Any, host: Any = None, *a: Any, **k: Any
    ) -> Any:
        reached.append(f"create_connection {host}")
        raise OSError("spy: no connections off the machine")

    monkeypatch.setattr(uvloop.Loop, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(uvloop.Loop, "create_connection", create_connection)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(EgressRefused, match=r"api\.example\.invalid:443"):
            await loop.getaddrinfo("api.example.invalid", 443)
        with pytest.raises(EgressRefused, match=r"192\.0\.2\.7:443"):
            await loop.create_connection(asyncio.Protocol, "192.0.2.7", 443)

    with EgressGuard() as guard:
        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
    assert reached == []
    assert guard.refused == 2


def test_a_sharded_storm_keeps_no_log_file_on_disk(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, spy: Spy
) -> None:
    """A SIGKILL runs no cleanup: the shards' log has no name on disk while the storm runs."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with contextlib.suppress(OSError):
            socket.getaddrinfo("api.example.invalid", 80)
        named = [name for name in os.listdir(tmp_path) if name.startswith("pytest-storm")]
        start_response("500 Internal Server Error" if named else "200 OK", [])
        return [b" ".join(n.encode() for n in named)]

    result = run_storm(app, "GET", "/", users=2, requests=10, processes=2, check=False)
    assert result.status_counts == {200: 10}
    assert result.refused_egress[0]["count"] == 10


def test_a_probe_wrapping_the_client_is_walked_through_to_the_apps_line(spy: Spy) -> None:
    """A pool probe's wrapper sits inside the client's call: the site is still the app's."""
    probe: dict[str, Any] = {"__name__": "pytest_concurrency._probes.fake"}
    exec("import socket\ndef wrapped(host):\n    return socket.getaddrinfo(host, 443)\n", probe)
    with EgressGuard(), pytest.raises(EgressRefused) as refused:
        probe["wrapped"]("api.example.invalid")
    assert refused.value.site.startswith(f"{THIS_FILE}:")
    assert refused.value.site.endswith(
        " in test_a_probe_wrapping_the_client_is_walked_through_to_the_apps_line"
    )
    assert spy.lookups == []
