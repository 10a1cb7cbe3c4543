"""Bot-wide pacing of messages, so answers streaming at once never add up to Telegram's flood limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# Telegram: about 1 message/s in one chat, 20/min in a group, 30/s for the whole bot (we keep a margin).
PRIVATE_INTERVAL = 1.0
GROUP_INTERVAL = 3.0
BOT_PER_SECOND = 25.0
_PRUNE_ABOVE = 4096


class UpdatePacer:
    """Reserves send slots: first the chat's own spacing, then a bot-wide slot, in arrival order."""

    def __init__(
        self,
        *,
        private_interval: float = PRIVATE_INTERVAL,
        group_interval: float = GROUP_INTERVAL,
        bot_per_second: float = BOT_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._private_interval = private_interval
        self._group_interval = group_interval
        self._bot_gap = 1.0 / bot_per_second
        self._clock = clock
        self._chat_next: dict[int, float] = {}
        self._bot_next = 0.0

    async def wait_turn(self, chat_id: int) -> None:
        """Returns when a message may go to `chat_id`; a caller cancelled while waiting reserves nothing."""
        while (wait := self._chat_next.get(chat_id, 0.0) - self._clock()) > 0:  # noqa: ASYNC110 - deadline moves
            await asyncio.sleep(wait)
        interval = self._group_interval if chat_id < 0 else self._private_interval
        now = self._clock()
        self._chat_next[chat_id] = now + interval
        slot = max(now, self._bot_next)
        self._bot_next = slot + self._bot_gap
        if slot > now:
            await asyncio.sleep(slot - now)
        self._prune()

    def pause_chat(self, chat_id: int, seconds: float) -> None:
        """Telegram said "retry after N": nothing more goes to that chat until then."""
        resume_at = self._clock() + seconds
        self._chat_next[chat_id] = max(self._chat_next.get(chat_id, 0.0), resume_at)

    def _prune(self) -> None:
        if len(self._chat_next) > _PRUNE_ABOVE:
            now = self._clock()
            self._chat_next = {chat: at for chat, at in self._chat_next.items() if at > now}
