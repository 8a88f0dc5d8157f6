"""The example chat in Django with Channels: Django alone speaks no WebSocket.

The HTTP side is the example Django app (``examples.django_app``); Channels routes the
``websocket`` scope to consumers: an echo, the same after an async wait, the sync
consumer that Channels runs on one shared thread, and a broadcast room over the
in-memory channel layer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer, WebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.conf import settings
from django.urls import path

from examples import django_app

CHAT_WAIT_SECONDS = 0.01
ROOM = "chat"

if not getattr(settings, "CHANNEL_LAYERS", None):
    # An in-process layer: the room's fan-out without a Redis server.
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


class Echo(AsyncWebsocketConsumer):
    """Answers each message with "You said: ..." (text or bytes)."""

    wait = 0.0

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.wait:
            await asyncio.sleep(self.wait)
        if text_data is not None:
            await self.send(text_data=f"You said: {text_data}")
        else:
            await self.send(bytes_data=b"You said: " + (bytes_data or b""))


class EchoAfterWait(Echo):
    """The echo after an async wait (a database write, a moderation call)."""

    wait = CHAT_WAIT_SECONDS


class SyncEcho(WebsocketConsumer):
    """A sync consumer: Channels runs its handlers on one thread shared by all connections."""

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        time.sleep(CHAT_WAIT_SECONDS)
        self.send(text_data=f"You said: {text_data}")


class Room(AsyncWebsocketConsumer):
    """A broadcast room: every message goes to everyone in it, through the channel layer."""

    async def connect(self) -> None:
        await self.channel_layer.group_add(ROOM, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(ROOM, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.channel_layer.group_send(ROOM, {"type": "chat.message", "text": text_data})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter(
    {
        "http": django_app.asgi_app,
        "websocket": URLRouter(
            [
                path("ws", Echo.as_asgi()),
                path("ws/wait", EchoAfterWait.as_asgi()),
                path("ws/sync", SyncEcho.as_asgi()),
                path("ws/room", Room.as_asgi()),
            ]
        ),
    }
)
