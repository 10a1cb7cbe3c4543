"""The storage contract against both real backends: a SQLite file, and a fresh PostgreSQL schema per test."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.config import SettingsError, load_settings
from bot.models import ConversationKey, InboxEntry, PreparedImage, Turn, Usage, UsageRecord, UsageTotal
from bot.storage import (
    ConversationStore,
    SqliteConversationStore,
    open_store,
    postgres_schema,
    sqlite_schema,
)
from bot.storage.postgres import PostgresConversationStore

CHAT = ConversationKey(chat_id=100)
OTHER_CHAT = ConversationKey(chat_id=200)
DAY = 24 * 3600.0
T0 = 1_700_000_000.0
GRACE = 5 * 60.0  # an image saved this recently may be about to get its turn: never deleted as an orphan


@pytest.fixture
def database_url(bot_database_url: str) -> str:
    """The one switch between backends (conftest's): every test using it, or `store`, runs once on each."""
    return bot_database_url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ConversationStore]:
    opened = await open_store(database_url)
    yield opened
    await opened.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "bot.sqlite3"


async def column(url: str, sql: str) -> list[Any]:
    """The first column of a query, read past the store as another process would."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            return [row[0] for row in connection.execute(sql)]
    connection = await asyncpg.connect(url)
    try:
        return [row[0] for row in await connection.fetch(sql)]
    finally:
        await connection.close()


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("PRAGMA user_version").fetchone()[0])


def user(text: str, at: float, *image_ids: str, author: str | None = None) -> Turn:
    return Turn(role="user", text=text, created_at=at, image_ids=image_ids, author=author)


def assistant(text: str, at: float) -> Turn:
    return Turn(role="assistant", text=text, created_at=at)


def image(image_id: str, data: bytes = b"\xff\xd8jpeg") -> PreparedImage:
    return PreparedImage(image_id=image_id, data=data)


def usage(day: str, chat_id: int, user_id: int | None, tokens: int, outcome: str = "answered",
          error_kind: str | None = None) -> UsageRecord:
    return UsageRecord(day=day, chat_id=chat_id, user_id=user_id, outcome=outcome, error_kind=error_kind,
                       usage=Usage(tokens - 1, 1, tokens), created_at=T0)


async def texts(store: ConversationStore, key: ConversationKey, *, limit: int = 50,
                idle_after: float = DAY, now: float = T0 + 100) -> list[str]:
    return [turn.text for turn in await store.recent_turns(key, limit=limit, idle_after=idle_after, now=now)]


# --- opening and migrations ---------------------------------------------------------------------------------------


async def test_reopening_keeps_data(database_url: str) -> None:
    first = await open_store(database_url)
    await first.add_turn(CHAT, user("kept", T0))
    await first.close()

    second = await open_store(database_url)
    try:
        assert await texts(second, CHAT) == ["kept"]
    finally:
        await second.close()


async def test_the_url_scheme_picks_the_backend(tmp_path: Path, postgres_url: str) -> None:
    for url, kind in ((f"sqlite:///{tmp_path / 'bot.sqlite3'}", SqliteConversationStore),
                      (postgres_url, PostgresConversationStore),
                      (postgres_url.replace("postgresql://", "postgres://", 1), PostgresConversationStore)):
        opened = await open_store(url)
        await opened.close()
        assert isinstance(opened, kind)
    with pytest.raises(ValueError, match="sqlite:///"):
        await open_store("mysql://localhost/bot")


def test_settings_accept_sqlite_and_postgresql_urls() -> None:
    def settings(url: str) -> Any:
        return load_settings(_env_file=None, bot_token="1:x", vision_base_url="http://127.0.0.1:1/v1",
                             vision_api_key="sk-x", database_url=url)

    assert settings("sqlite:///data/bot.sqlite3").database_url == "sqlite:///data/bot.sqlite3"
    assert settings("postgresql://bot:pw@db:5432/bot").database_url == "postgresql://bot:pw@db:5432/bot"
    assert settings("postgres://bot@db/bot").database_url == "postgres://bot@db/bot"
    with pytest.raises(SettingsError, match="postgresql://"):
        settings("mysql://db/bot")


async def test_sqlite_fresh_database_is_migrated_to_newest_version(db_path: Path) -> None:
    opened = await SqliteConversationStore.open(db_path)
    await opened.close()
    assert user_version(db_path) == len(sqlite_schema.MIGRATIONS)


async def test_sqlite_database_from_a_newer_bot_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as connection:
        connection.execute(f"PRAGMA user_version = {len(sqlite_schema.MIGRATIONS) + 1}")

    with pytest.raises(RuntimeError, match="newer"):
        await SqliteConversationStore.open(db_path)
    assert user_version(db_path) == len(sqlite_schema.MIGRATIONS) + 1


async def test_sqlite_wal_journal_mode_is_on(db_path: Path) -> None:
    opened = await SqliteConversationStore.open(db_path)
    try:
        with sqlite3.connect(db_path) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await opened.close()


async def test_sqlite_older_databases_gain_the_newer_tables(db_path: Path) -> None:
    first = await SqliteConversationStore.open(db_path)
    await first.close()
    with sqlite3.connect(db_path) as connection:  # a database from before the model choice and the inbox existed
        connection.execute("DROP TABLE chat_models")
        connection.execute("DROP TABLE inbox")
        connection.execute("PRAGMA user_version = 2")

    second = await SqliteConversationStore.open(db_path)
    try:
        assert user_version(db_path) == len(sqlite_schema.MIGRATIONS)
        await second.set_chat_model(CHAT, "gpt-4o")
        assert await second.chat_model(CHAT) == "gpt-4o"
        assert await second.receive_update(1, CHAT.chat_id, "{}", now=T0)
    finally:
        await second.close()


async def test_postgresql_migrations_are_applied_once_each(postgres_url: str) -> None:
    for _ in range(2):
        opened = await PostgresConversationStore.open(postgres_url)
        await opened.close()

    versions = await column(postgres_url, "SELECT version FROM schema_migrations ORDER BY version")
    assert versions == list(range(1, len(postgres_schema.MIGRATIONS) + 1))


async def test_postgresql_processes_starting_together_both_migrate(postgres_url: str) -> None:
    # Without the migration lock the second CREATE TABLE fails (or a version is recorded twice).
    opened = await asyncio.gather(*(PostgresConversationStore.open(postgres_url, max_size=2) for _ in range(4)))
    try:
        await opened[0].add_turn(CHAT, user("from one", T0))
        assert await texts(opened[3], CHAT) == ["from one"]
    finally:
        await asyncio.gather(*(store.close() for store in opened))
    assert len(await column(postgres_url, "SELECT version FROM schema_migrations")) == len(postgres_schema.MIGRATIONS)


async def test_postgresql_database_from_a_newer_bot_is_refused(postgres_url: str) -> None:
    opened = await PostgresConversationStore.open(postgres_url)
    await opened.close()
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute("INSERT INTO schema_migrations VALUES ($1, 0)", len(postgres_schema.MIGRATIONS) + 1)
    finally:
        await connection.close()

    with pytest.raises(RuntimeError, match="newer"):
        await PostgresConversationStore.open(postgres_url)


# --- turns --------------------------------------------------------------------------------------------------------


async def test_turn_round_trip_keeps_every_field(store: ConversationStore) -> None:
    asked = user("what is this?", T0, "img-b", "img-a", "img-c", author="Alice")
    answered = Turn(role="assistant", text="a cat", created_at=T0 + 1.25, usage=Usage(120, 30, 150))
    await store.add_turn(CHAT, asked)
    await store.add_turn(CHAT, answered)

    turns = await store.recent_turns(CHAT, limit=10, idle_after=DAY, now=T0 + 2)

    assert turns == [asked, answered]
    assert turns[0].image_ids == ("img-b", "img-a", "img-c")
    assert turns[1].usage == Usage(prompt_tokens=120, completion_tokens=30, total_tokens=150)
    assert turns[1].author is None


async def test_turns_come_oldest_first_and_limit_keeps_the_newest(store: ConversationStore) -> None:
    for index in range(6):
        await store.add_turn(CHAT, user(f"t{index}", T0 + index))

    assert await texts(store, CHAT) == ["t0", "t1", "t2", "t3", "t4", "t5"]
    assert await texts(store, CHAT, limit=3) == ["t3", "t4", "t5"]


async def test_chats_and_forum_topics_are_separate_conversations(store: ConversationStore) -> None:
    topic = ConversationKey(chat_id=CHAT.chat_id, thread_id=7)
    big = ConversationKey(chat_id=-1_001_234_567_890)  # supergroup ids need 64 bits
    await store.add_turn(CHAT, user("main", T0))
    await store.add_turn(topic, user("topic", T0))
    await store.add_turn(OTHER_CHAT, user("other", T0))
    await store.add_turn(big, user("supergroup", T0))

    assert await texts(store, CHAT) == ["main"]
    assert await texts(store, topic) == ["topic"]
    assert await texts(store, OTHER_CHAT) == ["other"]
    assert await texts(store, big) == ["supergroup"]
    assert await texts(store, ConversationKey(chat_id=999)) == []


async def test_a_long_gap_ends_the_conversation(store: ConversationStore) -> None:
    await store.add_turn(CHAT, user("old question", T0))
    await store.add_turn(CHAT, assistant("old answer", T0 + 10))
    await store.add_turn(CHAT, user("new question", T0 + 10 + 3601))
    await store.add_turn(CHAT, assistant("new answer", T0 + 10 + 3605))

    now = T0 + 10 + 3610
    assert await texts(store, CHAT, idle_after=3600, now=now) == ["new question", "new answer"]
    assert await texts(store, CHAT, idle_after=3602, now=now) == [
        "old question", "old answer", "new question", "new answer"]


async def test_conversation_idle_since_its_newest_turn_is_empty(store: ConversationStore) -> None:
    await store.add_turn(CHAT, user("q", T0))
    await store.add_turn(CHAT, assistant("a", T0 + 5))

    assert await texts(store, CHAT, idle_after=60, now=T0 + 5 + 61) == []
    assert await texts(store, CHAT, idle_after=60, now=T0 + 5 + 59) == ["q", "a"]


async def test_data_survives_a_restart(database_url: str) -> None:
    first = await open_store(database_url)
    await first.save_image(image("img", b"pixels"), now=T0)
    await first.add_turn(CHAT, user("q", T0, "img", author="Bob"))
    await first.add_turn(CHAT, Turn(role="assistant", text="a", created_at=T0 + 1, usage=Usage(1, 2, 3)))
    await first.set_chat_model(CHAT, "gpt-4o")
    await first.close()

    second = await open_store(database_url)
    try:
        turns = await second.recent_turns(CHAT, limit=10, idle_after=DAY, now=T0 + 2)
        assert turns == [user("q", T0, "img", author="Bob"),
                         Turn(role="assistant", text="a", created_at=T0 + 1, usage=Usage(1, 2, 3))]
        assert (await second.load_images(["img"]))["img"].data == b"pixels"
        assert await second.chat_model(CHAT) == "gpt-4o"
    finally:
        await second.close()


# --- images -------------------------------------------------------------------------------------------------------


async def test_save_image_is_idempotent_per_id(store: ConversationStore, database_url: str) -> None:
    await store.save_image(image("img", b"first"), now=T0)
    await store.save_image(image("img", b"second"), now=T0 + 1)

    loaded = await store.load_images(["img"])
    assert loaded == {"img": PreparedImage(image_id="img", data=b"first", mime="image/jpeg")}
    assert await column(database_url, "SELECT COUNT(*) FROM images") == [1]


async def test_load_images_returns_only_known_ids(store: ConversationStore) -> None:
    await store.save_image(image("a", b"A"), now=T0)
    await store.save_image(PreparedImage(image_id="b", data=b"B", mime="image/png"), now=T0)

    loaded = await store.load_images(["b", "missing", "a", "b"])

    assert set(loaded) == {"a", "b"}
    assert loaded["b"] == PreparedImage(image_id="b", data=b"B", mime="image/png")
    assert await store.load_images([]) == {}
    assert await store.load_images(["missing"]) == {}


async def test_clear_forgets_turns_and_orphan_images_but_keeps_shared_and_recent_ones(
        store: ConversationStore, database_url: str) -> None:
    # clear() measures the orphan grace from the wall clock: images must look older than five minutes to go.
    now = time.time()
    for image_id in ("only-mine", "shared", "unreferenced-old"):
        await store.save_image(image(image_id), now=now - GRACE - 60)
    await store.save_image(image("within-grace"), now=now - GRACE + 60)
    await store.add_turn(CHAT, user("mine", now - 5, "only-mine", "shared", "within-grace"))
    await store.add_turn(CHAT, assistant("answer", now - 4))
    await store.add_turn(OTHER_CHAT, user("theirs", now - 3, "shared"))

    await store.clear(CHAT)

    assert await texts(store, CHAT, now=now) == []
    assert await texts(store, OTHER_CHAT, now=now) == ["theirs"]
    assert set(await column(database_url, "SELECT image_id FROM images")) == {"shared", "within-grace"}
    assert await column(database_url, "SELECT image_id FROM turn_images") == ["shared"]


async def test_prune_deletes_only_old_turns_and_their_orphan_images(
        store: ConversationStore, database_url: str) -> None:
    now = time.time()
    old = now - GRACE - 60
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
    assert await column(database_url, "SELECT image_id FROM images") == ["new-image"]
    assert await store.prune(older_than=now - DAY) == 0


# --- model choice -------------------------------------------------------------------------------------------------


async def test_chat_model_is_kept_per_chat_and_topic(store: ConversationStore) -> None:
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


async def test_clearing_the_conversation_keeps_the_model_choice(store: ConversationStore) -> None:
    await store.set_chat_model(CHAT, "gpt-4o")
    await store.add_turn(CHAT, user("q", T0))

    await store.clear(CHAT)
    await store.prune(older_than=time.time() + DAY)

    assert await store.chat_model(CHAT) == "gpt-4o"


# --- usage --------------------------------------------------------------------------------------------------------


async def test_tokens_are_summed_per_day_by_user_or_by_chat(store: ConversationStore) -> None:
    await store.record_usage(usage("2024-05-01", CHAT.chat_id, 1, 100))
    await store.record_usage(usage("2024-05-01", CHAT.chat_id, 2, 30))
    await store.record_usage(usage("2024-05-01", OTHER_CHAT.chat_id, 1, 5))
    await store.record_usage(usage("2024-05-02", CHAT.chat_id, 1, 7))

    assert await store.tokens_on("2024-05-01", user_id=1) == 105
    assert await store.tokens_on("2024-05-01", chat_id=CHAT.chat_id) == 130
    assert await store.tokens_on("2024-05-02", user_id=2) == 0
    assert await store.tokens_on("2024-04-30", chat_id=CHAT.chat_id) == 0


async def test_usage_totals_group_by_day_chat_outcome_and_error(store: ConversationStore) -> None:
    await store.record_usage(usage("2024-05-01", CHAT.chat_id, 1, 100))
    await store.record_usage(usage("2024-05-01", CHAT.chat_id, 2, 50))
    await store.record_usage(usage("2024-05-01", CHAT.chat_id, 1, 0, "failed", "quota"))
    await store.record_usage(usage("2024-05-02", OTHER_CHAT.chat_id, None, 9))
    await store.record_usage(usage("2024-04-30", CHAT.chat_id, 1, 1000))

    assert await store.usage_totals("2024-05-01") == [
        UsageTotal("2024-05-02", OTHER_CHAT.chat_id, "answered", None, answers=1, tokens=9),
        UsageTotal("2024-05-01", CHAT.chat_id, "answered", None, answers=2, tokens=150),
        UsageTotal("2024-05-01", CHAT.chat_id, "failed", "quota", answers=1, tokens=0),
    ]


async def test_prune_usage_deletes_only_earlier_days(store: ConversationStore) -> None:
    for day in ("2024-04-30", "2024-05-01", "2024-05-01", "2024-05-02"):
        await store.record_usage(usage(day, CHAT.chat_id, 1, 10))

    assert await store.prune_usage(before_day="2024-05-02") == 3
    assert await store.prune_usage(before_day="2024-05-02") == 0
    assert await store.tokens_on("2024-05-02", user_id=1) == 10


# --- inbox --------------------------------------------------------------------------------------------------------


async def test_an_update_is_received_once(store: ConversationStore) -> None:
    assert await store.inbox_entry(10) is None
    assert await store.receive_update(10, CHAT.chat_id, '{"update_id": 10}', now=T0) is True
    assert await store.receive_update(10, CHAT.chat_id, '{"changed": true}', now=T0 + 1) is False
    assert await store.receive_update(11, None, "{}", now=T0 + 2) is True

    assert await store.inbox_entry(10) == InboxEntry(10, CHAT.chat_id, '{"update_id": 10}', "received", T0, T0)
    assert await store.inbox_entry(11) == InboxEntry(11, None, "{}", "received", T0 + 2, T0 + 2)


async def test_state_moves_keep_message_and_answer_unless_given(store: ConversationStore) -> None:
    await store.receive_update(10, CHAT.chat_id, "{}", now=T0)

    await store.set_update_state(10, "asking", now=T0 + 1, message_id=555)
    await store.set_update_state(10, "generated", now=T0 + 2, answer="a cat")
    await store.set_update_state(10, "done", now=T0 + 3)

    assert await store.inbox_entry(10) == InboxEntry(10, CHAT.chat_id, "{}", "done", T0, T0 + 3, 555, "a cat")
    assert await store.receive_update(10, CHAT.chat_id, "{}", now=T0 + 4) is False  # done ids stay deduplicated


async def test_unfinished_updates_come_oldest_first(store: ConversationStore) -> None:
    for update_id, state in ((30, "generated"), (10, "received"), (40, "done"), (20, "asking"), (50, "failed")):
        await store.receive_update(update_id, CHAT.chat_id, "{}", now=T0 + update_id)
        await store.set_update_state(update_id, state, now=T0 + 100 - update_id)

    unfinished = await store.unfinished_updates()

    assert [(entry.update_id, entry.state) for entry in unfinished] == [(10, "received"), (20, "asking"),
                                                                         (30, "generated")]
    assert [entry.update_id for entry in await store.unfinished_updates(limit=2)] == [10, 20]


async def test_prune_inbox_deletes_only_old_finished_updates(store: ConversationStore) -> None:
    for update_id, state, at in ((1, "done", T0), (2, "failed", T0), (3, "received", T0), (4, "asking", T0),
                                 (5, "done", T0 + DAY)):
        await store.receive_update(update_id, CHAT.chat_id, "{}", now=at)
        await store.set_update_state(update_id, state, now=at)

    assert await store.prune_inbox(older_than=T0 + 1) == 2
    assert await store.prune_inbox(older_than=T0 + 1) == 0

    assert [entry.update_id for entry in await store.unfinished_updates()] == [3, 4]
    assert await store.inbox_entry(1) is None
    assert (await store.inbox_entry(5)) is not None
    assert await store.receive_update(1, CHAT.chat_id, "{}", now=T0 + 2) is True  # pruned ids are new again


async def test_maintain_is_harmless(store: ConversationStore) -> None:
    await store.add_turn(CHAT, user("q", T0))
    await store.maintain()
    assert await texts(store, CHAT) == ["q"]


async def test_postgresql_replicas_receiving_the_same_update_let_exactly_one_handle_it(postgres_url: str) -> None:
    replicas = [await PostgresConversationStore.open(postgres_url) for _ in range(2)]
    try:
        results = await asyncio.gather(*(replicas[attempt % 2].receive_update(77, CHAT.chat_id, "{}", now=T0)
                                         for attempt in range(20)))
    finally:
        await asyncio.gather(*(replica.close() for replica in replicas))
    assert results.count(True) == 1
