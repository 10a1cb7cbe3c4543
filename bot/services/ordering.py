"""In-order handling per chat, concurrency across chats, and a clean drain at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

log = logging.getLogger(__name__)


class ChatQueue:
    """Serialises work per key (FIFO: asyncio locks wake waiters in arrival order); tracks it for shutdown."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}
        self._tasks: set[asyncio.Task[object]] = set()

    @asynccontextmanager
    async def turn(self, key: Hashable) -> AsyncIterator[None]:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
            if task is not None:
                self._tasks.discard(task)

    @property
    def active(self) -> int:
        return len(self._tasks)

    async def drain(self, grace: float, *, cancel_timeout: float = 15.0) -> None:
        """Let work finish for `grace` seconds, then cancel it (answers then close with what they have)."""
        if not self._tasks:
            return
        log.info("waiting up to %.0f s for %d in-flight update(s)", grace, len(self._tasks))
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        if not pending:
            return
        log.warning("cutting off %d update(s) still running after %.0f s", len(pending), grace)
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=cancel_timeout)
