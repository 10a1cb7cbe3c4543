"""In-order handling per chat, concurrency across chats, and a clean drain at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.coordination import Coordinator
from bot.services.inbox import Inbox

log = logging.getLogger(__name__)

ALBUM_QUIET_SECONDS = 0.6
ALBUM_LONGEST_SECONDS = 3.0
EARLIER_UPDATE_POLL_SECONDS = 0.5


class ChatQueue:
    """One update of a chat at a time, in update order (across replicas with Redis); tracks the work for shutdown."""

    def __init__(self, coordinator: Coordinator, inbox: Inbox) -> None:
        self._coordinator = coordinator
        self._inbox = inbox
        self._tasks: set[asyncio.Task[object]] = set()

    @asynccontextmanager
    async def turn(self, chat_id: int, update_id: int, *, queued: asyncio.Event | None = None) -> AsyncIterator[None]:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                async with self._coordinator.chat_turn(chat_id, update_id, queued=queued):
                    if not await self._earlier_update_pending(chat_id, update_id):
                        yield
                        return
                # The turn is free meanwhile: the earlier update may take it.
                await asyncio.sleep(EARLIER_UPDATE_POLL_SECONDS)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _earlier_update_pending(self, chat_id: int, update_id: int) -> bool:
        """With replicas, an earlier update of the chat may wait for a takeover (its replica died before it took
        the turn): this one waits too. Alone, turns already come in update order."""
        return self._coordinator.shared and await self._inbox.earlier_unfinished(chat_id, update_id)

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
