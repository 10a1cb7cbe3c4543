"""PostgreSQL schema: ordered migrations, applied once each and recorded in `schema_migrations`."""

from __future__ import annotations

import time

import asyncpg

# Each entry upgrades the schema by one version; never edit a released entry. The same tables as
# bot/storage/sqlite_schema.py, in PostgreSQL types.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE turns (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        chat_id BIGINT NOT NULL,
        thread_id BIGINT NOT NULL DEFAULT 0,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        author TEXT,
        text TEXT NOT NULL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        total_tokens INTEGER,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX turns_by_conversation ON turns (chat_id, thread_id, id);
    CREATE INDEX turns_by_age ON turns (created_at);
    CREATE TABLE images (
        image_id TEXT PRIMARY KEY,
        mime TEXT NOT NULL,
        data BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE turn_images (
        turn_id BIGINT NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        image_id TEXT NOT NULL,
        PRIMARY KEY (turn_id, position)
    );
    CREATE INDEX turn_images_by_image ON turn_images (image_id);
    """,
    """
    CREATE TABLE usage (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        day TEXT NOT NULL,
        chat_id BIGINT NOT NULL,
        user_id BIGINT,
        outcome TEXT NOT NULL,
        error_kind TEXT,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        total_tokens INTEGER NOT NULL DEFAULT 0,
        estimated BOOLEAN NOT NULL DEFAULT FALSE,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX usage_by_user ON usage (day, user_id);
    CREATE INDEX usage_by_chat ON usage (day, chat_id);
    """,
    """
    CREATE TABLE chat_models (
        chat_id BIGINT NOT NULL,
        thread_id BIGINT NOT NULL DEFAULT 0,
        model TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (chat_id, thread_id)
    );
    """,
    """
    CREATE TABLE inbox (
        update_id BIGINT PRIMARY KEY,
        chat_id BIGINT,
        payload TEXT NOT NULL,
        state TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        message_id BIGINT,
        answer TEXT
    );
    CREATE INDEX inbox_unfinished ON inbox (state, update_id);
    CREATE INDEX inbox_by_chat ON inbox (chat_id, update_id);
    CREATE INDEX inbox_by_age ON inbox (updated_at);
    """,
)

# Any constant works: it only has to be the same in every bot process sharing the database.
_MIGRATION_LOCK = 0x76_69_73_69_6F_6E  # "vision"


async def migrate(connection: asyncpg.Connection) -> int:
    """Apply the migrations this database has not seen yet; returns the resulting version.

    Bot processes starting together wait for each other at a transaction-scoped advisory lock, so each migration
    runs once; the whole upgrade is one transaction (PostgreSQL DDL is transactional), all or nothing.
    """
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
        version = await connection.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        if version > len(MIGRATIONS):
            raise RuntimeError(f"database schema version {version} is newer than this bot ({len(MIGRATIONS)})")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await connection.execute(script)
            await connection.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)", number, time.time())
    return len(MIGRATIONS)
