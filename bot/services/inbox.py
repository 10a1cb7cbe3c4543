"""The durable inbox: every update is recorded before it is handled, and its question's progress with it.

An update is confirmed to Telegram (polling offset, webhook 200) only once it is recorded; a duplicate update id
is dropped at the door; whatever a crash interrupted (received, asking, generated) is handled again on restart,
in update order, with what the interrupted attempt left behind: its half-written message and, once the provider
had finished, the answer itself (delivered, not asked again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.models import InboxEntry
from bot.storage.base import ConversationStore

log = logging.getLogger(__name__)

ANSWERED = "answered"
FAILED = "failed"


@dataclass(slots=True)
class Ticket:
    """An update being handled: what the handlers tell the inbox, and what a resumed update brings along."""

    update_id: int
    resumed: bool = False
    message_id: int | None = None  # the interrupted attempt's half-written answer
    answer: str | None = None  # the interrupted attempt's complete answer, not yet delivered
    covers: list[int] = field(default_factory=list)  # further updates finished with this one (album items)
    deferred: bool = False  # an album item: finished with the album's first item
    failed: bool = False
    finished: bool = False
    # Set once the update waits in its chat's line: only then is it confirmed to Telegram, so an update of the same
    # chat delivered next (to any replica) queues behind it.
    queued: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def resuming(cls, entry: InboxEntry) -> Ticket:
        return cls(entry.update_id, resumed=True, message_id=entry.message_id, answer=entry.answer)


class Inbox:
    def __init__(self, store: ConversationStore, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def receive(self, update_id: int, chat_id: int | None, payload: str) -> bool:
        """Record a new update; False for an update id seen before (a webhook retry, a replayed offset)."""
        fresh = await self._store.receive_update(update_id, chat_id, payload, now=self._clock())
        if not fresh:
            log.info("update %s was received before: ignored", update_id)
        return fresh

    async def asking(self, ticket: Ticket, *, message_id: int | None = None) -> None:
        """The provider is being asked; `message_id`: the answer's first message (kept for a restart to adopt)."""
        if message_id is not None:
            ticket.message_id = message_id
        state = "generated" if ticket.answer is not None else "asking"  # a late message id keeps "generated"
        await self._store.set_update_state(ticket.update_id, state, now=self._clock(), message_id=message_id)

    async def generated(self, ticket: Ticket, answer: str) -> None:
        """The provider has finished: from here on a restart delivers this text instead of asking again."""
        ticket.answer = answer
        await self._store.set_update_state(ticket.update_id, "generated", now=self._clock(), answer=answer)

    async def finish(self, ticket: Ticket) -> None:
        """Answered (or handled) or failed: it, and the album items it covers, are not handled again."""
        if ticket.finished or ticket.deferred:
            return
        ticket.finished = True
        state = FAILED if ticket.failed else ANSWERED
        for update_id in dict.fromkeys([ticket.update_id, *ticket.covers]):
            await self._store.set_update_state(update_id, state, now=self._clock())

    async def entry(self, update_id: int) -> InboxEntry | None:
        return await self._store.inbox_entry(update_id)

    async def earlier_unfinished(self, chat_id: int, update_id: int) -> bool:
        return await self._store.earlier_unfinished(chat_id, update_id)

    async def unfinished(self) -> list[InboxEntry]:
        return await self._store.unfinished_updates()

    async def prune(self, *, older_than: float) -> int:
        return await self._store.prune_inbox(older_than=older_than)
