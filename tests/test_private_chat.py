"""End to end: the real application answering in a private chat, through the fake Telegram and provider."""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from bot.services.images import smallest_sufficient
from tests.fakes.telegram_server import make_user
from tests.fakes.vision_server import SEED_QUOTA_ERROR, json_reply, stream_reply
from tests.support import answered, final_texts, send_photo, send_text

ALICE = make_user(1001, "Alice", "en")
LI = make_user(1002, "李雷", "zh-hans")


async def test_photo_with_caption_is_asked_with_the_image(telegram, vision, start_bot):
    vision.enqueue(stream_reply(["It is ", "an **orange** ", "cat."]))
    await start_bot()
    photo_message = send_photo(telegram, ALICE, caption="What animal is this?")

    texts = await answered(telegram, ALICE["id"])

    assert texts == ["It is an orange cat."]
    final = telegram.chat_messages(ALICE["id"])[0]
    assert {"type": "bold", "offset": 9, "length": 6} in final["entities"]
    assert final["reply_to_message"]["message_id"] == photo_message["message_id"]
    request = vision.requests[0]
    assert request.body["model"] == "glm-4v-flash"
    assert request.body["max_tokens"] == 1024
    assert request.body["stream"] is True
    assert "temperature" not in request.body
    assert request.text_parts()[-1] == "What animal is this?"
    assert request.headers["authorization"] == "Bearer sk-test-key-123"
    # A plain JSON body with its length: some relays reject chunked uploads.
    assert request.headers["content-type"] == "application/json"
    assert request.headers["content-length"] == str(len(request.raw))
    assert "transfer-encoding" not in request.headers
    images = request.last_user_images()
    assert len(images) == 1
    sent = Image.open(io.BytesIO(images[0]))
    assert sent.format == "JPEG"
    assert sent.size == (1280, 960)  # a Telegram photo within reach of the target leaves as downloaded
    assert vision.leaked_urls == []
    assert telegram.token not in request.raw.decode()


async def test_photo_without_caption_asks_the_default_question_in_the_users_language(telegram, vision, start_bot):
    await start_bot()
    send_photo(telegram, ALICE)
    send_photo(telegram, LI)
    await answered(telegram, ALICE["id"])
    await answered(telegram, LI["id"])

    questions = {request.text_parts()[-1] for request in vision.requests}
    assert questions == {"What is in this image? Describe it briefly.", "这张图片里有什么？请简要描述。"}


async def test_follow_up_carries_the_history_and_the_same_image_without_downloading_again(
        telegram, vision, start_bot):
    vision.enqueue(stream_reply(["A red mushroom."]), stream_reply(["No, do not eat it."]))
    await start_bot()
    send_photo(telegram, ALICE, caption="What is this?")
    await answered(telegram, ALICE["id"])
    downloads = len(telegram.calls_to("getFile"))

    send_text(telegram, ALICE, "Is it safe to eat?")
    texts = await answered(telegram, ALICE["id"], count=2)

    assert texts == ["A red mushroom.", "No, do not eat it."]
    first, follow_up = vision.requests
    assert [message["role"] for message in follow_up.messages] == ["user", "assistant", "user"]
    assert follow_up.text_parts() == ["What is this?", "A red mushroom.", "Is it safe to eat?"]
    assert follow_up.images() == first.images()
    assert len(telegram.calls_to("getFile")) == downloads


async def test_reset_forgets_the_conversation(telegram, vision, start_bot):
    await start_bot()
    send_photo(telegram, ALICE, caption="What is this?")
    await answered(telegram, ALICE["id"])

    send_text(telegram, ALICE, "/reset")
    texts = await answered(telegram, ALICE["id"], count=2)
    assert "forgotten" in texts[1]
    send_text(telegram, ALICE, "And now?")
    await answered(telegram, ALICE["id"], count=3)

    assert vision.requests[-1].messages == [{"role": "user", "content": "And now?"}]


async def test_context_survives_a_restart(telegram, vision, start_bot):
    first_bot = await start_bot()
    send_photo(telegram, ALICE, caption="What is this?")
    await answered(telegram, ALICE["id"])
    await first_bot.stop()

    await start_bot()
    send_text(telegram, ALICE, "Tell me more")
    await answered(telegram, ALICE["id"], count=2)

    follow_up = vision.requests[-1]
    assert follow_up.text_parts()[0] == "What is this?"
    assert follow_up.images() == vision.requests[0].images()


async def test_commands_are_registered_and_answered(telegram, vision, start_bot):
    await start_bot()
    registered = telegram.calls_to("setMyCommands")
    assert {call.params.get("language_code") for call in registered} == {None, "zh"}
    commands = [command["command"] for command in registered[0].params["commands"]]
    assert commands == ["start", "help", "reset", "new", "model", "usage"]

    send_text(telegram, LI, "/start")
    texts = await answered(telegram, LI["id"])
    assert texts[0].startswith("你好")
    assert vision.requests == []


async def test_drafts_grow_then_one_complete_final_message(telegram, vision, start_bot):
    gate = asyncio.Event()
    chunks = [f"word{index} " for index in range(6)]
    vision.enqueue(stream_reply(chunks, gate=gate))
    await start_bot()
    send_photo(telegram, ALICE, caption="Describe")

    await telegram.wait_for(lambda: telegram.calls_to("sendMessageDraft"), timeout=5)
    for _ in chunks:
        gate.set()
        gate.clear()
        await asyncio.sleep(0.3)
    gate.set()
    texts = await answered(telegram, ALICE["id"])

    drafts = [call for call in telegram.calls_to("sendMessageDraft") if call.status == 200]
    assert len(drafts) >= 2
    assert all(call.params["draft_id"] == drafts[0].params["draft_id"] for call in drafts)
    draft_texts = [call.params["text"] for call in drafts]
    assert draft_texts == sorted(draft_texts, key=len)
    assert texts == ["word0 word1 word2 word3 word4 word5"]
    assert len(telegram.calls_to("sendMessage", ALICE["id"])) == 1
    assert telegram.calls_to("sendChatAction", ALICE["id"]) == []  # text came at once: no typing needed


async def test_typing_shows_while_the_first_text_takes_a_while(telegram, vision, start_bot):
    vision.enqueue(stream_reply(["A cat."], first_delay=1.0))
    await start_bot()
    send_photo(telegram, ALICE, caption="Describe")

    assert await answered(telegram, ALICE["id"]) == ["A cat."]
    typing = telegram.calls_to("sendChatAction", ALICE["id"])
    first_text = min(call.at for call in telegram.calls if call.params.get("chat_id") == ALICE["id"]
                     and call.method in ("sendMessageDraft", "sendMessage"))
    assert typing and typing[0].at < first_text
    assert typing[0].params["action"] == "typing"


async def test_edit_mode_streams_into_one_message(telegram, vision, start_bot):
    gate = asyncio.Event()
    vision.enqueue(stream_reply(["First part. ", "Second part. ", "Third part."], gate=gate))
    await start_bot(stream_mode="edit")
    send_photo(telegram, ALICE, caption="Describe")

    await telegram.wait_for(lambda: telegram.calls_to("sendMessage", ALICE["id"]), timeout=5)
    for _ in range(3):
        await asyncio.sleep(1.1)
        gate.set()
        gate.clear()
    gate.set()
    await telegram.wait_for(
        lambda: final_texts(telegram, ALICE["id"]) == ["First part. Second part. Third part."], timeout=10)

    assert telegram.calls_to("sendMessageDraft") == []
    assert len(telegram.calls_to("sendMessage", ALICE["id"])) == 1
    assert telegram.calls_to("editMessageText", ALICE["id"])
    first_text = telegram.calls_to("sendMessage", ALICE["id"])[0].params["text"]
    assert first_text == "First part."


async def test_refused_drafts_fall_back_to_edits(telegram, vision, start_bot):
    telegram.fail_next("sendMessageDraft", status=400, description="Bad Request: TEXTDRAFT_PEER_INVALID")
    vision.enqueue(stream_reply(["Hello ", "there."], delay=0.2))
    await start_bot()
    send_photo(telegram, ALICE, caption="Hi?")

    await telegram.wait_for(lambda: final_texts(telegram, ALICE["id"]) == ["Hello there."], timeout=10)

    assert len(telegram.calls_to("sendMessageDraft")) == 1
    assert len(telegram.calls_to("sendMessage", ALICE["id"])) == 1
    assert telegram.calls_to("editMessageText", ALICE["id"])


async def test_long_answer_continues_in_further_messages(telegram, vision, start_bot):
    paragraphs = [f"Paragraph {index}: " + " ".join(["lorem ipsum dolor sit amet"] * 30) for index in range(12)]
    answer = "\n\n".join(paragraphs)
    assert len(answer) > 2 * 4096
    vision.enqueue(stream_reply([paragraph + "\n\n" for paragraph in paragraphs]))
    await start_bot()
    send_photo(telegram, ALICE, caption="Write a lot")

    await telegram.wait_for(lambda: len(final_texts(telegram, ALICE["id"])) >= 3, timeout=15)
    await asyncio.sleep(1.5)
    texts = final_texts(telegram, ALICE["id"])

    assert all(len(text) <= 4096 for text in texts)
    assert "\n\n".join(texts) == answer.strip()


async def test_flood_wait_during_streaming_loses_nothing(telegram, vision, start_bot):
    telegram.fail_next("editMessageText", status=429, retry_after=1, count=2)
    vision.enqueue(stream_reply([f"chunk{index} " for index in range(8)], delay=0.25))
    await start_bot(stream_mode="edit")
    send_photo(telegram, ALICE, caption="Go")

    expected = " ".join(f"chunk{index}" for index in range(8))
    await telegram.wait_for(lambda: final_texts(telegram, ALICE["id"]) == [expected], timeout=15)

    rejected = [call for call in telegram.calls_to("editMessageText") if call.status == 429]
    assert len(rejected) == 2
    after_flood = [call for call in telegram.calls if call.at > rejected[0].at and call.status == 200
                   and call.method in ("editMessageText", "sendMessage")]
    assert after_flood[0].at - rejected[0].at >= 0.95


async def test_one_chat_is_answered_in_order_while_other_chats_run_concurrently(telegram, vision, start_bot):
    slow = asyncio.Event()
    vision.enqueue(stream_reply(["first ", "answer"], gate=slow), stream_reply(["other chat"]),
                   stream_reply(["second answer"]))
    await start_bot()
    send_photo(telegram, ALICE, caption="one")
    await vision.wait_for_requests(1)
    send_text(telegram, ALICE, "two")
    send_text(telegram, LI, "hello")

    texts_li = await answered(telegram, LI["id"])
    assert texts_li == ["other chat"]
    assert len(vision.requests) == 2
    slow.set()
    texts = await answered(telegram, ALICE["id"], count=2)
    assert texts == ["first answer", "second answer"]
    assert vision.requests[2].text_parts()[-1] == "two"


async def test_shutdown_cuts_off_an_answer_with_what_was_written(telegram, vision, start_bot):
    gate = asyncio.Event()
    vision.enqueue(stream_reply(["Partial ", "answer ", "never finished"], gate=gate))
    bot = await start_bot(shutdown_grace=0.2)
    send_photo(telegram, ALICE, caption="Go")
    await telegram.wait_for(lambda: telegram.calls_to("sendMessageDraft"), timeout=5)

    await bot.stop()

    texts = final_texts(telegram, ALICE["id"])
    assert len(texts) == 1
    assert texts[0].startswith("Partial")
    assert "cut off" in texts[0]
    assert vision.disconnects


async def test_provider_error_becomes_a_friendly_message(telegram, vision, start_bot):
    vision.enqueue(json_reply(SEED_QUOTA_ERROR))
    await start_bot(admin_ids="777")
    send_photo(telegram, LI, caption="这是什么")

    texts = await answered(telegram, LI["id"])

    assert texts == ["机器人的 AI 额度已用完。已通知管理员。请稍后再试。"]
    await telegram.wait_for(lambda: telegram.calls_to("sendMessage", 777))
    assert "quota" in telegram.calls_to("sendMessage", 777)[0].params["text"]
    assert "codes" not in texts[0]


async def test_answer_after_an_error_still_has_the_image(telegram, vision, start_bot):
    vision.enqueue(json_reply(SEED_QUOTA_ERROR), stream_reply(["Now it works."]))
    await start_bot()
    send_photo(telegram, ALICE, caption="What is it?")
    await answered(telegram, ALICE["id"])
    send_text(telegram, ALICE, "Try again please")
    await answered(telegram, ALICE["id"], count=2)

    retry = vision.requests[1]
    assert [message["role"] for message in retry.messages] == ["user"]
    assert retry.text_parts() == ["What is it?\n\nTry again please"]
    assert retry.images() == vision.requests[0].images()


def test_the_smallest_photo_size_that_fills_the_target_is_downloaded() -> None:
    sizes = [(90, 68), (320, 240), (800, 600), (1280, 960), (2560, 1920)]
    assert smallest_sufficient(sizes) == 3
    assert smallest_sufficient([(90, 68), (320, 240)]) == 1

