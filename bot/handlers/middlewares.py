"""Per-chat ordering: one chat's updates are handled one after another, in the order they arrived."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import TelegramObject, Update

from bot.services.ordering import ChatQueue


class ChatOrderMiddleware(BaseMiddleware):
    """Registered on the update observer, so the turn is taken before anything else can suspend the task."""

    def __init__(self, queue: ChatQueue) -> None:
        self._queue = queue

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if not isinstance(event, Update) or event.message is None:
            return await handler(event, data)
        async with self._queue.turn(event.message.chat.id):
            return await handler(event, data)
