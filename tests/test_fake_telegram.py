"""Self-tests of the fake Bot API, driven by the real aiogram Bot so the fake matches what aiogram sends."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.types import (
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    MessageEntity,
    ReplyParameters,
)
from PIL import Image

from tests.fakes.telegram_server import (
    ApiError,
    FakeTelegram,
    group_chat,
    make_user,
    message_update,
    parse_formatted,
    private_chat,
)

USER = make_user()
CHAT = private_chat(USER)
GROUP = group_chat()


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram()
    await server.start()
    yield server
    await server.stop()


def _bot(fake: FakeTelegram, token: str | None = None) -> Bot:
    return Bot(token or fake.token, session=AiohttpSession(api=TelegramAPIServer.from_base(fake.base_url)))


@pytest_asyncio.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    client = _bot(fake)
    yield client
    await client.session.close()


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "teal").save(buffer, format="PNG")
    return buffer.getvalue()


def test_message_update_builds_realistic_updates() -> None:
    update = message_update(CHAT, USER, text="/start@vision_test_bot hi")
    message = update["message"]
    assert message["chat"] == {"id": 1001, "type": "private", "first_name": "Alice"}
    assert message["from"]["is_bot"] is False
    assert message["entities"] == [{"type": "bot_command", "offset": 0, "length": 22}]
    assert message_update(CHAT, USER, text="plain")["message"].get("entities") is None
    forum = message_update(group_chat(is_forum=True), USER, text="hi", message_thread_id=7)["message"]
    assert forum["is_topic_message"] is True
    assert forum["chat"]["type"] == "supergroup"


@pytest.mark.parametrize(
    ("mode", "source", "text", "entities"),
    [
        (
            "MarkdownV2",
            "*Hi* 👋 _x_ [site](https://e.com/a\\)) 1\\.5",
            "Hi 👋 x site 1.5",
            [
                {"type": "bold", "offset": 0, "length": 2},
                {"type": "italic", "offset": 6, "length": 1},
                {"type": "text_link", "offset": 8, "length": 4, "url": "https://e.com/a)"},
            ],
        ),
        (
            "MarkdownV2",
            ">quoted\n>lines\n```py\nx = 1\n```",
            "quoted\nlines\nx = 1\n",
            [
                {"type": "blockquote", "offset": 0, "length": 12},
                {"type": "pre", "offset": 13, "length": 6, "language": "py"},
            ],
        ),
        (
            "HTML",
            '<b>a &lt; b</b> <a href="https://e.com/?q=1&amp;r=2">link</a>',
            "a < b link",
            [
                {"type": "bold", "offset": 0, "length": 5},
                {"type": "text_link", "offset": 6, "length": 4, "url": "https://e.com/?q=1&r=2"},
            ],
        ),
        (
            "Markdown",
            "*bold* `code`",
            "bold code",
            [
                {"type": "bold", "offset": 0, "length": 4},
                {"type": "code", "offset": 5, "length": 4},
            ],
        ),
        (None, "*as is*", "*as is*", []),
    ],
)
def test_parse_modes(mode: str | None, source: str, text: str, entities: list[dict]) -> None:
    assert parse_formatted(source, mode) == (text, entities)


@pytest.mark.parametrize(
    ("mode", "source", "error"),
    [
        ("MarkdownV2", "1+1", "Character '+' is reserved"),
        ("MarkdownV2", "*open", "Can't find end of Bold entity at byte offset 0"),
        ("MarkdownV2", ">", None),
        ("HTML", "<b>x</i>", 'Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
        ("HTML", "line<br>break", 'Unsupported start tag "br" at byte offset 4'),
        ("Markdown", "snake_case", "Can't find end of the entity starting at byte offset 5"),
    ],
)
def test_parse_mode_errors(mode: str, source: str, error: str | None) -> None:
    if error is None:
        assert parse_formatted(source, mode) == ("", [])
        return
    with pytest.raises(ApiError) as caught:
        parse_formatted(source, mode)
    assert caught.value.status == 400
    assert caught.value.description.startswith("Bad Request: can't parse entities: ")
    assert error in caught.value.description


@pytest.mark.asyncio
async def test_wrong_token_is_unauthorized(fake: FakeTelegram) -> None:
    intruder = _bot(fake, token="999:wrong-token")
    try:
        with pytest.raises(TelegramUnauthorizedError):
            await intruder.get_me()
    finally:
        await intruder.session.close()
    assert [(c.method, c.status) for c in fake.calls] == [("getMe", 401)]
    assert fake.calls[0].response == {"ok": False, "error_code": 401, "description": "Unauthorized"}


@pytest.mark.asyncio
async def test_raw_http_shapes(fake: FakeTelegram) -> None:
    api = f"{fake.base_url}/bot{fake.token}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{api}/GETME") as response:
            assert response.status == 200
            assert (await response.json())["result"]["first_name"] == "Vision Test"
        async with http.post(f"{api}/noSuchMethod") as response:
            assert response.status == 404
            assert await response.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
        async with http.post(f"{api}/sendMessage", json={"chat_id": 5, "text": "json"}) as response:
            assert (await response.json())["result"]["chat"] == {
                "id": 5,
                "type": "private",
                "first_name": "User 5",
            }
        async with http.post(f"{api}/sendMessage", data={"chat_id": "-100", "text": "form"}) as response:
            assert (await response.json())["result"]["chat"]["type"] == "supergroup"
        async with http.get(f"{api}/sendMessage?chat_id=5&text=") as response:
            assert await response.json() == {
                "ok": False,
                "error_code": 400,
                "description": "Bad Request: message text is empty",
            }
        async with http.get(f"{fake.base_url}/file/bot{fake.token}/photos/file_1.jpg") as response:
            assert response.status == 404
    assert fake.calls_to("sendmessage", chat_id=-100)[0].params == {"chat_id": -100, "text": "form"}


@pytest.mark.asyncio
async def test_get_me_and_send_message_with_entities(fake: FakeTelegram, bot: Bot) -> None:
    me = await bot.get_me()
    assert (me.id, me.username, me.can_read_all_group_messages) == (123456, "vision_test_bot", False)

    fake.push_update(message_update(CHAT, USER, text="what is this?", message_id=41))
    sent = await bot.send_message(
        CHAT["id"],
        "👋 Hello",
        entities=[MessageEntity(type="bold", offset=3, length=5)],
        reply_parameters=ReplyParameters(message_id=41),
        reply_markup=InlineKeyboardMarkup(
            inline_keyboard=[[InlineKeyboardButton(text="More", callback_data="more")]]
        ),
    )
    assert sent.message_id >= 10_000
    assert sent.chat.first_name == "Alice"
    assert sent.from_user is not None and sent.from_user.is_bot
    assert sent.reply_to_message is not None and sent.reply_to_message.text == "what is this?"
    assert sent.entities is not None and sent.entities[0].extract_from(sent.text or "") == "Hello"

    call = fake.calls_to("sendMessage", chat_id=CHAT["id"])[0]
    assert call.params["entities"] == [{"type": "bold", "offset": 3, "length": 5}]
    assert call.params["reply_parameters"] == {"message_id": 41}
    assert [m["text"] for m in fake.chat_messages(CHAT["id"])] == ["👋 Hello"]

    html = await bot.send_message(CHAT["id"], "<b>bold</b> &amp; plain", parse_mode="HTML")
    assert html.text == "bold & plain"
    assert html.entities is not None and html.entities[0].type == "bold"


@pytest.mark.asyncio
async def test_text_validation_matches_telegram(fake: FakeTelegram, bot: Bot) -> None:
    await bot.send_message(CHAT["id"], "😀" * 2048)  # 4096 UTF-16 code units: the maximum
    bad_requests = [
        ({"text": "😀" * 2049}, "message is too long"),
        ({"text": "  \n "}, "message text is empty"),
        (
            {"text": "short", "entities": [MessageEntity(type="bold", offset=2, length=9)]},
            "can't parse entities",
        ),
        ({"text": "Done.", "parse_mode": "MarkdownV2"}, "Character '.' is reserved"),
        ({"text": "<b>open", "parse_mode": "HTML"}, "can't parse entities"),
        (
            {"text": "hi", "reply_parameters": ReplyParameters(message_id=777)},
            "message to be replied not found",
        ),
    ]
    for kwargs, expected in bad_requests:
        with pytest.raises(TelegramBadRequest, match=expected):
            await bot.send_message(CHAT["id"], **kwargs)
    lenient = ReplyParameters(message_id=777, allow_sending_without_reply=True)
    assert (await bot.send_message(CHAT["id"], "hi", reply_parameters=lenient)).reply_to_message is None
    assert (await bot.send_message(CHAT["id"], "Done\\.", parse_mode="MarkdownV2")).text == "Done."
    assert [c.status for c in fake.calls_to("sendMessage")] == [200, 400, 400, 400, 400, 400, 400, 200, 200]


@pytest.mark.asyncio
async def test_edit_and_delete(fake: FakeTelegram, bot: Bot) -> None:
    sent = await bot.send_message(CHAT["id"], "Thinking…")
    edited = await bot.edit_message_text("Answer", chat_id=CHAT["id"], message_id=sent.message_id)
    assert edited.text == "Answer"
    assert edited.edit_date is not None
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text("Answer", chat_id=CHAT["id"], message_id=sent.message_id)
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("x", chat_id=CHAT["id"], message_id=1)
    assert [m["text"] for m in fake.chat_messages(CHAT["id"])] == ["Answer"]

    assert await bot.delete_message(CHAT["id"], sent.message_id)
    assert fake.chat_messages(CHAT["id"]) == []
    with pytest.raises(TelegramBadRequest, match="message to delete not found"):
        await bot.delete_message(CHAT["id"], sent.message_id)


@pytest.mark.asyncio
async def test_drafts_actions_and_commands(fake: FakeTelegram, bot: Bot) -> None:
    assert await bot.send_message_draft(CHAT["id"], draft_id=1, text="")  # the "Thinking…" placeholder
    assert await bot.send_message_draft(CHAT["id"], draft_id=1, text="Partial answer")
    assert fake.draft(CHAT["id"]) == {"draft_id": 1, "text": "Partial answer"}
    await bot.send_message(CHAT["id"], "Full answer")
    assert fake.draft(CHAT["id"]) is None
    with pytest.raises(TelegramBadRequest, match="TEXTDRAFT_PEER_INVALID"):
        await bot.send_message_draft(GROUP["id"], draft_id=1, text="x")
    with pytest.raises(TelegramBadRequest, match="DRAFT_ID_INVALID"):
        await bot.send_message_draft(CHAT["id"], draft_id=0, text="x")
    assert [c.params.get("text") for c in fake.calls_to("sendMessageDraft")] == [
        None,
        "Partial answer",
        "x",
        "x",
    ]

    assert await bot.send_chat_action(CHAT["id"], "typing")
    with pytest.raises(TelegramBadRequest, match="wrong parameter action"):
        await bot.send_chat_action(CHAT["id"], "thinking")

    commands = [BotCommand(command="start", description="Start the bot")]
    assert await bot.set_my_commands(commands)
    assert [(c.command, c.description) for c in await bot.get_my_commands()] == [("start", "Start the bot")]
    with pytest.raises(TelegramBadRequest, match="BOT_COMMAND_INVALID"):
        await bot.set_my_commands([BotCommand(command="Start", description="Bad case")])
    assert fake.calls_to("setMyCommands")[0].params["commands"] == [
        {"command": "start", "description": "Start the bot"}
    ]


@pytest.mark.asyncio
async def test_fail_next_injects_errors(fake: FakeTelegram, bot: Bot) -> None:
    fake.fail_next("sendMessage", retry_after=7, chat_id=CHAT["id"])
    await bot.send_message(GROUP["id"], "other chats are unaffected")
    with pytest.raises(TelegramRetryAfter) as caught:
        await bot.send_message(CHAT["id"], "hi")
    assert caught.value.retry_after == 7
    assert fake.calls[-1].response == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 7",
        "parameters": {"retry_after": 7},
    }
    await bot.send_message(CHAT["id"], "hi")
    fake.fail_next("editMessageText", status=400, description="Bad Request: message can't be edited", count=2)
    for _ in range(2):
        with pytest.raises(TelegramBadRequest, match="can't be edited"):
            await bot.edit_message_text("x", chat_id=CHAT["id"], message_id=1)
    assert fake.rate_limited_responses == 0


@pytest.mark.asyncio
async def test_files_and_photo_sizes(fake: FakeTelegram, bot: Bot) -> None:
    sizes = fake.photo_sizes(_png(1000, 500))
    assert [(s["width"], s["height"]) for s in sizes] == [(90, 45), (320, 160), (800, 400), (1000, 500)]
    largest = await bot.get_file(sizes[-1]["file_id"])
    assert largest.file_path is not None and largest.file_path.startswith("photos/")
    downloaded = await bot.download(sizes[-1]["file_id"])
    assert downloaded is not None
    with Image.open(downloaded) as image:
        assert (image.format, image.size) == ("JPEG", (1000, 500))

    document = fake.add_file(b"%PDF-1.4 tiny")
    assert (await bot.download(document["file_id"])).getvalue() == b"%PDF-1.4 tiny"
    huge = fake.add_file(b"x", file_size=20 * 1024 * 1024 + 1)
    with pytest.raises(TelegramBadRequest, match="file is too big"):
        await bot.get_file(huge["file_id"])
    with pytest.raises(TelegramBadRequest, match="invalid file_id"):
        await bot.get_file("nope")


@pytest.mark.asyncio
async def test_long_polling(fake: FakeTelegram, bot: Bot) -> None:
    started = time.monotonic()
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await asyncio.sleep(0.05)
    update_id = fake.push_update(message_update(CHAT, USER, text="hello"))
    updates = await poll
    assert time.monotonic() - started < 1
    assert [u.update_id for u in updates] == [update_id]
    assert updates[0].message is not None and updates[0].message.text == "hello"

    assert [u.update_id for u in await bot.get_updates()] == [update_id]  # not confirmed yet
    assert await bot.get_updates(offset=update_id + 1) == []
    assert fake.calls_to("getUpdates")[-1].params == {"offset": update_id + 1}

    first = asyncio.create_task(bot.get_updates(timeout=5))
    await asyncio.sleep(0.05)
    assert await bot.get_updates(timeout=0) == []
    with pytest.raises(TelegramConflictError, match="terminated by other getUpdates request"):
        await first

    assert await bot.set_webhook("https://example.com/hook")
    assert fake.webhook_url == "https://example.com/hook"
    with pytest.raises(TelegramConflictError, match="webhook is active"):
        await bot.get_updates()
    fake.push_update(message_update(CHAT, USER, text="queued"))
    assert (await bot.get_webhook_info()).pending_update_count == 1
    assert await bot.delete_webhook(drop_pending_updates=True)
    assert fake.webhook_url is None

    pending = asyncio.create_task(bot.get_updates(timeout=30))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await fake.stop()
    assert await pending == []
    assert time.monotonic() - started < 1


@pytest.mark.asyncio
async def test_rate_limits_per_chat_and_group(fake: FakeTelegram, bot: Bot) -> None:
    fake.enforce_rate_limits = True
    for n in range(3):  # a private chat tolerates a burst of 3
        await bot.send_message(CHAT["id"], f"burst {n}")
    with pytest.raises(TelegramRetryAfter) as private:
        await bot.send_message(CHAT["id"], "one too many")
    assert private.value.retry_after == 1
    with pytest.raises(TelegramRetryAfter):  # typing counts as strictly as messages here
        await bot.send_chat_action(CHAT["id"], "typing")

    for n in range(20):
        await bot.send_message(GROUP["id"], f"group {n}")
    with pytest.raises(TelegramRetryAfter) as group:
        await bot.edit_message_text("edits count too", chat_id=GROUP["id"], message_id=10_003)
    assert 59 <= group.value.retry_after <= 60
    assert fake.rate_limited_responses == 3


@pytest.mark.asyncio
async def test_rate_limit_for_the_whole_bot(fake: FakeTelegram) -> None:
    fake.enforce_rate_limits = True
    url = f"{fake.base_url}/bot{fake.token}/sendMessage"
    async with aiohttp.ClientSession() as http:
        for chat_id in range(1, 31):  # one message to each of 30 chats: every chat is within its own limit
            async with http.post(url, data={"chat_id": str(chat_id), "text": "hi"}) as response:
                assert response.status == 200
        async with http.post(url, data={"chat_id": "31", "text": "hi"}) as response:
            assert response.status == 429
            assert await response.json() == {
                "ok": False,
                "error_code": 429,
                "description": "Too Many Requests: retry after 1",
                "parameters": {"retry_after": 1},
            }
    assert fake.rate_limited_responses == 1


@pytest.mark.asyncio
async def test_chat_members_and_administrators(fake: FakeTelegram, bot: Bot) -> None:
    owner, admin, member = make_user(1, "Olga"), make_user(2, "Ada"), make_user(3, "Max")
    for user in (owner, admin, member):
        fake.push_update(message_update(GROUP, user, text="hi"))
    fake.set_chat_admins(GROUP["id"], [admin["id"]], creator_id=owner["id"])

    assert (await bot.get_chat_member(GROUP["id"], owner["id"])).status == "creator"
    promoted = await bot.get_chat_member(GROUP["id"], admin["id"])
    assert (promoted.status, promoted.user.first_name) == ("administrator", "Ada")
    assert (await bot.get_chat_member(GROUP["id"], member["id"])).status == "member"
    assert [m.user.id for m in await bot.get_chat_administrators(GROUP["id"])] == [owner["id"], admin["id"]]
    assert (await bot.get_chat_member(CHAT["id"], USER["id"])).status == "member"
    with pytest.raises(TelegramBadRequest, match="no administrators in the private chat"):
        await bot.get_chat_administrators(CHAT["id"])
    with pytest.raises(TelegramBadRequest, match="member not found"):
        await bot.get_chat_member(CHAT["id"], member["id"])
