"""SQLite schema: ordered migrations, applied once each (PRAGMA user_version counts them)."""

from __future__ import annotations

import aiosqlite

# Each entry upgrades the schema by one version (PRAGMA user_version); never edit a released entry.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE turns (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        chat_id INTEGER NOT NULL,
        thread_id INTEGER NOT NULL DEFAULT 0,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        author TEXT,
        text TEXT NOT NULL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        total_tokens INTEGER,
        created_at REAL NOT NULL
    );
    CREATE INDEX turns_by_conversation ON turns (chat_id, thread_id, id);
    CREATE INDEX turns_by_age ON turns (created_at);
    CREATE TABLE images (
        image_id TEXT PRIMARY KEY,
        mime TEXT NOT NULL,
        data BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE turn_images (
        turn_id INTEGER NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        image_id TEXT NOT NULL,
        PRIMARY KEY (turn_id, position)
    );
    CREATE INDEX turn_images_by_image ON turn_images (image_id);
    """,
    """
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        day TEXT NOT NULL,
        chat_id INTEGER NOT NULL,
        user_id INTEGER,
        outcome TEXT NOT NULL,
        error_kind TEXT,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        total_tokens INTEGER NOT NULL DEFAULT 0,
        estimated INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE INDEX usage_by_user ON usage (day, user_id);
    CREATE INDEX usage_by_chat ON usage (day, chat_id);
    """,
    """
    CREATE TABLE chat_models (
        chat_id INTEGER NOT NULL,
        thread_id INTEGER NOT NULL DEFAULT 0,
        model TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (chat_id, thread_id)
    );
    """,
    """
    CREATE TABLE inbox (
        update_id INTEGER PRIMARY KEY,
        chat_id INTEGER,
        payload TEXT NOT NULL,
        state TEXT NOT NULL,
        received_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        message_id INTEGER,
        answer TEXT
    );
    CREATE INDEX inbox_unfinished ON inbox (state, update_id);
    CREATE INDEX inbox_by_chat ON inbox (chat_id, update_id);
    CREATE INDEX inbox_by_age ON inbox (updated_at);
    """,
)


async def migrate(connection: aiosqlite.Connection) -> int:
    """Apply the migrations this database has not seen yet; returns the resulting version."""
    cursor = await connection.execute("PRAGMA user_version")
    row = await cursor.fetchone()
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise RuntimeError(f"database schema version {version} is newer than this bot ({len(MIGRATIONS)})")
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        await connection.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    return len(MIGRATIONS)
