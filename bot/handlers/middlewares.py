"""Per-chat ordering and album collection, before any handler runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import TelegramObject, Update

from bot.coordination import Coordinator
from bot.services.inbox import Ticket
from bot.services.ordering import ALBUM_LONGEST_SECONDS, ALBUM_QUIET_SECONDS, ChatQueue


class ChatOrderMiddleware(BaseMiddleware):
    """One chat's updates are handled one after another, in update order; an album arrives as one update.

    Registered on the update observer, so the turn is taken before anything else can suspend the task. Album
    items after the first join the album's collection (on any replica) and stop here; the first reaches the
    handlers with `album` (all items) in its data, and its ticket covers the others.
    """

    def __init__(self, queue: ChatQueue, coordinator: Coordinator) -> None:
        self._queue = queue
        self._coordinator = coordinator

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        ticket: Ticket | None = data.get("ticket")
        if not isinstance(event, Update) or event.message is None:
            if ticket is not None:
                ticket.queued.set()
            return await handler(event, data)
        message = event.message
        album_key = f"{message.chat.id}:{message.media_group_id}" if message.media_group_id else None
        if album_key is not None and not await self._coordinator.album_add(
                album_key, event.update_id, event.model_dump_json(exclude_none=True)):
            if ticket is not None:
                ticket.deferred = True  # finished with the album's first item, which answers for all
                ticket.queued.set()
            return None
        async with self._queue.turn(message.chat.id, event.update_id,
                                    queued=ticket.queued if ticket is not None else None):
            if album_key is not None:
                items = await self._coordinator.album_collect(album_key, quiet=ALBUM_QUIET_SECONDS,
                                                              longest=ALBUM_LONGEST_SECONDS)
                updates = [Update.model_validate_json(payload, context={"bot": data["bot"]}) for _, payload in items]
                data["album"] = [update.message for update in updates if update.message is not None] or [message]
                if ticket is not None:
                    ticket.covers = [update_id for update_id, _ in items]
            return await handler(event, data)
