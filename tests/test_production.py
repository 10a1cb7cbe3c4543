"""Operations: webhook mode, allow lists, usage limits, /usage and /stats, metrics, JSON logs."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from bot.logs import JsonFormatter
from tests.conftest import make_photo
from tests.fakes.telegram_server import FakeTelegram, group_chat, make_user, message_update, private_chat
from tests.fakes.vision_server import FakeVision, stream_reply
from tests.support import answered, final_texts, free_port, send_photo, send_text

ALICE = make_user(7001, "Alice", "en")
BOB = make_user(7002, "Bob", "en")
CAROL = make_user(7003, "Carol", "en")
GROUP = group_chat(-100700700)
SECRET = "s3cret-Token_1"
WEBHOOK_URL = "https://bot.example.com/tg/hook"



async def test_webhook_refuses_a_wrong_secret_and_answers_a_right_one(telegram: FakeTelegram, vision: FakeVision,
                                                                    start_bot) -> None:
    port = free_port()
    await start_bot(bot_mode="webhook", webhook_url=WEBHOOK_URL, webhook_secret=SECRET, webhook_host="127.0.0.1",
                    webhook_port=port)
    registration = telegram.calls_to("setWebhook")[-1].params
    assert registration["url"] == WEBHOOK_URL
    assert registration["secret_token"] == SECRET
    assert "message" in registration["allowed_updates"]
    assert telegram.calls_to("getUpdates") == []
    update = {"update_id": 500, **message_update(private_chat(ALICE), ALICE, text="hello there")}
    url = f"http://127.0.0.1:{port}/tg/hook"

    async with httpx.AsyncClient() as client:
        wrong = await client.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "guess"})
        missing = await client.post(url, json=update)
        await asyncio.sleep(0.5)
        assert (wrong.status_code, missing.status_code) == (401, 401)
        assert vision.requests == []
        assert telegram.chat_messages(ALICE["id"]) == []

        right = await client.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
        health = await client.get(f"http://127.0.0.1:{port}/healthz")
    assert right.status_code == 200
    assert health.status_code == 200
    assert await answered(telegram, ALICE["id"]) == ["This is a test image."]
    assert vision.requests[0].text_parts() == ["hello there"]


async def test_a_webhook_retry_of_the_same_update_is_answered_once(telegram: FakeTelegram, vision: FakeVision,
                                                                   start_bot) -> None:
    port = free_port()
    await start_bot(bot_mode="webhook", webhook_url=WEBHOOK_URL, webhook_secret=SECRET, webhook_host="127.0.0.1",
                    webhook_port=port)
    update = {"update_id": 777, **message_update(private_chat(ALICE), ALICE, text="once, please")}
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}

    async with httpx.AsyncClient() as client:
        first = await client.post(f"http://127.0.0.1:{port}/tg/hook", json=update, headers=headers)
        second = await client.post(f"http://127.0.0.1:{port}/tg/hook", json=update, headers=headers)
        await answered(telegram, ALICE["id"])
        third = await client.post(f"http://127.0.0.1:{port}/tg/hook", json=update, headers=headers)
    await asyncio.sleep(1.0)

    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 200)
    assert len(telegram.chat_messages(ALICE["id"])) == 1
    assert len(vision.requests) == 1


async def test_webhook_shutdown_lets_an_answer_in_flight_end_with_what_was_written(
        telegram: FakeTelegram, vision: FakeVision, start_bot) -> None:
    port = free_port()
    vision.enqueue(stream_reply(["Half ", "of it"], gate=asyncio.Event()))
    bot = await start_bot(bot_mode="webhook", webhook_url=WEBHOOK_URL, webhook_secret=SECRET,
                          webhook_host="127.0.0.1", webhook_port=port, shutdown_grace=0.3)
    update = {"update_id": 501, **message_update(private_chat(ALICE), ALICE, text="tell me")}
    async with httpx.AsyncClient() as client:
        await client.post(f"http://127.0.0.1:{port}/tg/hook", json=update,
                          headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
    await telegram.wait_for(lambda: telegram.calls_to("sendMessageDraft"))

    await bot.stop()

    assert final_texts(telegram, ALICE["id"]) == ["Half\n\n⚠️ (answer cut off)"]


async def test_allow_lists_refuse_politely_in_private_and_silently_in_groups(telegram: FakeTelegram,
                                                                           vision: FakeVision, start_bot) -> None:
    await start_bot(allowed_user_ids=str(ALICE["id"]), allowed_chat_ids=str(GROUP["id"]))
    send_photo(telegram, BOB, "what is it?")
    refusal = await answered(telegram, BOB["id"])
    other_group = group_chat(-100999)
    telegram.push_update(message_update(other_group, BOB, text="/ask what?"))
    telegram.push_update(message_update(GROUP, BOB, text="/ask what is a cat?"))
    await answered(telegram, GROUP["id"])
    send_text(telegram, ALICE, "hi")
    await answered(telegram, ALICE["id"])

    assert "this bot is private" in refusal[0] and str(BOB["id"]) in refusal[0]
    assert telegram.chat_messages(other_group["id"]) == []
    assert [request.text_parts()[-1] for request in vision.requests] == ["Bob: what is a cat?", "hi"]


async def test_a_user_over_the_rate_limit_gets_a_wait_message_and_no_provider_call(
        telegram: FakeTelegram, vision: FakeVision, start_bot) -> None:
    await start_bot(user_rate_limit="2/min", stream_mode="edit")
    for index in range(3):
        send_text(telegram, ALICE, f"question {index}")
        await answered(telegram, ALICE["id"], index + 1)
    await asyncio.sleep(1.2)

    texts = final_texts(telegram, ALICE["id"])
    assert len(vision.requests) == 2
    assert "Please wait" in texts[2]
    assert "s and ask again" in texts[2]


async def test_a_users_daily_budget_stops_requests_before_the_provider(telegram: FakeTelegram,
                                                                       vision: FakeVision, start_bot) -> None:
    await start_bot(user_daily_tokens=100, stream_mode="edit")
    send_text(telegram, ALICE, "first")  # the fake provider reports 120 tokens
    await answered(telegram, ALICE["id"])
    await asyncio.sleep(1.2)
    send_text(telegram, ALICE, "second")
    texts = await answered(telegram, ALICE["id"], 2)

    assert "allowance for this account is used up" in texts[1]
    assert [request.text_parts()[-1] for request in vision.requests] == ["first"]


async def test_a_chats_daily_budget_stops_everyone_in_it(telegram: FakeTelegram, vision: FakeVision,
                                                         start_bot) -> None:
    await start_bot(chat_daily_tokens=100, user_daily_tokens=10_000)
    telegram.push_update(message_update(GROUP, BOB, text="/ask one"))
    await answered(telegram, GROUP["id"])
    await asyncio.sleep(3.5)
    telegram.push_update(message_update(GROUP, CAROL, text="/ask two"))
    texts = await answered(telegram, GROUP["id"], 2)
    send_text(telegram, CAROL, "in private")
    await answered(telegram, CAROL["id"])

    assert "allowance for this chat is used up" in texts[1]
    assert [request.text_parts()[-1] for request in vision.requests] == ["Bob: one", "in private"]


async def test_usage_and_stats(telegram: FakeTelegram, vision: FakeVision, start_bot) -> None:
    await start_bot(user_daily_tokens=10_000, admin_ids=str(ALICE["id"]), stream_mode="edit")
    send_photo(telegram, ALICE, "what is it?", make_photo(320, 240))
    await answered(telegram, ALICE["id"])
    await asyncio.sleep(1.2)
    send_text(telegram, ALICE, "/usage")
    usage = await answered(telegram, ALICE["id"], 2)
    await asyncio.sleep(1.2)
    send_text(telegram, ALICE, "/stats")
    stats = await answered(telegram, ALICE["id"], 3)
    send_text(telegram, BOB, "/stats")
    await asyncio.sleep(1.0)

    assert usage[1] == "Today (UTC): you used 120 tokens of 10000; this chat used 120 tokens."
    assert "By day: answers / tokens" in stats[2]
    assert f"{ALICE['id']}: 1 / 120" in stats[2]
    assert telegram.chat_messages(BOB["id"]) == []


async def test_metrics_endpoint_counts_answers_tokens_and_latency(telegram: FakeTelegram, vision: FakeVision,
                                                                  start_bot) -> None:
    port = free_port()
    await start_bot(metrics_port=port, webhook_host="127.0.0.1")
    send_text(telegram, ALICE, "hello")
    await answered(telegram, ALICE["id"])
    await asyncio.sleep(1.5)

    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        health = await client.get(f"http://127.0.0.1:{port}/healthz")

    assert health.status_code == 200
    assert 'vision_bot_answers_total{error_kind="",outcome="answered"} 1.0' in metrics
    assert 'vision_bot_tokens_total{kind="prompt"} 100.0' in metrics
    assert "vision_bot_first_text_seconds_count 1.0" in metrics
    assert "vision_bot_final_answer_seconds_count 1.0" in metrics
    assert "vision_bot_active_streams 0.0" in metrics
    assert "vision_bot_telegram_flood_waits_total 0.0" in metrics


def test_json_logs_are_one_object_per_line_and_redacted() -> None:
    formatter = JsonFormatter(["sk-very-secret"])
    record = logging.LogRecord("bot", logging.WARNING, __file__, 1, "key %s rejected", ("sk-very-secret",), None)

    line = formatter.format(record)

    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["message"] == "key [redacted] rejected"
    assert "sk-very-secret" not in line


async def test_operator_data_stays_private_and_group_resets_are_for_admins(
        telegram: FakeTelegram, vision: FakeVision, start_bot) -> None:
    await start_bot(admin_ids=str(CAROL["id"]))
    telegram.set_chat_admins(GROUP["id"], [ALICE["id"]])
    telegram.push_update(message_update(GROUP, CAROL, text="/stats"))  # an operator, but in a group
    telegram.push_update(message_update(GROUP, BOB, text="/stats"))
    telegram.push_update(message_update(GROUP, BOB, text="/reset"))  # a plain member
    telegram.push_update(message_update(GROUP, ALICE, text="/reset"))  # the group's admin
    await answered(telegram, GROUP["id"], 3)
    await asyncio.sleep(0.5)

    texts = final_texts(telegram, GROUP["id"])
    assert texts == ["Statistics cover every chat: ask me for /stats in a private chat.",
                     "Only this group's admins can reset its conversation with me.",
                     "Done, I've forgotten this conversation. Send a new photo whenever you like."]
    assert not any(str(CAROL["id"]) in text or "answers / tokens" in text for text in texts)


async def test_metrics_listen_on_localhost_by_default_and_may_want_a_token(
        telegram: FakeTelegram, vision: FakeVision, start_bot) -> None:
    port = free_port()
    bot = await start_bot(metrics_port=port, metrics_token="scrape-me-123")

    assert bot.settings.metrics_host == "127.0.0.1"
    async with httpx.AsyncClient() as client:
        refused = await client.get(f"http://127.0.0.1:{port}/metrics")
        allowed = await client.get(f"http://127.0.0.1:{port}/metrics",
                                   headers={"Authorization": "Bearer scrape-me-123"})
        with pytest.raises(httpx.ConnectError):  # another address of this host: nothing listens there
            await client.get(f"http://127.0.0.2:{port}/metrics")
    assert refused.status_code == 401
    assert allowed.status_code == 200 and "vision_bot_answers_total" in allowed.text


async def test_twenty_questions_at_once_near_the_budget_overshoot_by_at_most_one_answer(
        telegram: FakeTelegram, vision: FakeVision, start_bot) -> None:
    vision.default_reply = stream_reply(["Slow ", "answer."], first_delay=0.5)  # all twenty are admitted at once
    bot = await start_bot(user_daily_tokens=500, vision_max_tokens=300)
    groups = [group_chat(-100800000 - number) for number in range(20)]
    for group in groups:
        telegram.push_update(message_update(group, ALICE, text="/ask what is a budget?"))
    for group in groups:
        await answered(telegram, group["id"])
    await asyncio.sleep(0.5)

    answers = [final_texts(telegram, group["id"])[0] for group in groups]
    refused = [text for text in answers if "allowance" in text]
    spent = await bot.app.dispatcher["usage"].today(user_id=ALICE["id"], chat_id=groups[0]["id"])
    assert 1 <= len(vision.requests) < 20 and refused
    assert spent.user_tokens <= 500 + 300  # at most one answer's max_tokens over the budget
