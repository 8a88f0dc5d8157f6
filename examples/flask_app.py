"""The example API in Flask (WSGI): every wait holds a worker thread."""

from __future__ import annotations

import time

from flask import Flask

IO_SECONDS = 0.05

app = Flask(__name__)


@app.get("/io")
def io() -> dict[str, float]:
    time.sleep(IO_SECONDS)  # a database or API call: the worker is held while it waits
    return {"waited_ms": IO_SECONDS * 1000}


@app.get("/cpu")
def cpu() -> dict[str, int]:
    return {"total": sum(i * i for i in range(20_000))}


@app.get("/items/<int:item_id>")
def read_item(item_id: int) -> dict[str, object]:
    return {"id": item_id, "name": "widget"}
