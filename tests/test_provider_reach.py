"""End to end: providers that take only image URLs, several keys, fallback providers, hangs, and albums made grids.

Everything runs through the loopback fakes: FakeVision in its `url_only` mode fetches the URLs it is given, like
glm-4v-flash as reported in the field; the bot's own server (PUBLIC_BASE_URL) or an S3 server (moto) publishes.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from bot.clients.publishing import LocalImageHost
from bot.models import PreparedImage
from bot.texts import error_text, text
from tests.conftest import API_KEY, make_photo
from tests.fakes.telegram_server import FakeTelegram, make_user, message_update, private_chat
from tests.fakes.vision_server import (
    OPENAI_INSUFFICIENT_QUOTA,
    OPENAI_INVALID_KEY,
    FakeVision,
    RecordedRequest,
    error_reply,
    hang_reply,
    json_reply,
    silent_stream_reply,
    stream_reply,
)
from tests.support import answered, final_texts, free_port, send_photo

StartBot = Callable[..., Any]
ALICE = make_user(5001, "Alice", "en")
BOB = make_user(5002, "Bob", "en")
LI = make_user(5003, "李雷", "zh-hans")
FALLBACK_KEY = "sk-fallback-key-456"



@pytest.fixture
async def url_only() -> AsyncIterator[FakeVision]:
    fake = FakeVision(api_key=API_KEY, image_input="url_only")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def fallback() -> AsyncIterator[FakeVision]:
    fake = FakeVision(api_key=FALLBACK_KEY)
    fake.default_reply = stream_reply(["Answer from ", "the fallback."])
    await fake.start()
    yield fake
    await fake.stop()


def own_server(port: int) -> dict[str, Any]:
    return {"public_base_url": f"http://127.0.0.1:{port}", "webhook_host": "127.0.0.1", "webhook_port": port}


def image_url(request: RecordedRequest) -> str:
    return request.body["messages"][-1]["content"][1]["image_url"]["url"]


def assert_clean_jpeg(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert not image.getexif()
        assert max(image.size) <= 2048


# --- Image URLs: the bot's own server ------------------------------------------------------------------------


async def test_a_url_only_provider_answers_through_the_bots_own_server(
        telegram: FakeTelegram, url_only: FakeVision, start_bot: StartBot, http: httpx.AsyncClient) -> None:
    port = free_port()
    await start_bot(vision_base_url=url_only.base_url, vision_model="glm-4v-flash", **own_server(port))

    send_photo(telegram, ALICE, "what is this?")
    texts = await answered(telegram, ALICE["id"])

    assert texts == ["This is a test image."]
    refused, accepted = url_only.requests
    assert image_url(refused).startswith("data:image/jpeg;base64,")  # refused with Zhipu's 1210 ...
    url = image_url(accepted)
    assert url.startswith(f"http://127.0.0.1:{port}/images/") and url.endswith(".jpg")
    assert len(url.rsplit("/", 1)[1].removesuffix(".jpg")) >= 22  # >= 128 random bits, URL-safe base64
    ((fetched_url, status, data),) = accepted.fetched  # ... and the URL fetched by the provider itself
    assert (fetched_url, status) == (url, 200)
    assert data is not None
    assert_clean_jpeg(data)
    assert not url_only.leaked_urls
    assert telegram.token not in url

    guessed = url[:-10] + "AAAAAA.jpg"
    assert (await http.get(guessed)).status_code == 404
    for path in ("/", "/images/", "/healthz", "/metrics", f"/bot{telegram.token}/getMe"):
        assert (await http.get(f"http://127.0.0.1:{port}{path}")).status_code == 404, path


async def test_the_encoding_that_worked_is_remembered_for_the_model(
        telegram: FakeTelegram, url_only: FakeVision, start_bot: StartBot) -> None:
    await start_bot(vision_base_url=url_only.base_url, **own_server(free_port()))

    send_photo(telegram, ALICE, "first")
    await answered(telegram, ALICE["id"])
    send_photo(telegram, BOB, "second", make_photo(color=(200, 30, 30)))
    await answered(telegram, BOB["id"])

    assert len(url_only.requests) == 3  # refused + URL, then straight to a URL
    assert url_only.requests[2].fetched[0].status == 200


def test_published_images_expire_after_the_ttl() -> None:
    now = [1000.0]
    host = LocalImageHost("https://bot.example.com", ttl=600, clock=lambda: now[0])
    url = asyncio.run(host.publish(PreparedImage(image_id="a", data=b"jpeg")))
    token = url.rsplit("/", 1)[1].removesuffix(".jpg")

    assert url.startswith("https://bot.example.com/images/")
    assert host.lookup(token) == (b"jpeg", "image/jpeg")
    now[0] += 599
    assert host.lookup(token) is not None
    now[0] += 1
    assert host.lookup(token) is None
    assert host.published == 0


async def test_an_expired_url_is_404_on_the_server(
        telegram: FakeTelegram, url_only: FakeVision, start_bot: StartBot, http: httpx.AsyncClient) -> None:
    port = free_port()
    bot = await start_bot(vision_base_url=url_only.base_url, image_url_ttl=10, **own_server(port))
    send_photo(telegram, ALICE)
    await answered(telegram, ALICE["id"])
    url = url_only.requests[-1].fetched[0].url
    assert (await http.get(url)).status_code == 200

    host = bot.app.publisher
    assert isinstance(host, LocalImageHost)
    host._clock = lambda: float("inf")  # time travel: the TTL has passed

    assert (await http.get(url)).status_code == 404


async def test_without_a_way_to_publish_a_url_only_model_gets_a_clear_message(
        telegram: FakeTelegram, url_only: FakeVision, start_bot: StartBot) -> None:
    await start_bot(vision_base_url=url_only.base_url, admin_ids="777")

    send_photo(telegram, ALICE)
    texts = await answered(telegram, ALICE["id"])
    await telegram.wait_for(lambda: len(telegram.calls_to("sendMessage", 777)) >= 1)

    assert texts == [error_text("needs_image_urls", "en")]
    data_url, raw = (image_url(request) for request in url_only.requests)  # both refused
    assert data_url.startswith("data:") and not raw.startswith("data:")
    report = telegram.calls_to("sendMessage", 777)[0].params["text"]
    assert "needs_image_urls" in report and "PUBLIC_BASE_URL" in report and "1210" in report


# --- Image URLs: S3 (moto's server on loopback) ------------------------------------------------------------------


@pytest.fixture
def s3_settings(moto_endpoint: str, offline_aws_env: None) -> dict[str, Any]:
    bucket = f"bot-images-{free_port()}"
    with httpx.Client(trust_env=False) as http:
        http.put(f"{moto_endpoint}/{bucket}").raise_for_status()  # moto accepts an unsigned CreateBucket
    return {"s3_endpoint_url": moto_endpoint, "s3_bucket": bucket, "s3_access_key_id": "AKIDTEST",
            "s3_secret_access_key": "s3-secret-do-not-log", "s3_region": "us-east-1"}


async def test_a_url_only_provider_answers_through_s3(
        telegram: FakeTelegram, url_only: FakeVision, start_bot: StartBot, s3_settings: dict[str, Any]) -> None:
    await start_bot(vision_base_url=url_only.base_url, **s3_settings)

    send_photo(telegram, ALICE, "what is this?")
    texts = await answered(telegram, ALICE["id"])

    assert texts == ["This is a test image."]
    fetched = url_only.requests[-1].fetched[0]
    assert fetched.url.startswith(f"{s3_settings['s3_endpoint_url']}/{s3_settings['s3_bucket']}/")
    assert "X-Amz-Signature=" in fetched.url and "X-Amz-Expires=600" in fetched.url
    assert fetched.status == 200 and fetched.data is not None
    assert_clean_jpeg(fetched.data)
    assert s3_settings["s3_secret_access_key"] not in fetched.url


# --- Several keys, several providers -------------------------------------------------------------------------------


async def test_quota_on_the_primary_is_answered_once_by_the_fallback(
        telegram: FakeTelegram, vision: FakeVision, fallback: FakeVision, start_bot: StartBot,
        caplog: pytest.LogCaptureFixture) -> None:
    vision.key_replies[API_KEY] = error_reply(429, OPENAI_INSUFFICIENT_QUOTA)
    fallbacks = [{"base_url": fallback.base_url, "api_key": FALLBACK_KEY, "model": "gpt-4o-mini"}]
    await start_bot(vision_fallbacks=json.dumps(fallbacks), admin_ids="777")

    with caplog.at_level(logging.INFO):
        send_photo(telegram, ALICE, "what is this?")
        first = await answered(telegram, ALICE["id"])
        send_photo(telegram, BOB, "and this?")
        second = await answered(telegram, BOB["id"])
        await telegram.wait_for(lambda: len(telegram.calls_to("sendMessage", 777)) >= 1)

    assert first == second == ["Answer from the fallback."]
    assert len(vision.requests) == 1  # the primary's only key rests after its quota error
    assert len(fallback.requests) == 2
    assert fallback.requests[0].model == "gpt-4o-mini"
    assert fallback.requests[0].images()
    assert "fallback 1" in caplog.text and "provider=fallback 1" in caplog.text
    alerts = [call.params["text"] for call in telegram.calls_to("sendMessage", 777)]
    assert len(alerts) == 1 and "key 1 of 1" in alerts[0] and "quota" in alerts[0]
    everything = json.dumps([call.params for call in telegram.calls], default=str) + caplog.text
    assert API_KEY not in everything and FALLBACK_KEY not in everything


async def test_an_invalid_key_among_several_is_skipped_and_rests(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    vision.extra_keys.append("sk-second-good-key")
    await start_bot(vision_api_key=f"sk-revoked-key-000,{API_KEY},sk-second-good-key", admin_ids="777")

    for user in (ALICE, BOB, LI):
        send_photo(telegram, user, "what is this?")
        assert await answered(telegram, user["id"]) == ["This is a test image."]
    await telegram.wait_for(lambda: len(telegram.calls_to("sendMessage", 777)) >= 1)

    used = [request.api_key for request in vision.requests]
    assert used.count("sk-revoked-key-000") == 1  # tried once, then resting
    assert {API_KEY, "sk-second-good-key"} <= set(used)  # requests spread over the good keys
    alert = telegram.calls_to("sendMessage", 777)[0].params["text"]
    assert "key 1 of 3" in alert and "sk-revoked" not in alert


async def test_every_key_rejected_tells_the_user_once_per_question(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    vision.key_replies["sk-other-bad-key"] = error_reply(401, OPENAI_INVALID_KEY)
    vision.key_replies[API_KEY] = error_reply(401, OPENAI_INVALID_KEY)
    await start_bot(vision_api_key=f"{API_KEY},sk-other-bad-key")

    send_photo(telegram, ALICE)
    assert await answered(telegram, ALICE["id"]) == [error_text("auth", "en")]
    send_photo(telegram, BOB)
    assert await answered(telegram, BOB["id"]) == [error_text("auth", "en")]

    assert len(vision.requests) == 2  # each key once; then both rest and nobody waits for them


async def test_after_text_was_shown_there_is_no_switch(
        telegram: FakeTelegram, vision: FakeVision, fallback: FakeVision, start_bot: StartBot) -> None:
    vision.enqueue(stream_reply(["Half of ", "an answer"], error_after=2,
                                error_event={"message": "upstream overloaded", "type": "server_error"}))
    fallbacks = [{"base_url": fallback.base_url, "api_key": FALLBACK_KEY, "model": "gpt-4o"}]
    await start_bot(vision_fallbacks=json.dumps(fallbacks))

    send_photo(telegram, ALICE)
    (answer,) = await answered(telegram, ALICE["id"])

    assert answer.startswith("Half of an answer")
    assert answer.endswith(error_text("unavailable", "en"))
    assert fallback.requests == []


# --- Hangs --------------------------------------------------------------------------------------------------


async def test_a_silent_provider_is_given_up_with_a_note_while_waiting(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    vision.enqueue(silent_stream_reply(10, pings=True, ping_interval=0.2), hang_reply(10))
    await start_bot(vision_first_token_timeout=1.0, vision_max_wait=2.5, slow_notice_after=0.5,
                    stream_mode="edit")

    started = asyncio.get_running_loop().time()
    send_photo(telegram, ALICE)
    await telegram.wait_for(lambda: any(text("still_waiting", "en") in call.params.get("text", "")
                                        for call in telegram.calls_to("sendMessage", ALICE["id"])), timeout=3)
    await telegram.wait_for(lambda: final_texts(telegram, ALICE["id"]) == [error_text("timeout", "en")], timeout=5)

    assert asyncio.get_running_loop().time() - started < 4.0
    assert len(vision.requests) == 2  # one retry within the budget


async def test_a_hanging_primary_hands_over_to_the_fallback_within_the_budget(
        telegram: FakeTelegram, vision: FakeVision, fallback: FakeVision, start_bot: StartBot) -> None:
    vision.default_reply = hang_reply(10)
    fallbacks = [{"base_url": fallback.base_url, "api_key": FALLBACK_KEY, "model": "gpt-4o"}]
    await start_bot(vision_fallbacks=json.dumps(fallbacks), vision_first_token_timeout=1.0, vision_max_wait=3.0)

    send_photo(telegram, ALICE)
    texts = await answered(telegram, ALICE["id"])

    assert texts == ["Answer from the fallback."]
    assert len(vision.requests) == 1 and len(fallback.requests) == 1


# --- Albums for one-image models ------------------------------------------------------------------------------


async def test_an_album_of_three_to_a_one_image_model_is_one_request_with_a_grid(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    await start_bot(vision_model="glm-4v-flash")
    colors = [(230, 20, 20), (20, 200, 20), (20, 20, 230)]
    chat = private_chat(ALICE)
    for index, color in enumerate(colors):
        photo = Image.new("RGB", (800, 600), color)
        out = io.BytesIO()
        photo.save(out, format="JPEG")
        telegram.push_update(message_update(chat, ALICE, photo=telegram.photo_sizes(out.getvalue()),
                                            media_group_id="album-grid", caption="compare" if index == 0 else None))

    await answered(telegram, ALICE["id"])
    await asyncio.sleep(0.5)

    assert len(vision.requests) == 1
    (grid,) = vision.requests[0].images()
    with Image.open(io.BytesIO(grid)) as image:
        pixels = set(image.convert("RGB").resize((60, 60), Image.Resampling.NEAREST).get_flattened_data())
    for color in colors:
        assert any(all(abs(a - b) < 40 for a, b in zip(pixel, color, strict=True)) for pixel in pixels), color
    (question,) = vision.requests[0].text_parts()
    assert question.startswith("compare") and "3" in question and "grid" in question.lower()
    assert "first" not in final_texts(telegram, ALICE["id"])[0]

    telegram.push_update(message_update(chat, ALICE, text="and the second one?"))
    await answered(telegram, ALICE["id"], 2)
    assert vision.requests[1].images() == [grid]  # the grid is what the conversation keeps


# --- The answer, all of it ------------------------------------------------------------------------------------


async def test_text_that_looks_like_html_reaches_the_user_intact(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    vision.enqueue(stream_reply(["Use the <br> tag", "; <div>hello</div> & more"]))
    await start_bot()

    send_photo(telegram, ALICE)
    texts = await answered(telegram, ALICE["id"])

    assert texts == ["Use the <br> tag; <div>hello</div> & more"]


# --- Small truths -----------------------------------------------------------------------------------------------


async def test_a_broken_200_body_echoing_the_request_never_shows_the_question_as_the_answer(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    echoed = ('upstream said: {"model":"glm-4v-flash","messages":[{"role":"user","content":"is this mushroom '
              'safe?"}] <- request rejected, retry later')
    vision.enqueue(json_reply(echoed, content_type="text/plain"))
    await start_bot()

    send_photo(telegram, ALICE, "is this mushroom safe?")
    (answer,) = await answered(telegram, ALICE["id"])

    assert "mushroom" not in answer
    assert answer == error_text("bad_request", "en")


async def test_the_owner_is_said_to_be_told_only_when_there_is_one(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    vision.enqueue(error_reply(401, OPENAI_INVALID_KEY), error_reply(401, OPENAI_INVALID_KEY))
    bot = await start_bot()
    send_photo(telegram, ALICE)
    (without,) = await answered(telegram, ALICE["id"])
    await bot.stop()
    await start_bot(admin_ids="777")
    send_photo(telegram, BOB)
    (with_owner,) = await answered(telegram, BOB["id"])

    assert "owner" not in without
    assert "The owner has been told." in with_owner


async def test_the_size_limit_in_the_refusal_is_max_image_bytes(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    await start_bot(max_image_bytes=5 * 1024 * 1024)
    big = {**telegram.add_file(b"x" * 16, file_size=6 * 1024 * 1024), "mime_type": "image/png",
           "file_name": "big.png"}
    telegram.push_update(message_update(private_chat(ALICE), ALICE, document=big, caption="what is it?"))

    (answer,) = await answered(telegram, ALICE["id"])

    assert "5 MB" in answer and "20 MB" not in answer
    assert vision.requests == []
