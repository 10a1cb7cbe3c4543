"""The one bot-wide scheduler for every Telegram send: a draft, an edit, a command's reply, an alert, a typing action.

Telegram's budgets (bot/telegram_limits.py) are token buckets per chat and for the whole bot. Here every request
waits in one queue: urgent sends (a final message, a reply) go first and may use a chat's whole burst; an answer's
first text goes next and keeps one send of the burst for the final message (so an answer complete before its first
text could go arrives as one final message at once); progress updates are served oldest first (so chats take turns
fairly, and with many streams each is updated less often) and keep that send too; typing is only sent when a turn is
free at once and nobody waits, so it is the first thing dropped under pressure. Each stream has at most one request
waiting, so the queue is bounded by the number of live answers.

Streams wait for their turn themselves (with their priority) and mark the call that uses it with `turn_taken`; every
other call is paced by `PacedRequests` (bot/services/paced_requests.py), the Bot's request middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import IntEnum

from bot.coordination import SendBudget
from bot.telegram_limits import (
    BOT,
    GROUP,
    PRIVATE,
    PROGRESS_NEEDS,
    TYPING_NEEDS,
    URGENT_NEEDS,
    SendRate,
    rate_for,
)

ChatKey = int | str | None
# Two chats flood-limited within this window means the limit is the bot's, not theirs.
_GLOBAL_FLOOD_WINDOW = 1.0
_PRUNE_ABOVE = 4096
# With replicas, a progress update takes a shared slot only if one is this close (else it waits and asks again after
# the back-off): progress never books the budget's future, so every replica's urgent sends find slots at once.
_SHARED_PROGRESS_BACKOFF = 0.1
# A shared slot whose grant comes this late (the event loop was busy) is booked again once: sent now, it would
# crowd the slots after it, and Telegram counts sends as they arrive.
_LATE_GRANT = 0.1
_turn_in_hand: ContextVar[tuple[int, ChatKey] | None] = ContextVar("turn_in_hand", default=None)


class Priority(IntEnum):
    URGENT = 0  # final messages, replies: may take a chat's last send
    FIRST = 1  # the first visible text of an answer: before progress, but it keeps the last send for the final
    PROGRESS = 2  # a newer version of text already shown

    @property
    def needs(self) -> int:
        return URGENT_NEEDS if self is Priority.URGENT else PROGRESS_NEEDS


@dataclass(order=True)
class _Request:
    priority: int
    sequence: int
    chat_id: ChatKey = field(compare=False)
    granted: asyncio.Future[None] = field(compare=False)
    rebooked: bool = field(default=False, compare=False)


class UpdatePacer:
    def __init__(
        self,
        *,
        private: SendRate = PRIVATE,
        group: SendRate = GROUP,
        bot: SendRate = BOT,
        clock: Callable[[], float] = time.monotonic,
        shared_budget: SendBudget | None = None,
    ) -> None:
        """`shared_budget` (Redis, several replicas): each turn this pacer grants is also reserved there, so all
        replicas together keep Telegram's budgets; the turn is granted when the shared slot comes."""
        self._shared_budget = shared_budget
        self._reserving: list[_Request] = []
        self._background: set[asyncio.Task[None]] = set()
        self._private = private
        self._group = group
        self._bot = bot
        self._clock = clock
        self._chat_due: dict[ChatKey, float] = {}  # each chat's bucket as a theoretical arrival time
        self._bot_due = 0.0
        self._waiting: list[_Request] = []
        self._sequence = itertools.count()
        self._changed = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._last_flood: tuple[ChatKey, float] | None = None
        self._progress_held_until = 0.0  # the shared budget had no slot near: progress waits until then

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def wait_turn(self, chat_id: ChatKey, priority: Priority = Priority.PROGRESS) -> None:
        """Returns when a message may go to `chat_id`; a caller cancelled while waiting takes no slot. After `close`
        (the bot is stopping) there is nothing left to share turns with: at once."""
        if self._closed:
            return
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

    async def try_turn(self, chat_id: ChatKey) -> bool:
        """A turn for something that may be dropped (typing): only if one is free now and nobody is waiting."""
        now = self._clock()
        if self._waiting or self._reserving or self._bot_ready_at() > now \
                or self._chat_ready_at(chat_id, TYPING_NEEDS) > now:
            return False
        self._take(chat_id, now)
        if self._shared_budget is None:
            return True
        return await self._shared_budget.send_slot(chat_id, needs=TYPING_NEEDS, max_wait=0.0) is not None

    @contextlib.asynccontextmanager
    async def turn(self, chat_id: ChatKey, priority: Priority = Priority.PROGRESS) -> AsyncIterator[None]:
        """Waits for a turn; the Telegram calls made inside use it (the request middleware does not pace them again)."""
        await self.wait_turn(chat_id, priority)
        with self.turn_taken(chat_id):
            yield

    @contextlib.contextmanager
    def turn_taken(self, chat_id: ChatKey) -> Iterator[None]:
        """Marks the Telegram call made inside as using the turn its caller already waited for."""
        token = _turn_in_hand.set((id(self), chat_id))
        try:
            yield
        finally:
            _turn_in_hand.reset(token)

    def has_turn(self, chat_id: ChatKey) -> bool:
        return _turn_in_hand.get() == (id(self), chat_id)

    def pause_chat(self, chat_id: ChatKey, seconds: float) -> None:
        """Telegram said "retry after N" for this chat; a second chat saying so soon after means the whole bot."""
        now = self._clock()
        rate = self._rate_of(chat_id)
        if rate is not None:
            self._chat_due[chat_id] = max(self._chat_due.get(chat_id, 0.0),
                                          now + seconds + rate.tolerance(URGENT_NEEDS))
        whole_bot = rate is None or (self._last_flood is not None and self._last_flood[0] != chat_id
                                     and now - self._last_flood[1] < _GLOBAL_FLOOD_WINDOW)
        if whole_bot:
            self._bot_due = max(self._bot_due, now + seconds + self._bot.tolerance(URGENT_NEEDS))
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
        bot_ready = self._bot_ready_at()
        if bot_ready > now:
            return bot_ready - now
        ready = [request for request in self._waiting if self._request_ready_at(request) <= now]
        if not ready:
            if not self._waiting:
                return None
            return min(self._request_ready_at(request) for request in self._waiting) - now
        chosen = min(ready)
        self._waiting.remove(chosen)
        if chosen.granted.done():
            return 0.0
        self._take(chosen.chat_id, now)
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
            priority = Priority(request.priority)
            asked = self._clock()
            delay = await self._shared_budget.send_slot(
                request.chat_id, needs=priority.needs,
                max_wait=None if self._books_ahead(priority) else self._bot.interval)
            if delay is None:
                self._hold_progress(request)
                continue
            slot_at = asked + delay
            rate = self._rate_of(request.chat_id)
            if delay and rate is not None:
                self._chat_due[request.chat_id] = max(self._chat_due.get(request.chat_id, 0.0),
                                                      slot_at + rate.interval)
            asyncio.get_running_loop().call_later(max(0.0, slot_at - self._clock()), self._grant_in_slot, request,
                                                  slot_at)

    def _grant_in_slot(self, request: _Request, slot_at: float) -> None:
        if request.granted.done():  # a caller cancelled meanwhile takes nothing
            return
        if self._clock() - slot_at > _LATE_GRANT and not request.rebooked:
            request.rebooked = True
            self._reserving.append(request)
            self._changed.set()
            return
        request.granted.set_result(None)

    def _hold_progress(self, request: _Request) -> None:
        """No shared slot near for a progress update: the turn taken here is given back and it waits again."""
        rate = self._rate_of(request.chat_id)
        if rate is not None:
            self._chat_due[request.chat_id] -= rate.interval
        self._bot_due -= self._bot.interval
        self._progress_held_until = self._clock() + _SHARED_PROGRESS_BACKOFF
        if not request.granted.done():
            self._waiting.append(request)

    def _rate_of(self, chat_id: ChatKey) -> SendRate | None:
        return rate_for(chat_id, self._private, self._group)

    def _chat_ready_at(self, chat_id: ChatKey, needs: int) -> float:
        rate = self._rate_of(chat_id)
        if rate is None:
            return 0.0
        return self._chat_due.get(chat_id, 0.0) - rate.tolerance(needs)

    def _request_ready_at(self, request: _Request) -> float:
        ready = self._chat_ready_at(request.chat_id, Priority(request.priority).needs)
        return ready if self._books_ahead(Priority(request.priority)) else max(ready, self._progress_held_until)

    def _bot_ready_at(self) -> float:
        return self._bot_due - self._bot.tolerance(URGENT_NEEDS)

    def _books_ahead(self, priority: Priority) -> bool:
        """With replicas, progress takes no slot of the shared budget's future (see _SHARED_PROGRESS_BACKOFF)."""
        return priority is not Priority.PROGRESS

    def _take(self, chat_id: ChatKey, now: float) -> None:
        rate = self._rate_of(chat_id)
        if rate is not None:
            self._chat_due[chat_id] = max(self._chat_due.get(chat_id, 0.0), now) + rate.interval
        self._bot_due = max(self._bot_due, now) + self._bot.interval

    def _prune(self, now: float) -> None:
        if len(self._chat_due) > _PRUNE_ABOVE:
            self._chat_due = {chat: due for chat, due in self._chat_due.items() if due > now}

