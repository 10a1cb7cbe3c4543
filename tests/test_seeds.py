"""The five provider documents in /work/shared/seeds, replayed verbatim through the real bot and client.

Each seed test names its document (`test_seed_<number>_<hash>_...`). The GUIDE's wire shapes that no single seed
documents (Zhipu raw base64, one-api/new-api errors, SSE quirks, finish reasons) follow at the end.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from typing import Any

import httpx
from PIL import Image

from bot.models import PreparedImage, PromptMessage
from bot.texts import error_text, text
from tests.conftest import API_KEY, make_photo
from tests.fakes.telegram_server import FakeTelegram, make_user
from tests.fakes.vision_server import (
    NEW_API_INVALID_TOKEN,
    NEW_API_NO_CHANNEL,
    ONE_API_INSUFFICIENT_QUOTA,
    SEED_CONTENT_POLICY,
    SEED_CONTENT_SAFETY,
    SEED_ILLEGAL_CHARS,
    SEED_KEY_ERROR,
    SEED_QUOTA_ERROR,
    FakeVision,
    completion_reply,
    error_reply,
    json_reply,
    stream_reply,
)
from tests.support import answered, ask, ask_photos, client_for, send_photo

StartBot = Callable[..., Any]

ALICE = make_user(3001, "Alice", "en")
BOB = make_user(3002, "Bob", "en")
CAROL = make_user(3003, "Carol", "en")
DAVE = make_user(3004, "Dave", "en")
LI = make_user(3005, "李雷", "zh-hans")

# --- The seeds' documented examples, verbatim ----------------------------------------------------------------

SEED_000_SUCCESS: dict[str, Any] = {
    "choices": [{
        "finish_reason": "stop",
        "index": 0,
        "message": {
            "content": "这是一个橙子的图案，橙色部分代表果肉，绿色部分是叶子，白色线条可能是用来表示光线照射在橙子上。"
                       "这个图标可能用于与水果、健康饮食或农业相关的应用程序或网站中。",
            "role": "assistant",
        },
    }],
    "created": 1745813877,
    "id": "202504281217566c4aa5d82259466e",
    "model": "GLM-4V-Flash",
    "request_id": "202504281217566c4aa5d82259466e",
    "usage": {"completion_tokens": 45, "prompt_tokens": 100, "total_tokens": 145},
}

SEED_001_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-456",
    "object": "chat.completion",
    "created": 1677652288,
    "model": "GLM-4V-Plus",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "这张图片显示的是一只可爱的猫咪..."},
        "finish_reason": "stop",
    }],
    "usage": {"prompt_tokens": 1200, "completion_tokens": 80, "total_tokens": 1280},
}

SEED_002_SUCCESS: dict[str, Any] = {
    "id": "chatcmpl-9p5UcdrmanOLDtFGUQFuX4EOGQCsO",
    "object": "chat.completion",
    "created": 1721962870,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant",
                    "content": "这是一张橙子的图标或插图，橙子上有一片绿色的叶子。整体设计简洁，颜色对比明显。"},
        "logprobs": None,
        "finish_reason": "stop",
    }],
    "usage": {"prompt_tokens": 8511, "completion_tokens": 34, "total_tokens": 8545},
    "system_fingerprint": "fp_611b667b19",
}

SEED_003_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "created": 1677652288,
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "图片中是一只卡通风格的猫的 logo,背景为白色。"},
        "finish_reason": "stop",
    }],
    "usage": {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50},
}

SEED_004_EXTRA_BODY = ('{"top_p":0.9,"n":1,"stop":"\\n\\n\\n","presence_penalty":0.1,"frequency_penalty":0.2,'
                       '"user":"bot-operator"}')
SEED_004_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "created": 1677652288,
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "\n\nHello there, how may I assist you today?"},
        "finish_reason": "stop",
    }],
    "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
}

# --- Helpers (copied in spirit from test_private_chat) -----------------------------------------------------


async def ask_photo(telegram: FakeTelegram, user: dict[str, Any], caption: str = "这是什么图片?") -> str:
    """One photo question, waited for; returns the answer it got."""
    before = len(telegram.chat_messages(user["id"]))
    send_photo(telegram, user, caption)
    texts = await answered(telegram, user["id"], before + 1)
    return texts[before]


def assert_user_safe(message: str) -> None:
    """No raw provider output in a user-facing error: no JSON, no status or relay code, no key."""
    for raw in ("{", "}", "codes", "mess", "content_policy_violation", "900", "300", "402", "200", API_KEY):
        assert raw not in message, f"{raw!r} leaked into {message!r}"


def image_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [part for message in body["messages"] if isinstance(message.get("content"), list)
            for part in message["content"] if part.get("type") == "image_url"]


def sse(*events: dict[str, Any] | str) -> str:
    return "".join(f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n" for event in events)


def sample_image() -> PreparedImage:
    return PreparedImage(image_id="seed", data=make_photo(64, 48))


PROMPT = [PromptMessage(role="user", text="这是什么图片?", images=(sample_image(),))]


# --- Seed 000: glm-4v-flash relay (yewu.bcwhkj.cn) -----------------------------------------------------------


async def test_seed_000_c56b783027d75c5b_success_example_with_request_id_and_finish_reason(
        http: httpx.AsyncClient, vision: FakeVision) -> None:
    vision.enqueue(json_reply(SEED_000_SUCCESS))  # a JSON answer even though the client asked to stream
    answer, completion = await ask(client_for(http, vision.base_url), PROMPT)

    assert answer == SEED_000_SUCCESS["choices"][0]["message"]["content"]
    assert completion.request_id == "202504281217566c4aa5d82259466e"
    assert completion.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 145


async def test_seed_000_c56b783027d75c5b_schema_variant_with_finish_details(
        http: httpx.AsyncClient, vision: FakeVision) -> None:
    """The seed's schema has `finish_details: {type, stop}` in place of `finish_reason`."""
    vision.enqueue(completion_reply("这是一个橙子的图案。", finish_details=True, request_id=SEED_000_SUCCESS["id"]),
                   completion_reply("Cut here", finish_reason="length", finish_details=True))
    answer, completion = await ask(client_for(http, vision.base_url, stream=False), PROMPT)
    _, cut = await ask(client_for(http, vision.base_url, stream=False), PROMPT)

    assert answer == "这是一个橙子的图案。"
    assert completion.finish_reason == "stop"
    assert completion.request_id == "202504281217566c4aa5d82259466e"
    assert cut.finish_reason == "length"


async def test_seed_000_c56b783027d75c5b_max_tokens_always_sent_and_success_shown(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    vision.require_max_tokens = True  # the relay answers {"codes":400,...} without max_tokens
    vision.enqueue(json_reply(SEED_000_SUCCESS), json_reply(SEED_000_SUCCESS))
    await start_bot(vision_max_tokens=300)

    answers = await ask_photos(telegram, vision, [LI, ALICE])

    assert answers == [SEED_000_SUCCESS["choices"][0]["message"]["content"]] * 2
    assert [request.body["max_tokens"] for request in vision.requests] == [300, 300]


async def test_seed_000_c56b783027d75c5b_http_200_errors_become_three_distinct_user_texts(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    """Examples 2 (codes 900), 4 (codes 300) and 3 (content_policy_violation), all served with HTTP 200."""
    vision.enqueue(json_reply(SEED_KEY_ERROR), json_reply(SEED_QUOTA_ERROR), json_reply(SEED_CONTENT_POLICY))
    await start_bot()

    key_text, quota_text, content_text = await ask_photos(telegram, vision, [ALICE, BOB, CAROL])

    assert key_text == error_text("auth", "en")
    assert quota_text == error_text("quota", "en")
    assert content_text == error_text("content_policy", "en")
    assert len({key_text, quota_text, content_text}) == 3
    for message in (key_text, quota_text, content_text):
        assert_user_safe(message)
        assert "密钥" not in message and "safety system" not in message


# --- Seed 001: GLM-4V / GLM-4V-Plus -------------------------------------------------------------------------


async def test_seed_001_9e10f97888a26186_temperature_and_model_sent_and_response_shown(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    vision.enqueue(json_reply(SEED_001_RESPONSE))
    await start_bot(vision_temperature=0.7, vision_model="GLM-4V-Plus")

    answer = await ask_photo(telegram, LI, "这张图片里有什么?")

    assert answer == "这张图片显示的是一只可爱的猫咪..."
    body = vision.requests[0].body
    assert body["model"] == "GLM-4V-Plus"
    assert body["temperature"] == 0.7
    assert body["messages"][-1]["content"][0] == {"type": "text", "text": "这张图片里有什么?"}
    assert len(image_parts(body)) == 1


# --- Seed 002: gpt-4o-mini relay, 200 body typed as a string -------------------------------------------------


async def test_seed_002_ca361fae4e18b6b3_success_body_as_json_string_and_as_plain_text(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    content = SEED_002_SUCCESS["choices"][0]["message"]["content"]
    as_json_string = json.dumps(json.dumps(SEED_002_SUCCESS, ensure_ascii=False), ensure_ascii=False)
    assert json.loads(as_json_string).startswith("{")  # the body is a JSON string literal holding the object
    as_plain_text = "响应结果: " + json.dumps(SEED_002_SUCCESS)  # \u escapes, found by the pattern only
    vision.enqueue(json_reply(as_json_string), json_reply(as_plain_text, content_type="text/plain"))
    await start_bot()

    from_string, from_text = await ask_photos(telegram, vision, [ALICE, BOB])

    assert from_string == content
    assert from_text == content


async def test_seed_002_ca361fae4e18b6b3_success_body_as_json_string_client(
        http: httpx.AsyncClient, vision: FakeVision) -> None:
    vision.enqueue(json_reply(json.dumps(json.dumps(SEED_002_SUCCESS))),
                   json_reply(json.dumps(json.dumps(SEED_002_SUCCESS)), content_type="text/plain"))
    first, completion = await ask(client_for(http, vision.base_url), PROMPT)
    second, _ = await ask(client_for(http, vision.base_url, stream=False), PROMPT)

    assert first == second == SEED_002_SUCCESS["choices"][0]["message"]["content"]
    assert completion.usage is not None and completion.usage.total_tokens == 8545


async def test_seed_002_ca361fae4e18b6b3_relay_codes_become_user_texts(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    """codes 900 / 400 / 402 / 300 -> auth / content / content / quota, never the relay's own words."""
    vision.enqueue(json_reply(SEED_KEY_ERROR), json_reply(SEED_ILLEGAL_CHARS), json_reply(SEED_CONTENT_SAFETY),
                   json_reply(SEED_QUOTA_ERROR))
    await start_bot()

    seen = await ask_photos(telegram, vision, [ALICE, BOB, CAROL, LI])

    assert seen == [error_text("auth", "en"), error_text("content_policy", "en"),
                    error_text("content_policy", "en"), error_text("quota", "zh")]
    for message in seen:
        assert_user_safe(message)
        assert "非法字符" not in message and "内容安全" not in message


# --- Seed 003: gpt-4o relay (apinew.tutujin.com) ------------------------------------------------------------


async def test_seed_003_2a08745b652aafe9_detail_high_accept_json_and_json_answer_to_a_stream_request(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    vision.enqueue(json_reply(SEED_003_RESPONSE), stream_reply(["A streamed answer."]))
    await start_bot(vision_image_detail="high")

    answers = await ask_photos(telegram, vision, [ALICE, BOB], "这张图片有什么")

    assert answers == ["图片中是一只卡通风格的猫的 logo,背景为白色。", "A streamed answer."]
    parts = [part for request in vision.requests for part in image_parts(request.body)]
    assert len(parts) == 2
    assert all(part["image_url"]["detail"] == "high" for part in parts)
    first = vision.requests[0]
    assert first.body["stream"] is True
    assert "application/json" in first.headers["accept"]


async def test_seed_003_2a08745b652aafe9_stream_false_sends_stream_false_and_reads_the_json_answer(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    vision.enqueue(json_reply(SEED_003_RESPONSE))
    await start_bot(vision_stream=False, vision_model="gpt-4o")

    answer = await ask_photo(telegram, ALICE, "这张图片有什么")

    assert answer == "图片中是一只卡通风格的猫的 logo,背景为白色。"
    request = vision.requests[0]
    assert request.body["stream"] is False
    assert "stream_options" not in request.body
    assert request.body["model"] == "gpt-4o"
    assert "application/json" in request.headers["accept"]
    assert "text/event-stream" not in request.headers["accept"]


# --- Seed 004: gpt-4-vision-preview (VMAN) ------------------------------------------------------------------


async def test_seed_004_60720bb471d682d3_extra_body_sent_and_documented_response_trimmed(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    two_choices = {**SEED_004_RESPONSE, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Choice zero."}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": "Choice one."}, "finish_reason": "stop"},
    ]}
    vision.enqueue(json_reply(SEED_004_RESPONSE), json_reply(two_choices))
    await start_bot(vision_extra_body=SEED_004_EXTRA_BODY, vision_model="gpt-4-vision-preview")

    answers = await ask_photos(telegram, vision, [ALICE, BOB], "这张图片有什么")

    assert answers == ["Hello there, how may I assist you today?", "Choice zero."]
    body = vision.requests[0].body
    assert {key: body.get(key) for key in ("top_p", "n", "stop", "presence_penalty", "frequency_penalty", "user")} \
        == {"top_p": 0.9, "n": 1, "stop": "\n\n\n", "presence_penalty": 0.1, "frequency_penalty": 0.2,
            "user": "bot-operator"}
    assert body["model"] == "gpt-4-vision-preview"
    assert body["max_tokens"] == 1024


async def test_seed_004_60720bb471d682d3_several_streamed_choices_only_index_0_is_read(
        http: httpx.AsyncClient, vision: FakeVision) -> None:
    def chunk(index: int, content: str | None, finish: str | None = None) -> dict[str, Any]:
        delta = {} if content is None else {"content": content}
        return {"id": "chatcmpl-123", "object": "chat.completion.chunk",
                "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

    body = sse(chunk(0, "A cat"), chunk(1, "A dog"), chunk(0, " on a mat."), chunk(1, " in a park."),
               chunk(0, None, "stop"), chunk(1, None, "length"), "[DONE]")
    vision.enqueue(json_reply(body, content_type="text/event-stream"))

    answer, completion = await ask(client_for(http, vision.base_url, extra_body={"n": 2}), PROMPT)

    assert vision.requests[0].body["n"] == 2
    assert answer == "A cat on a mat."
    assert completion.finish_reason == "stop"


async def test_seed_004_60720bb471d682d3_json_choices_out_of_order_still_show_index_0(
        http: httpx.AsyncClient, vision: FakeVision) -> None:
    body = {**SEED_004_RESPONSE, "choices": [
        {"index": 1, "message": {"role": "assistant", "content": "Choice one."}, "finish_reason": "stop"},
        {"index": 0, "message": {"role": "assistant", "content": "Choice zero."}, "finish_reason": "stop"},
    ]}
    vision.enqueue(json_reply(body))

    answer, _ = await ask(client_for(http, vision.base_url, stream=False, extra_body={"n": 2}), PROMPT)

    assert answer == "Choice zero."


# --- GUIDE shapes, end to end -------------------------------------------------------------------------------


async def test_zhipu_raw_base64_image_has_no_data_prefix_and_is_a_jpeg(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    await start_bot(vision_image_format="raw_base64", vision_model="glm-4v-plus")

    await ask_photo(telegram, ALICE)

    parts = image_parts(vision.requests[0].body)
    assert len(parts) == 1
    url = parts[0]["image_url"]["url"]
    assert not url.startswith("data:")
    data = base64.b64decode(url, validate=True)
    assert data[:3] == b"\xff\xd8\xff"
    assert Image.open(io.BytesIO(data)).format == "JPEG"


async def test_one_api_and_new_api_error_bodies_become_user_texts(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    vision.enqueue(error_reply(403, ONE_API_INSUFFICIENT_QUOTA), error_reply(401, NEW_API_INVALID_TOKEN),
                   error_reply(503, NEW_API_NO_CHANNEL))
    await start_bot()

    seen = await ask_photos(telegram, vision, [ALICE, BOB, LI])

    assert seen == [error_text("quota", "en"), error_text("auth", "en"), error_text("misconfigured", "zh")]
    for message in seen:
        assert "request id" not in message and "无可用渠道" not in message and "令牌" not in message
    assert len(vision.requests) == 3  # "no channel" is configuration, not worth a retry


async def test_ping_comments_and_final_event_without_blank_line_are_read(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    vision.enqueue(stream_reply(["Pinged ", "answer."], pings=True),
                   stream_reply(["No blank ", "line at the end."], trailing_blank_line=False),
                   stream_reply(["No DONE, no blank line."], trailing_blank_line=False, done=False))
    await start_bot()

    seen = await ask_photos(telegram, vision, [ALICE, BOB, CAROL])

    assert seen == ["Pinged answer.", "No blank line at the end.", "No DONE, no blank line."]
    assert "PING" not in "".join(seen)


async def test_final_event_without_blank_line_client(http: httpx.AsyncClient, vision: FakeVision) -> None:
    """The last event is a content chunk with nothing after it but one newline."""
    event = {"id": "x", "choices": [{"index": 0, "delta": {"content": "Only event"}, "finish_reason": "stop"}]}
    vision.enqueue(json_reply(f"data: {json.dumps(event)}\n", content_type="text/event-stream"))

    answer, completion = await ask(client_for(http, vision.base_url), PROMPT)

    assert answer == "Only event"
    assert completion.finish_reason == "stop"


async def test_cut_answers_keep_their_partial_text_with_a_note(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    """A mid-stream `data: {"error": ...}` event, and finish reasons content_filter / sensitive / length."""
    vision.enqueue(
        stream_reply(["The first part. ", "Never sent."], error_after=1,
                     error_event={"message": "upstream connection reset", "type": "server_error",
                                  "code": "server_error"}),
        stream_reply(["The sign says "], finish_reason="content_filter"),
        stream_reply(["这个牌子写着"], finish_reason="sensitive"),
        stream_reply(["A long ", "description"], finish_reason="length"),
    )
    await start_bot()

    error_event, filtered, sensitive, length = await ask_photos(telegram, vision, [ALICE, BOB, LI, CAROL])

    assert error_event.startswith("The first part.")
    assert "Never sent" not in error_event and "upstream connection reset" not in error_event
    assert error_event.endswith(error_text("unavailable", "en"))
    assert filtered.startswith("The sign says")
    assert filtered.endswith(error_text("content_policy", "en"))
    assert sensitive.startswith("这个牌子写着")
    assert sensitive.endswith(error_text("content_policy", "zh"))
    assert length.startswith("A long description")
    assert length.endswith(text("length_limit", "en"))


async def test_stream_without_content_is_explained_never_an_empty_message(
        telegram: FakeTelegram, vision: FakeVision, start_bot: StartBot) -> None:
    vision.enqueue(stream_reply([]), json_reply("data: [DONE]\n\n", content_type="text/event-stream"),
                   stream_reply([], finish_reason="content_filter"), stream_reply([], finish_reason="sensitive"))
    await start_bot()

    empty, only_done, filtered, sensitive = await ask_photos(telegram, vision, [ALICE, LI, BOB, CAROL])

    assert empty == error_text("empty_answer", "en")
    assert only_done == error_text("empty_answer", "zh")
    assert filtered == sensitive == error_text("content_policy", "en")  # filtered with no text: just the note
    sent = telegram.calls_to("sendMessage")
    assert sent and all(call.status == 200 and call.params["text"].strip() for call in sent)
