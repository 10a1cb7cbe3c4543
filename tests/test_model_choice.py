"""End to end: /model and its buttons, per chat and per forum topic, through the fake Telegram and provider."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

from bot.services.chat_admins import ChatAdmins
from bot.telegram_limits import GROUP as GROUP_RATE
from tests.fakes.telegram_server import ApiCall, FakeTelegram, group_chat, make_user, message_update
from tests.fakes.vision_server import FakeVision, stream_reply
from tests.support import answered, send_photo, send_text

Json = dict[str, Any]

ALICE = make_user(1001, "Alice", "en")
BOB = make_user(1002, "Bob", "en")
OPERATOR = make_user(1003, "Olga", "en")
LI = make_user(1004, "李雷", "zh-hans")
GROUP = group_chat(-100200300)
FORUM = group_chat(-100900900, title="Forum", is_forum=True)
MODELS = "gpt-4o,gpt-4o-mini"
BOT = "@vision_test_bot"
DONE_GPT_4O = "Done: answers here now use gpt-4o."
NOT_ALLOWED = "Sorry, only this group's admins can change the model."
STALE = "This menu is out of date. Send /model again."
GROUP_TURN = GROUP_RATE.interval + 1  # a group's burst is spent: its next send waits one interval


def in_chat(telegram: FakeTelegram, chat: Json, user: Json, text: str, thread_id: int | None = None) -> None:
    telegram.push_update(message_update(chat, user, text=text, message_thread_id=thread_id))


def press(telegram: FakeTelegram, query_id: str, user: Json, message: Json, label: str | None = None,
          data: str | None = None) -> None:
    """A user taps the button labelled `label` under the bot's `message` (or sends raw callback `data`)."""
    if data is None:
        buttons = [button for row in message["reply_markup"]["inline_keyboard"] for button in row]
        data = next(button["callback_data"] for button in buttons if button["text"] == label)
    telegram.push_update({"callback_query": {"id": query_id, "from": user, "chat_instance": "x", "data": data,
                                             "message": message}})


async def answer_to(telegram: FakeTelegram, query_id: str) -> ApiCall:
    def answers() -> list[ApiCall]:
        return [call for call in telegram.calls_to("answerCallbackQuery")
                if call.params.get("callback_query_id") == query_id]

    await telegram.wait_for(lambda: bool(answers()), timeout=10)
    [call] = answers()
    assert call.status == 200
    return call


def labels(message: Json) -> list[str]:
    return [button["text"] for row in message.get("reply_markup", {}).get("inline_keyboard", []) for button in row]


async def test_model_menu_offers_the_others_and_a_button_switches(telegram, start_bot):
    await start_bot(vision_models=MODELS)
    send_text(telegram, ALICE, "/model")
    await answered(telegram, ALICE["id"])
    menu = telegram.chat_messages(ALICE["id"])[0]

    assert menu["text"].startswith("Current model: glm-4v-flash")
    assert labels(menu) == ["gpt-4o", "gpt-4o-mini"]
    for row in menu["reply_markup"]["inline_keyboard"]:
        assert re.fullmatch(r"model:\d+", row[0]["callback_data"])

    press(telegram, "q1", ALICE, menu, "gpt-4o-mini")
    answer = await answer_to(telegram, "q1")
    assert not answer.params.get("show_alert")
    await telegram.wait_for(lambda: telegram.chat_messages(ALICE["id"])[-1]["text"].startswith("Done"))
    confirmed = telegram.chat_messages(ALICE["id"])[-1]
    assert confirmed["message_id"] == menu["message_id"]
    assert confirmed["text"] == "Done: answers here now use gpt-4o-mini."
    assert "reply_markup" not in confirmed

    send_text(telegram, ALICE, "/model")
    texts = await answered(telegram, ALICE["id"], count=2)
    assert texts[-1].startswith("Current model: gpt-4o-mini")
    assert labels(telegram.chat_messages(ALICE["id"])[-1]) == ["glm-4v-flash", "gpt-4o"]


async def test_model_by_name_ignores_case_and_survives_reset_and_restart(telegram, start_bot):
    first = await start_bot(vision_models=MODELS)
    send_text(telegram, ALICE, "/model GPT-4o")
    assert await answered(telegram, ALICE["id"]) == ["Done: answers here now use gpt-4o."]
    send_text(telegram, ALICE, "/model gpt-4o")
    assert (await answered(telegram, ALICE["id"], count=2))[-1] == "Answers here already use gpt-4o."
    send_text(telegram, ALICE, "/reset")
    await answered(telegram, ALICE["id"], count=3)
    await first.stop()

    await start_bot(vision_models=MODELS)  # the same database file
    send_text(telegram, ALICE, "/model")

    texts = await answered(telegram, ALICE["id"], count=4)
    assert len(texts) == 4
    assert texts[-1].startswith("Current model: gpt-4o\n")


async def test_unknown_model_lists_the_ones_on_offer(telegram, start_bot):
    await start_bot(vision_models=MODELS)
    send_text(telegram, ALICE, "/model gpt-5")
    send_text(telegram, LI, "/model gpt-5")

    assert await answered(telegram, ALICE["id"]) == [
        "I don't know the model “gpt-5”. Choose one of: glm-4v-flash, gpt-4o, gpt-4o-mini."]
    assert await answered(telegram, LI["id"]) == [
        "没有名为“gpt-5”的模型。请从以下模型中选择：glm-4v-flash, gpt-4o, gpt-4o-mini。"]


async def test_a_single_model_is_named_with_how_to_offer_more(telegram, start_bot):
    await start_bot()
    send_text(telegram, ALICE, "/model gpt-4o")

    [reply] = await answered(telegram, ALICE["id"])
    assert reply.startswith("Current model: glm-4v-flash. It is the only one on offer")
    assert "VISION_MODELS" in reply
    assert "reply_markup" not in telegram.chat_messages(ALICE["id"])[0]


async def test_the_command_menu_offers_model_in_both_languages(telegram, start_bot):
    await start_bot(vision_models=MODELS)

    menus = {call.params.get("language_code"): call.params["commands"] for call in telegram.calls_to("setMyCommands")}
    assert set(menus) == {None, "zh"}
    for commands in menus.values():
        assert "model" in [command["command"] for command in commands]


async def test_in_groups_only_admins_and_operators_may_switch(telegram, start_bot):
    await start_bot(vision_models=MODELS, admin_ids=str(OPERATOR["id"]))
    telegram.set_chat_admins(GROUP["id"], [ALICE["id"]])
    in_chat(telegram, GROUP, BOB, "/model@other_bot gpt-4o")  # for another bot: ignored
    in_chat(telegram, GROUP, BOB, f"/model{BOT} gpt-4o")
    assert await answered(telegram, GROUP["id"]) == [NOT_ALLOWED]

    in_chat(telegram, GROUP, ALICE, f"/model{BOT} gpt-4o")
    assert (await answered(telegram, GROUP["id"], count=2))[-1] == "Done: answers here now use gpt-4o."
    in_chat(telegram, GROUP, OPERATOR, "/model gpt-4o-mini")
    assert (await answered(telegram, GROUP["id"], count=3))[-1] == "Done: answers here now use gpt-4o-mini."

    in_chat(telegram, GROUP, BOB, f"/model{BOT}")  # anyone may look
    texts = await answered(telegram, GROUP["id"], count=4)
    assert texts[-1].startswith("Current model: gpt-4o-mini")
    menu = telegram.chat_messages(GROUP["id"])[-1]
    press(telegram, "bob", BOB, menu, "gpt-4o")
    refused = await answer_to(telegram, "bob")
    assert (refused.params["text"], refused.params["show_alert"]) == (NOT_ALLOWED, True)
    assert telegram.chat_messages(GROUP["id"])[-1]["text"] == menu["text"]

    press(telegram, "alice", ALICE, menu, "gpt-4o")
    await answer_to(telegram, "alice")  # at once; the menu's edit takes the group's next turn
    await telegram.wait_for(lambda: telegram.chat_messages(GROUP["id"])[-1]["text"] == DONE_GPT_4O, timeout=GROUP_TURN)
    assert len(telegram.chat_messages(GROUP["id"])) == 4
    assert {call.params["user_id"] for call in telegram.calls_to("getChatMember")} == {ALICE["id"], BOB["id"]}


async def test_each_forum_topic_has_its_own_model_and_replies_stay_in_the_topic(telegram, start_bot):
    await start_bot(vision_models=MODELS)
    telegram.set_chat_admins(FORUM["id"], [], creator_id=ALICE["id"])
    in_chat(telegram, FORUM, ALICE, f"/model{BOT}", thread_id=7)
    await answered(telegram, FORUM["id"])
    menu = telegram.chat_messages(FORUM["id"])[0]
    assert menu["message_thread_id"] == 7

    press(telegram, "q", ALICE, menu, "gpt-4o")
    await answer_to(telegram, "q")
    in_chat(telegram, FORUM, ALICE, f"/model{BOT}", thread_id=7)
    in_chat(telegram, FORUM, ALICE, f"/model{BOT}", thread_id=9)

    await telegram.wait_for(lambda: len(telegram.chat_messages(FORUM["id"])) == 3, timeout=10)
    messages = telegram.chat_messages(FORUM["id"])
    assert [(m.get("message_thread_id"), m["text"].split("\n")[0]) for m in messages] == [
        (7, "Done: answers here now use gpt-4o."),
        (7, "Current model: gpt-4o"),
        (9, "Current model: glm-4v-flash"),
    ]


async def test_stale_or_forged_buttons_change_nothing(telegram, start_bot):
    await start_bot(vision_models=MODELS)
    send_text(telegram, ALICE, "/model")
    await answered(telegram, ALICE["id"])
    menu = telegram.chat_messages(ALICE["id"])[0]

    for query_id, data in (("far", "model:99"), ("junk", "model:x"), ("other", "model:0")):
        press(telegram, query_id, ALICE, menu, data=data)
        answer = await answer_to(telegram, query_id)
        assert (answer.params["text"], answer.params["show_alert"]) == (STALE, True)
    send_text(telegram, ALICE, "/model")
    assert (await answered(telegram, ALICE["id"], count=2))[-1].startswith("Current model: glm-4v-flash")


async def test_a_model_the_operator_withdrew_falls_back_to_the_default(telegram, start_bot):
    first = await start_bot(vision_models=MODELS)
    send_text(telegram, ALICE, "/model")
    await answered(telegram, ALICE["id"])
    old_menu = telegram.chat_messages(ALICE["id"])[0]
    send_text(telegram, ALICE, "/model gpt-4o")
    await answered(telegram, ALICE["id"], count=2)
    await first.stop()

    await start_bot(vision_models="gpt-4o-mini")  # gpt-4o withdrawn: the old menu's indexes now mean other models
    send_text(telegram, ALICE, "/model")
    assert (await answered(telegram, ALICE["id"], count=3))[-1].startswith("Current model: glm-4v-flash\n")
    press(telegram, "old", ALICE, old_menu, "gpt-4o")

    answer = await answer_to(telegram, "old")
    assert (answer.params["text"], answer.params["show_alert"]) == (STALE, True)
    send_text(telegram, ALICE, "/model")
    assert (await answered(telegram, ALICE["id"], count=4))[-1].startswith("Current model: glm-4v-flash\n")


async def test_a_photo_question_goes_to_the_chosen_model(telegram, vision: FakeVision, start_bot):
    """Needs the answering service to ask ModelChoice.current (the integration step)."""
    vision.enqueue(stream_reply(["A cat."]))
    await start_bot(vision_models=MODELS)
    send_text(telegram, ALICE, "/model gpt-4o")
    await answered(telegram, ALICE["id"])

    send_photo(telegram, ALICE, caption="What is this?")
    await answered(telegram, ALICE["id"], count=2)

    assert vision.requests[0].body["model"] == "gpt-4o"


# --- ChatAdmins against the fake Telegram ------------------------------------------------------------------


@pytest.fixture
async def bot(telegram: FakeTelegram) -> AsyncIterator[Bot]:
    client = Bot(telegram.token, session=AiohttpSession(api=TelegramAPIServer.from_base(telegram.base_url)))
    yield client
    await client.session.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_chat_admins_asks_telegram_once_per_ttl(telegram, bot):
    clock = Clock()
    admins = ChatAdmins(bot, {OPERATOR["id"]}, ttl=60.0, clock=clock)
    telegram.set_chat_admins(GROUP["id"], [ALICE["id"]])
    group = GROUP["id"]

    assert await admins.may_configure(group, "supergroup", ALICE["id"])
    assert not await admins.may_configure(group, "supergroup", BOB["id"])
    telegram.set_chat_admins(GROUP["id"], [BOB["id"]])  # Alice demoted, Bob promoted: cached for a minute
    clock.now += 59
    assert await admins.may_configure(group, "supergroup", ALICE["id"])
    assert not await admins.may_configure(group, "supergroup", BOB["id"])
    assert len(telegram.calls_to("getChatMember")) == 2
    clock.now += 2
    assert not await admins.may_configure(group, "supergroup", ALICE["id"])
    assert await admins.may_configure(group, "supergroup", BOB["id"])
    assert len(telegram.calls_to("getChatMember")) == 4

    # Private chats, operators and a group's anonymous admins (posting as the group) need no question.
    assert await admins.may_configure(ALICE["id"], "private", ALICE["id"])
    assert await admins.may_configure(group, "group", OPERATOR["id"])
    assert await admins.may_configure(group, "supergroup", 1087968824, sender_chat_id=group)
    assert not await admins.may_configure(group, "supergroup", None)
    assert len(telegram.calls_to("getChatMember")) == 4


async def test_chat_admins_refuses_when_telegram_fails_and_asks_again_next_time(telegram, bot):
    admins = ChatAdmins(bot, set())
    telegram.set_chat_admins(GROUP["id"], [ALICE["id"]])
    telegram.fail_next("getChatMember", status=400, description="Bad Request: chat not found")

    assert not await admins.may_configure(GROUP["id"], "supergroup", ALICE["id"])
    assert await admins.may_configure(GROUP["id"], "supergroup", ALICE["id"])
