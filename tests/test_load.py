"""100 answers streaming at once against a Telegram that enforces its flood limits (issue: streaming scheduler).

Questions arrive at 10 per second and each answer streams for about 10 s, so around 100 are live together.
The bot must get no 429 at all, deliver every final answer complete, and show each chat its first text within
about a second of the provider's first token.
"""

from __future__ import annotations

import asyncio

import pytest

from bot.factories import IMAGE_WORKERS
from bot.services.downloads import IN_FLIGHT_PER_WORKER
from tests.conftest import API_KEY, RunningBot, make_photo
from tests.fakes.telegram_server import FakeTelegram, make_user, message_update, private_chat
from tests.fakes.vision_server import FakeVision, stream_reply

CHATS = 100
ARRIVALS_PER_SECOND = 10
CHUNKS = 40
CHUNK_DELAY = 0.25
FIRST_TEXT_WITHIN = 1.2


def expected_answer(index: int) -> str:
    return " ".join(f"w{index}x{chunk}" for chunk in range(CHUNKS))


@pytest.fixture
async def limited_telegram() -> FakeTelegram:
    fake = FakeTelegram(enforce_rate_limits=True)
    await fake.start()
    yield fake  # type: ignore[misc]
    await fake.stop()


async def test_a_hundred_simultaneous_answers_get_no_429_and_arrive_complete(limited_telegram, vision: FakeVision,
                                                                           make_settings) -> None:
    telegram = limited_telegram
    settings = make_settings(bot_token=telegram.token, telegram_api_url=telegram.base_url)
    for index in range(CHATS):
        vision.enqueue(stream_reply([f"w{index}x{chunk} " for chunk in range(CHUNKS)], delay=CHUNK_DELAY))
    bot = RunningBot(settings)
    await bot.start()
    photo = telegram.photo_sizes(make_photo(640, 480))
    users = [make_user(50_000 + index, f"User{index}") for index in range(CHATS)]
    try:
        for index, user in enumerate(users):
            telegram.push_update(message_update(private_chat(user), user, photo=photo, caption=f"question {index}"))
            await vision.wait_for_requests(index + 1, timeout=10)
            await asyncio.sleep(1 / ARRIVALS_PER_SECOND)
        await telegram.wait_for(lambda: all(telegram.chat_messages(user["id"]) for user in users), timeout=60)
    finally:
        await bot.stop()

    assert telegram.rate_limited_responses == 0
    assert [call for call in telegram.calls if call.status == 429] == []
    for index, user in enumerate(users):
        assert [message["text"] for message in telegram.chat_messages(user["id"])] == [expected_answer(index)]
    assert API_KEY not in str([call.params for call in telegram.calls])

    delays = []
    for request in vision.requests:
        index = int(request.text_parts()[-1].removeprefix("question "))
        chat_id = users[index]["id"]
        first_visible = min(call.at for call in telegram.calls
                            if call.status == 200 and call.params.get("chat_id") == chat_id
                            and call.method in ("sendMessageDraft", "sendMessage", "editMessageText"))
        assert request.first_chunk_at is not None
        delays.append(first_visible - request.first_chunk_at)
    assert max(delays) <= FIRST_TEXT_WITHIN, sorted(delays)[-5:]


async def test_a_burst_of_photos_is_downloaded_only_as_fast_as_it_can_be_prepared(vision: FakeVision,
                                                                                 make_settings) -> None:
    """Downloaded files wait in memory for an image worker; a burst must wait as updates instead."""
    telegram = FakeTelegram(download_seconds=0.1)
    await telegram.start()
    chats = 3 * IN_FLIGHT_PER_WORKER * IMAGE_WORKERS
    vision.enqueue(*[stream_reply(["Seen."]) for _ in range(chats)])
    bot = RunningBot(make_settings(bot_token=telegram.token, telegram_api_url=telegram.base_url))
    await bot.start()
    users = [make_user(60_000 + index, f"User{index}") for index in range(chats)]
    try:
        for index, user in enumerate(users):
            photo = telegram.photo_sizes(make_photo(640, 480, color=(index, 80, 160)))
            telegram.push_update(message_update(private_chat(user), user, photo=photo, caption=f"burst {index}"))
        await telegram.wait_for(lambda: all(telegram.chat_messages(user["id"]) for user in users), timeout=60)
    finally:
        await bot.stop()
        await telegram.stop()

    assert 2 <= telegram.most_downloads_at_once <= IN_FLIGHT_PER_WORKER * IMAGE_WORKERS
    assert [[message["text"] for message in telegram.chat_messages(user["id"])] for user in users] == \
        [["Seen."]] * chats


async def test_five_hundred_users_asking_usage_and_a_photo_at_once_get_every_reply_and_no_429(
        limited_telegram, vision: FakeVision, make_settings) -> None:
    """Command replies, typing and answers all take their turns at the one scheduler (typing is dropped first)."""
    telegram = limited_telegram
    users = [make_user(70_000 + index, f"User{index}") for index in range(500)]
    for _ in users:
        vision.enqueue(stream_reply(["A red ", "apple."]))
    bot = RunningBot(make_settings(bot_token=telegram.token, telegram_api_url=telegram.base_url))
    await bot.start()
    photo = telegram.photo_sizes(make_photo(64, 48))
    try:
        for user in users:
            telegram.push_update(message_update(private_chat(user), user, text="/usage"))
            telegram.push_update(message_update(private_chat(user), user, photo=photo, caption="What is this?"))
        await telegram.wait_for(lambda: all(len(telegram.chat_messages(user["id"])) == 2
                                            and telegram.chat_messages(user["id"])[1]["text"] == "A red apple."
                                            for user in users), timeout=150)
    finally:
        await bot.stop()

    assert telegram.rate_limited_responses == 0
    assert [call for call in telegram.calls if call.status == 429] == []
    for user in users:
        usage, answer = (message["text"] for message in telegram.chat_messages(user["id"]))
        assert usage.startswith("Today (UTC): you used 0 tokens")
        assert answer == "A red apple."
