"""A bare install (the wheel alone, no extras) loads the plugin and fires an in-process storm.

The plugin is a ``pytest11`` entry point: one optional dependency imported at load breaks
every pytest run of the environment it is installed in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"

#: Top-level modules that only the extras bring (and what they pull in themselves).
OPTIONAL = (
    "httptools",
    "uvicorn",
    "uvloop",
    "watchfiles",
    "websockets",
    "wsproto",
    "psutil",
    "plotly",
    "gunicorn",
    "hypercorn",
    "granian",
    "locust",
    "gevent",
    "starlette",
    "fastapi",
    "flask",
    "django",
    "channels",
    "pydantic",
    "h2",
)

_STORM_TEST = """
import pytest


async def app(scope, receive, send):
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


def wsgi_app(environ, start_response):
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"ok"]


@pytest.mark.concurrency(users=5, requests=50, p99_ms=5000)
def test_asgi(storm):
    result = storm(app, "GET", "/")
    assert result.status_counts[200] == result.requests == 50


@pytest.mark.concurrency(users=5, requests=50, p99_ms=5000)
def test_wsgi(storm):
    result = storm(wsgi_app, "GET", "/")
    assert result.status_counts[200] == result.requests == 50


def test_a_real_server_names_the_extra(storm):
    from pytest_concurrency import ConfigError

    with pytest.raises(ConfigError, match=r"pytest-storm\\[servers\\]"):
        storm(app, "GET", "/", requests=1, server="http://127.0.0.1:9")
"""

_BLOCKER = """
import sys, importlib.abc

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, _Block())
"""


def test_the_base_dependencies_are_the_ones_the_blocker_leaves() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    base = {dep.split(">")[0].split("[")[0].strip() for dep in config["project"]["dependencies"]}
    assert not base & set(OPTIONAL), "a base dependency is blocked as optional"
    assert "httptools" not in base


def test_the_plugin_loads_and_storms_with_every_optional_module_missing(tmp_path: Path) -> None:
    # Blocks the extras' modules in a child interpreter through a sitecustomize, so that the
    # import of the plugin at pytest's start-up already runs without them.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"BLOCKED = {set(OPTIONAL)!r}\n" + textwrap.dedent(_BLOCKER), encoding="utf-8"
    )
    (tmp_path / "test_bare.py").write_text(_STORM_TEST, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(SRC)])}
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


@pytest.mark.install
def test_the_wheel_alone_loads_the_plugin_and_fires_a_storm(tmp_path: Path) -> None:
    # A fresh environment with only the built wheel and its declared dependencies.
    pip = [sys.executable, "-m", "pip"]
    dist = tmp_path / "dist"
    subprocess.run(
        [*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    wheels = list(dist.glob("pytest_storm-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheels[0])],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.lower()
    assert "httptools" not in listed
    assert "uvicorn" not in listed
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_bare.py").write_text(_STORM_TEST, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTEST_ADDOPTS"}}
    done = subprocess.run(
        [str(python), "-m", "pytest", "-p", "no:cacheprovider", "-q", str(project)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout
    shutil.rmtree(env_dir, ignore_errors=True)
