"""Where updates come in: polling or the webhook hands each to the intake, which records it, then handles it.

Recording comes first: the polling offset moves past an update, and a webhook request is answered 200, only
once the update is in the inbox. Handling runs in a task of its own (one per update; aiogram's middlewares keep
each chat in order), so a slow answer never holds up receiving. On start, whatever a crash interrupted is fed
again, in update order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress

from aiogram import Bot, Dispatcher
from aiogram.types import Update

from bot.coordination import Coordinator
from bot.models import UNFINISHED_STATES, InboxEntry
from bot.services.inbox import Inbox, Ticket

log = logging.getLogger(__name__)

# With replicas: how often each looks for updates a dead replica left, and how old they must be (an album item
# waits up to ALBUM_LONGEST_SECONDS for its first item to collect it, a replica's hold lapses in ~10 s).
SCAN_SECONDS = 5.0
WORK_WAIT_SECONDS = 2.0
# An update is confirmed once in its chat's line; a handler that fails before that does not hold Telegram up.
QUEUED_WITHIN_SECONDS = 2.0
TAKE_OVER_AFTER_SECONDS = 20.0


class Intake:
    def __init__(self, dispatcher: Dispatcher, bot: Bot, inbox: Inbox, coordinator: Coordinator) -> None:
        self._dispatcher = dispatcher
        self._bot = bot
        self._inbox = inbox
        self._coordinator = coordinator
        self._tasks: set[asyncio.Task[None]] = set()
        self._deferred: set[int] = set()  # album items held until the album's first item has finished

    async def accept(self, update: Update, *, share: bool = False) -> bool:
        """Record the update, then start handling it (`share`: offer it to every replica instead); False (and
        nothing handled) for a duplicate."""
        payload = update.model_dump_json(exclude_none=True)
        if not await self._inbox.receive(update.update_id, _chat_of(update), payload):
            return False
        if share:
            await self._coordinator.offer(update.update_id)
        elif await self._coordinator.hold_update(update.update_id):  # else a replica's scan took it already
            ticket = Ticket(update.update_id)
            self._spawn(update, ticket)
            with suppress(TimeoutError):
                await asyncio.wait_for(ticket.queued.wait(), QUEUED_WITHIN_SECONDS)
        return True

    async def resume(self) -> int:
        """One replica: at start, feed again every update a crash (or a cut-off at shutdown) left unfinished."""
        return await self._take_over(await self._inbox.unfinished())

    async def watch(self, *, every: float = SCAN_SECONDS, older_than: float = TAKE_OVER_AFTER_SECONDS) -> None:
        """Several replicas: take over, now and then, unfinished updates no live replica holds (one died)."""
        while True:
            cut_off = time.time() - older_than
            entries = [entry for entry in await self._inbox.unfinished() if entry.received_at < cut_off]
            await self._take_over(entries)
            await self._release_finished_album_items()
            await asyncio.sleep(every)

    async def work(self) -> None:
        """Polling with replicas: take the updates the poller offers (each replica, the poller too)."""
        while True:
            update_id = await self._coordinator.take(WORK_WAIT_SECONDS)
            if update_id is None or not await self._coordinator.hold_update(update_id):
                continue
            entry = await self._inbox.entry(update_id)
            if entry is None or entry.state not in UNFINISHED_STATES:
                await self._coordinator.release_update(update_id)
                continue
            self._spawn(Update.model_validate_json(entry.payload, context={"bot": self._bot}), Ticket(update_id))

    async def close(self) -> None:
        """After the dispatcher's drain: whatever still runs is cut off (and resumed at the next start)."""
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with suppress(asyncio.CancelledError):
                await task

    async def _take_over(self, entries: list[InboxEntry]) -> int:
        taken = 0
        for listed in entries:
            if listed.update_id in self._deferred or not await self._coordinator.hold_update(listed.update_id):
                continue
            # Read again once held: the replica that had it may have finished it since the list was made.
            entry = await self._inbox.entry(listed.update_id)
            if entry is None or entry.state not in UNFINISHED_STATES:
                await self._coordinator.release_update(listed.update_id)
                continue
            update = Update.model_validate_json(entry.payload, context={"bot": self._bot})
            self._spawn(update, Ticket.resuming(entry))
            taken += 1
        if taken:
            log.info("resuming %d unfinished update(s)", taken)
        return taken

    async def _release_finished_album_items(self) -> None:
        for update_id in list(self._deferred):
            entry = await self._inbox.entry(update_id)
            if entry is None or entry.state not in UNFINISHED_STATES:
                self._deferred.discard(update_id)
                await self._coordinator.release_update(update_id)

    def _spawn(self, update: Update, ticket: Ticket) -> None:
        task = asyncio.create_task(self._handle(update, ticket), name=f"update:{update.update_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, update: Update, ticket: Ticket) -> None:
        try:
            await self._dispatcher.feed_update(self._bot, update, ticket=ticket)
        except asyncio.CancelledError:
            await self._coordinator.release_update(update.update_id)
            raise  # not finished: resumed at the next start, or by another replica
        except Exception:
            log.exception("update %s failed", update.update_id)
            ticket.failed = True
        await self._inbox.finish(ticket)
        if ticket.deferred and self._coordinator.shared:
            self._deferred.add(update.update_id)  # released once the album's first item has finished
        else:
            await self._coordinator.release_update(update.update_id)


def _chat_of(update: Update) -> int | None:
    for event in (update.message, update.edited_message, update.channel_post, update.callback_query):
        if event is None:
            continue
        chat = getattr(event, "chat", None) or getattr(getattr(event, "message", None), "chat", None)
        if chat is not None:
            return int(chat.id)
    return None
