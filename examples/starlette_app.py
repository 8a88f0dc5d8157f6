"""The example API in Starlette: async I/O, the blocking-in-async mistake, and CPU work."""

from __future__ import annotations

import time

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

IO_SECONDS = 0.05


async def io(request: Request) -> JSONResponse:
    await anyio.sleep(IO_SECONDS)  # a database or API call that frees the loop while it waits
    return JSONResponse({"waited_ms": IO_SECONDS * 1000})


async def blocking_in_async(request: Request) -> JSONResponse:
    time.sleep(IO_SECONDS)  # the classic mistake: a blocking call inside `async def`
    return JSONResponse({"waited_ms": IO_SECONDS * 1000})


async def cpu(request: Request) -> PlainTextResponse:
    total = sum(i * i for i in range(20_000))
    return PlainTextResponse(str(total))


async def item(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["item_id"], "name": "widget"})


app = Starlette(
    routes=[
        Route("/io", io),
        Route("/blocking-in-async", blocking_in_async),
        Route("/cpu", cpu),
        Route("/items/{item_id:int}", item),
    ]
)
