"""The example API in Flask (WSGI): every wait holds a worker thread, including the wait
on the model server behind `/llm`."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
from flask import Flask, Response, abort, request

IO_SECONDS = 0.05
MODEL_URL = "http://model-server/generate"
STREAM_URL = "http://model-server/stream"

app = Flask(__name__)
model_client = httpx.Client(timeout=30.0)


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


@app.post("/llm")
def llm() -> dict[str, object]:
    prompt = request.get_json()
    response = model_client.post(MODEL_URL, json=prompt)
    if response.status_code != 200:
        abort(502)
    completion: dict[str, object] = response.json()
    return completion


@app.post("/stream")
def stream() -> Response:
    prompt = request.get_json()

    def tokens() -> Iterator[bytes]:
        with model_client.stream("POST", STREAM_URL, json=prompt) as upstream:
            for chunk in upstream.iter_text():
                yield f"data: {chunk}\n\n".encode()

    return Response(tokens(), mimetype="text/event-stream")
