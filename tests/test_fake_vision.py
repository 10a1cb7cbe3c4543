"""Self-tests of the fake vision endpoint, driven by plain httpx so they do not depend on the bot's client."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from httpx_sse import aconnect_sse
from PIL import Image

from tests.fakes.vision_server import (
    SEED_KEY_ERROR,
    FakeVision,
    hang_reply,
    json_reply,
    stream_reply,
)

KEY = "sk-test-key-123"


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "orange").save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def _request(image_url: str = PNG_URL, *, stream: bool = True) -> dict:
    return {
        "model": "glm-4v-flash",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "这是什么图片?"},
                                                  {"type": "image_url", "image_url": {"url": image_url}}]}],
        "max_tokens": 300,
        "stream": stream,
        "stream_options": {"include_usage": True},
    }


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeVision]:
    server = FakeVision(KEY)
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture
async def client(fake: FakeVision) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.base_url, headers={"Authorization": f"Bearer {KEY}"},
                                 timeout=5) as http:
        yield http


@pytest.mark.asyncio
async def test_stream_has_chunks_usage_and_done(fake: FakeVision, client: httpx.AsyncClient) -> None:
    fake.enqueue(stream_reply(["这是", "一个橙子"], pings=True, request_id="202504281217566c4aa5d82259466e"))
    async with aconnect_sse(client, "POST", "/chat/completions", json=_request()) as source:
        assert source.response.headers["x-request-id"] == "202504281217566c4aa5d82259466e"
        data = [event.data async for event in source.aiter_sse()]

    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["这是", "一个橙子"]
    assert chunks[3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["total_tokens"] == 120
    recorded = fake.requests[0]
    assert recorded.images() == [PNG] == recorded.last_user_images()
    assert recorded.text_parts() == ["这是什么图片?"]
    assert recorded.headers["authorization"] == f"Bearer {KEY}"
    assert recorded.first_chunk_at is not None and recorded.finished_at is not None


@pytest.mark.asyncio
async def test_usage_chunk_only_when_requested(fake: FakeVision, client: httpx.AsyncClient) -> None:
    body = _request()
    del body["stream_options"]
    async with aconnect_sse(client, "POST", "/chat/completions", json=body) as source:
        data = [event.data async for event in source.aiter_sse()]
    assert not any("usage" in json.loads(d) for d in data[:-1])


@pytest.mark.asyncio
async def test_stream_reply_falls_back_to_json_for_non_stream_request(
        fake: FakeVision, client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=_request(stream=False))
    body = response.json()
    assert response.status_code == 200
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "This is a test image."
    assert body["usage"]["total_tokens"] == 120


@pytest.mark.asyncio
async def test_wrong_key_is_rejected_and_still_recorded(fake: FakeVision, client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=_request(),
                                 headers={"Authorization": "Bearer sk-wrong-key"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert len(fake.requests) == 1


@pytest.mark.asyncio
async def test_remote_image_urls_are_rejected_and_telegram_urls_recorded(
        fake: FakeVision, client: httpx.AsyncClient) -> None:
    telegram = "https://api.telegram.org/file/bot123456:AAE-secret/photos/file_1.jpg"
    for url in ("https://example.com/cat.png", telegram):
        response = await client.post("/chat/completions", json=_request(url))
        assert response.status_code == 400
        assert "invalid image url" in response.json()["error"]["message"]
    assert fake.leaked_urls == [telegram]


@pytest.mark.asyncio
async def test_raw_base64_passes_and_garbage_fails(fake: FakeVision, client: httpx.AsyncClient) -> None:
    fake.enqueue(json_reply({"ok": True}))
    accepted = await client.post("/chat/completions", json=_request(base64.b64encode(PNG).decode()))
    rejected = await client.post("/chat/completions", json=_request("data:image/png;base64,bm90IGFuIGltYWdl"))
    assert accepted.json() == {"ok": True}
    assert rejected.json()["error"]["code"] == "invalid_image_format"
    assert fake.requests[0].images() == [PNG]


@pytest.mark.asyncio
async def test_relay_limits() -> None:
    fake = FakeVision(KEY, require_max_tokens=True, max_images_per_request=1)
    await fake.start()
    try:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as http:
            url = f"{fake.base_url}/chat/completions"
            two = _request()
            two["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": PNG_URL}})
            too_many = await http.post(url, json=two)
            without_max_tokens = {k: v for k, v in _request().items() if k != "max_tokens"}
            no_max_tokens = await http.post(url, json=without_max_tokens)
            wrong_path = await http.post(f"{fake.base_url}/completions", json=_request())
    finally:
        await fake.stop()
    assert too_many.status_code == 400 and "2 images" in too_many.json()["error"]["message"]
    assert no_max_tokens.status_code == 200 and no_max_tokens.json()["codes"] == 400
    assert wrong_path.status_code == 404
    assert wrong_path.json()["error"]["message"] == "Invalid URL (POST /v1/completions)"
    assert len(fake.requests) == 2


@pytest.mark.asyncio
async def test_seed_error_body_is_served_as_plain_json_to_a_stream_request(
        fake: FakeVision, client: httpx.AsyncClient) -> None:
    fake.enqueue(json_reply(SEED_KEY_ERROR))
    response = await client.post("/chat/completions", json=_request())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == SEED_KEY_ERROR


@pytest.mark.asyncio
async def test_error_event_ends_the_stream(fake: FakeVision, client: httpx.AsyncClient) -> None:
    fake.enqueue(stream_reply(["a", "b"], error_event={"message": "upstream failed", "code": "500"},
                              error_after=1))
    async with aconnect_sse(client, "POST", "/chat/completions", json=_request()) as source:
        data = [json.loads(event.data) async for event in source.aiter_sse()]
    assert data[-1] == {"error": {"message": "upstream failed", "code": "500"}}
    assert len(data) == 3


@pytest.mark.asyncio
async def test_cut_after_closes_the_connection_early(fake: FakeVision, client: httpx.AsyncClient) -> None:
    fake.enqueue(stream_reply(["one ", "two ", "three"], cut_after=2))
    data: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with aconnect_sse(client, "POST", "/chat/completions", json=_request()) as source:
            async for event in source.aiter_sse():
                data.append(event.data)
    assert [json.loads(d)["choices"][0]["delta"].get("content") for d in data] == [None, "one ", "two "]
    assert fake.disconnects == []


@pytest.mark.asyncio
async def test_client_disconnect_is_recorded_promptly(fake: FakeVision, client: httpx.AsyncClient) -> None:
    fake.enqueue(stream_reply(["first", "never"], gate=asyncio.Event()))
    async with aconnect_sse(client, "POST", "/chat/completions", json=_request()) as source:
        events = source.aiter_sse()
        await anext(events)
        await anext(events)
        await events.aclose()
        closed_at = time.monotonic()
    await asyncio.sleep(0.05)  # let the server's event loop notice the closed socket
    assert len(fake.disconnects) == 1
    assert fake.disconnects[0] - closed_at < 0.1
    assert fake.requests[0].finished_at is None


@pytest.mark.asyncio
async def test_gate_paces_the_stream(fake: FakeVision, client: httpx.AsyncClient) -> None:
    gate = asyncio.Event()
    fake.enqueue(stream_reply(["1", "2", "3"], gate=gate))
    async with aconnect_sse(client, "POST", "/chat/completions", json=_request()) as source:
        events = source.aiter_sse()
        assert "role" in (await anext(events)).data
        assert '"1"' in (await anext(events)).data
        second = asyncio.ensure_future(anext(events))
        done, _ = await asyncio.wait({second}, timeout=0.05)
        assert not done
        gate.set()
        rest = [(await second).data] + [event.data async for event in events]
    assert '"2"' in rest[0] and '"3"' in rest[1] and rest[-1] == "[DONE]"


@pytest.mark.asyncio
async def test_stop_is_prompt_while_a_request_hangs() -> None:
    fake = FakeVision(KEY)
    await fake.start()
    fake.enqueue(hang_reply(30))
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as http:
        pending = asyncio.create_task(http.post(f"{fake.base_url}/chat/completions", json=_request()))
        await fake.wait_for_requests(1)
        started = time.monotonic()
        await fake.stop()
        assert time.monotonic() - started < 1
        with pytest.raises(httpx.HTTPError):
            await pending
