"""Who may change a chat's settings: anyone in a private chat; in groups its admins and the bot's operators."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from aiogram import Bot
from aiogram.enums import ChatMemberStatus
from aiogram.exceptions import TelegramAPIError

log = logging.getLogger(__name__)

ADMIN_STATUSES = frozenset({ChatMemberStatus.CREATOR, ChatMemberStatus.ADMINISTRATOR})
# Past this many cached answers, expired ones are dropped (a busy bot sees many (chat, user) pairs).
_CACHE_SWEEP_AT = 4096


class ChatAdmins:
    """Asks Telegram (getChatMember) and caches the answer per (chat, user) for `ttl` seconds.

    The cache spares Telegram a call per settings command; a demoted admin keeps their rights for at most `ttl`.
    Telegram errors are not cached: a passing failure refuses once, not for a whole minute.
    """

    def __init__(self, bot: Bot, admin_ids: Iterable[int], ttl: float = 60.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._bot = bot
        self._admin_ids = frozenset(admin_ids)
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[tuple[int, int], tuple[float, bool]] = {}

    async def may_configure(self, chat_id: int, chat_type: str, user_id: int | None, *,
                            sender_chat_id: int | None = None) -> bool:
        """True when this user may change settings of this chat.

        `sender_chat_id` is the chat a message was sent on behalf of: only a group's anonymous admins can post
        as the group itself, so that is proof enough without asking Telegram.
        """
        if chat_type == "private":
            return True
        if user_id is not None and user_id in self._admin_ids:
            return True
        if sender_chat_id is not None and sender_chat_id == chat_id:
            return True
        if user_id is None:
            return False
        return await self._is_admin(chat_id, user_id)

    async def _is_admin(self, chat_id: int, user_id: int) -> bool:
        now = self._clock()
        cached = self._cache.get((chat_id, user_id))
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            member = await self._bot.get_chat_member(chat_id, user_id)
        except TelegramAPIError as exc:
            log.warning("cannot tell whether user %s is an admin of chat %s: %s", user_id, chat_id, exc)
            return False
        allowed = member.status in ADMIN_STATUSES
        if len(self._cache) >= _CACHE_SWEEP_AT:
            self._cache = {pair: entry for pair, entry in self._cache.items() if entry[0] > now}
        self._cache[(chat_id, user_id)] = (now + self._ttl, allowed)
        return allowed
