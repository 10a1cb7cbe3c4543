"""End to end: Stop (on drafts and as an inline button), answers that vanish mid-stream, and final delivery.

The real application runs against the fake Telegram and the fake provider over loopback; a gated provider
stream holds an answer half-written while the test presses Stop or breaks Telegram.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from tests.fakes.telegram_server import ApiCall, FakeTelegram, group_chat, make_user, message_update, private_chat
from tests.fakes.vision_server import FakeVision, stream_reply
from tests.support import answered, final_texts, send_photo, send_text

Json = dict[str, Any]

ALICE = make_user(1001, "Alice", "en")
BOB = make_user(1002, "Bob", "en")
GROUP = group_chat(-100200300)
BOT_NAME = "@vision_test_bot"
CHUNKS = ["Partial answer ", "that goes on ", "and on."]
# The provider must see its stream closed this soon after Stop reaches Telegram's update queue.
STOP_LATENCY = 0.1
# Long enough for a pending update to go out in a private chat (its spacing is 1 s).
QUIET = 1.1


def mention(text: str, name: str = BOT_NAME) -> list[Json]:
    start = text.index(name)
    return [{"type": "mention", "offset": len(text[:start].encode("utf-16-le")) // 2,
             "length": len(name.encode("utf-16-le")) // 2}]


def ask_in_group(telegram: FakeTelegram, user: Json, question: str) -> Json:
    text = f"{BOT_NAME} {question}"
    update = message_update(GROUP, user, text=text, entities=mention(text))
    telegram.push_update(update)
    return update["message"]


def press(telegram: FakeTelegram, query_id: str, user: Json, message: Json, data: str | None = None) -> float:
    """A user taps the inline button of `message`; returns when the update was queued (monotonic)."""
    if data is None:
        data = message["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    update = {"callback_query": {"id": query_id, "from": user, "chat_instance": "x", "data": data,
                                 "message": message}}
    pushed = time.monotonic()
    telegram.push_update(update)
    return pushed


def answers_to(telegram: FakeTelegram, query_id: str) -> list[ApiCall]:
    return [call for call in telegram.calls_to("answerCallbackQuery")
            if call.params.get("callback_query_id") == query_id]


async def live_message(telegram: FakeTelegram, chat_id: int, text: str) -> Json:
    """The bot's streaming message once it shows `text` with its Stop button."""
    def showing() -> bool:
        messages = telegram.chat_messages(chat_id)
        return bool(messages) and messages[-1]["text"] == text and "reply_markup" in messages[-1]

    await telegram.wait_for(showing, timeout=10)
    return telegram.chat_messages(chat_id)[-1]


async def stopped_within(telegram: FakeTelegram, vision: FakeVision, pushed: float) -> float:
    """Seconds from pushing Stop to the provider seeing its stream closed (the fake notes the exact time)."""
    await disconnected(telegram, vision)
    return vision.disconnects[0] - pushed


async def disconnected(telegram: FakeTelegram, vision: FakeVision) -> None:
    await telegram.wait_for(lambda: bool(vision.disconnects), timeout=10)


def bot_sends_after(telegram: FakeTelegram, chat_id: int, after: float) -> list[ApiCall]:
    return [call for call in telegram.calls if call.at > after and call.params.get("chat_id") == chat_id
            and call.method in ("sendMessage", "editMessageText", "sendMessageDraft", "sendRichMessage")]


# --- Stop on a draft -------------------------------------------------------------------------------------


async def test_stop_on_a_draft_closes_the_provider_stream_and_keeps_the_text(telegram, vision, start_bot):
    gate = asyncio.Event()
    vision.enqueue(stream_reply(CHUNKS, gate=gate), stream_reply(["It goes on."]))
    await start_bot()
    send_photo(telegram, ALICE, caption="Describe")
    await telegram.wait_for(lambda: (telegram.draft(ALICE["id"]) or {}).get("text") == "Partial answer", timeout=10)
    draft_call = telegram.calls_to("sendMessageDraft", ALICE["id"])[-1]
    assert draft_call.params["can_stop"] is True
    draft_id = draft_call.params["draft_id"]

    # Stops for another draft, or for this draft id in another chat, stop nothing.
    telegram.push_update({"stopped_message_generation": {"chat": private_chat(ALICE), "draft_id": draft_id + 1}})
    telegram.push_update({"stopped_message_generation": {"chat": private_chat(BOB), "draft_id": draft_id}})
    await asyncio.sleep(0.3)
    assert vision.disconnects == []

    pushed = time.monotonic()
    telegram.push_update({"stopped_message_generation": {"chat": private_chat(ALICE), "draft_id": draft_id}})

    assert await stopped_within(telegram, vision, pushed) <= STOP_LATENCY
    assert await answered(telegram, ALICE["id"]) == ["Partial answer"]
    assert telegram.chat_messages(ALICE["id"])[0].get("reply_markup") is None

    send_text(telegram, ALICE, "Go on")
    await answered(telegram, ALICE["id"], count=2)
    follow_up = vision.requests[1]
    assert [message["role"] for message in follow_up.messages] == ["user", "assistant", "user"]
    assert follow_up.text_parts()[1].strip() == "Partial answer"
    assert follow_up.text_parts()[-1] == "Go on"
    gate.set()


# --- the inline Stop button ------------------------------------------------------------------------------


async def test_stop_button_in_a_group_only_works_for_the_asker(telegram, vision, start_bot):
    gate = asyncio.Event()
    vision.enqueue(stream_reply(CHUNKS, gate=gate))
    await start_bot()
    ask_in_group(telegram, ALICE, "what is going on?")
    message = await live_message(telegram, GROUP["id"], "Partial answer")
    button = message["reply_markup"]["inline_keyboard"][0][0]
    assert re.fullmatch(r"stop:\d+", button["callback_data"])
    assert button["text"] == "⏹ Stop"

    press(telegram, "cb1", BOB, message)
    await telegram.wait_for(lambda: answers_to(telegram, "cb1"), timeout=5)
    refusal = answers_to(telegram, "cb1")[0]
    assert refusal.status == 200
    assert refusal.params.get("show_alert") is True
    assert refusal.params["text"].startswith("Only the person who asked")
    await asyncio.sleep(0.3)
    assert vision.disconnects == []
    assert "reply_markup" in telegram.chat_messages(GROUP["id"])[-1]

    pushed = press(telegram, "cb2", ALICE, message)
    assert await stopped_within(telegram, vision, pushed) <= STOP_LATENCY
    await telegram.wait_for(lambda: answers_to(telegram, "cb2"), timeout=5)
    assert answers_to(telegram, "cb2")[0].params.get("show_alert") is not True

    await telegram.wait_for(lambda: "reply_markup" not in telegram.chat_messages(GROUP["id"])[-1], timeout=10)
    assert final_texts(telegram, GROUP["id"]) == ["Partial answer"]
    assert len(telegram.calls_to("sendMessage", GROUP["id"])) == 1
    gate.set()


async def test_stop_button_in_a_private_chat_where_drafts_are_refused(telegram, vision, start_bot):
    telegram.fail_next("sendMessageDraft", status=400, description="Bad Request: TEXTDRAFT_PEER_INVALID")
    gate = asyncio.Event()
    vision.enqueue(stream_reply(CHUNKS, gate=gate))
    await start_bot()
    send_text(telegram, ALICE, "Describe")
    message = await live_message(telegram, ALICE["id"], "Partial answer")
    assert re.fullmatch(r"stop:\d+", message["reply_markup"]["inline_keyboard"][0][0]["callback_data"])

    pushed = press(telegram, "cb1", ALICE, message)

    assert await stopped_within(telegram, vision, pushed) <= STOP_LATENCY
    await telegram.wait_for(lambda: "reply_markup" not in telegram.chat_messages(ALICE["id"])[-1], timeout=10)
    assert final_texts(telegram, ALICE["id"]) == ["Partial answer"]
    assert answers_to(telegram, "cb1")[0].status == 200
    assert len(telegram.calls_to("sendMessageDraft")) == 1
    gate.set()


async def test_a_stale_stop_button_is_answered_and_removed(telegram, vision, start_bot):
    await start_bot()
    # A streaming message left behind by an earlier run of the bot that never finished it.
    leftover = {"message_id": 4242, "from": telegram.bot_user, "chat": private_chat(ALICE), "date": int(time.time()),
                "text": "Half an answer",
                "reply_markup": {"inline_keyboard": [[{"text": "⏹ Stop", "callback_data": "stop:123"}]]}}

    press(telegram, "cb-old", ALICE, leftover)

    await telegram.wait_for(lambda: telegram.calls_to("editMessageReplyMarkup"), timeout=5)
    answer = answers_to(telegram, "cb-old")[0]
    assert answer.status == 200
    assert answer.params["text"] == "This answer is already finished."
    assert answer.params.get("show_alert") is not True
    removal = telegram.calls_to("editMessageReplyMarkup")[0]
    assert removal.status == 200
    assert removal.params["message_id"] == 4242
    assert "reply_markup" not in telegram.chat_messages(ALICE["id"])[0]
    assert vision.requests == []


# --- the answer's message goes away mid-stream ------------------------------------------------------------


async def test_deleting_the_streaming_message_stops_the_answer(telegram, vision, start_bot):
    gate = asyncio.Event()
    vision.enqueue(stream_reply(CHUNKS, gate=gate))
    await start_bot(stream_mode="edit")
    send_text(telegram, ALICE, "Describe")
    await live_message(telegram, ALICE["id"], "Partial answer")

    telegram.fail_next("editMessageText", status=400, description="Bad Request: message to edit not found", count=5)
    gate.set()
    gate.clear()  # one more chunk: the bot tries to edit the message the user deleted

    await disconnected(telegram, vision)
    failed = [call for call in telegram.calls_to("editMessageText", ALICE["id"]) if call.status == 400]
    assert len(failed) == 1
    assert vision.disconnects[0] - failed[0].at < 0.5
    await asyncio.sleep(QUIET)
    assert bot_sends_after(telegram, ALICE["id"], failed[0].at) == []
    assert len(telegram.calls_to("sendMessage", ALICE["id"])) == 1
    gate.set()


async def test_blocking_the_bot_mid_stream_closes_the_provider_stream_and_sends_nothing_more(
        telegram, vision, start_bot):
    gate = asyncio.Event()
    vision.enqueue(stream_reply(CHUNKS, gate=gate))
    await start_bot()
    send_text(telegram, ALICE, "Describe")
    await telegram.wait_for(lambda: telegram.draft(ALICE["id"]) is not None, timeout=10)

    telegram.fail_next("sendMessageDraft", status=403, description="Forbidden: bot was blocked by the user")
    gate.set()
    gate.clear()

    await disconnected(telegram, vision)
    blocked = [call for call in telegram.calls_to("sendMessageDraft") if call.status == 403]
    assert len(blocked) == 1
    assert vision.disconnects[0] - blocked[0].at < 0.5
    await asyncio.sleep(QUIET)
    try:
        assert bot_sends_after(telegram, ALICE["id"], blocked[0].at) == []
    finally:
        gate.set()


async def test_a_transient_draft_failure_leaves_no_stray_partial_message(telegram, vision, start_bot):
    gate = asyncio.Event()
    vision.enqueue(stream_reply(CHUNKS, gate=gate))
    await start_bot()
    send_text(telegram, ALICE, "Describe")
    await telegram.wait_for(lambda: telegram.draft(ALICE["id"]) is not None, timeout=10)

    telegram.fail_next("sendMessageDraft", status=502, description="Bad Gateway")
    gate.set()
    gate.clear()
    await telegram.wait_for(lambda: [call for call in telegram.calls_to("sendMessageDraft") if call.status == 502],
                            timeout=5)
    gate.set()

    await telegram.wait_for(lambda: "Partial answer that goes on and on." in final_texts(telegram, ALICE["id"]),
                            timeout=10)
    await asyncio.sleep(0.2)
    assert final_texts(telegram, ALICE["id"]) == ["Partial answer that goes on and on."]
    assert all("reply_markup" not in message for message in telegram.chat_messages(ALICE["id"]))


async def test_blocking_the_bot_during_an_edited_stream_closes_the_provider_stream(telegram, vision, start_bot):
    gate = asyncio.Event()
    vision.enqueue(stream_reply(CHUNKS, gate=gate))
    await start_bot(stream_mode="edit")
    send_text(telegram, ALICE, "Describe")
    await live_message(telegram, ALICE["id"], "Partial answer")

    telegram.fail_next("editMessageText", status=403, description="Forbidden: bot was blocked by the user")
    gate.set()
    gate.clear()

    await disconnected(telegram, vision)
    blocked = [call for call in telegram.calls_to("editMessageText") if call.status == 403]
    assert len(blocked) == 1
    await asyncio.sleep(QUIET)
    assert bot_sends_after(telegram, ALICE["id"], blocked[0].at) == []
    gate.set()


# --- final delivery --------------------------------------------------------------------------------------


async def test_rejected_entities_on_the_final_message_fall_back_to_plain_text(telegram, vision, start_bot):
    telegram.fail_next("sendMessage", status=400,
                       description='Bad Request: can\'t parse entities: Unsupported start tag "b" at byte offset 0')
    vision.enqueue(stream_reply(["It is ", "**bold** ", "and `code`."]))
    await start_bot()
    send_text(telegram, ALICE, "Describe")

    assert await answered(telegram, ALICE["id"]) == ["It is bold and code."]
    rejected, accepted = telegram.calls_to("sendMessage", ALICE["id"])
    assert rejected.status == 400
    assert rejected.params["entities"]
    assert accepted.status == 200
    assert accepted.params["text"] == rejected.params["text"]
    assert "entities" not in accepted.params
    assert "entities" not in telegram.chat_messages(ALICE["id"])[0]


async def test_a_server_error_on_the_final_message_is_retried(telegram, vision, start_bot):
    telegram.fail_next("sendMessage", status=502, description="Bad Gateway")
    vision.enqueue(stream_reply(["The whole ", "answer."]))
    await start_bot()
    send_text(telegram, ALICE, "Describe")

    assert await answered(telegram, ALICE["id"]) == ["The whole answer."]
    failed, delivered = telegram.calls_to("sendMessage", ALICE["id"])
    assert (failed.status, delivered.status) == (502, 200)
    assert delivered.params["text"] == failed.params["text"] == "The whole answer."
    await asyncio.sleep(0.3)
    assert len(telegram.chat_messages(ALICE["id"])) == 1


async def test_rich_messages_send_the_final_answer_as_markdown(telegram, vision, start_bot):
    markdown = "| a | b |\n|---|---|\n| 1 | 2 |\n\nIt is **bold**."
    vision.enqueue(stream_reply(["| a | b |\n|---|---|\n", "| 1 | 2 |\n\n", "It is **bold**."]))
    await start_bot(rich_messages=True)
    asked = send_text(telegram, ALICE, "Describe")

    await answered(telegram, ALICE["id"])

    (rich,) = telegram.calls_to("sendRichMessage", ALICE["id"])
    assert rich.status == 200
    assert rich.params["rich_message"]["markdown"] == markdown
    assert rich.params["reply_parameters"]["message_id"] == asked["message_id"]
    assert telegram.calls_to("sendMessage", ALICE["id"]) == []
    assert final_texts(telegram, ALICE["id"]) == [markdown]


async def test_refused_rich_messages_fall_back_to_entities_and_are_not_tried_again(telegram, vision, start_bot):
    telegram.fail_next("sendRichMessage", status=400, description="Bad Request: RICH_MESSAGE_INVALID")
    vision.enqueue(stream_reply(["It is ", "**bold**."]), stream_reply(["Still **bold**."]))
    await start_bot(rich_messages=True)
    send_text(telegram, ALICE, "Describe")

    assert await answered(telegram, ALICE["id"]) == ["It is bold."]
    first = telegram.chat_messages(ALICE["id"])[0]
    assert {"type": "bold", "offset": 6, "length": 4} in first["entities"]
    assert len(telegram.calls_to("sendRichMessage")) == 1

    send_text(telegram, BOB, "And you?")  # refused once means refused for the whole bot
    assert await answered(telegram, BOB["id"]) == ["Still bold."]
    assert {"type": "bold", "offset": 6, "length": 4} in telegram.chat_messages(BOB["id"])[0]["entities"]
    assert len(telegram.calls_to("sendRichMessage")) == 1
    assert [call.status for call in telegram.calls_to("sendMessage")] == [200, 200]
