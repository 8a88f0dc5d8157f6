"""The example API in Starlette: async I/O, the blocking-in-async mistake, CPU work, an
LLM endpoint forwarding to a model server with httpx (answered by `upstream` in tests),
and a chat over WebSockets: an echo, the same after an async wait, and a broadcast room."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

IO_SECONDS = 0.05
#: What a chat message waits for (a database write, a moderation call) before its answer.
CHAT_WAIT_SECONDS = 0.01
MODEL_URL = "http://model-server/generate"
STREAM_URL = "http://model-server/stream"
model_client = httpx.AsyncClient(timeout=30.0)


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


async def llm(request: Request) -> JSONResponse:
    response = await model_client.post(MODEL_URL, content=await request.body())
    if response.status_code != 200:
        return JSONResponse({"detail": "model server error"}, status_code=502)
    return JSONResponse(response.json())


async def stream(request: Request) -> StreamingResponse:
    body = await request.body()

    async def tokens() -> AsyncIterator[bytes]:
        async with model_client.stream("POST", STREAM_URL, content=body) as upstream:
            async for chunk in upstream.aiter_text():
                yield f"data: {chunk}\n\n".encode()

    return StreamingResponse(tokens(), media_type="text/event-stream")


async def _echo(websocket: WebSocket, wait: float = 0.0) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if wait:
                await anyio.sleep(wait)
            if message.get("text") is not None:
                await websocket.send_text(f"You said: {message['text']}")
            else:
                await websocket.send_bytes(b"You said: " + message["bytes"])
    except WebSocketDisconnect:
        pass


async def chat(websocket: WebSocket) -> None:
    await _echo(websocket)


async def chat_wait(websocket: WebSocket) -> None:
    await _echo(websocket, CHAT_WAIT_SECONDS)


#: Everyone in the broadcast room.
room: set[WebSocket] = set()


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


app = Starlette(
    routes=[
        Route("/io", io),
        Route("/blocking-in-async", blocking_in_async),
        Route("/cpu", cpu),
        Route("/items/{item_id:int}", item),
        Route("/llm", llm, methods=["POST"]),
        Route("/stream", stream, methods=["POST"]),
        WebSocketRoute("/ws", chat),
        WebSocketRoute("/ws/wait", chat_wait),
        WebSocketRoute("/ws/room", chat_room),
    ]
)
