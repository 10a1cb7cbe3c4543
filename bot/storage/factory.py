"""The one place that turns DATABASE_URL into a store, so the rest of the bot sees only the contract."""

from __future__ import annotations

from pathlib import Path

from bot.storage.base import ConversationStore
from bot.storage.sqlite import SqliteConversationStore

SQLITE_PREFIX = "sqlite:///"
# Hundreds of answers in flight each write their progress: a small pool would queue those writes (and widen the
# moment between a message reaching Telegram and its id being recorded).
POSTGRES_POOL_SIZE = 20
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


async def open_store(database_url: str) -> ConversationStore:
    """Open (and migrate) the backend the URL's scheme names: sqlite:///path or postgresql://... (postgres://...)."""
    if database_url.startswith(SQLITE_PREFIX):
        return await SqliteConversationStore.open(Path(database_url.removeprefix(SQLITE_PREFIX)))
    if database_url.startswith(POSTGRES_PREFIXES):
        from bot.storage.postgres import PostgresConversationStore  # asyncpg only where PostgreSQL is used

        return await PostgresConversationStore.open(database_url, max_size=POSTGRES_POOL_SIZE)
    raise ValueError("database URL must start with sqlite:///, postgresql:// or postgres://")
