"""The example API in Django, one file, served both as WSGI (`wsgi_app`) and ASGI (`asgi_app`).

`/orm` is the async view that still funnels through `sync_to_async`: Django's ORM calls
from async code must hop to a thread (here a SQLite query through the ORM); `/async-item`
gives the same answer without that hop.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import django
import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path

IO_SECONDS = 0.05
MODEL_URL = "http://model-server/generate"
_DB = Path(tempfile.gettempdir()) / "pytest-storm-django-example.sqlite3"

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="example-only",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        MIDDLEWARE=[],
        INSTALLED_APPS=["examples.django_items"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(_DB)}},
        USE_TZ=True,
    )
    django.setup()

from django.db import connection  # noqa: E402

from examples.django_items.models import Item  # noqa: E402


def _create_catalogue() -> None:
    if Item._meta.db_table not in connection.introspection.table_names():
        with connection.schema_editor() as editor:
            editor.create_model(Item)
    if not Item.objects.exists():
        Item.objects.bulk_create(Item(id=i, name=f"widget {i}") for i in range(1, 101))


_create_catalogue()
model_client = httpx.AsyncClient(timeout=30.0)


def io(request: HttpRequest) -> JsonResponse:
    time.sleep(IO_SECONDS)  # a sync view waiting on I/O
    return JsonResponse({"waited_ms": IO_SECONDS * 1000})


async def async_io(request: HttpRequest) -> JsonResponse:
    await asyncio.sleep(IO_SECONDS)  # an async view: frees the loop under ASGI
    return JsonResponse({"waited_ms": IO_SECONDS * 1000})


async def blocking_in_async(request: HttpRequest) -> JsonResponse:
    time.sleep(IO_SECONDS)  # blocks the event loop under ASGI
    return JsonResponse({"waited_ms": IO_SECONDS * 1000})


def _item_name(item_id: int) -> str:
    return Item.objects.get(id=item_id).name


async def async_item(request: HttpRequest, item_id: int) -> JsonResponse:
    # The same answer as /orm without the ORM: no thread hop of the view's own.
    return JsonResponse({"id": item_id, "name": f"widget {item_id}"})


async def orm(request: HttpRequest, item_id: int) -> JsonResponse:
    # The ORM is sync: an async view must send the query to a thread.
    name = await sync_to_async(_item_name)(item_id)
    return JsonResponse({"id": item_id, "name": name})


async def llm(request: HttpRequest) -> JsonResponse:
    response = await model_client.post(MODEL_URL, content=request.body)
    if response.status_code != 200:
        return JsonResponse({"detail": "model server error"}, status=502)
    return JsonResponse(response.json())


def cpu(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"total": sum(i * i for i in range(20_000))})


def read_item(request: HttpRequest, item_id: int) -> JsonResponse:
    return JsonResponse({"id": item_id, "name": "widget"})


urlpatterns = [
    path("io", io),
    path("async-io", async_io),
    path("blocking-in-async", blocking_in_async),
    path("orm/<int:item_id>", orm),
    path("async-item/<int:item_id>", async_item),
    path("llm", llm),
    path("cpu", cpu),
    path("items/<int:item_id>", read_item),
]

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

wsgi_app = get_wsgi_application()
asgi_app = get_asgi_application()
