"""The one bot-wide scheduler for messages that stream: every draft, send and edit asks it for a turn.

Telegram allows about 1 message/s in a chat, 20/min in a group and 30/s for the whole bot; a bot whose
answers each keep their own pace gets flood bans. Here every request waits in one queue: the first visible
text and final messages go before progress updates, progress updates are served oldest first (so chats take
turns fairly, and with many streams each is updated less often), a chat is never served before its spacing
allows, and the whole bot stays under its rate. Each stream has at most one request waiting, so the queue is
bounded by the number of live answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from bot.coordination import SendBudget

# Telegram: about 1 message/s in one chat, 20/min in a group, 30/s for the whole bot (we keep a margin).
PRIVATE_INTERVAL = 1.0
GROUP_INTERVAL = 3.1
BOT_PER_SECOND = 25.0
# Two chats flood-limited within this window means the limit is the bot's, not theirs.
_GLOBAL_FLOOD_WINDOW = 1.0
_PRUNE_ABOVE = 4096


class Priority(IntEnum):
    URGENT = 0  # the first visible text of an answer, final messages
    PROGRESS = 1  # a newer version of text already shown


@dataclass(order=True)
class _Request:
    priority: int
    sequence: int
    chat_id: int = field(compare=False)
    granted: asyncio.Future[None] = field(compare=False)


class UpdatePacer:
    def __init__(
        self,
        *,
        private_interval: float = PRIVATE_INTERVAL,
        group_interval: float = GROUP_INTERVAL,
        bot_per_second: float = BOT_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
        shared_budget: SendBudget | None = None,
    ) -> None:
        """`shared_budget` (Redis, several replicas): each turn this pacer grants is also reserved there, so all
        replicas together keep Telegram's budgets; the turn is granted when the shared slot comes."""
        self._shared_budget = shared_budget
        self._reserving: list[_Request] = []
        self._background: set[asyncio.Task[None]] = set()
        self._private_interval = private_interval
        self._group_interval = group_interval
        self._bot_gap = 1.0 / bot_per_second
        self._clock = clock
        self._chat_next: dict[int, float] = {}
        self._bot_next = 0.0
        self._waiting: list[_Request] = []
        self._sequence = itertools.count()
        self._changed = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._last_flood: tuple[int, float] | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def wait_turn(self, chat_id: int, priority: Priority = Priority.PROGRESS) -> None:
        """Returns when a message may go to `chat_id`; a caller cancelled while waiting takes no slot."""
        request = _Request(priority, next(self._sequence), chat_id, asyncio.get_running_loop().create_future())
        self._waiting.append(request)
        self._ensure_worker()
        self._changed.set()
        try:
            await request.granted
        finally:
            if request in self._waiting:  # cancelled before its turn: it takes no slot
                self._waiting.remove(request)
                self._changed.set()

    def pause_chat(self, chat_id: int, seconds: float) -> None:
        """Telegram said "retry after N" for this chat; a second chat saying so soon after means the whole bot."""
        now = self._clock()
        self._chat_next[chat_id] = max(self._chat_next.get(chat_id, 0.0), now + seconds)
        whole_bot = self._last_flood is not None and self._last_flood[0] != chat_id \
            and now - self._last_flood[1] < _GLOBAL_FLOOD_WINDOW
        if whole_bot:
            self._bot_next = max(self._bot_next, now + seconds)
        self._last_flood = (chat_id, now)
        self._changed.set()
        if self._shared_budget is not None:
            task = asyncio.get_running_loop().create_task(
                self._shared_budget.pause(chat_id, seconds, whole_bot=whole_bot))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        # The flag, not only the cancel: on Python 3.11 wait_for may swallow a cancel that races its wake-up.
        self._closed = True
        self._changed.set()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._grant_turns(), name="update-pacer")

    async def _grant_turns(self) -> None:
        while not self._closed:
            self._changed.clear()
            wait = self._grant_next()
            if self._reserving:
                await self._reserve_shared()
            if wait == 0.0:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=wait)

    def _grant_next(self) -> float | None:
        """Grant one turn if possible and return 0; else how long until one may be possible (None: idle)."""
        now = self._clock()
        if self._bot_next > now:
            return self._bot_next - now
        ready = [request for request in self._waiting if self._chat_next.get(request.chat_id, 0.0) <= now]
        if not ready:
            if not self._waiting:
                return None
            return min(self._chat_next[request.chat_id] for request in self._waiting) - now
        chosen = min(ready)
        self._waiting.remove(chosen)
        if chosen.granted.done():
            return 0.0
        interval = self._group_interval if chosen.chat_id < 0 else self._private_interval
        self._chat_next[chosen.chat_id] = now + interval
        self._bot_next = now + self._bot_gap
        if self._shared_budget is None:
            chosen.granted.set_result(None)
        else:
            self._reserving.append(chosen)
        self._prune(now)
        return 0.0

    async def _reserve_shared(self) -> None:
        """Turns chosen here wait for their slot in the budget all replicas share (granted then, not before)."""
        assert self._shared_budget is not None
        chosen, self._reserving = self._reserving, []
        for request in chosen:
            delay = await self._shared_budget.send_slot(request.chat_id)
            if delay <= 0:
                _grant(request.granted)
                continue
            interval = self._group_interval if request.chat_id < 0 else self._private_interval
            self._chat_next[request.chat_id] = max(self._chat_next.get(request.chat_id, 0.0),
                                                   self._clock() + delay + interval)
            asyncio.get_running_loop().call_later(delay, _grant, request.granted)

    def _prune(self, now: float) -> None:
        if len(self._chat_next) > _PRUNE_ABOVE:
            self._chat_next = {chat: at for chat, at in self._chat_next.items() if at > now}


def _grant(granted: asyncio.Future[None]) -> None:
    if not granted.done():  # a caller cancelled meanwhile takes nothing
        granted.set_result(None)
