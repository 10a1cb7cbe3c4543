"""Fuzzing the updates Telegram delivers: whatever arrives, the bot logs no error and keeps answering.

One running bot per test gets batches of generated updates (texts and captions of any Unicode and any length,
entities pointing past the text or into the middle of an emoji, message kinds the bot has no use for, messages
without a sender, forwards, replies, albums, callback queries with any data), then must have handled every one of
them without an ERROR record, and still answer an ordinary photo question. Polling delivers only the update types
the bot asks for; the webhook test posts the others too (edited messages, channel posts), as a webhook whose
`allowed_updates` were set differently before would. A fixed seed (`derandomize`) keeps the run the same
everywhere; what a run once found stays below as explicit examples.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from aiogram.types import CallbackQuery, Message, Update, User
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.handlers.inputs import mentions, without_mentions
from bot.handlers.stop import on_stop_button
from bot.models import UNFINISHED_STATES
from tests.conftest import RunningBot, make_photo
from tests.fakes.telegram_server import FakeTelegram, group_chat, make_user, message_update, private_chat, utf16_len
from tests.fakes.vision_server import FakeVision
from tests.support import free_port, start_quietly

Json = dict[str, Any]

# One bot (a function-scoped fixture) serves every example of a test: that is the point.
ONE_BOT = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
BOT_NAME = "vision_test_bot"
BOT_ID = 123456
DEFAULT_ANSWER = "This is a test image."
WEBHOOK_SECRET = "fuzz-secret-123"

_ids = itertools.count(1)  # distinct users and chats: Telegram's pacing would otherwise queue the answers


def fresh_id() -> int:
    return 50_000 + next(_ids)


# --- strategies ---------------------------------------------------------------------------------------------------

ASTRAL = st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF)  # emoji: two UTF-16 code units each
TEXT = st.one_of(
    st.text(max_size=40),
    st.text(ASTRAL, max_size=8),
    st.lists(st.one_of(st.text(max_size=4), st.text(ASTRAL, min_size=1, max_size=3),
                       st.sampled_from([f"@{BOT_NAME}", f"@{BOT_NAME.upper()}", "@someone", "/ask", " ", "\n",
                                        "\u200d", "\ufe0f", "\u202e", "\x00"])), max_size=8).map("".join),
    st.sampled_from(["", " ", "\n\t", "/start", "/help", "/reset", "/new", "/model", "/model glm-4v-flash",
                     "/model no-such-model", "/usage", "/stats", "/ask", "/ask what is it?", f"/ask@{BOT_NAME} hi",
                     f"/start@{BOT_NAME}", "/unknown_command", "/", "//", f"@{BOT_NAME}", f"@{BOT_NAME} what?",
                     "/model " + "x" * 300]),
    st.builds(lambda seed, length: (seed * length)[:length], st.text(min_size=1, max_size=3),
              st.sampled_from([4096, 4097, 5000])),
    st.builds(lambda seed, length: (seed * length)[:length], st.text(ASTRAL, min_size=1, max_size=2),
              st.sampled_from([2048, 2049, 4096])),
)
ENTITY_TYPES = ["mention", "text_mention", "bot_command", "bold", "url", "text_link", "hashtag", "custom_emoji", "pre",
                "code", "spoiler", "blockquote", "no_such_type"]


@st.composite
def entities(draw: st.DrawFn, text: str) -> list[Json] | None:
    """Entities anywhere: inside the text, past its end, splitting a surrogate pair, on the bot's @name."""
    if draw(st.integers(0, 3)) == 0:
        return None
    units = utf16_len(text)
    found = []
    for _ in range(draw(st.integers(0, 4))):
        entity: Json = {"type": draw(st.sampled_from(ENTITY_TYPES)), "offset": draw(st.integers(0, units + 3)),
                        "length": draw(st.integers(0, units + 3))}
        if entity["type"] == "text_mention" and draw(st.booleans()):
            entity["user"] = draw(st.sampled_from([{"id": BOT_ID, "is_bot": True, "first_name": "Vision Test"},
                                                   make_user(fresh_id())]))
        if entity["type"] == "text_link":
            entity["url"] = "https://example.com/" + draw(st.text(max_size=5))
        if entity["type"] == "custom_emoji":
            entity["custom_emoji_id"] = str(draw(st.integers(1, 10**18)))
        if entity["type"] == "pre" and draw(st.booleans()):
            entity["language"] = draw(st.text(max_size=5))
        found.append(entity)
    at = text.find(f"@{BOT_NAME}")
    if at >= 0:
        found.append({"type": "mention", "offset": utf16_len(text[:at]), "length": len(BOT_NAME) + 1})
    return found


def user_strategy() -> st.SearchStrategy[Json]:
    return st.builds(
        lambda user_id, name, language, username: make_user(user_id, name or "X", language, username),
        st.builds(fresh_id), st.text(max_size=12), st.sampled_from([None, "en", "zh-hans", "zh-hant", "ru", "", "xx-YY",
                                                                   "EN"]),
        st.one_of(st.none(), st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)),
    )


def chat_strategy(user: Json) -> st.SearchStrategy[Json]:
    return st.one_of(
        st.just(private_chat(user)),
        st.builds(lambda chat_id, forum: group_chat(chat_id, "Fuzz group", is_forum=forum),
                  st.builds(lambda: -1_000_000_000_000 - fresh_id()), st.booleans()),
        st.builds(lambda chat_id: {"id": chat_id, "type": "group", "title": "Old group"},
                  st.builds(lambda: -fresh_id())),
        st.builds(lambda chat_id: {"id": chat_id, "type": "channel", "title": "A channel"},
                  st.builds(lambda: -2_000_000_000_000 - fresh_id())),
    )


def file_fields(file_ids: list[str]) -> st.SearchStrategy[Json]:
    """A stored file of the fake Telegram, or one it never heard of, with any size claim."""
    return st.fixed_dictionaries({
        "file_id": st.one_of(st.sampled_from(file_ids), st.text("ABCabc0123_-", min_size=1, max_size=20)),
        "file_unique_id": st.text("ABCabc0123", min_size=1, max_size=10),
    }, optional={"file_size": st.one_of(st.integers(0, 2**31), st.just(21 * 1024 * 1024))})


def media(files: list[str], sizes: list[Json]) -> st.SearchStrategy[Json]:
    """The non-text part of a message: pictures the bot reads, and every kind of thing it does not."""
    anything = file_fields(files)
    photo_size = st.builds(lambda info, width, height: {**info, "width": width, "height": height}, anything,
                           st.integers(0, 20_000), st.integers(0, 20_000))
    return st.one_of(
        st.just({}),
        st.just({"photo": sizes}),
        st.builds(lambda photo: {"photo": photo}, st.lists(photo_size, max_size=4)),
        st.builds(lambda info, mime, name: {"document": {**info, **({"mime_type": mime} if mime else {}),
                                                         **({"file_name": name} if name else {})}},
                  anything, st.sampled_from([None, "image/jpeg", "image/png", "image/svg+xml", "image/x-icon",
                                             "application/pdf", "application/octet-stream", "text/plain", "image/"]),
                  st.sampled_from([None, "a.jpg", "b.PNG", "c.heic", "d.txt", "e", ".jpg", "f.jpg.exe", "ü.webp"])),
        st.builds(lambda info, animated, video, kind: {"sticker": {**info, "type": kind, "width": 512, "height": 512,
                                                                   "is_animated": animated, "is_video": video}},
                  anything, st.booleans(), st.booleans(), st.sampled_from(["regular", "mask", "custom_emoji"])),
        st.builds(lambda info: {"video_note": {**info, "length": 240, "duration": 3}}, anything),
        st.builds(lambda info: {"voice": {**info, "duration": 2}}, anything),
        st.builds(lambda info: {"audio": {**info, "duration": 200}}, anything),
        st.builds(lambda info: {"video": {**info, "width": 640, "height": 480, "duration": 5}}, anything),
        st.builds(lambda info: {"animation": {**info, "width": 64, "height": 64, "duration": 1},
                                "document": {**info, "mime_type": "video/mp4"}}, anything),
        st.builds(lambda value: {"dice": {"emoji": "🎲", "value": value}}, st.integers(-1, 64)),
        st.just({"poll": {"id": "1", "question": "?", "options": [{"persistent_id": "a", "text": "a",
                                                                   "voter_count": 0}],
                          "total_voter_count": 0, "is_closed": False, "is_anonymous": True, "type": "regular",
                          "allows_multiple_answers": False, "allows_revoting": False, "members_only": False}}),
        st.builds(lambda lat, lon: {"location": {"latitude": lat, "longitude": lon}},
                  st.floats(-90, 90), st.floats(-180, 180)),
        st.just({"venue": {"location": {"latitude": 1.0, "longitude": 2.0}, "title": "T", "address": "A"}}),
        st.just({"contact": {"phone_number": "+10000000000", "first_name": "Bob"}}),
        st.builds(lambda story_id: {"story": {"chat": {"id": -1001, "type": "channel", "title": "c"}, "id": story_id}},
                  st.integers(0, 2**31)),
        st.just({"new_chat_members": [{"id": BOT_ID, "is_bot": True, "first_name": "Vision Test"}]}),
        st.just({"left_chat_member": make_user(1)}),
        st.just({"group_chat_created": True}),
        st.just({"delete_chat_photo": True}),
        st.builds(lambda title: {"new_chat_title": title}, st.text(max_size=10)),
    )


def origin_strategy() -> st.SearchStrategy[Json]:
    date = int(time.time()) - 3600
    return st.one_of(
        st.builds(lambda user: {"type": "user", "date": date, "sender_user": user}, user_strategy()),
        st.builds(lambda name: {"type": "hidden_user", "date": date, "sender_user_name": name}, st.text(max_size=10)),
        st.just({"type": "chat", "date": date, "sender_chat": {"id": -100777, "type": "supergroup", "title": "G"}}),
        st.just({"type": "channel", "date": date, "chat": {"id": -100888, "type": "channel", "title": "C"},
                 "message_id": 5}),
    )


@st.composite
def messages(draw: st.DrawFn, files: list[str], sizes: list[Json]) -> Json:
    """A message as Telegram may deliver it; only what aiogram's models accept (else polling itself fails)."""
    user = draw(user_strategy())
    chat = draw(chat_strategy(user))
    message = message_update(chat, user, message_id=fresh_id())["message"]
    _add_content(draw, message, draw(media(files, sizes)), draw(TEXT))
    _set_sender(draw, message, chat)
    if draw(st.integers(0, 4)) == 0:
        message["forward_origin"] = draw(origin_strategy())
    if draw(st.integers(0, 3)) == 0:
        bot = {"id": BOT_ID, "is_bot": True, "first_name": "Vision Test"}
        reply = message_update(chat, draw(st.sampled_from([user, bot])),
                               message_id=draw(st.sampled_from([fresh_id(), message["message_id"] - 1, 1])))["message"]
        reply.update(draw(st.sampled_from([{"text": "earlier"}, {"photo": sizes}, {}])))
        message["reply_to_message"] = reply
    if chat.get("is_forum") and draw(st.booleans()):
        message["message_thread_id"] = draw(st.integers(1, 5))
        message["is_topic_message"] = draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:
        message["media_group_id"] = draw(st.sampled_from(["album-1", "album-2", str(fresh_id())]))
    if draw(st.integers(0, 9)) == 0:
        message["date"] = draw(st.sampled_from([0, 1, 2**31 - 1]))
    return message


def _add_content(draw: st.DrawFn, message: Json, content: Json, text: str) -> None:
    """The media, and the text as caption or text (with or without entities)."""
    message.update(content)
    if content and draw(st.booleans()):
        message["caption"] = text
        if (found := draw(entities(text))) is not None:
            message["caption_entities"] = found
    elif not content or draw(st.integers(0, 4)) == 0:
        message["text"] = text
        found = draw(entities(text))
        if found is None and text.startswith("/"):
            found = [{"type": "bot_command", "offset": 0, "length": min(utf16_len(text.partition(" ")[0]), 64) or 1}]
        if found is not None:
            message["entities"] = found


def _set_sender(draw: st.DrawFn, message: Json, chat: Json) -> None:
    """A user (mostly), nobody, a chat speaking for itself, another bot, or this bot itself."""
    sender = draw(st.sampled_from(["user", "user", "user", "none", "sender_chat", "other_bot", "this_bot"]))
    if sender == "user":
        return
    del message["from"]
    if sender == "sender_chat":
        message["sender_chat"] = {"id": chat["id"], "type": chat["type"], "title": chat.get("title", "T")} \
            if chat["type"] != "private" else {"id": -100999, "type": "channel", "title": "C"}
    elif sender == "other_bot":
        message["from"] = {"id": fresh_id(), "is_bot": True, "first_name": "Other bot"}
    elif sender == "this_bot":
        message["from"] = {"id": BOT_ID, "is_bot": True, "first_name": "Vision Test", "username": BOT_NAME}


@st.composite
def callback_queries(draw: st.DrawFn) -> Json:
    user = draw(user_strategy())
    data = draw(st.one_of(
        st.text(max_size=64).filter(lambda data: len(data.encode()) <= 64),
        st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(["stop:", "model:"]),
                  st.one_of(st.integers(-5, 10**20).map(str), st.text(max_size=20))),
    ))
    query: Json = {"id": str(fresh_id()), "from": user, "chat_instance": str(draw(st.integers(0, 2**63)))}
    if draw(st.integers(0, 5)):
        query["data"] = data
    where = draw(st.sampled_from(["message", "inaccessible", "none"]))
    chat = private_chat(user) if draw(st.booleans()) else group_chat(-1_000_000_000_000 - fresh_id())
    if where == "message":
        message = message_update(chat, {"id": BOT_ID, "is_bot": True, "first_name": "Vision Test"},
                                 message_id=fresh_id(), text="Model: glm-4v-flash")["message"]
        if draw(st.booleans()):
            message["reply_markup"] = {"inline_keyboard": [[{"text": draw(st.sampled_from(["glm-4v-plus", "x", "⏹"])),
                                                             "callback_data": data or "x"}]]}
        query["message"] = message
    elif where == "inaccessible":
        query["message"] = {"chat": chat, "message_id": fresh_id(), "date": 0}
    return {"callback_query": query}


def updates(files: list[str], sizes: list[Json]) -> st.SearchStrategy[Json]:
    return st.one_of(
        messages(files, sizes).map(lambda message: {"message": message}),
        messages(files, sizes).map(lambda message: {"message": message}),
        messages(files, sizes).map(lambda message: {"message": message}),
        callback_queries(),
    )


def other_updates(files: list[str], sizes: list[Json]) -> st.SearchStrategy[Json]:
    """The update types polling never asks for: edited messages, channel posts, business messages, reactions."""
    def as_kind(kind: str) -> Callable[[Json], Json]:
        return lambda message: {kind: {**message, "edit_date": int(time.time())} if "edited" in kind else message}
    kinds = ["edited_message", "channel_post", "edited_channel_post", "business_message", "message"]
    return st.one_of(
        *(messages(files, sizes).map(as_kind(kind)) for kind in kinds),
        callback_queries(),
        st.builds(lambda user: {"message_reaction": {"chat": private_chat(user), "message_id": 1, "user": user,
                                                     "date": 0, "old_reaction": [],
                                                     "new_reaction": [{"type": "emoji", "emoji": "👍"}]}},
                  user_strategy()),
    )


def valid(update: Json) -> Json:
    """The generator's own check: anything aiogram cannot parse would stop polling, not test the bot."""
    Update.model_validate({"update_id": 1, **update})
    return update


# --- fixtures and helpers -----------------------------------------------------------------------------------------


@pytest.fixture
def bot_database_url(tmp_path: Any) -> str:
    """Storage is not what is fuzzed here: SQLite only (the storage tests cover both backends)."""
    return f"sqlite:///{tmp_path / 'data' / 'bot.sqlite3'}"


@pytest.fixture
def files(telegram: FakeTelegram) -> tuple[list[str], list[Json]]:
    """Files the fake Telegram holds: a photo's sizes, a PNG, a truncated JPEG, text, nothing at all."""
    sizes = telegram.photo_sizes(make_photo(320, 240))
    stored = [telegram.add_file(content)["file_id"] for content in (make_photo(200, 100)[:300], b"hello", b"")]
    return [size["file_id"] for size in sizes] + stored, sizes


@pytest.fixture
async def polling_bot(start_bot: Any, caplog: pytest.LogCaptureFixture) -> RunningBot:
    return await start_quietly(start_bot, caplog)


async def handled(bot: RunningBot, update_ids: list[int], timeout: float = 20.0) -> None:  # noqa: ASYNC109
    """Every update recorded and finished (answered or failed) in the bot's inbox."""
    inbox = bot.app.dispatcher["inbox"]  # type: ignore[index]
    deadline = time.monotonic() + timeout
    for update_id in update_ids:
        while (entry := await inbox.entry(update_id)) is None or entry.state in UNFINISHED_STATES:
            assert time.monotonic() < deadline, f"update {update_id} not handled: {entry}"
            await asyncio.sleep(0.02)


def errors_since(caplog: pytest.LogCaptureFixture, start: int) -> list[str]:
    return [f"{record.name}: {record.getMessage()}" for record in caplog.records[start:]
            if record.levelno >= logging.ERROR]


CHECK_PHOTO = make_photo(64, 48)


def photo_question(telegram: FakeTelegram) -> Json:
    """An ordinary photo question from a new user: the bot must still answer it after whatever came before."""
    user = make_user(fresh_id(), "Check", "en")
    return message_update(private_chat(user), user, photo=telegram.photo_sizes(CHECK_PHOTO), caption="What is this?")


def answers_to(telegram: FakeTelegram, update: Json) -> list[str]:
    return [message["text"] for message in telegram.chat_messages(update["message"]["chat"]["id"])]


# --- polling: the update types the bot asks for -------------------------------------------------------------------


@settings(derandomize=True, max_examples=8, deadline=None, suppress_health_check=ONE_BOT)
@given(data=st.data())
async def test_random_updates_leave_no_error_and_the_bot_answering(
        telegram: FakeTelegram, vision: FakeVision, polling_bot: RunningBot, caplog: pytest.LogCaptureFixture,
        files: tuple[list[str], list[Json]], data: st.DataObject) -> None:
    logged = len(caplog.records)
    batch = data.draw(st.lists(updates(*files).map(valid), min_size=10, max_size=25), label="batch")

    pushed = [telegram.push_update(update) for update in batch]
    check = photo_question(telegram)
    pushed.append(telegram.push_update(check))  # after the batch, answered while the batch is (the chats differ)
    await handled(polling_bot, pushed)

    assert errors_since(caplog, logged) == []
    assert answers_to(telegram, check) == [DEFAULT_ANSWER]


# --- webhook: every update type, as a webhook whose allowed_updates were set otherwise before would get them ------



@pytest.fixture
async def webhook_bot(start_bot: Any, caplog: pytest.LogCaptureFixture) -> tuple[RunningBot, str]:
    port = free_port()
    bot = await start_quietly(start_bot, caplog, bot_mode="webhook", webhook_url="https://bot.example.com/tg/hook",
                              webhook_secret=WEBHOOK_SECRET, webhook_host="127.0.0.1", webhook_port=port)
    return bot, f"http://127.0.0.1:{port}/tg/hook"


@settings(derandomize=True, max_examples=4, deadline=None, suppress_health_check=ONE_BOT)
@given(data=st.data())
async def test_update_types_polling_never_asks_for_are_harmless_by_webhook(
        telegram: FakeTelegram, vision: FakeVision, webhook_bot: tuple[RunningBot, str], http: httpx.AsyncClient,
        caplog: pytest.LogCaptureFixture, files: tuple[list[str], list[Json]], data: st.DataObject) -> None:
    bot, url = webhook_bot
    logged = len(caplog.records)
    batch = data.draw(st.lists(other_updates(*files).map(valid), min_size=8, max_size=20), label="batch")
    check = photo_question(telegram)

    update_ids = []
    for update in [*batch, check]:
        telegram.know(update)
        update_ids.append(fresh_id())
        response = await http.post(url, json={"update_id": update_ids[-1], **update},
                                   headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET})
        assert response.status_code == 200, response.text
    await handled(bot, update_ids)

    assert errors_since(caplog, logged) == []
    assert answers_to(telegram, check) == [DEFAULT_ANSWER]


# --- explicit cases (also the findings of earlier runs) -----------------------------------------------------------


def _message(text: str, entities: list[Json]) -> Message:
    user = make_user(7001)
    return Message.model_validate({**message_update(group_chat(), user, text=text, entities=entities)["message"]})


ME = User(id=BOT_ID, is_bot=True, first_name="Vision Test", username=BOT_NAME)


@pytest.mark.parametrize(("offset", "length"), [(1, len(BOT_NAME) + 1), (0, 1), (1, 1), (1, 100), (2, 0)])
def test_a_mention_entity_that_splits_an_emoji_is_no_mention_and_no_crash(offset: int, length: int) -> None:
    """Found by the fuzzer: `MessageEntity.extract_from` raised UnicodeDecodeError (an unhandled error per update)."""
    message = _message(f"😀@{BOT_NAME} what is this?", [{"type": "mention", "offset": offset, "length": length}])

    assert not mentions(message, ME)
    assert without_mentions(message, ME) == f"😀@{BOT_NAME} what is this?"


@pytest.mark.parametrize(("offset", "length", "left"), [(1, 2, "b"), (0, 1, "ab"), (3, 9, "😀a"), (1, 0, "😀ab")])
def test_a_text_mention_of_the_bot_that_splits_an_emoji_is_cut_without_a_crash(offset: int, length: int,
                                                                               left: str) -> None:
    """Cutting the mention out of the question left half an emoji, which failed to decode; now the half is dropped."""
    bot = {"id": BOT_ID, "is_bot": True, "first_name": "Vision Test"}
    message = _message("😀ab", [{"type": "text_mention", "offset": offset, "length": length, "user": bot}])

    assert mentions(message, ME)
    assert without_mentions(message, ME) == left


def test_a_mention_past_the_end_of_the_text_is_no_mention() -> None:
    message = _message("hi", [{"type": "mention", "offset": 5, "length": 17}])
    assert not mentions(message, ME)
    assert without_mentions(message, ME) == "hi"


async def test_a_forged_stop_button_with_a_non_ascii_digit_is_no_crash() -> None:
    """Callback data comes from the client: anyone can send "stop:²". The check happens before any Telegram call,
    so no bot is needed to show it."""
    user = make_user(7002)
    query = CallbackQuery.model_validate({"id": "1", "from": user, "chat_instance": "1", "data": "stop:²",
                                          "message": {"chat": private_chat(user), "message_id": 1, "date": 0}})

    class NoStreams:
        async def stop(self, *_: Any, **__: Any) -> Any:
            raise AssertionError("not reached for a forged id")

    with contextlib.suppress(RuntimeError):  # answering the query needs a bot: not what is shown here
        await on_stop_button(query, NoStreams())  # type: ignore[arg-type]


async def test_an_update_aiogram_cannot_parse_does_not_stop_polling(
        telegram: FakeTelegram, vision: FakeVision, polling_bot: RunningBot) -> None:
    """A poll as a Bot API server sends it that lacks `persistent_id`, `allows_revoting` and `members_only` (an older
    self-hosted telegram-bot-api, TELEGRAM_API_URL): aiogram's models require them, so the whole getUpdates fails."""
    user = make_user(fresh_id())
    poison = message_update(private_chat(user), user)
    poison["message"]["poll"] = {"id": "1", "question": "?", "options": [{"text": "a", "voter_count": 0}],
                                 "total_voter_count": 0, "is_closed": False, "is_anonymous": True, "type": "regular",
                                 "allows_multiple_answers": False}
    telegram.push_update(poison)
    check = photo_question(telegram)
    telegram.push_update(check)

    deadline = time.monotonic() + 10
    while not answers_to(telegram, check):
        task = polling_bot._task
        if task is not None and task.done():
            polling_bot._task = None  # it ended by itself: nothing left for the fixture to stop
            raise AssertionError(f"polling stopped: {task.exception()!r}")
        assert time.monotonic() < deadline, "no answer within 10 s"
        await asyncio.sleep(0.02)
    assert answers_to(telegram, check) == [DEFAULT_ANSWER]
