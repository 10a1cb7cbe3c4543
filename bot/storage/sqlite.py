"""SQLite storage through one aiosqlite connection (WAL), with ordered schema migrations."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

import aiosqlite

from bot.models import (
    UNFINISHED_STATES,
    ConversationKey,
    InboxEntry,
    PreparedImage,
    Turn,
    Usage,
    UsageRecord,
    UsageTotal,
)
from bot.storage.sqlite_schema import migrate

log = logging.getLogger(__name__)

# An image saved moments ago may belong to a turn that is about to be written.
_ORPHAN_GRACE_SECONDS = 300.0


class SqliteConversationStore:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._db = connection

    @classmethod
    async def open(cls, path: Path) -> SqliteConversationStore:
        """Open (creating folder and file) and migrate to the newest schema."""
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(path)
        try:
            await connection.execute("PRAGMA journal_mode=WAL")
            await connection.execute("PRAGMA synchronous=NORMAL")
            await connection.execute("PRAGMA foreign_keys=ON")
            await connection.execute("PRAGMA busy_timeout=5000")
            await migrate(connection)
        except BaseException:
            await connection.close()
            raise
        return cls(connection)

    async def close(self) -> None:
        await self._db.close()

    async def recent_turns(self, key: ConversationKey, *, limit: int, idle_after: float, now: float) -> list[Turn]:
        cursor = await self._db.execute(
            "SELECT id, role, author, text, prompt_tokens, completion_tokens, total_tokens, created_at "
            "FROM turns WHERE chat_id = ? AND thread_id = ? ORDER BY id DESC LIMIT ?",
            (key.chat_id, key.thread_id, limit),
        )
        rows = list(await cursor.fetchall())
        live: list[aiosqlite.Row] = []
        newer = now
        for row in rows:
            if newer - row[7] > idle_after:
                break
            live.append(row)
            newer = row[7]
        live.reverse()
        images = await self._images_of([row[0] for row in live])
        return [_turn_from_row(row, images.get(row[0], ())) for row in live]

    async def _images_of(self, turn_ids: list[int]) -> dict[int, tuple[str, ...]]:
        if not turn_ids:
            return {}
        marks = ",".join("?" * len(turn_ids))
        cursor = await self._db.execute(
            f"SELECT turn_id, image_id FROM turn_images WHERE turn_id IN ({marks}) ORDER BY turn_id, position",
            turn_ids,
        )
        found: dict[int, list[str]] = {}
        for turn_id, image_id in await cursor.fetchall():
            found.setdefault(turn_id, []).append(image_id)
        return {turn_id: tuple(ids) for turn_id, ids in found.items()}

    async def add_turn(self, key: ConversationKey, turn: Turn) -> None:
        usage = turn.usage
        cursor = await self._db.execute(
            "INSERT INTO turns (chat_id, thread_id, role, author, text, prompt_tokens, completion_tokens, "
            "total_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key.chat_id,
                key.thread_id,
                turn.role,
                turn.author,
                turn.text,
                usage.prompt_tokens if usage else None,
                usage.completion_tokens if usage else None,
                usage.total_tokens if usage else None,
                turn.created_at,
            ),
        )
        await self._db.executemany(
            "INSERT INTO turn_images (turn_id, position, image_id) VALUES (?, ?, ?)",
            [(cursor.lastrowid, position, image_id) for position, image_id in enumerate(turn.image_ids)],
        )
        await self._db.commit()

    async def clear(self, key: ConversationKey) -> None:
        await self._db.execute(
            "DELETE FROM turns WHERE chat_id = ? AND thread_id = ?", (key.chat_id, key.thread_id)
        )
        await self._delete_orphan_images(time.time())
        await self._db.commit()

    async def save_image(self, image: PreparedImage, *, now: float) -> None:
        await self._db.execute(
            "INSERT INTO images (image_id, mime, data, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (image_id) DO UPDATE SET created_at = excluded.created_at",
            (image.image_id, image.mime, image.data, now),
        )
        await self._db.commit()

    async def load_images(self, image_ids: Iterable[str]) -> dict[str, PreparedImage]:
        wanted = list(dict.fromkeys(image_ids))
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        cursor = await self._db.execute(
            f"SELECT image_id, mime, data FROM images WHERE image_id IN ({marks})", wanted
        )
        return {row[0]: PreparedImage(image_id=row[0], mime=row[1], data=row[2]) for row in await cursor.fetchall()}

    async def prune(self, *, older_than: float) -> int:
        cursor = await self._db.execute("DELETE FROM turns WHERE created_at < ?", (older_than,))
        deleted = cursor.rowcount
        await self._delete_orphan_images(time.time())
        await self._db.commit()
        return deleted

    async def record_usage(self, record: UsageRecord) -> None:
        await self._db.execute(
            "INSERT INTO usage (day, chat_id, user_id, outcome, error_kind, prompt_tokens, completion_tokens, "
            "total_tokens, estimated, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _usage_values(record))
        await self._db.commit()

    async def reserve_usage(self, record: UsageRecord, *, user_budget: int | None,
                            chat_budget: int | None) -> int | None:
        """One statement on the one connection: no other reservation can slip in between check and insert."""
        cursor = await self._db.execute(
            "INSERT INTO usage (day, chat_id, user_id, outcome, error_kind, prompt_tokens, completion_tokens, "
            "total_tokens, estimated, created_at) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "
            "WHERE (? IS NULL OR (SELECT COALESCE(SUM(total_tokens), 0) FROM usage WHERE day = ? AND user_id = ?) < ?)"
            " AND (? IS NULL OR (SELECT COALESCE(SUM(total_tokens), 0) FROM usage WHERE day = ? AND chat_id = ?) < ?)",
            (*_usage_values(record), user_budget, record.day, record.user_id, user_budget,
             chat_budget, record.day, record.chat_id, chat_budget))
        await self._db.commit()
        return cursor.lastrowid if cursor.rowcount == 1 else None

    async def settle_usage(self, reservation: int, record: UsageRecord) -> None:
        await self._db.execute(
            "UPDATE usage SET outcome = ?, error_kind = ?, prompt_tokens = ?, completion_tokens = ?, "
            "total_tokens = ?, estimated = ?, created_at = ? WHERE id = ?", (*_usage_values(record)[3:], reservation))
        await self._db.commit()

    async def tokens_on(self, day: str, *, user_id: int | None = None, chat_id: int | None = None) -> int:
        column, value = ("user_id", user_id) if user_id is not None else ("chat_id", chat_id)
        cursor = await self._db.execute(
            f"SELECT COALESCE(SUM(total_tokens), 0) FROM usage WHERE day = ? AND {column} = ?", (day, value))
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def usage_totals(self, since_day: str) -> list[UsageTotal]:
        cursor = await self._db.execute(
            "SELECT day, chat_id, outcome, COALESCE(error_kind, ''), COUNT(*), SUM(total_tokens) FROM usage "
            "WHERE day >= ? GROUP BY day, chat_id, outcome, error_kind ORDER BY day DESC, SUM(total_tokens) DESC",
            (since_day,),
        )
        return [UsageTotal(day=row[0], chat_id=row[1], outcome=row[2], error_kind=row[3] or None, answers=row[4],
                           tokens=row[5] or 0) for row in await cursor.fetchall()]

    async def chat_model(self, key: ConversationKey) -> str | None:
        cursor = await self._db.execute(
            "SELECT model FROM chat_models WHERE chat_id = ? AND thread_id = ?", (key.chat_id, key.thread_id))
        row = await cursor.fetchone()
        return str(row[0]) if row else None

    async def set_chat_model(self, key: ConversationKey, model: str | None) -> None:
        if model is None:
            await self._db.execute(
                "DELETE FROM chat_models WHERE chat_id = ? AND thread_id = ?", (key.chat_id, key.thread_id))
        else:
            await self._db.execute(
                "INSERT INTO chat_models (chat_id, thread_id, model, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (chat_id, thread_id) DO UPDATE SET model = excluded.model, "
                "updated_at = excluded.updated_at",
                (key.chat_id, key.thread_id, model, time.time()),
            )
        await self._db.commit()

    async def _delete_orphan_images(self, now: float) -> None:
        await self._db.execute(
            "DELETE FROM images WHERE created_at < ? "
            "AND NOT EXISTS (SELECT 1 FROM turn_images WHERE turn_images.image_id = images.image_id)",
            (now - _ORPHAN_GRACE_SECONDS,),
        )


    async def receive_update(self, update_id: int, chat_id: int | None, payload: str, *, now: float) -> bool:
        cursor = await self._db.execute(
            "INSERT INTO inbox (update_id, chat_id, payload, state, received_at, updated_at) "
            "VALUES (?, ?, ?, 'received', ?, ?) ON CONFLICT (update_id) DO NOTHING",
            (update_id, chat_id, payload, now, now))
        await self._db.commit()
        return cursor.rowcount == 1

    async def inbox_entry(self, update_id: int) -> InboxEntry | None:
        cursor = await self._db.execute(f"SELECT {_INBOX_COLUMNS} FROM inbox WHERE update_id = ?", (update_id,))
        row = await cursor.fetchone()
        return InboxEntry(*row) if row else None

    async def set_update_state(self, update_id: int, state: str, *, now: float, message_id: int | None = None,
                               answer: str | None = None) -> None:
        await self._db.execute(
            "UPDATE inbox SET state = ?, updated_at = ?, message_id = COALESCE(?, message_id), "
            "answer = COALESCE(?, answer) WHERE update_id = ?", (state, now, message_id, answer, update_id))
        await self._db.commit()

    async def unfinished_updates(self, *, limit: int = 10_000) -> list[InboxEntry]:
        marks = ",".join("?" * len(UNFINISHED_STATES))
        cursor = await self._db.execute(
            f"SELECT {_INBOX_COLUMNS} FROM inbox WHERE state IN ({marks}) ORDER BY update_id LIMIT ?",
            (*UNFINISHED_STATES, limit))
        return [InboxEntry(*row) for row in await cursor.fetchall()]

    async def earlier_unfinished(self, chat_id: int, update_id: int) -> bool:
        marks = ",".join("?" * len(UNFINISHED_STATES))
        cursor = await self._db.execute(
            f"SELECT 1 FROM inbox WHERE chat_id = ? AND update_id < ? AND state IN ({marks}) LIMIT 1",
            (chat_id, update_id, *UNFINISHED_STATES))
        return await cursor.fetchone() is not None

    async def prune_inbox(self, *, older_than: float) -> int:
        marks = ",".join("?" * len(UNFINISHED_STATES))
        cursor = await self._db.execute(
            f"DELETE FROM inbox WHERE updated_at < ? AND state NOT IN ({marks})", (older_than, *UNFINISHED_STATES))
        await self._db.commit()
        return cursor.rowcount

    async def prune_usage(self, *, before_day: str) -> int:
        cursor = await self._db.execute("DELETE FROM usage WHERE day < ?", (before_day,))
        await self._db.commit()
        return cursor.rowcount

    async def maintain(self) -> None:
        """A long-running bot never closes the database: fold the WAL back so it does not grow without bound.

        A checkpoint meeting a statement still running on the connection is skipped: the next sweep does it."""
        try:
            await self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.OperationalError as exc:
            log.info("WAL checkpoint skipped (%s); the next sweep tries again", exc)


def _usage_values(record: UsageRecord) -> tuple[object, ...]:
    return (record.day, record.chat_id, record.user_id, record.outcome, record.error_kind, record.usage.prompt_tokens,
            record.usage.completion_tokens, record.usage.total_tokens, int(record.estimated), record.created_at)


_INBOX_COLUMNS = "update_id, chat_id, payload, state, received_at, updated_at, message_id, answer"


def _turn_from_row(row: aiosqlite.Row, image_ids: tuple[str, ...]) -> Turn:
    _, role, author, text, prompt_tokens, completion_tokens, total_tokens, created_at = row
    usage = None
    if total_tokens is not None:
        usage = Usage(prompt_tokens or 0, completion_tokens or 0, total_tokens)
    return Turn(role=role, text=text, created_at=created_at, image_ids=image_ids, author=author, usage=usage)
