"""ALLOWED_USER_IDS / ALLOWED_CHAT_IDS: everyone else is politely refused in private and ignored in groups."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import Message, TelegramObject

from bot.handlers.common import user_language
from bot.texts import text

log = logging.getLogger(__name__)


class AccessMiddleware(BaseMiddleware):
    """Empty lists mean open to all; otherwise an allowed user may ask anywhere, and anyone in an allowed chat."""

    def __init__(self, allowed_users: frozenset[int], allowed_chats: frozenset[int]) -> None:
        self._users = allowed_users
        self._chats = allowed_chats

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if not isinstance(event, Message) or self._allowed(event):
            return await handler(event, data)
        user_id = event.from_user.id if event.from_user else None
        log.info("refused user %s in chat %s: not on the allow lists", user_id, event.chat.id)
        if event.chat.type == "private":
            await event.answer(text("access_denied", user_language(event)).format(user_id=user_id), parse_mode=None)
        return None

    def _allowed(self, message: Message) -> bool:
        if not self._users and not self._chats:
            return True
        user_id = message.from_user.id if message.from_user else None
        return user_id in self._users or message.chat.id in self._chats
