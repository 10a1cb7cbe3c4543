"""SqliteConversationStore against a real database file."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.models import ConversationKey, PreparedImage, Turn, Usage
from bot.storage.sqlite import _ORPHAN_GRACE_SECONDS, MIGRATIONS, SqliteConversationStore

CHAT = ConversationKey(chat_id=100)
OTHER_CHAT = ConversationKey(chat_id=200)
DAY = 24 * 3600.0
T0 = 1_700_000_000.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "bot.sqlite3"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteConversationStore]:
    opened = await SqliteConversationStore.open(db_path)
    yield opened
    await opened.close()


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("PRAGMA user_version").fetchone()[0])


def set_user_version(path: Path, version: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA user_version = {version}")


def image_ids_in_db(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        return {row[0] for row in connection.execute("SELECT image_id FROM images")}


def user(text: str, at: float, *image_ids: str, author: str | None = None) -> Turn:
    return Turn(role="user", text=text, created_at=at, image_ids=image_ids, author=author)


def assistant(text: str, at: float) -> Turn:
    return Turn(role="assistant", text=text, created_at=at)


def image(image_id: str, data: bytes = b"\xff\xd8jpeg") -> PreparedImage:
    return PreparedImage(image_id=image_id, data=data)


async def texts(store: SqliteConversationStore, key: ConversationKey, *, limit: int = 50,
                idle_after: float = DAY, now: float = T0 + 100) -> list[str]:
    return [turn.text for turn in await store.recent_turns(key, limit=limit, idle_after=idle_after, now=now)]


# --- migrations ---------------------------------------------------------------------------------------------------


async def test_fresh_database_is_migrated_to_newest_version(store: SqliteConversationStore, db_path: Path) -> None:
    assert user_version(db_path) == len(MIGRATIONS)


async def test_reopening_is_a_noop_and_keeps_data(db_path: Path) -> None:
    first = await SqliteConversationStore.open(db_path)
    await first.add_turn(CHAT, user("kept", T0))
    await first.close()

    second = await SqliteConversationStore.open(db_path)
    try:
        assert user_version(db_path) == len(MIGRATIONS)
        assert await texts(second, CHAT) == ["kept"]
    finally:
        await second.close()


async def test_database_from_a_newer_bot_is_refused(db_path: Path) -> None:
    set_user_version(db_path, len(MIGRATIONS) + 1)

    with pytest.raises(RuntimeError, match="newer"):
        await SqliteConversationStore.open(db_path)
    assert user_version(db_path) == len(MIGRATIONS) + 1


async def test_wal_journal_mode_is_on(store: SqliteConversationStore, db_path: Path) -> None:
    with sqlite3.connect(db_path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- turns --------------------------------------------------------------------------------------------------------


async def test_turn_round_trip_keeps_every_field(store: SqliteConversationStore) -> None:
    asked = user("what is this?", T0, "img-b", "img-a", "img-c", author="Alice")
    answered = Turn(role="assistant", text="a cat", created_at=T0 + 1, usage=Usage(120, 30, 150))
    await store.add_turn(CHAT, asked)
    await store.add_turn(CHAT, answered)

    turns = await store.recent_turns(CHAT, limit=10, idle_after=DAY, now=T0 + 2)

    assert turns == [asked, answered]
    assert turns[0].image_ids == ("img-b", "img-a", "img-c")
    assert turns[1].usage == Usage(prompt_tokens=120, completion_tokens=30, total_tokens=150)
    assert turns[1].author is None


async def test_turns_come_oldest_first_and_limit_keeps_the_newest(store: SqliteConversationStore) -> None:
    for index in range(6):
        await store.add_turn(CHAT, user(f"t{index}", T0 + index))

    assert await texts(store, CHAT) == ["t0", "t1", "t2", "t3", "t4", "t5"]
    assert await texts(store, CHAT, limit=3) == ["t3", "t4", "t5"]


async def test_chats_and_forum_topics_are_separate_conversations(store: SqliteConversationStore) -> None:
    topic = ConversationKey(chat_id=CHAT.chat_id, thread_id=7)
    await store.add_turn(CHAT, user("main", T0))
    await store.add_turn(topic, user("topic", T0))
    await store.add_turn(OTHER_CHAT, user("other", T0))

    assert await texts(store, CHAT) == ["main"]
    assert await texts(store, topic) == ["topic"]
    assert await texts(store, OTHER_CHAT) == ["other"]
    assert await texts(store, ConversationKey(chat_id=999)) == []


async def test_a_long_gap_ends_the_conversation(store: SqliteConversationStore) -> None:
    await store.add_turn(CHAT, user("old question", T0))
    await store.add_turn(CHAT, assistant("old answer", T0 + 10))
    await store.add_turn(CHAT, user("new question", T0 + 10 + 3601))
    await store.add_turn(CHAT, assistant("new answer", T0 + 10 + 3605))

    now = T0 + 10 + 3610
    assert await texts(store, CHAT, idle_after=3600, now=now) == ["new question", "new answer"]
    assert await texts(store, CHAT, idle_after=3602, now=now) == [
        "old question", "old answer", "new question", "new answer"]


async def test_conversation_idle_since_its_newest_turn_is_empty(store: SqliteConversationStore) -> None:
    await store.add_turn(CHAT, user("q", T0))
    await store.add_turn(CHAT, assistant("a", T0 + 5))

    assert await texts(store, CHAT, idle_after=60, now=T0 + 5 + 61) == []
    assert await texts(store, CHAT, idle_after=60, now=T0 + 5 + 59) == ["q", "a"]


# --- images -------------------------------------------------------------------------------------------------------


async def test_save_image_is_idempotent_per_id(store: SqliteConversationStore, db_path: Path) -> None:
    await store.save_image(image("img", b"first"), now=T0)
    await store.save_image(image("img", b"second"), now=T0 + 1)

    loaded = await store.load_images(["img"])
    assert loaded == {"img": PreparedImage(image_id="img", data=b"first", mime="image/jpeg")}
    with sqlite3.connect(db_path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 1


async def test_load_images_returns_only_known_ids(store: SqliteConversationStore) -> None:
    await store.save_image(image("a", b"A"), now=T0)
    await store.save_image(PreparedImage(image_id="b", data=b"B", mime="image/png"), now=T0)

    loaded = await store.load_images(["b", "missing", "a", "b"])

    assert set(loaded) == {"a", "b"}
    assert loaded["b"] == PreparedImage(image_id="b", data=b"B", mime="image/png")
    assert await store.load_images([]) == {}
    assert await store.load_images(["missing"]) == {}


async def test_clear_forgets_turns_and_orphan_images_but_keeps_shared_ones(
        store: SqliteConversationStore, db_path: Path) -> None:
    # clear() measures the orphan grace period from the wall clock, so the images must look old enough.
    old = time.time() - _ORPHAN_GRACE_SECONDS - 60
    for image_id in ("only-mine", "shared", "unreferenced-old"):
        await store.save_image(image(image_id), now=old)
    await store.save_image(image("just-saved"), now=time.time())
    now = time.time()
    await store.add_turn(CHAT, user("mine", now - 5, "only-mine", "shared"))
    await store.add_turn(CHAT, assistant("answer", now - 4))
    await store.add_turn(OTHER_CHAT, user("theirs", now - 3, "shared"))

    await store.clear(CHAT)

    assert await texts(store, CHAT, now=now) == []
    assert await texts(store, OTHER_CHAT, now=now) == ["theirs"]
    assert image_ids_in_db(db_path) == {"shared", "just-saved"}
    with sqlite3.connect(db_path) as connection:
        assert connection.execute("SELECT image_id FROM turn_images").fetchall() == [("shared",)]


async def test_prune_deletes_only_old_turns(store: SqliteConversationStore, db_path: Path) -> None:
    now = time.time()
    old = now - _ORPHAN_GRACE_SECONDS - 60
    await store.save_image(image("old-image"), now=old)
    await store.save_image(image("new-image"), now=old)
    await store.add_turn(CHAT, user("old", now - 2 * DAY, "old-image"))
    await store.add_turn(CHAT, assistant("old answer", now - 2 * DAY + 1))
    await store.add_turn(CHAT, user("new", now - 10, "new-image"))
    await store.add_turn(OTHER_CHAT, user("other new", now - 10))

    deleted = await store.prune(older_than=now - DAY)

    assert deleted == 2
    assert await texts(store, CHAT, idle_after=3 * DAY, now=now) == ["new"]
    assert await texts(store, OTHER_CHAT, idle_after=3 * DAY, now=now) == ["other new"]
    assert image_ids_in_db(db_path) == {"new-image"}
    assert await store.prune(older_than=now - DAY) == 0


async def test_data_survives_a_restart(db_path: Path) -> None:
    first = await SqliteConversationStore.open(db_path)
    await first.save_image(image("img", b"pixels"), now=T0)
    await first.add_turn(CHAT, user("q", T0, "img", author="Bob"))
    await first.add_turn(CHAT, Turn(role="assistant", text="a", created_at=T0 + 1, usage=Usage(1, 2, 3)))
    await first.close()

    second = await SqliteConversationStore.open(db_path)
    try:
        turns = await second.recent_turns(CHAT, limit=10, idle_after=DAY, now=T0 + 2)
        assert turns == [user("q", T0, "img", author="Bob"),
                         Turn(role="assistant", text="a", created_at=T0 + 1, usage=Usage(1, 2, 3))]
        assert (await second.load_images(["img"]))["img"].data == b"pixels"
    finally:
        await second.close()


# --- model choice -------------------------------------------------------------------------------------------------


async def test_chat_model_is_kept_per_chat_and_topic(store: SqliteConversationStore) -> None:
    topic = ConversationKey(chat_id=CHAT.chat_id, thread_id=7)
    assert await store.chat_model(CHAT) is None

    await store.set_chat_model(CHAT, "gpt-4o")
    await store.set_chat_model(topic, "gpt-4o-mini")
    await store.set_chat_model(CHAT, "glm-4v-plus")

    assert await store.chat_model(CHAT) == "glm-4v-plus"
    assert await store.chat_model(topic) == "gpt-4o-mini"
    assert await store.chat_model(OTHER_CHAT) is None
    await store.set_chat_model(CHAT, None)
    assert await store.chat_model(CHAT) is None
    assert await store.chat_model(topic) == "gpt-4o-mini"


async def test_clearing_the_conversation_keeps_the_model_choice(store: SqliteConversationStore) -> None:
    await store.set_chat_model(CHAT, "gpt-4o")
    await store.add_turn(CHAT, user("q", T0))

    await store.clear(CHAT)
    await store.prune(older_than=time.time() + DAY)

    assert await store.chat_model(CHAT) == "gpt-4o"


async def test_model_choice_survives_a_restart_and_older_databases_gain_the_table(db_path: Path) -> None:
    first = await SqliteConversationStore.open(db_path)
    await first.close()
    with sqlite3.connect(db_path) as connection:  # a database from before the model choice existed
        connection.execute("DROP TABLE chat_models")
        connection.execute("PRAGMA user_version = 2")

    second = await SqliteConversationStore.open(db_path)
    await second.set_chat_model(CHAT, "gpt-4o")
    await second.close()

    third = await SqliteConversationStore.open(db_path)
    try:
        assert user_version(db_path) == len(MIGRATIONS)
        assert await third.chat_model(CHAT) == "gpt-4o"
    finally:
        await third.close()
