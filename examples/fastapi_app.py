"""The example API in FastAPI: async I/O, a sync endpoint on the thread pool, the mistake,
an LLM endpoint that forwards to a model server with httpx (answered by `upstream`), and
a chat over WebSockets: an echo, the same after an async wait or a blocking one, and a
broadcast room."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import httpx
from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

IO_SECONDS = 0.05
#: What a chat message waits for (a database write, a moderation call) before its answer.
CHAT_WAIT_SECONDS = 0.01
MODEL_URL = "http://model-server/generate"
STREAM_URL = "http://model-server/stream"

app = FastAPI()
# One client for the app's lifetime, as the httpx docs recommend.
model_client = httpx.AsyncClient(timeout=30.0)


class Item(BaseModel):
    id: int
    name: str


class Prompt(BaseModel):
    prompt: str
    max_tokens: int = 64


class Completion(BaseModel):
    text: str
    tokens: int


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


@app.post("/llm")
async def llm(prompt: Prompt) -> Completion:
    response = await model_client.post(MODEL_URL, json=prompt.model_dump())
    if response.status_code != 200:
        raise HTTPException(status_code=502, detail="model server error")
    return Completion.model_validate(response.json())


@app.post("/stream")
async def stream(prompt: Prompt) -> StreamingResponse:
    async def tokens() -> AsyncIterator[bytes]:
        async with model_client.stream("POST", STREAM_URL, json=prompt.model_dump()) as upstream:
            async for chunk in upstream.aiter_text():
                yield f"data: {chunk}\n\n".encode()

    return StreamingResponse(tokens(), media_type="text/event-stream")


# -- a chat over WebSockets ------------------------------------------------------------------


async def _echo(websocket: WebSocket, wait: float = 0.0, *, blocking: bool = False) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if blocking:
                time.sleep(wait)  # the mistake again: every connection waits for this one
            elif wait:
                await anyio.sleep(wait)
            if message.get("text") is not None:
                await websocket.send_text(f"You said: {message['text']}")
            else:
                await websocket.send_bytes(b"You said: " + message["bytes"])
    except WebSocketDisconnect:
        pass


@app.websocket("/ws")
async def chat(websocket: WebSocket) -> None:
    await _echo(websocket)


@app.websocket("/ws/wait")
async def chat_wait(websocket: WebSocket) -> None:
    await _echo(websocket, CHAT_WAIT_SECONDS)


@app.websocket("/ws/blocking")
async def chat_blocking(websocket: WebSocket) -> None:
    await _echo(websocket, CHAT_WAIT_SECONDS, blocking=True)


#: Everyone in the broadcast room.
room: set[WebSocket] = set()


@app.websocket("/ws/room")
async def chat_room(websocket: WebSocket) -> None:
    await websocket.accept()
    room.add(websocket)
    try:
        while True:
            text = await websocket.receive_text()
            for member in list(room):
                try:
                    await member.send_text(text)
                except (WebSocketDisconnect, RuntimeError):
                    room.discard(member)
    except WebSocketDisconnect:
        pass
    finally:
        room.discard(websocket)
