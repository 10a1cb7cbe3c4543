"""PostgreSQL storage through one asyncpg pool, for several bot processes sharing one database."""

from __future__ import annotations

import time
from collections.abc import Iterable

import asyncpg

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
from bot.storage.postgres_schema import migrate

# An image saved moments ago may belong to a turn that is about to be written.
_ORPHAN_GRACE_SECONDS = 300.0

_INBOX_COLUMNS = "update_id, chat_id, payload, state, received_at, updated_at, message_id, answer"

# Turns go and their images with them, in one statement: the images still referenced after the deletion are those
# with a link from a turn that stays (one statement sees one snapshot, so the cascaded links are still visible).
_DELETE_TURNS_AND_ORPHANS = """
    WITH gone AS (DELETE FROM turns WHERE {condition} RETURNING id),
    orphans AS (
        DELETE FROM images WHERE created_at < $1 AND NOT EXISTS (
            SELECT 1 FROM turn_images
            WHERE turn_images.image_id = images.image_id AND turn_images.turn_id NOT IN (SELECT id FROM gone)))
    SELECT COUNT(*) FROM gone
"""


class PostgresConversationStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 1, max_size: int = 10) -> PostgresConversationStore:
        """Connect (postgresql:// or postgres:// URL) and migrate to the newest schema."""
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
        try:
            async with pool.acquire() as connection:
                await migrate(connection)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    async def recent_turns(self, key: ConversationKey, *, limit: int, idle_after: float, now: float) -> list[Turn]:
        rows = await self._pool.fetch(
            "SELECT role, author, text, prompt_tokens, completion_tokens, total_tokens, created_at, "
            "ARRAY(SELECT image_id FROM turn_images WHERE turn_id = turns.id ORDER BY position) "
            "FROM turns WHERE chat_id = $1 AND thread_id = $2 ORDER BY id DESC LIMIT $3",
            key.chat_id, key.thread_id, limit,
        )
        live: list[asyncpg.Record] = []
        newer = now
        for row in rows:
            if newer - row["created_at"] > idle_after:
                break
            live.append(row)
            newer = row["created_at"]
        live.reverse()
        return [_turn_from_row(row) for row in live]

    async def add_turn(self, key: ConversationKey, turn: Turn) -> None:
        usage = turn.usage
        await self._pool.execute(
            "WITH turn AS (INSERT INTO turns (chat_id, thread_id, role, author, text, prompt_tokens, "
            "completion_tokens, total_tokens, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id) "
            "INSERT INTO turn_images (turn_id, position, image_id) "
            "SELECT turn.id, linked.position - 1, linked.image_id "
            "FROM turn, unnest($10::text[]) WITH ORDINALITY AS linked (image_id, position)",
            key.chat_id,
            key.thread_id,
            turn.role,
            turn.author,
            turn.text,
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
            usage.total_tokens if usage else None,
            turn.created_at,
            list(turn.image_ids),
        )

    async def clear(self, key: ConversationKey) -> None:
        await self._pool.execute(
            _DELETE_TURNS_AND_ORPHANS.format(condition="chat_id = $2 AND thread_id = $3"),
            time.time() - _ORPHAN_GRACE_SECONDS, key.chat_id, key.thread_id,
        )

    async def save_image(self, image: PreparedImage, *, now: float) -> None:
        await self._pool.execute(
            "INSERT INTO images (image_id, mime, data, created_at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (image_id) DO UPDATE SET created_at = excluded.created_at",
            image.image_id, image.mime, image.data, now,
        )

    async def load_images(self, image_ids: Iterable[str]) -> dict[str, PreparedImage]:
        wanted = list(dict.fromkeys(image_ids))
        if not wanted:
            return {}
        rows = await self._pool.fetch(
            "SELECT image_id, mime, data FROM images WHERE image_id = ANY($1::text[])", wanted)
        return {row[0]: PreparedImage(image_id=row[0], mime=row[1], data=row[2]) for row in rows}

    async def prune(self, *, older_than: float) -> int:
        deleted = await self._pool.fetchval(
            _DELETE_TURNS_AND_ORPHANS.format(condition="created_at < $2"),
            time.time() - _ORPHAN_GRACE_SECONDS, older_than,
        )
        return int(deleted)

    async def record_usage(self, record: UsageRecord) -> None:
        await self._pool.execute(
            "INSERT INTO usage (day, chat_id, user_id, outcome, error_kind, prompt_tokens, completion_tokens, "
            "total_tokens, estimated, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            record.day, record.chat_id, record.user_id, record.outcome, record.error_kind,
            record.usage.prompt_tokens, record.usage.completion_tokens, record.usage.total_tokens,
            record.estimated, record.created_at,
        )

    async def reserve_usage(self, record: UsageRecord, *, user_budget: int | None,
                            chat_budget: int | None) -> int | None:
        """Replicas reserve at once: a transaction-scoped lock per user and per chat orders their check-and-insert."""
        async with self._pool.acquire() as connection, connection.transaction():
            for scope, value in (("user", record.user_id), ("chat", record.chat_id)):
                if value is not None:
                    await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"usage:{scope}:{value}")
            return await connection.fetchval(
                "INSERT INTO usage (day, chat_id, user_id, outcome, error_kind, prompt_tokens, completion_tokens, "
                "total_tokens, estimated, created_at) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 "
                "WHERE ($11::bigint IS NULL OR (SELECT COALESCE(SUM(total_tokens), 0) FROM usage "
                "WHERE day = $1 AND user_id = $3) < $11) AND ($12::bigint IS NULL OR (SELECT "
                "COALESCE(SUM(total_tokens), 0) FROM usage WHERE day = $1 AND chat_id = $2) < $12) RETURNING id",
                record.day, record.chat_id, record.user_id, record.outcome, record.error_kind,
                record.usage.prompt_tokens, record.usage.completion_tokens, record.usage.total_tokens,
                record.estimated, record.created_at, user_budget, chat_budget)

    async def settle_usage(self, reservation: int, record: UsageRecord) -> None:
        await self._pool.execute(
            "UPDATE usage SET outcome = $1, error_kind = $2, prompt_tokens = $3, completion_tokens = $4, "
            "total_tokens = $5, estimated = $6, created_at = $7 WHERE id = $8",
            record.outcome, record.error_kind, record.usage.prompt_tokens, record.usage.completion_tokens,
            record.usage.total_tokens, record.estimated, record.created_at, reservation)

    async def tokens_on(self, day: str, *, user_id: int | None = None, chat_id: int | None = None) -> int:
        column, value = ("user_id", user_id) if user_id is not None else ("chat_id", chat_id)
        total = await self._pool.fetchval(
            f"SELECT COALESCE(SUM(total_tokens), 0) FROM usage WHERE day = $1 AND {column} = $2", day, value)
        return int(total)

    async def usage_totals(self, since_day: str) -> list[UsageTotal]:
        rows = await self._pool.fetch(
            "SELECT day, chat_id, outcome, error_kind, COUNT(*), SUM(total_tokens) FROM usage "
            "WHERE day >= $1 GROUP BY day, chat_id, outcome, error_kind ORDER BY day DESC, SUM(total_tokens) DESC",
            since_day,
        )
        return [UsageTotal(day=row[0], chat_id=row[1], outcome=row[2], error_kind=row[3] or None, answers=row[4],
                           tokens=int(row[5] or 0)) for row in rows]

    async def chat_model(self, key: ConversationKey) -> str | None:
        return await self._pool.fetchval(
            "SELECT model FROM chat_models WHERE chat_id = $1 AND thread_id = $2", key.chat_id, key.thread_id)

    async def set_chat_model(self, key: ConversationKey, model: str | None) -> None:
        if model is None:
            await self._pool.execute(
                "DELETE FROM chat_models WHERE chat_id = $1 AND thread_id = $2", key.chat_id, key.thread_id)
            return
        await self._pool.execute(
            "INSERT INTO chat_models (chat_id, thread_id, model, updated_at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (chat_id, thread_id) DO UPDATE SET model = excluded.model, updated_at = excluded.updated_at",
            key.chat_id, key.thread_id, model, time.time(),
        )

    async def receive_update(self, update_id: int, chat_id: int | None, payload: str, *, now: float) -> bool:
        # Replicas receiving the same update race here; the primary key lets exactly one insert win.
        inserted = await self._pool.fetchval(
            "INSERT INTO inbox (update_id, chat_id, payload, state, received_at, updated_at) "
            "VALUES ($1, $2, $3, 'received', $4, $4) ON CONFLICT (update_id) DO NOTHING RETURNING TRUE",
            update_id, chat_id, payload, now,
        )
        return inserted is not None

    async def inbox_entry(self, update_id: int) -> InboxEntry | None:
        row = await self._pool.fetchrow(f"SELECT {_INBOX_COLUMNS} FROM inbox WHERE update_id = $1", update_id)
        return InboxEntry(*row) if row else None

    async def set_update_state(self, update_id: int, state: str, *, now: float, message_id: int | None = None,
                               answer: str | None = None) -> None:
        await self._pool.execute(
            "UPDATE inbox SET state = $1, updated_at = $2, message_id = COALESCE($3, message_id), "
            "answer = COALESCE($4, answer) WHERE update_id = $5",
            state, now, message_id, answer, update_id,
        )

    async def unfinished_updates(self, *, limit: int = 10_000) -> list[InboxEntry]:
        rows = await self._pool.fetch(
            f"SELECT {_INBOX_COLUMNS} FROM inbox WHERE state = ANY($1::text[]) ORDER BY update_id LIMIT $2",
            list(UNFINISHED_STATES), limit,
        )
        return [InboxEntry(*row) for row in rows]

    async def earlier_unfinished(self, chat_id: int, update_id: int) -> bool:
        return bool(await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM inbox WHERE chat_id = $1 AND update_id < $2 AND state = ANY($3::text[]))",
            chat_id, update_id, list(UNFINISHED_STATES)))

    async def prune_inbox(self, *, older_than: float) -> int:
        status = await self._pool.execute(
            "DELETE FROM inbox WHERE updated_at < $1 AND state <> ALL($2::text[])",
            older_than, list(UNFINISHED_STATES),
        )
        return _affected(status)

    async def prune_usage(self, *, before_day: str) -> int:
        return _affected(await self._pool.execute("DELETE FROM usage WHERE day < $1", before_day))

    async def maintain(self) -> None:
        """Nothing to do: autovacuum keeps PostgreSQL's tables and WAL in shape by itself."""


def _affected(status: str) -> int:
    """Rows a command touched, from its status tag ("DELETE 3")."""
    return int(status.rsplit(" ", 1)[-1])


def _turn_from_row(row: asyncpg.Record) -> Turn:
    role, author, text, prompt_tokens, completion_tokens, total_tokens, created_at, image_ids = row
    usage = None
    if total_tokens is not None:
        usage = Usage(prompt_tokens or 0, completion_tokens or 0, total_tokens)
    return Turn(role=role, text=text, created_at=created_at, image_ids=tuple(image_ids), author=author, usage=usage)
