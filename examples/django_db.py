"""Django + psycopg under WSGI: a connection opened per request (``CONN_MAX_AGE=0``) and kept (60).

``configure(settings)`` adds two PostgreSQL aliases to the example Django project
(``examples.django_app``): ``pg0`` with ``CONN_MAX_AGE=0``, Django's default, which
opens a connection at the first query of every request and closes it when the request
ends, and ``pg60``, which keeps each worker thread's connection for 60 s.
``wsgi_app("pg0")`` serves ``GET /report``: one ``select pg_sleep(0.02)`` on that alias,
through Django's own request handling (its request signals open and close connections).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.handlers.wsgi import WSGIHandler
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.urls import path

import examples.django_app  # noqa: F401  (configures Django)

QUERY_SECONDS = 0.02
ALIASES = {"pg0": 0, "pg60": 60}


def configure(database: Mapping[str, str]) -> None:
    """Add the ``pg0`` and ``pg60`` aliases for *database* (NAME, USER, HOST, PORT)."""
    for alias, max_age in ALIASES.items():
        entry: dict[str, Any] = {
            "ENGINE": "django.db.backends.postgresql",
            **database,
            "CONN_MAX_AGE": max_age,
        }
        configured = connections.configure_settings({"default": {}, alias: entry})
        connections.settings[alias] = configured[alias]


def _report(alias: str) -> Any:
    def report(request: HttpRequest) -> JsonResponse:
        with connections[alias].cursor() as cursor:
            cursor.execute("select pg_sleep(%s)", [QUERY_SECONDS])
        return JsonResponse({"rows": 1})

    return report


urlpatterns = [path(f"{alias}/report", _report(alias)) for alias in ALIASES]


class _Handler(WSGIHandler):
    def __init__(self, alias: str) -> None:
        super().__init__()
        self.prefix = f"/{alias}"

    def get_response(self, request: HttpRequest) -> Any:
        request.urlconf = __name__  # this module's routes, whatever ROOT_URLCONF says
        request.path_info = self.prefix + request.path_info
        return super().get_response(request)


def wsgi_app(alias: str) -> WSGIHandler:
    """The WSGI app whose ``GET /report`` queries through *alias* (``pg0`` or ``pg60``)."""
    if alias not in ALIASES:
        raise ValueError(f"alias={alias!r}: one of {sorted(ALIASES)}")
    return _Handler(alias)
