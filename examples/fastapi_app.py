"""The example API in FastAPI: async I/O, a sync endpoint on the thread pool, the mistake."""

from __future__ import annotations

import time

import anyio
from fastapi import FastAPI
from pydantic import BaseModel

IO_SECONDS = 0.05

app = FastAPI()


class Item(BaseModel):
    id: int
    name: str


@app.get("/io")
async def io() -> dict[str, float]:
    await anyio.sleep(IO_SECONDS)
    return {"waited_ms": IO_SECONDS * 1000}


@app.get("/sync-io")
def sync_io() -> dict[str, float]:
    time.sleep(IO_SECONDS)  # a `def` endpoint: FastAPI runs it on anyio's worker threads
    return {"waited_ms": IO_SECONDS * 1000}


@app.get("/blocking-in-async")
async def blocking_in_async() -> dict[str, float]:
    time.sleep(IO_SECONDS)  # blocks the event loop: every other request waits
    return {"waited_ms": IO_SECONDS * 1000}


@app.get("/cpu")
async def cpu() -> dict[str, int]:
    return {"total": sum(i * i for i in range(20_000))}


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> Item:
    return Item(id=item_id, name="widget")
