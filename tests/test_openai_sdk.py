"""The OpenAI SDK (on httpx2) against its default base URL, https://api.openai.com/v1.

The route is answered in-process by the upstream's httpx2 transport; a spy stands in for
``socket.getaddrinfo`` and ``connect`` and refuses anything but loopback, so nothing could
leave the machine even if a call slipped past the upstream.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_concurrency import BudgetExceeded, Upstream
from pytest_concurrency._api import run_storm

from .test_egress import Spy

openai = pytest.importorskip("openai")

COMPLETIONS = "https://api.openai.com/v1/chat/completions"
LATENCY_MS = 50.0
#: The timer's overshoot and the SDK's own work per call (it builds and parses pydantic
#: models) on a loaded 2-core machine.
SLACK_MS = 15.0

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-test",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}


def _chunk(content: str, finish: str | None = None) -> str:
    delta = {"content": content} if content else {}
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-test",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


STREAM = [_chunk("Hel"), _chunk("lo"), _chunk("!"), _chunk("", "stop"), "data: [DONE]\n\n"]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    return Spy(monkeypatch)


def _app(stream: bool, retries: int = 2) -> Any:
    """An ASGI app that asks the model once per request with one AsyncOpenAI client (made
    before the storm, as apps make it), optionally streaming the answer."""
    client = openai.AsyncOpenAI(api_key="sk-test", max_retries=retries)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        messages = [{"role": "user", "content": "Say hello"}]
        if stream:
            parts = []
            answer = await client.chat.completions.create(
                model="gpt-test", messages=messages, stream=True
            )
            async for chunk in answer:
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
            text = "".join(parts)
        else:
            completion = await client.chat.completions.create(model="gpt-test", messages=messages)
            text = completion.choices[0].message.content or ""
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": text.encode()})

    return app


def _hello(response: Any) -> bool:
    return bool(response.content == b"Hello!")


def test_chat_completions_wait_the_declared_latency(spy: Spy) -> None:
    users = 5
    with Upstream() as upstream:
        upstream.route(COMPLETIONS, method="POST", latency=LATENCY_MS, json=COMPLETION)
        result = run_storm(
            _app(stream=False), "GET", "/", users=users, requests=60, checks=[_hello]
        )
    assert result.status_counts == {200: 60}
    route = result.extras["upstream"][f"POST {COMPLETIONS}"]
    assert route["calls_in_storm"] == 60
    assert 1 < route["max_in_flight"] <= users
    assert LATENCY_MS <= route["waited_ms_p50"] <= LATENCY_MS + 5
    assert LATENCY_MS - 1 <= result.latency.p50 <= LATENCY_MS + SLACK_MS
    assert spy.lookups == [] or all(h in ("127.0.0.1", "localhost") for h in spy.lookups)
    assert spy.off_machine == []


def test_a_streamed_chat_completion_waits_its_chunks(spy: Spy) -> None:
    with Upstream() as upstream:
        upstream.route(
            COMPLETIONS,
            method="POST",
            latency=LATENCY_MS,
            stream=STREAM,
            chunk_latency=5,
            headers={"content-type": "text/event-stream"},
        )
        result = run_storm(_app(stream=True), "GET", "/", users=2, requests=30, checks=[_hello])
    assert result.status_counts == {200: 30}
    # The first chunk after the latency, then four more 5 ms apart.
    model_ms = LATENCY_MS + 4 * 5
    assert model_ms - 1 <= result.latency.p50 <= model_ms + SLACK_MS
    assert spy.off_machine == []


def test_an_undeclared_openai_host_fails_fast_naming_it_with_no_connection(spy: Spy) -> None:
    with Upstream() as upstream:
        upstream.route("https://model-server.invalid/generate", json={})
        with pytest.raises(BudgetExceeded) as failed:
            run_storm(_app(stream=False, retries=0), "GET", "/", users=2, requests=4)
    result = failed.value.result
    assert result.failed == 4
    (error,) = result.errors.values()
    assert "undeclared upstream host 'api.openai.com'" in error.example
    assert 'upstream.route("https://api.openai.com/' in error.example
    assert upstream.undeclared == [COMPLETIONS]
    # Refused before any name was looked up or connection made; and fast.
    assert spy.lookups == []
    assert spy.connects == []
    assert result.latency.p99 < 50


def test_a_stream_iterated_again_goes_on_from_where_it_stopped() -> None:
    """As a connection's body: a client that stops early and then drains the rest (the
    SDK does, after ``[DONE]``) reads the rest, not the body again with its waits."""
    import anyio
    import httpx

    async def main() -> list[list[bytes]]:
        async with (
            httpx.AsyncClient() as client,
            client.stream("GET", "http://model-server.invalid/stream") as response,
        ):
            first = []
            async for chunk in response.stream:
                first.append(chunk)
                break
            return [first, [chunk async for chunk in response.stream]]

    with Upstream() as upstream:
        route = upstream.route(
            "http://model-server.invalid/stream", stream=["a", "b", "c"], chunk_latency=1
        )
        assert anyio.run(main) == [[b"a"], [b"b", b"c"]]
    assert route.in_flight == 0
