"""Self-tests of the fake vision endpoint, driven by plain httpx so they do not depend on the bot's client."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from httpx_sse import aconnect_sse
from PIL import Image

from tests.fakes.vision_server import (
    OPENAI_INSUFFICIENT_QUOTA,
    SEED_KEY_ERROR,
    ZHIPU_INVALID_PARAMETER,
    FakeVision,
    FetchedImage,
    error_reply,
    hang_reply,
    json_reply,
    silent_stream_reply,
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


# --- Image input modes, keys, models, silent providers -----------------------------------------------------


@dataclass
class ImageHost:
    """A tiny loopback web server for images that a url_only provider downloads."""

    base_url: str
    hits: Counter[str]


@pytest_asyncio.fixture
async def image_host() -> AsyncIterator[ImageHost]:
    hits: Counter[str] = Counter()

    async def serve(request: web.Request) -> web.Response:
        hits[request.path] += 1
        if request.path == "/cat.png":
            return web.Response(body=PNG, content_type="image/png")
        if request.path == "/page.html":
            return web.Response(text="<html>not an image</html>", content_type="text/html")
        if request.path == "/moved.png":
            raise web.HTTPFound("/cat.png")
        return web.Response(status=404, text="not found")

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield ImageHost(f"http://127.0.0.1:{runner.addresses[0][1]}", hits)
    await runner.cleanup()


async def _started(**kwargs: object) -> FakeVision:
    server = FakeVision(KEY, **kwargs)  # type: ignore[arg-type]
    await server.start()
    return server


def _post(fake: FakeVision, body: dict, key: str = KEY) -> httpx.Request:
    return httpx.Request("POST", f"{fake.base_url}/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {key}"})


async def _send(fake: FakeVision, body: dict, key: str = KEY) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.send(_post(fake, body, key))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.asyncio
async def test_url_only_downloads_the_image_once_before_replying(image_host: ImageHost) -> None:
    fake = await _started(image_input="url_only")
    url = f"{image_host.base_url}/cat.png"
    try:
        fake.enqueue(json_reply({"ok": True}))
        two_parts = _request(url, stream=False)
        two_parts["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": url}})
        response = await _send(fake, two_parts)
        hits_at_reply = image_host.hits["/cat.png"]
        redirected = await _send(fake, _request(f"{image_host.base_url}/moved.png"))
    finally:
        await fake.stop()
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert hits_at_reply == 1
    recorded = fake.requests[0]
    assert recorded.fetched == [FetchedImage(url, 200, PNG)]
    assert recorded.images() == [PNG, PNG] == recorded.last_user_images()
    assert redirected.status_code == 200
    assert fake.requests[1].images() == [PNG]


@pytest.mark.asyncio
async def test_url_only_download_failures_give_zhipu_1210(image_host: ImageHost) -> None:
    fake = await _started(image_input="url_only")
    refused = f"http://127.0.0.1:{_closed_port()}/cat.png"
    try:
        missing = await _send(fake, _request(f"{image_host.base_url}/missing.png"))
        html = await _send(fake, _request(f"{image_host.base_url}/page.html"))
        no_server = await _send(fake, _request(refused))
    finally:
        await fake.stop()
    for response in (missing, html, no_server):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "1210"
        assert "image download failed" in response.json()["error"]["message"]
    assert "404" in missing.json()["error"]["message"]
    assert "not an image" in html.json()["error"]["message"]
    assert fake.requests[0].fetched == [FetchedImage(f"{image_host.base_url}/missing.png", 404, None)]
    assert fake.requests[2].fetched == [FetchedImage(refused, None, None)]
    assert fake.requests[0].images() == []


@pytest.mark.asyncio
@pytest.mark.parametrize("error_status_200", [False, True])
async def test_url_only_rejects_inline_images(error_status_200: bool) -> None:
    fake = await _started(image_input="url_only", error_status_200=error_status_200)
    try:
        data_url = await _send(fake, _request())
        bare = await _send(fake, _request(base64.b64encode(PNG).decode()))
    finally:
        await fake.stop()
    for response in (data_url, bare):
        assert response.status_code == (200 if error_status_200 else 400)
        assert response.json() == ZHIPU_INVALID_PARAMETER
    assert all(request.fetched == [] for request in fake.requests)


@pytest.mark.asyncio
async def test_url_only_download_error_can_come_with_status_200(image_host: ImageHost) -> None:
    fake = await _started(image_input="url_only", error_status_200=True)
    try:
        response = await _send(fake, _request(f"{image_host.base_url}/missing.png"))
    finally:
        await fake.stop()
    assert response.status_code == 200 and response.json()["error"]["code"] == "1210"


@pytest.mark.asyncio
async def test_url_only_never_fetches_telegram_file_urls(image_host: ImageHost) -> None:
    fake = await _started(image_input="url_only", error_status_200=True)
    telegram = f"{image_host.base_url}/file/bot123456:AAE-secret/photos/file_1.png"
    try:
        response = await _send(fake, _request(telegram))
    finally:
        await fake.stop()
    assert response.status_code == 400
    assert fake.leaked_urls == [telegram]
    assert image_host.hits == Counter() and fake.requests[0].fetched == []


@pytest.mark.asyncio
@pytest.mark.parametrize("error_status_200", [False, True])
async def test_raw_base64_only_rejects_data_urls(error_status_200: bool) -> None:
    fake = await _started(image_input="raw_base64_only", error_status_200=error_status_200)
    try:
        fake.enqueue(json_reply({"ok": True}))
        bare = await _send(fake, _request(base64.b64encode(PNG).decode()))
        data_url = await _send(fake, _request())
        remote = await _send(fake, _request("https://example.com/cat.png"))
    finally:
        await fake.stop()
    assert bare.status_code == 200 and bare.json() == {"ok": True}
    assert fake.requests[0].images() == [PNG]
    assert data_url.status_code == (200 if error_status_200 else 400)
    assert data_url.json() == ZHIPU_INVALID_PARAMETER
    assert remote.status_code == 400 and remote.json()["error"]["code"] == "invalid_image_url"


def test_unknown_image_input_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="image_input"):
        FakeVision(KEY, image_input="urls")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_several_keys_and_a_reply_per_key() -> None:
    quota = error_reply(429, OPENAI_INSUFFICIENT_QUOTA)
    fake = await _started(extra_keys=["sk-second"], key_replies={"sk-broke": quota})
    try:
        fake.enqueue(json_reply({"n": 1}))
        broke = await _send(fake, _request(stream=False), key="sk-broke")
        second = await _send(fake, _request(stream=False), key="sk-second")
        fake.key_replies["sk-second"] = error_reply(403, {"error": {"message": "banned"}})
        banned = await _send(fake, _request(stream=False), key="sk-second")
        first = await _send(fake, _request(stream=False))
        unknown = await _send(fake, _request(stream=False), key="sk-unknown")
    finally:
        await fake.stop()
    assert broke.status_code == 429 and broke.json() == OPENAI_INSUFFICIENT_QUOTA
    assert second.json() == {"n": 1}  # the key reply did not consume the queue
    assert banned.status_code == 403
    assert first.json()["object"] == "chat.completion"
    assert unknown.status_code == 401
    assert [r.api_key for r in fake.requests] == ["sk-broke", "sk-second", "sk-second", KEY, "sk-unknown"]


@pytest.mark.asyncio
async def test_unknown_model_gets_404_model_not_found() -> None:
    fake = await _started(models=["glm-4v-flash", "glm-4v-plus"])
    try:
        known = await _send(fake, _request(stream=False))
        body = {**_request(stream=False), "model": "gpt-4-vision-preview"}
        unknown = await _send(fake, body)
    finally:
        await fake.stop()
    assert known.status_code == 200
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert error["code"] == "model_not_found" and error["type"] == "invalid_request_error"
    assert error["message"] == "The model `gpt-4-vision-preview` does not exist or you do not have access to it."
    assert [r.model for r in fake.requests] == ["glm-4v-flash", "gpt-4-vision-preview"]


@pytest.mark.asyncio
async def test_first_delay_holds_the_first_token(fake: FakeVision, client: httpx.AsyncClient) -> None:
    fake.enqueue(stream_reply(["late"], first_delay=0.3))
    started = time.monotonic()
    async with aconnect_sse(client, "POST", "/chat/completions", json=_request()) as source:
        events = source.aiter_sse()
        assert "role" in (await anext(events)).data
        assert time.monotonic() - started < 0.25
        assert '"late"' in (await anext(events)).data
        assert time.monotonic() - started >= 0.3
        await events.aclose()


@pytest.mark.asyncio
async def test_hang_reply_sends_nothing(fake: FakeVision, client: httpx.AsyncClient) -> None:
    fake.enqueue(hang_reply(0.3))
    started = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/chat/completions", json=_request())
    assert time.monotonic() - started >= 0.3


@pytest.mark.asyncio
async def test_silent_stream_accepts_then_sends_nothing(fake: FakeVision, client: httpx.AsyncClient) -> None:
    fake.enqueue(silent_stream_reply(0.4))
    started = time.monotonic()
    async with client.stream("POST", "/chat/completions", json=_request()) as response:
        headers_after = time.monotonic() - started
        body = await response.aread()
    assert headers_after < 0.2
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert body == b""
    assert time.monotonic() - started >= 0.4
    assert fake.requests[0].finished_at is not None and fake.disconnects == []


@pytest.mark.asyncio
async def test_silent_stream_with_pings_only(fake: FakeVision, client: httpx.AsyncClient) -> None:
    fake.enqueue(silent_stream_reply(0.5, pings=True, ping_interval=0.2))
    async with client.stream("POST", "/chat/completions", json=_request()) as response:
        body = (await response.aread()).decode()
    pings = body.count(": PING\n\n")
    assert pings >= 1 and body == ": PING\n\n" * pings


@pytest.mark.asyncio
async def test_silent_stream_can_drop_the_connection(fake: FakeVision, client: httpx.AsyncClient) -> None:
    fake.enqueue(silent_stream_reply(0.2, drop=True))
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("POST", "/chat/completions", json=_request()) as response:
            assert response.status_code == 200
            await response.aread()
