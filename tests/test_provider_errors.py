"""Provider failures: GUIDE.md's error table row by row, retries and their timing, and what users and admins see.

Classification and retries are driven through the real `VisionClient` over loopback HTTP against `FakeVision`;
what people read is driven through the whole bot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from bot import errors
from bot.clients.providers import RetryPolicy, VisionRequest
from bot.config import Settings
from bot.logs import setup_logging
from bot.texts import error_text
from tests.conftest import API_KEY, make_photo
from tests.fakes.telegram_server import FakeTelegram, make_user
from tests.fakes.vision_server import (
    NEW_API_INSUFFICIENT_QUOTA,
    NEW_API_INVALID_TOKEN,
    NEW_API_NO_CHANNEL,
    ONE_API_INSUFFICIENT_QUOTA,
    OPENAI_CONTEXT_LENGTH,
    OPENAI_INSUFFICIENT_QUOTA,
    OPENAI_INVALID_IMAGE,
    OPENAI_INVALID_KEY,
    OPENAI_MODEL_NOT_FOUND,
    OPENAI_RATE_LIMIT,
    SEED_CONTENT_POLICY,
    SEED_CONTENT_SAFETY,
    SEED_ILLEGAL_CHARS,
    SEED_KEY_ERROR,
    SEED_QUOTA_ERROR,
    ZHIPU_ARREARS,
    ZHIPU_AUTH_MISSING,
    ZHIPU_MODEL_NOT_FOUND,
    ZHIPU_PROMPT_TOO_LONG,
    ZHIPU_RATE_LIMIT,
    ZHIPU_UNSAFE_CONTENT,
    FakeVision,
    Reply,
    error_reply,
    hang_reply,
    json_reply,
    stream_reply,
)
from tests.support import PROMPT, answered, ask, ask_photos, client_for, send_photo, send_text

StartBot = Callable[..., Any]

ALICE = make_user(4001, "Alice", "en")
BOB = make_user(4002, "Bob", "en")
CAROL = make_user(4003, "Carol", "en")
DAVE = make_user(4004, "Dave", "en")
ERIN = make_user(4005, "Erin", "en")
LI = make_user(4006, "李雷", "zh-hans")
ADMINS = (777, 778)


# --- Client-level helpers -----------------------------------------------------------------------------------


def zhipu(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def openai_error(message: str, code: str | None, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# --- GUIDE.md's error table: one case per row and code ------------------------------------------------------

ERROR_TABLE: list[Any] = [
    # seed relays: HTTP 200 with `codes`
    pytest.param(json_reply(SEED_KEY_ERROR), errors.AuthError, id="seed-200-codes-900-key"),
    pytest.param(json_reply(SEED_QUOTA_ERROR), errors.QuotaError, id="seed-200-codes-300-quota"),
    pytest.param(json_reply(SEED_ILLEGAL_CHARS), errors.ContentPolicyError, id="seed-200-codes-400-illegal"),
    pytest.param(json_reply(SEED_CONTENT_SAFETY), errors.ContentPolicyError, id="seed-200-codes-402-safety"),
    # seed relays and OpenAI: content policy, 200 or 400, or a filtered finish
    pytest.param(json_reply(SEED_CONTENT_POLICY), errors.ContentPolicyError, id="200-content_policy_violation"),
    pytest.param(error_reply(400, SEED_CONTENT_POLICY), errors.ContentPolicyError, id="400-content_policy_violation"),
    pytest.param(json_reply(openai_error("Invalid prompt: your prompt was flagged as potentially violating our "
                                         "usage policy.", "invalid_prompt")),
                 errors.ContentPolicyError, id="200-invalid_prompt"),
    pytest.param(error_reply(400, openai_error("Invalid prompt: your prompt was flagged as potentially violating "
                                               "our usage policy.", "invalid_prompt")),
                 errors.ContentPolicyError, id="400-invalid_prompt"),
    pytest.param(stream_reply([], finish_reason="content_filter"), errors.ContentPolicyError,
                 id="200-finish_reason-content_filter"),
    # OpenAI
    pytest.param(error_reply(401, OPENAI_INVALID_KEY), errors.AuthError, id="openai-401-invalid_api_key"),
    pytest.param(error_reply(429, OPENAI_INSUFFICIENT_QUOTA), errors.QuotaError, id="openai-429-insufficient_quota"),
    pytest.param(error_reply(429, OPENAI_RATE_LIMIT, headers={"retry-after-ms": "50"}), errors.RateLimitError,
                 id="openai-429-rate_limit_exceeded"),
    pytest.param(error_reply(400, OPENAI_CONTEXT_LENGTH), errors.ContextTooLongError,
                 id="openai-400-context_length_exceeded"),
    pytest.param(error_reply(404, OPENAI_MODEL_NOT_FOUND), errors.ModelNotFoundError, id="openai-404-model_not_found"),
    pytest.param(error_reply(400, openai_error("You uploaded an unsupported image. Please make sure your image is "
                                               "valid.", None)),
                 errors.ImageRejectedError, id="openai-400-unsupported-image"),
    pytest.param(error_reply(400, OPENAI_INVALID_IMAGE), errors.ImageRejectedError,
                 id="openai-400-invalid_image_format"),
    # Zhipu
    pytest.param(error_reply(401, zhipu("1000", "身份验证失败。")), errors.AuthError, id="zhipu-401-1000"),
    pytest.param(error_reply(401, ZHIPU_AUTH_MISSING), errors.AuthError, id="zhipu-401-1001"),
    pytest.param(error_reply(401, zhipu("1002", "Authorization Token非法，请确认Authorization Token正确传递。")),
                 errors.AuthError, id="zhipu-401-1002"),
    pytest.param(error_reply(401, zhipu("1003", "Authorization Token已过期，请重新生成/获取。")), errors.AuthError,
                 id="zhipu-401-1003"),
    pytest.param(error_reply(401, zhipu("1004", "Authorization Token验证失败。")), errors.AuthError,
                 id="zhipu-401-1004"),
    pytest.param(error_reply(429, ZHIPU_ARREARS), errors.QuotaError, id="zhipu-429-1113-arrears"),
    pytest.param(error_reply(429, ZHIPU_RATE_LIMIT), errors.RateLimitError, id="zhipu-429-1302"),
    pytest.param(error_reply(429, zhipu("1303", "您当前使用该API的频率过高，请降低频率，或联系客服增加限额。")),
                 errors.RateLimitError, id="zhipu-429-1303"),
    pytest.param(error_reply(429, zhipu("1305", "当前API请求过多，请稍后重试。")), errors.RateLimitError,
                 id="zhipu-429-1305"),
    pytest.param(error_reply(400, zhipu("1210", "API 调用参数有误，请检查文档。")), errors.BadRequestError,
                 id="zhipu-400-1210"),
    pytest.param(error_reply(400, zhipu("1214", "messages 参数非法。请检查文档。")), errors.BadRequestError,
                 id="zhipu-400-1214"),
    pytest.param(error_reply(400, ZHIPU_MODEL_NOT_FOUND), errors.ModelNotFoundError, id="zhipu-400-1211"),
    pytest.param(error_reply(400, ZHIPU_PROMPT_TOO_LONG), errors.ContextTooLongError, id="zhipu-400-1261"),
    pytest.param(error_reply(400, ZHIPU_UNSAFE_CONTENT), errors.ContentPolicyError, id="zhipu-400-1301"),
    # one-api / new-api relays
    pytest.param(error_reply(401, NEW_API_INVALID_TOKEN), errors.AuthError, id="new-api-401-invalid-token"),
    pytest.param(error_reply(403, ONE_API_INSUFFICIENT_QUOTA), errors.QuotaError,
                 id="one-api-403-insufficient_user_quota"),
    pytest.param(error_reply(403, NEW_API_INSUFFICIENT_QUOTA), errors.QuotaError,
                 id="new-api-403-insufficient_user_quota"),
    pytest.param(error_reply(503, NEW_API_NO_CHANNEL), errors.ModelNotFoundError, id="new-api-503-no-channel"),
    # relays in between (LiteLLM)
    pytest.param(error_reply(401, openai_error("litellm.AuthenticationError: AuthenticationError: OpenAIException - "
                                               "Incorrect API key provided", "401", "authentication_error")),
                 errors.AuthError, id="litellm-401-authentication_error"),
    pytest.param(error_reply(429, openai_error("litellm.RateLimitError: RateLimitError: OpenAIException - You "
                                               "exceeded your current quota, please check your plan and billing "
                                               "details.", "429", "throttling_error")),
                 errors.QuotaError, id="litellm-429-quota-message"),
    pytest.param(error_reply(500, openai_error("litellm.APIError: APIError: OpenAIException - {'codes': 900, "
                                               "'mess': '密钥错误或已过期，请通过微信访问yewu.bcwhkj.cn个人中心获取', "
                                               "'data': 'token'}", "500", "None")),
                 errors.AuthError, id="litellm-500-quoting-codes-900"),
    pytest.param(json_reply("data: [DONE]\n\n", content_type="text/event-stream"), errors.EmptyAnswerError,
                 id="litellm-200-empty-event-stream"),
    # plain server failures
    pytest.param(error_reply(500, openai_error("The server had an error while processing your request.",
                                               None, "server_error")),
                 errors.UnavailableError, id="500-server_error"),
    pytest.param(error_reply(502, "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad "
                                  "Gateway</h1></center><hr><center>nginx</center></body></html>"),
                 errors.UnavailableError, id="502-html-page"),
    pytest.param(error_reply(503, {"error": {"message": "Service Unavailable", "type": "overloaded_error"}}),
                 errors.UnavailableError, id="503-overloaded"),
    pytest.param(error_reply(504, "upstream request timeout"), errors.UnavailableError, id="504-plain-text"),
]


@pytest.mark.parametrize(("reply", "expected"), ERROR_TABLE)
async def test_error_table_row_is_classified(reply: Reply, expected: type[errors.VisionError],
                                             http: httpx.AsyncClient, vision: FakeVision) -> None:
    vision.enqueue(reply)
    client = client_for(http, vision.base_url, rate_limit_attempts=1, unavailable_retries=0)

    with pytest.raises(errors.VisionError) as caught:
        await ask(client)

    assert type(caught.value) is expected
    assert len(vision.requests) == 1
    assert API_KEY not in str(caught.value)


async def test_zero_byte_200_event_stream_is_an_empty_answer(http: httpx.AsyncClient, vision: FakeVision) -> None:
    vision.enqueue(json_reply("", content_type="text/event-stream"))

    with pytest.raises(errors.VisionError) as caught:
        await ask(client_for(http, vision.base_url))

    assert isinstance(caught.value, errors.EmptyAnswerError)


@pytest.mark.parametrize(("body", "message"), [
    pytest.param({"error": {"message": "the relay is confused today"}}, "the relay is confused today",
                 id="error.message"),
    pytest.param({"message": "nothing to say here"}, "nothing to say here", id="message"),
    pytest.param({"code": 1, "msg": "the relay is resting"}, "the relay is resting", id="msg"),
    pytest.param({"status": "fail", "mess": "稍后再来"}, "稍后再来", id="mess"),
    pytest.param({"detail": "Not allowed right now"}, "Not allowed right now", id="detail"),
])
async def test_200_without_choices_is_an_error_with_the_bodys_message(
        body: dict[str, Any], message: str, http: httpx.AsyncClient, vision: FakeVision) -> None:
    vision.enqueue(json_reply(body))

    with pytest.raises(errors.VisionError) as caught:
        await ask(client_for(http, vision.base_url))

    assert isinstance(caught.value, errors.BadRequestError)
    assert caught.value.message == message
    assert caught.value.status == 200
    assert caught.value.body_excerpt == json.dumps(body, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize(("reply", "request_id"), [
    pytest.param(error_reply(500, {"error": {"message": "boom"}}, headers={"x-request-id": "req_7d1f3a"}),
                 "req_7d1f3a", id="x-request-id-header"),
    pytest.param(error_reply(403, ONE_API_INSUFFICIENT_QUOTA), "2024040323172594066980027391365",
                 id="one-api-message"),
    pytest.param(error_reply(503, NEW_API_NO_CHANNEL), "20250428121801538810962kLmNoPqR", id="new-api-message"),
])
async def test_request_id_is_extracted_from_errors(reply: Reply, request_id: str, http: httpx.AsyncClient,
                                                  vision: FakeVision) -> None:
    vision.enqueue(reply)

    with pytest.raises(errors.VisionError) as caught:
        await ask(client_for(http, vision.base_url, unavailable_retries=0))

    assert caught.value.request_id == request_id


async def test_request_id_of_a_streamed_answer_comes_from_the_header(http: httpx.AsyncClient,
                                                                     vision: FakeVision) -> None:
    vision.enqueue(stream_reply(["fine"], request_id="202504281217566c4aa5d82259466e"))

    answer, completion = await ask(client_for(http, vision.base_url))

    assert answer == "fine"
    assert completion.request_id == "202504281217566c4aa5d82259466e"


# --- Retries ------------------------------------------------------------------------------------------------


def gap(vision: FakeVision, first: int = 0) -> float:
    return vision.requests[first + 1].at - vision.requests[first].at


async def test_rate_limit_waits_retry_after_ms_then_succeeds(http: httpx.AsyncClient, vision: FakeVision) -> None:
    vision.enqueue(error_reply(429, OPENAI_RATE_LIMIT, headers={"retry-after-ms": "300"}), stream_reply(["Done."]))

    started = time.monotonic()
    answer, _ = await ask(client_for(http, vision.base_url))
    elapsed = time.monotonic() - started

    assert answer == "Done."
    assert len(vision.requests) == 2
    assert gap(vision) >= 0.3
    assert 0.3 <= elapsed < 2.0


async def test_a_retried_request_is_sent_again_whole_then_let_go(http: httpx.AsyncClient, vision: FakeVision) -> None:
    vision.enqueue(error_reply(429, OPENAI_RATE_LIMIT, headers={"retry-after-ms": "20"}), stream_reply(["Do", "ne."]))
    client = client_for(http, vision.base_url)
    request = VisionRequest(PROMPT)

    async with client.complete(request) as completion:
        with pytest.raises(RuntimeError, match="already answered"):
            _ = request.messages  # a streaming answer must not keep the images alive
        answer = "".join([delta async for delta in completion])

    assert answer == "Done."
    assert len(vision.requests) == 2
    assert vision.requests[1].raw == vision.requests[0].raw
    assert vision.requests[1].last_user_images()  # the image went again


async def test_rate_limit_waits_retry_after_seconds(http: httpx.AsyncClient, vision: FakeVision) -> None:
    vision.enqueue(error_reply(429, ZHIPU_RATE_LIMIT, headers={"Retry-After": "1"}), stream_reply(["Done."]))

    answer, _ = await ask(client_for(http, vision.base_url))

    assert answer == "Done."
    assert len(vision.requests) == 2
    assert 1.0 <= gap(vision) < 2.5


async def test_rate_limit_wait_is_capped_by_max_retry_wait(http: httpx.AsyncClient, vision: FakeVision) -> None:
    vision.enqueue(error_reply(429, OPENAI_RATE_LIMIT, headers={"Retry-After": "30"}), stream_reply(["Done."]))

    started = time.monotonic()
    answer, _ = await ask(client_for(http, vision.base_url, max_retry_wait=0.2))

    assert answer == "Done."
    assert 0.2 <= gap(vision) < 1.5
    assert time.monotonic() - started < 2.0


async def test_rate_limit_gives_up_after_rate_limit_attempts(http: httpx.AsyncClient, vision: FakeVision) -> None:
    vision.enqueue(*[error_reply(429, OPENAI_RATE_LIMIT, headers={"retry-after-ms": "20"})] * 3,
                   stream_reply(["never reached"]))

    with pytest.raises(errors.RateLimitError) as caught:
        await ask(client_for(http, vision.base_url, rate_limit_attempts=3))

    assert len(vision.requests) == 3
    assert caught.value.status == 429
    assert caught.value.retry_after == pytest.approx(0.02)


@pytest.mark.parametrize("reply", [
    pytest.param(error_reply(429, OPENAI_INSUFFICIENT_QUOTA, headers={"retry-after": "0"}), id="openai-429"),
    pytest.param(json_reply(SEED_QUOTA_ERROR), id="seed-codes-300"),
    pytest.param(error_reply(429, ZHIPU_ARREARS), id="zhipu-1113"),
])
async def test_quota_is_never_retried(reply: Reply, http: httpx.AsyncClient, vision: FakeVision) -> None:
    vision.enqueue(reply, stream_reply(["never reached"]))

    with pytest.raises(errors.QuotaError):
        await ask(client_for(http, vision.base_url))

    assert len(vision.requests) == 1


async def test_unavailable_is_retried_once_then_succeeds(http: httpx.AsyncClient, vision: FakeVision) -> None:
    vision.enqueue(error_reply(503, "Service Temporarily Unavailable"), stream_reply(["Back again."]))

    answer, _ = await ask(client_for(http, vision.base_url, retry_delay=0.1))

    assert answer == "Back again."
    assert len(vision.requests) == 2
    assert gap(vision) >= 0.1


async def test_unavailable_twice_gives_up_after_two_requests(http: httpx.AsyncClient, vision: FakeVision) -> None:
    vision.enqueue(error_reply(503, "Service Temporarily Unavailable"),
                   error_reply(503, "Service Temporarily Unavailable"), stream_reply(["never reached"]))

    with pytest.raises(errors.UnavailableError) as caught:
        await ask(client_for(http, vision.base_url))

    assert len(vision.requests) == 2
    assert caught.value.status == 503


async def test_connection_refused_is_unavailable(http: httpx.AsyncClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # the port is closed again: nothing listens there

    with pytest.raises(errors.UnavailableError) as caught:
        await ask(client_for(http, f"http://127.0.0.1:{port}/v1"))

    assert caught.value.status is None
    assert "cannot reach" in caught.value.message


async def test_a_provider_that_never_starts_is_asked_twice_then_given_up(http: httpx.AsyncClient,
                                                                         vision: FakeVision) -> None:
    vision.enqueue(hang_reply(3.0), hang_reply(3.0))
    client = client_for(http, vision.base_url, first_token_timeout=0.5, max_wait=5.0)

    started = time.monotonic()
    with pytest.raises(errors.ProviderTimeoutError) as caught:
        await ask(client)
    elapsed = time.monotonic() - started

    assert "no text within" in caught.value.message
    assert 1.0 <= elapsed < 2.0
    assert len(vision.requests) == 2


async def test_all_attempts_together_stay_within_max_wait(http: httpx.AsyncClient, vision: FakeVision) -> None:
    vision.enqueue(hang_reply(3.0), hang_reply(3.0))
    client = client_for(http, vision.base_url, first_token_timeout=0.6, max_wait=0.9)

    started = time.monotonic()
    with pytest.raises(errors.ProviderTimeoutError):
        await ask(client)

    assert 0.9 <= time.monotonic() - started < 1.4
    assert len(vision.requests) == 2  # the second attempt got what was left of the 0.9 s


async def test_a_non_streaming_request_that_times_out_is_not_sent_again(http: httpx.AsyncClient,
                                                                        vision: FakeVision) -> None:
    vision.enqueue(hang_reply(2.0), stream_reply(["would be billed twice"]))
    client = client_for(http, vision.base_url, stream=False, first_token_timeout=0.5, max_wait=5.0)

    with pytest.raises(errors.ProviderTimeoutError) as caught:
        await ask(client)

    assert caught.value.maybe_billed
    assert len(vision.requests) == 1


def test_hang_limits_by_default_end_within_90_seconds() -> None:
    """Defaults: two first-token waits (one retry, or one per provider) fit in the overall wait of 90 s."""
    policy = RetryPolicy()
    settings = Settings.model_construct()
    assert policy.max_wait == 90.0 == Settings.model_fields["vision_max_wait"].default
    assert 2 * Settings.model_fields["vision_first_token_timeout"].default <= policy.max_wait
    assert Settings.model_fields["slow_notice_after"].default == 15.0
    assert settings is not None


# --- End to end: helpers ------------------------------------------------------------------------------------


# --- End to end: context too long ---------------------------------------------------------------------------


async def test_context_too_long_retries_with_the_last_exchange_then_explains(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    """Alice's trimmed retry succeeds; Bob's fails too and he is told the conversation is too long."""
    await start_bot(stream_mode="edit")
    for user in (ALICE, BOB):  # two-exchange histories, built concurrently with the default answer
        send_photo(telegram, user, "What is this?")
    for user in (ALICE, BOB):
        await answered(telegram, user["id"], 1)
    for user in (ALICE, BOB):
        send_photo(telegram, user, "And this one?", make_photo(640, 480, (200, 30, 30)))
    for user in (ALICE, BOB):
        await answered(telegram, user["id"], 2)
    second_photo = next(r for r in vision.requests if r.text_parts()[-1] == "And this one?").images()
    before = len(vision.requests)

    vision.enqueue(error_reply(400, OPENAI_CONTEXT_LENGTH), stream_reply(["Red, as said."]))
    send_text(telegram, ALICE, "Which colour was it?")
    await vision.wait_for_requests(before + 2)
    vision.enqueue(error_reply(400, OPENAI_CONTEXT_LENGTH), error_reply(400, OPENAI_CONTEXT_LENGTH))
    send_text(telegram, BOB, "Tell me more")
    alice = await answered(telegram, ALICE["id"], 3)
    bob = await answered(telegram, BOB["id"], 3)

    assert alice[2] == "Red, as said."
    full, trimmed = vision.requests[before], vision.requests[before + 1]
    assert len(trimmed.messages) < len(full.messages)
    assert trimmed.text_parts() == ["And this one?", "This is a test image.", "Which colour was it?"]
    assert trimmed.images() and trimmed.images() == full.images() == second_photo
    assert bob[2] == error_text("context_too_long", "en")
    assert len(vision.requests) == before + 4
    assert len(vision.requests[before + 3].messages) < len(vision.requests[before + 2].messages)


async def test_context_too_long_retry_still_sends_the_conversations_photo(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    vision.enqueue(stream_reply(["A red mushroom."]), stream_reply(["Fly agaric."]),
                   error_reply(400, OPENAI_CONTEXT_LENGTH), stream_reply(["Do not eat it."]))
    await start_bot(stream_mode="edit")
    send_photo(telegram, ALICE, "What is this?")
    await answered(telegram, ALICE["id"], 1)
    send_text(telegram, ALICE, "Which species?")
    await answered(telegram, ALICE["id"], 2)

    send_text(telegram, ALICE, "Is it safe to eat?")
    texts = await answered(telegram, ALICE["id"], 3)

    assert texts[2] == "Do not eat it."
    full, trimmed = vision.requests[2], vision.requests[3]
    assert len(trimmed.messages) < len(full.messages)
    assert full.images() == vision.requests[0].images()
    assert trimmed.images() == vision.requests[0].images()


# --- End to end: operator alerts ----------------------------------------------------------------------------


async def test_admins_get_one_report_per_error_kind_with_details_and_never_the_key(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    echoed_key = openai_error(f"Incorrect API key provided: {API_KEY}. (request id: 20250428121756843291057aBcD)",
                              "invalid_api_key")
    vision.enqueue(error_reply(403, ONE_API_INSUFFICIENT_QUOTA), error_reply(403, NEW_API_INSUFFICIENT_QUOTA),
                   error_reply(401, echoed_key))
    await start_bot(admin_ids="777,778")

    seen = await ask_photos(telegram, vision, [ALICE, BOB, CAROL])
    for admin in ADMINS:
        await telegram.wait_for(lambda admin=admin: len(telegram.calls_to("sendMessage", admin)) >= 2)
    await asyncio.sleep(0.3)  # a third report would have arrived by now

    told = {"operators_told": True}
    assert seen == [error_text("quota", "en", **told), error_text("quota", "en", **told),
                    error_text("auth", "en", **told)]
    for admin in ADMINS:
        quota, auth = [call.params["text"] for call in telegram.calls_to("sendMessage", admin)]
        assert "quota" in quota
        assert "HTTP status: 403" in quota
        assert "2024040323172594066980027391365" in quota
        assert "user quota is not enough" in quota.split("Body:", 1)[1]
        assert "auth" in auth
        assert "HTTP status: 401" in auth
        assert "20250428121756843291057aBcD" in auth
        assert "invalid_api_key" in auth.split("Body:", 1)[1]
        assert API_KEY not in auth
        assert "[redacted]" in auth
    assert all(API_KEY not in text for text in seen)


# --- End to end: the key never leaves the bot ---------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("aiogram.event").level, logging.getLogger("httpx").level)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("aiogram.event").setLevel(saved[2])
    logging.getLogger("httpx").setLevel(saved[3])


@pytest.mark.usefixtures("restore_logging")
async def test_key_and_token_appear_in_no_telegram_call_and_no_log_line(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot, capfd: pytest.CaptureFixture[str]) -> None:
    setup_logging("DEBUG", [telegram.token, API_KEY])
    vision.enqueue(
        error_reply(401, openai_error(f"Incorrect API key provided: {API_KEY}.", "invalid_api_key")),
        json_reply({"codes": 900, "mess": f"密钥 {API_KEY} 错误或已过期", "data": API_KEY}),
        error_reply(500, openai_error(f"litellm.APIError: {{'codes': 300, 'mess': '额度不足', 'data': '{API_KEY}'}}",
                                      "500")),
        stream_reply(["Partial "], error_after=1, error_event={"message": f"key {API_KEY} was revoked mid-answer",
                                                               "type": "server_error"}),
        error_reply(400, f"<html><body>Bad request for Bearer {API_KEY}</body></html>"),
    )
    await start_bot(admin_ids="777", log_level="DEBUG")

    seen = await ask_photos(telegram, vision, [ALICE, BOB, CAROL, DAVE, ERIN])
    await telegram.wait_for(lambda: len(telegram.calls_to("sendMessage", 777)) >= 4)
    log = capfd.readouterr().err

    told = {"operators_told": True}
    assert seen[0] == error_text("auth", "en", **told) and seen[2] == error_text("quota", "en", **told)
    assert seen[3].startswith("Partial")
    assert "provider error kind=auth" in log and "provider error kind=bad_request" in log
    assert "[redacted]" in log
    assert API_KEY not in log
    assert telegram.token not in log
    for call in telegram.calls:
        params = json.dumps(call.params, ensure_ascii=False, default=str)
        assert API_KEY not in params, call.method
        assert telegram.token not in params, call.method


async def test_a_key_echoed_at_the_excerpt_boundary_leaks_no_part_of_it(http: httpx.AsyncClient,
                                                                        vision: FakeVision) -> None:
    prefix = '{"error":{"message":"'
    message = "x" * (490 - len(prefix)) + f"{API_KEY} was revoked"  # the key starts at character 490 of the body
    vision.enqueue(error_reply(401, {"error": {"message": message, "code": "invalid_api_key"}}))

    with pytest.raises(errors.AuthError) as caught:
        await ask(client_for(http, vision.base_url))

    assert API_KEY not in caught.value.message
    assert API_KEY[:8] not in caught.value.body_excerpt
