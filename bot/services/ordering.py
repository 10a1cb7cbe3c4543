"""In-order handling per chat, concurrency across chats, and a clean drain at shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

ALBUM_QUIET_SECONDS = 0.6
ALBUM_LONGEST_SECONDS = 3.0


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


class AlbumCollector(Generic[T]):
    """Telegram sends an album as separate updates sharing a media_group_id, with nothing marking the end.

    The first item opens a collection (synchronously, so later items always find it), the others join it and
    are done; the first then waits until no item arrived for `quiet` seconds (at most `longest`).
    """

    def __init__(self, *, quiet: float = ALBUM_QUIET_SECONDS, longest: float = ALBUM_LONGEST_SECONDS) -> None:
        self._quiet = quiet
        self._longest = longest
        self._open: dict[Hashable, list[T]] = {}
        self._last_arrival: dict[Hashable, float] = {}

    def join(self, key: Hashable, item: T) -> bool:
        """True if `item` joined an album already being collected (the caller has nothing more to do)."""
        items = self._open.get(key)
        if items is None:
            self._open[key] = [item]
            self._last_arrival[key] = time.monotonic()
            return False
        items.append(item)
        self._last_arrival[key] = time.monotonic()
        return True

    async def complete(self, key: Hashable) -> list[T]:
        """Wait for the rest of the album opened by `join`, then close it."""
        started = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                wait = min(self._last_arrival[key] + self._quiet, started + self._longest) - now
                if wait <= 0:
                    return self._open[key]
                await asyncio.sleep(wait)
        finally:
            self._open.pop(key, None)
            self._last_arrival.pop(key, None)
