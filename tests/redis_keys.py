"""Redis keys of one test: a prefix of its own, deleted afterwards (tests share one Redis, several at once)."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis


def unique_prefix() -> str:
    return f"test-coordination-{uuid.uuid4().hex[:12]}:"


async def delete_keys(redis_url: str, prefix: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
