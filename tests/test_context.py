"""ConversationContext over a real SQLite store, with a clock the tests move."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.models import ConversationKey, PreparedImage, PromptMessage, Turn
from bot.services.context import IMAGE_OMITTED_NOTE, ContextLimits, ConversationContext
from bot.storage.sqlite import SqliteConversationStore

KEY = ConversationKey(chat_id=42)
T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteConversationStore]:
    opened = await SqliteConversationStore.open(tmp_path / "bot.sqlite3")
    yield opened
    await opened.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_context(store: SqliteConversationStore, clock: Clock, limits: ContextLimits | None = None, *,
                 system_prompt: str | None = None) -> ConversationContext:
    return ConversationContext(store, limits or ContextLimits(), system_prompt=system_prompt, clock=clock)


def picture(image_id: str) -> PreparedImage:
    return PreparedImage(image_id=image_id, data=f"jpeg:{image_id}".encode())


def user(text: str, at: float, *image_ids: str, author: str | None = None) -> Turn:
    return Turn(role="user", text=text, created_at=at, image_ids=image_ids, author=author)


def assistant(text: str, at: float) -> Turn:
    return Turn(role="assistant", text=text, created_at=at)


def attached(messages: list[PromptMessage]) -> list[list[str]]:
    return [[image.image_id for image in message.images] for message in messages]


async def remember_exchanges(context: ConversationContext, clock: Clock, count: int,
                             images: dict[int, str] | None = None) -> None:
    """`count` question/answer pairs, one second apart; `images` maps a pair's index to its image id."""
    images = images or {}
    for index in range(count):
        image_ids = (images[index],) if index in images else ()
        for image_id in image_ids:
            await context.keep_image(picture(image_id))
        await context.record(KEY, user(f"q{index}", clock.now, *image_ids), assistant(f"a{index}", clock.now + 0.5))
        clock.now += 1


# --- history ------------------------------------------------------------------------------------------------------


async def test_history_keeps_at_most_max_turns_pairs(store: SqliteConversationStore, clock: Clock) -> None:
    context = make_context(store, clock, ContextLimits(max_turns=3))
    await remember_exchanges(context, clock, 5)

    history = await context.history(KEY)

    assert [turn.text for turn in history] == ["q2", "a2", "q3", "a3", "q4", "a4"]


async def test_history_never_starts_with_an_answer(store: SqliteConversationStore, clock: Clock) -> None:
    """An unanswered question shifts the window by one; the answer left without its question must go."""
    context = make_context(store, clock, ContextLimits(max_turns=2))
    await remember_exchanges(context, clock, 2)
    await context.record(KEY, user("unanswered", clock.now))
    clock.now += 1

    history = await context.history(KEY)

    assert [turn.text for turn in history] == ["q1", "a1", "unanswered"]
    assert history[0].role == "user"


# --- prompt -------------------------------------------------------------------------------------------------------


async def test_newest_history_images_fill_the_request_budget(store: SqliteConversationStore, clock: Clock) -> None:
    context = make_context(store, clock, ContextLimits(max_images=3, max_images_per_request=3))
    await remember_exchanges(context, clock, 4, images={0: "p0", 1: "p1", 2: "p2", 3: "p3"})
    history = await context.history(KEY)

    messages = await context.prompt(history, user("and now?", clock.now, "new"), [picture("new")])

    # One new image leaves room for two from history: the two newest.
    assert attached(messages) == [[], [], [], [], ["p2"], [], ["p3"], [], ["new"]]
    assert messages[0].text == f"{IMAGE_OMITTED_NOTE}\nq0"
    assert messages[2].text == f"{IMAGE_OMITTED_NOTE}\nq1"
    assert messages[4].text == "q2"
    assert messages[4].images == (picture("p2"),)
    assert IMAGE_OMITTED_NOTE not in messages[-1].text


async def test_max_images_limits_history_images(store: SqliteConversationStore, clock: Clock) -> None:
    context = make_context(store, clock, ContextLimits(max_images=1, max_images_per_request=5))
    await remember_exchanges(context, clock, 3, images={0: "p0", 1: "p1", 2: "p2"})
    history = await context.history(KEY)

    messages = await context.prompt(history, user("text only", clock.now), [])

    assert attached(messages) == [[], [], [], [], ["p2"], [], []]
    assert [message.text.startswith(IMAGE_OMITTED_NOTE) for message in messages] == [
        True, False, True, False, False, False, False]


async def test_no_history_images_when_new_images_use_the_budget(store: SqliteConversationStore, clock: Clock) -> None:
    context = make_context(store, clock, ContextLimits(max_images=3, max_images_per_request=1))
    await remember_exchanges(context, clock, 1, images={0: "old"})
    history = await context.history(KEY)

    messages = await context.prompt(history, user("this one", clock.now, "new"), [picture("new")])

    assert attached(messages) == [[], [], ["new"]]
    assert messages[0].text == f"{IMAGE_OMITTED_NOTE}\nq0"


async def test_new_images_are_capped_per_request(store: SqliteConversationStore, clock: Clock) -> None:
    context = make_context(store, clock, ContextLimits(max_images_per_request=2))
    new = [picture("n1"), picture("n2"), picture("n3")]

    messages = await context.prompt([], user("three photos", clock.now, "n1", "n2", "n3"), new)

    assert attached(messages) == [["n1", "n2"]]


async def test_user_turns_name_their_author(store: SqliteConversationStore, clock: Clock) -> None:
    context = make_context(store, clock)
    await context.record(KEY, user("hello", clock.now, author="Alice"), assistant("hi Alice", clock.now + 1))
    clock.now += 2
    history = await context.history(KEY)

    messages = await context.prompt(history, user("and me?", clock.now, author="李雷"), [])

    assert [(message.role, message.text) for message in messages] == [
        ("user", "Alice: hello"), ("assistant", "hi Alice"), ("user", "李雷: and me?")]


async def test_system_prompt_comes_first(store: SqliteConversationStore, clock: Clock) -> None:
    context = make_context(store, clock, system_prompt="Be brief.")
    await remember_exchanges(context, clock, 1)
    history = await context.history(KEY)

    messages = await context.prompt(history, user("q", clock.now), [])

    assert [message.role for message in messages] == ["system", "user", "assistant", "user"]
    assert messages[0].text == "Be brief."
    without = await make_context(store, clock).prompt(history, user("q", clock.now), [])
    assert [message.role for message in without] == ["user", "assistant", "user"]


async def test_unanswered_question_is_merged_with_the_next(store: SqliteConversationStore, clock: Clock) -> None:
    context = make_context(store, clock, ContextLimits(max_images=3, max_images_per_request=2))
    await context.keep_image(picture("first"))
    await context.record(KEY, user("what is this?", clock.now, "first", author="Bob"))
    clock.now += 5
    history = await context.history(KEY)

    messages = await context.prompt(history, user("and this?", clock.now, "second", author="Bob"),
                                    [picture("second")])

    assert len(messages) == 1
    assert messages[0].role == "user"
    assert messages[0].text == "Bob: what is this?\n\nBob: and this?"
    assert messages[0].images == (picture("first"), picture("second"))


async def test_same_image_in_two_turns_stays_within_request_limit(
        store: SqliteConversationStore, clock: Clock) -> None:
    context = make_context(store, clock, ContextLimits(max_images=3, max_images_per_request=1))
    await remember_exchanges(context, clock, 2, images={0: "same-photo", 1: "same-photo"})
    history = await context.history(KEY)

    messages = await context.prompt(history, user("follow-up", clock.now), [])

    assert sum(len(message.images) for message in messages) <= 1


# --- reset and idle -----------------------------------------------------------------------------------------------


async def test_reset_forgets_the_conversation(store: SqliteConversationStore, clock: Clock) -> None:
    context = make_context(store, clock)
    await remember_exchanges(context, clock, 2)
    other = ConversationKey(chat_id=KEY.chat_id, thread_id=3)
    await context.record(other, user("elsewhere", clock.now))

    await context.reset(KEY)

    assert await context.history(KEY) == []
    assert [turn.text for turn in await context.history(other)] == ["elsewhere"]


async def test_idle_conversation_starts_afresh(store: SqliteConversationStore, clock: Clock) -> None:
    context = make_context(store, clock, ContextLimits(idle_seconds=600))
    await remember_exchanges(context, clock, 2)
    clock.now += 300
    assert len(await context.history(KEY)) == 4

    clock.now += 601
    assert await context.history(KEY) == []

    await context.record(KEY, user("fresh", clock.now))
    clock.now += 1
    assert [turn.text for turn in await context.history(KEY)] == ["fresh"]
