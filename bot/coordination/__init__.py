"""The seam for what replicas share: `open_coordinator` picks Redis when a URL is configured, else this process."""

from __future__ import annotations

from bot.coordination.base import Coordinator, SendBudget, StopListener
from bot.coordination.local import LocalCoordinator

__all__ = ["Coordinator", "LocalCoordinator", "SendBudget", "StopListener", "open_coordinator"]


async def open_coordinator(redis_url: str | None, *, key_prefix: str = "vision-bot:") -> Coordinator:
    """One replica without `redis_url`; with it, one of any number sharing that Redis (raises if unreachable)."""
    if redis_url is None:
        return LocalCoordinator()
    from bot.coordination.redis import RedisCoordinator  # redis-py only where it is used (~5 MB otherwise)

    return await RedisCoordinator.connect(redis_url, key_prefix=key_prefix)
