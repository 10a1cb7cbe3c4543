"""Nothing lost, nothing doubled: the bot as a real process, killed with -9 mid-answer and started again.

The inbox is checked from outside (the SQLite file) only to time the kill; every assertion is about what the user
saw in the fake Telegram and what the fake provider was asked.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import API_KEY, make_photo
from tests.fakes.telegram_server import FakeTelegram, make_user, message_update, private_chat
from tests.fakes.vision_server import FakeVision, stream_reply
from tests.test_process import run_bot_process

USER = make_user(7001, "Alice", "en")


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeTelegram, FakeVision]]:
    telegram, vision = FakeTelegram(), FakeVision(api_key=API_KEY)
    await telegram.start()
    await vision.start()
    yield telegram, vision
    await telegram.stop()
    await vision.stop()


class BotProcess:
    """`python -m bot` started and killed as an operator (or the OOM killer) would."""

    def __init__(self, telegram: FakeTelegram, vision: FakeVision, tmp_path: Path, **env: str) -> None:
        self.env = {"BOT_TOKEN": telegram.token, "TELEGRAM_API_URL": telegram.base_url,
                    "VISION_BASE_URL": vision.base_url, "VISION_API_KEY": API_KEY, "STREAM_MODE": "edit",
                    "DATABASE_URL": f"sqlite:///{tmp_path / 'bot.sqlite3'}", "SHUTDOWN_GRACE": "1", **env}
        self.cwd = tmp_path
        self.database = tmp_path / "bot.sqlite3"
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.log = tmp_path / "bot.log"

    async def start(self) -> None:
        self.starts += 1
        self.log = self.cwd / f"bot-{self.starts}.log"
        with self.log.open("wb") as log:  # a file, not a pipe nobody reads: a full pipe would block the bot
            self.process = await run_bot_process(self.env, self.cwd, stdout=log, stderr=log)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: nothing runs after this
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), timeout=30)

    def message_id(self, update_id: int) -> int | None:
        try:
            with sqlite3.connect(self.database) as db:
                row = db.execute("SELECT message_id FROM inbox WHERE update_id = ?", (update_id,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return row[0] if row else None

    def states(self) -> dict[int, str]:
        if not self.database.exists():
            return {}
        try:
            with sqlite3.connect(self.database) as db:
                return dict(db.execute("SELECT update_id, state FROM inbox"))
        except sqlite3.OperationalError:  # not migrated yet
            return {}


@pytest.fixture
async def bot_process(fakes: tuple[FakeTelegram, FakeVision], tmp_path: Path) -> AsyncIterator[BotProcess]:
    bot = BotProcess(*fakes, tmp_path)
    yield bot
    await bot.stop()


async def eventually(predicate: object, timeout: float = 20.0) -> None:  # noqa: ASYNC109 - a test helper
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def ask(telegram: FakeTelegram, caption: str = "What is it?") -> int:
    photo = telegram.photo_sizes(make_photo(320, 240))
    return telegram.push_update(message_update(private_chat(USER), USER, photo=photo, caption=caption))


async def test_kill_9_mid_stream_then_restart_gives_one_complete_answer_in_the_same_message(
        fakes: tuple[FakeTelegram, FakeVision], bot_process: BotProcess) -> None:
    telegram, vision = fakes
    vision.enqueue(stream_reply([f"word{number} " for number in range(60)], delay=0.1))
    vision.default_reply = stream_reply(["The whole ", "answer."])
    await bot_process.start()

    update_id = ask(telegram)
    await eventually(lambda: any("word" in message.get("text", "") and message.get("reply_markup")
                                 for message in telegram.chat_messages(USER["id"])))
    # The half message's id reaches the inbox a moment after Telegram returns it; the kill comes after that.
    await eventually(lambda: bot_process.message_id(update_id) is not None)
    await bot_process.kill()
    (half,) = telegram.chat_messages(USER["id"])
    assert half["text"].startswith("word0") and half.get("reply_markup")  # a Stop button nobody can use now

    await bot_process.start()
    await eventually(lambda: [m.get("text") for m in telegram.chat_messages(USER["id"])] == ["The whole answer."])
    await asyncio.sleep(1.0)  # nothing more arrives

    (message,) = telegram.chat_messages(USER["id"])
    assert message["message_id"] == half["message_id"]  # the half message became the answer
    assert "reply_markup" not in message
    assert len(vision.requests) == 2
    assert set(bot_process.states().values()) == {"answered"}


async def test_kill_9_after_the_answer_was_generated_delivers_it_without_asking_again(
        fakes: tuple[FakeTelegram, FakeVision], bot_process: BotProcess) -> None:
    telegram, vision = fakes
    vision.enqueue(stream_reply(["Generated ", "once."]))
    # The final edit meets a long flood wait: the answer is complete but not yet delivered when the bot dies.
    telegram.fail_next("editMessageText", status=429, retry_after=60, chat_id=USER["id"])
    await bot_process.start()

    update_id = ask(telegram)
    await eventually(lambda: bot_process.states().get(update_id) == "generated"
                     and any(call.status == 429 for call in telegram.calls_to("editMessageText")))
    await bot_process.kill()
    await bot_process.start()
    await eventually(lambda: bot_process.states() == {update_id: "answered"})

    (message,) = telegram.chat_messages(USER["id"])
    assert message["text"] == "Generated once."
    assert "reply_markup" not in message  # the Stop button left with the final text
    assert len(vision.requests) == 1  # no second request for an answer already paid for


async def test_the_same_update_before_and_after_a_restart_is_answered_once(
        fakes: tuple[FakeTelegram, FakeVision], bot_process: BotProcess) -> None:
    telegram, vision = fakes
    await bot_process.start()
    update_id = ask(telegram)
    await eventually(lambda: bot_process.states().get(update_id) == "answered")

    telegram.redeliver(update_id)  # a replayed offset while running
    await asyncio.sleep(1.0)
    await bot_process.stop()
    telegram.redeliver(update_id)  # and after a restart
    await bot_process.start()
    await eventually(lambda: not telegram._updates)
    await asyncio.sleep(1.0)

    assert len(telegram.chat_messages(USER["id"])) == 1
    assert len(vision.requests) == 1


async def test_a_question_interrupted_too_long_ago_gets_asked_to_ask_again(
        fakes: tuple[FakeTelegram, FakeVision], bot_process: BotProcess) -> None:
    telegram, vision = fakes
    vision.enqueue(stream_reply([f"word{number} " for number in range(60)], delay=0.1))
    bot_process.env["RESUME_MAX_AGE"] = "1"
    await bot_process.start()

    update_id = ask(telegram)
    await eventually(lambda: bot_process.message_id(update_id) is not None)
    await bot_process.kill()
    await asyncio.sleep(1.5)
    await bot_process.start()
    await eventually(lambda: "ask again" in telegram.chat_messages(USER["id"])[0].get("text", ""))
    await asyncio.sleep(0.5)

    (message,) = telegram.chat_messages(USER["id"])
    assert message["text"] == "I was restarted before I could answer. Please ask again."
    assert "reply_markup" not in message
    assert len(vision.requests) == 1
    assert set(bot_process.states().values()) == {"failed"}


async def test_a_second_poller_on_the_same_token_stops_with_one_clear_line(
        fakes: tuple[FakeTelegram, FakeVision], bot_process: BotProcess, tmp_path: Path) -> None:
    telegram, vision = fakes
    await bot_process.start()
    await eventually(lambda: len(telegram.calls_to("getUpdates")) >= 1)  # started polling
    await asyncio.sleep(4.0)  # and established
    second = BotProcess(telegram, vision, tmp_path / "second")
    (tmp_path / "second").mkdir()

    await second.start()
    assert second.process is not None
    assert await asyncio.wait_for(second.process.wait(), timeout=30) == 1
    lines = [line for line in second.log.read_text().splitlines() if line.strip()]

    assert lines[-1].startswith("another process is already polling Telegram with this BOT_TOKEN")
    assert telegram.token not in second.log.read_text()
    ask(telegram)
    await eventually(lambda: len(telegram.chat_messages(USER["id"])) == 1)  # the first one goes on answering


async def test_an_answer_cut_off_by_sigterm_is_finished_at_the_next_start(
        fakes: tuple[FakeTelegram, FakeVision], bot_process: BotProcess) -> None:
    telegram, vision = fakes
    vision.enqueue(stream_reply([f"word{number} " for number in range(60)], delay=0.1))
    vision.default_reply = stream_reply(["The whole ", "answer."])
    bot_process.env["SHUTDOWN_GRACE"] = "0.5"
    await bot_process.start()

    update_id = ask(telegram)
    await eventually(lambda: bot_process.message_id(update_id) is not None)
    await bot_process.stop()  # SIGTERM: the answer is cut off after the grace, with a note
    (cut,) = telegram.chat_messages(USER["id"])
    assert cut["text"].endswith("(answer cut off)")
    assert bot_process.states()[update_id] == "asking"

    await bot_process.start()
    await eventually(lambda: bot_process.states().get(update_id) == "answered")

    (message,) = telegram.chat_messages(USER["id"])
    assert message["message_id"] == cut["message_id"]
    assert message["text"] == "The whole answer."
    assert len(vision.requests) == 2
