"""The example API in Django, one file, served both as WSGI (`wsgi_app`) and ASGI (`asgi_app`)."""

from __future__ import annotations

import asyncio
import time

import django
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path

IO_SECONDS = 0.05

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="example-only",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
    )
    django.setup()


def io(request: HttpRequest) -> JsonResponse:
    time.sleep(IO_SECONDS)  # a sync view waiting on I/O
    return JsonResponse({"waited_ms": IO_SECONDS * 1000})


async def async_io(request: HttpRequest) -> JsonResponse:
    await asyncio.sleep(IO_SECONDS)  # an async view: frees the loop under ASGI
    return JsonResponse({"waited_ms": IO_SECONDS * 1000})


async def blocking_in_async(request: HttpRequest) -> JsonResponse:
    time.sleep(IO_SECONDS)  # blocks the event loop under ASGI
    return JsonResponse({"waited_ms": IO_SECONDS * 1000})


def cpu(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"total": sum(i * i for i in range(20_000))})


def read_item(request: HttpRequest, item_id: int) -> JsonResponse:
    return JsonResponse({"id": item_id, "name": "widget"})


urlpatterns = [
    path("io", io),
    path("async-io", async_io),
    path("blocking-in-async", blocking_in_async),
    path("cpu", cpu),
    path("items/<int:item_id>", read_item),
]

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

wsgi_app = get_wsgi_application()
asgi_app = get_asgi_application()
