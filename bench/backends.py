"""Where the bot under test keeps its state: SQLite (one process) or PostgreSQL + Redis (one or more replicas).

`pg-redis` gives every run a database of its own (`tests/postgres.py`: created from template0, dropped with FORCE
afterwards) and a Redis key prefix of its own (its keys deleted afterwards), so runs never see each
other's conversations, inbox or coordination state.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from redis.asyncio import Redis

from tests.postgres import fresh_database

BACKENDS = ("sqlite", "pg-redis")
POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"  # the server to create the run's database on
REDIS_URL = "redis://127.0.0.1:6379/0"


@asynccontextmanager
async def storage_env(backend: str, workdir: Path, *, postgres_dsn: str = POSTGRES_DSN,
                      redis_url: str = REDIS_URL) -> AsyncIterator[dict[str, str]]:
    """The bot's environment for the backend (DATABASE_URL, and REDIS_URL + REDIS_PREFIX); cleaned up after."""
    if backend == "sqlite":
        yield {"DATABASE_URL": f"sqlite:///{workdir / 'bot.sqlite3'}"}
        return
    if backend != "pg-redis":
        raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    prefix = f"bench-vision-{uuid.uuid4().hex[:12]}:"
    redis = Redis.from_url(redis_url)
    try:
        await redis.ping()
        async with fresh_database(postgres_dsn) as database_url:
            try:
                yield {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "REDIS_PREFIX": prefix}
            finally:
                keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
                if keys:
                    await redis.delete(*keys)
    finally:
        await redis.aclose()
