"""Per-chat ordering and album collection, before any handler runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import TelegramObject, Update

from bot.services.inbox import Ticket
from bot.services.ordering import AlbumCollector, ChatQueue


class ChatOrderMiddleware(BaseMiddleware):
    """One chat's updates are handled one after another, in arrival order; an album arrives as one update.

    Registered on the update observer, so the turn is taken before anything else can suspend the task. Album
    items after the first join the first one's collection and stop here; the first reaches the handlers with
    `album` (all items) in its data.
    """

    def __init__(self, queue: ChatQueue, albums: AlbumCollector[Update]) -> None:
        self._queue = queue
        self._albums = albums

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if not isinstance(event, Update) or event.message is None:
            return await handler(event, data)
        message = event.message
        ticket: Ticket | None = data.get("ticket")
        album_key = (message.chat.id, message.media_group_id) if message.media_group_id else None
        if album_key is not None and self._albums.join(album_key, event):
            if ticket is not None:
                ticket.deferred = True  # finished with the album's first item, which answers for all
            return None
        async with self._queue.turn(message.chat.id):
            if album_key is not None:
                items = await self._albums.complete(album_key)
                data["album"] = [item.message for item in items if item.message is not None]
                if ticket is not None:
                    ticket.covers = [item.update_id for item in items]
            return await handler(event, data)
