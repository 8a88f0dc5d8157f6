"""Bad input is a clear error before any load: parameter, value and origin are named."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_concurrency import ConfigError, Request, run_storm
from pytest_concurrency._engine.plan import plan_storm
from pytest_concurrency._params import Layer, resolve

from .apps import asgi_hello, wsgi_hello


def plan(app: object = asgi_hello, path: str = "/", **params: object) -> object:
    return plan_storm(app, "GET", path, layers=[Layer("keyword argument", params)])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"users": 0}, r"users=0 \(from keyword argument\) must be at least 1"),
        ({"users": -5}, r"users=-5 \(from keyword argument\) must be at least 1"),
        ({"users": 2.5}, r"users=2.5 \(from keyword argument\) must be a whole number"),
        ({"workers": 0}, r"workers=0 \(from keyword argument\) must be at least 1"),
        ({"duration": 0}, r"duration=0 \(from keyword argument\) must be greater than 0"),
        ({"duration": 1, "requests": 10}, r"duration=1 and requests=10 are both set"),
        (
            {"p99_ms": "fast"},
            r"budget p99_ms='fast' \(from keyword argument\) must be a number, not str",
        ),
        ({"max_error_rate": 2}, r"max_error_rate=2 .* is a fraction between 0 and 1"),
        (
            {"p99": 100},
            r"unknown storm parameter 'p99' \(from keyword argument\); did you mean 'p99_ms'\?",
        ),
        ({"user": 10}, r"did you mean 'users'\?"),
        ({"timeout_ms": float("nan")}, r"timeout_ms=nan .* must be a finite number"),
        ({"interface": "wsgi3"}, r"interface='wsgi3' .* must be one of 'asgi', 'wsgi'"),
    ],
)
def test_bad_parameter_names_value_and_origin(params: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan(**params)


def test_path_without_leading_slash() -> None:
    with pytest.raises(
        ConfigError, match=r"path='items' \(from storm\(\) arguments\) must start with '/'"
    ):
        plan(path="items")


def test_not_callable_app() -> None:
    with pytest.raises(ConfigError, match=r"app=42 \(from argument app\) is not callable"):
        plan(app=42)


def test_neither_asgi_nor_wsgi() -> None:
    def one(x: object, y: object, z: object, w: object) -> None: ...

    with pytest.raises(ConfigError, match=r"is neither ASGI nor WSGI.*interface='asgi'"):
        plan(app=one)


def test_explicit_interface_overrides_detection() -> None:
    p = plan(app=wsgi_hello, interface="wsgi")
    assert p.interface == "wsgi"  # type: ignore[attr-defined]


def test_precedence_keyword_over_marker_over_options() -> None:
    config = resolve(
        [
            Layer("keyword argument", {"users": 3}),
            Layer("marker", {"users": 5, "duration": 1.5}),
            Layer("command-line options", {"duration": 9.0, "timeout_ms": 500.0}),
            Layer("ini options", {"timeout_ms": 100.0, "warmup": 0.5}),
        ]
    )
    assert (config.users, config.duration, config.timeout_ms, config.warmup) == (3, 1.5, 500.0, 0.5)
    assert config.origin_of("users") == "keyword argument"
    assert config.origin_of("duration") == "marker"
    assert config.origin_of("warmup") == "ini options"


def test_requests_in_a_higher_layer_replaces_duration_from_a_lower_one() -> None:
    config = resolve(
        [Layer("keyword argument", {"requests": 50}), Layer("marker", {"duration": 2.0})]
    )
    assert config.requests == 50
    assert config.duration is None


def test_default_duration_applies_when_neither_is_given() -> None:
    config = resolve([Layer("marker", {"users": 500, "p99_ms": 100})])
    assert config.duration == 2.0
    assert config.requests is None


def test_request_mix_validation() -> None:
    with pytest.raises(ConfigError, match=r"requests\[1\]='nope'"):
        plan_storm(asgi_hello, requests=[Request("GET", "/"), "nope"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match=r"path='x' \(from requests\[0\]\)"):
        plan_storm(asgi_hello, requests=[Request("GET", "x")])
    with pytest.raises(ConfigError, match=r"weight=0"):
        plan_storm(asgi_hello, requests=[Request("GET", "/", weight=0)])
    with pytest.raises(ConfigError, match=r"replaces method and path"):
        plan_storm(asgi_hello, "GET", "/", requests=[Request("GET", "/")])


def test_no_load_is_fired_for_bad_input() -> None:
    calls = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        calls.append(scope["type"])

    with pytest.raises(ConfigError):
        run_storm(app, "GET", "/", users=0)
    assert calls == []


@pytest.mark.parametrize(
    ("higher", "lower", "model"),
    [
        ({"users": 50}, {"rate": 100}, "closed"),
        ({"stages": [(1, 20)]}, {"rate": 100}, "closed"),
        ({"rate": 100}, {"users": 50}, "open"),
        ({"rate": 100, "stages": [(1, 200)]}, {"users": 50}, "open"),
    ],
)
def test_a_higher_layer_choosing_the_workload_model_wins(
    higher: dict[str, object], lower: dict[str, object], model: str
) -> None:
    config = resolve([Layer("keyword argument", higher), Layer("marker", lower)])
    if model == "closed":
        assert config.rate is None
        if "users" in higher:
            assert config.users == higher["users"]
    else:
        assert config.rate == 100
        assert config.origin_of("users") == "default"


def test_a_higher_layer_choosing_the_stop_condition_wins() -> None:
    config = resolve(
        [Layer("keyword argument", {"requests": 50}), Layer("marker", {"duration": 3})]
    )
    assert (config.requests, config.duration) == (50, None)
    config = resolve(
        [Layer("keyword argument", {"duration": 3}), Layer("marker", {"requests": 50})]
    )
    assert (config.requests, config.duration) == (None, 3.0)


# -- server=: only loopback, and the address that was checked -----------------------------


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Spy on name resolution and connections: every name asked for is recorded, none leaves."""
    import socket

    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        asked.append(str(host))
        if host == "localhost":
            return real("127.0.0.1", *args, **kwargs)  # type: ignore[arg-type]
        raise AssertionError(f"resolved {host!r}")

    def connect(self: socket.socket, address: object) -> None:
        raise AssertionError(f"connected to {address!r}")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return asked


@pytest.mark.parametrize(
    "url",
    [
        "http://127.evil.invalid:8000",
        "http://127.0.0.1.nip.invalid:8000",
        "http://127.0.0.1.invalid",
        "http://localhost.invalid:8000",
        "http://10.1.2.3:8000",
        "http://[::2]:8000",
        "http://128.0.0.1:8000",
    ],
)
def test_server_url_off_loopback_is_refused_without_resolving(
    url: str, resolver: list[str]
) -> None:
    with pytest.raises(
        ConfigError, match=r"server='.*' \(from keyword argument\) is not on loopback"
    ):
        resolve([Layer("keyword argument", {"server": url})])
    assert resolver == []


@pytest.mark.parametrize(
    ("url", "checked"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.3.4.5:8000/", "http://127.3.4.5:8000"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("http://127.0.0.1", "http://127.0.0.1:80"),
        ("http://localhost:8000", "http://127.0.0.1:8000"),
    ],
)
def test_server_url_on_loopback_is_the_checked_address(
    url: str, checked: str, resolver: list[str]
) -> None:
    assert resolve([Layer("keyword argument", {"server": url})]).server == checked


def test_localhost_resolving_off_loopback_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def getaddrinfo(host: object, port: object, *args: object, **kwargs: object) -> object:
        assert host == "localhost"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(ConfigError, match=r"'localhost' resolves to 10\.1\.2\.3, which is not"):
        resolve([Layer("marker", {"server": "http://localhost:8000"})])


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:99999", "http://127.0.0.1:abc", "http://127.0.0.1:0", "http://127.0.0.1:"],
)
def test_server_url_with_a_bad_port_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=r"server='.*' \(from marker\) has no valid port"):
        resolve([Layer("marker", {"server": url})])


def test_storm_connects_only_to_the_checked_address(resolver: list[str]) -> None:
    """The plan's URL is the literal address checked, so the client never resolves a name."""
    pytest.importorskip("httptools")
    planned = plan(server="http://localhost:8000")
    assert planned.url == "http://127.0.0.1:8000"  # type: ignore[attr-defined]
    assert resolver == ["localhost"]


# -- the app loader: every failure is a ConfigError naming app -----------------------------


@pytest.fixture
def app_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "raises_at_import.py").write_text("raise RuntimeError('no database')\n")
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("raises_at_import", "exits_at_import"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("server", ["inprocess", "http://127.0.0.1:9", "uvicorn"])
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("raises_at_import:app", r"importing raises_at_import failed: RuntimeError: no database"),
        ("exits_at_import:app", r"importing exits_at_import raised SystemExit\(0\)"),
        (":app", r"must look like MODULE:APP"),
        ("../etc:passwd", r"no file"),
        ("no_such_module_here:app", r"ModuleNotFoundError"),
        ("tests.apps:no_such_app", r"tests\.apps has no 'no_such_app'"),
    ],
)
def test_app_that_cannot_be_loaded_is_a_config_error(
    app_modules: Path, spec: str, message: str, server: str
) -> None:
    pytest.importorskip("httptools")
    with pytest.raises(
        ConfigError, match=rf"app='{re.escape(spec)}' \(from argument app\).*{message}"
    ):
        run_storm(spec, "GET", "/", server=server, requests=1)


def test_method_that_is_not_a_string_is_named() -> None:
    with pytest.raises(ConfigError, match=r"method=5 \(from argument method\) must be a string"):
        run_storm(asgi_hello, 5, "/")  # type: ignore[arg-type]


# -- what the machine can carry --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uvicorn", "hypercorn", "granian", "gunicorn"])
def test_more_server_workers_than_the_machine_can_run_is_refused(kind: str) -> None:
    from pytest_concurrency._servers._process import WORKERS_PER_CORE, cores, max_workers

    pytest.importorskip(kind)
    pytest.importorskip("httptools")
    cap = max_workers()
    assert cap == max(8, WORKERS_PER_CORE * cores())
    with pytest.raises(
        ConfigError,
        match=rf"workers={cap + 1} \(from keyword argument\) is more than {cap} worker processes"
        rf".*{WORKERS_PER_CORE} × {cores()} cores",
    ):
        run_storm("tests.apps:asgi_hello", "GET", "/", server=kind, workers=cap + 1)
    with pytest.raises(ConfigError, match=r"workers=100000 \(from marker\)"):
        plan_storm(
            "tests.apps:asgi_hello",
            "GET",
            "/",
            layers=[
                Layer("keyword argument", {"server": kind}),
                Layer("marker", {"workers": 10**5}),
            ],
        )


def test_a_broadcast_room_larger_than_memory_is_refused() -> None:
    from pytest_concurrency import run_websocket_storm

    with pytest.raises(
        ConfigError, match=r"listeners=10,000,000 \(from keyword argument\) would need"
    ):
        run_websocket_storm(asgi_hello, "/ws", users=1, listeners=10**7, messages=1)


def test_a_wsgi_pool_larger_than_the_address_space_allows_is_refused_before_load(
    monkeypatch: pytest.MonkeyPatch, no_leaked_threads: None
) -> None:
    # Each thread reserves its whole stack (8 MiB by default) in the address space: under
    # `ulimit -v` a pool of a few hundred threads cannot start, whatever memory is free.
    import resource
    import threading

    real = resource.getrlimit
    limit = 1024 * 2**20

    def getrlimit(which: int) -> tuple[int, int]:
        return (limit, limit) if which == resource.RLIMIT_AS else real(which)

    monkeypatch.setattr(resource, "getrlimit", getrlimit)
    started = threading.active_count()
    with pytest.raises(
        ConfigError,
        match=(
            r"workers=200 × threads=2 \(from keyword argument\) asks for 400 threads; this "
            r"process may start about [\d,]+ more \(ulimit -v: 1,024 MB of address space, "
            r"[\d.]+ MB of stack per thread\)"
        ),
    ):
        run_storm(wsgi_hello, "GET", "/", workers=200, threads=2, duration=0.1)
    assert threading.active_count() == started
