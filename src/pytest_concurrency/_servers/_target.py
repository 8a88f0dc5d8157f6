"""The app as seen by a server process: the setup hook runs once, then the app is imported.

Servers that load their app in worker processes of their own (uvicorn and hypercorn
with several workers, granian) are pointed at ``pytest_concurrency._servers._target:app``
so that each such process runs the setup hook before importing the app too. The import
string and the hook travel in environment variables, which every descendant inherits.
"""

from __future__ import annotations

import os
from typing import Any

from .._apps import load_app as _load

APP_ENV = "PYTEST_STORM_SERVER_APP"
SETUP_ENV = "PYTEST_STORM_SERVER_SETUP"
PATH_ENV = "PYTEST_STORM_SERVER_PATH"
TARGET = "pytest_concurrency._servers._target:app"

_loaded: list[Any] = []


def resolve(import_string: str) -> Any:
    """Import ``module:attr`` (attr may be dotted) with the package's one app loader."""
    return _load(import_string, origin="the server process")


def load_app() -> Any:
    """Run the setup hook (once per process) and return the app named in the environment."""
    if not _loaded:
        setup = os.environ.get(SETUP_ENV)
        if setup:
            resolve(setup)()
        from .agent import wrap

        # Behind the probe middleware when the storm asked for probes in the server.
        _loaded.append(wrap(resolve(os.environ[APP_ENV])))
    return _loaded[0]


def __getattr__(name: str) -> Any:
    if name == "app":
        return load_app()
    raise AttributeError(name)
