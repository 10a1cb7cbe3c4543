"""What replicas of the bot must share, behind one seam chosen at start-up.

Without REDIS_URL everything is in-process (`LocalCoordinator`): one replica, today's behaviour. With it
(`RedisCoordinator`) the same calls are shared by every replica: a chat is handled by one replica at a time in
update order, album items that reached different replicas are collected together, user rate limits count every
replica's requests, a Stop pressed on any replica stops the answer wherever it streams, an update is handled by
one live replica, and one replica polls. Telegram's per-chat, per-group and bot-wide budgets become one budget
for all replicas (`SendBudget`, Redis only).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

StopListener = Callable[[int], None]


@runtime_checkable
class SendBudget(Protocol):
    """Telegram's budgets shared by replicas (Redis only: one replica's pacer spaces its own sends by itself)."""

    async def send_slot(self, chat_id: int | str | None, *, needs: int = 1,
                        max_wait: float | None = None) -> float | None:
        """Reserve the next moment a message may go to `chat_id` (None: no chat, the bot's budget only) under
        Telegram's budgets (bot/telegram_limits.py), leaving `needs` - 1 sends of the chat's burst; seconds to wait
        until then (0: now). None, with nothing reserved, when that is further away than `max_wait`."""
        ...

    async def pause(self, chat_id: int | str | None, seconds: float, *, whole_bot: bool = False) -> None:
        """Telegram said "retry after": no slot for the chat (or for any chat) in the next `seconds`."""
        ...


class Coordinator(Protocol):
    @property
    def shared(self) -> bool:
        """True when other replicas may exist (Redis); False in-process."""
        ...

    def chat_turn(self, chat_id: int, update_id: int, *,
                  queued: asyncio.Event | None = None) -> AbstractAsyncContextManager[None]:
        """Held while one update of a chat is handled: one holder per chat across replicas, waiters let in by
        ascending update_id. A holder that dies loses the turn after a short lease (renewed while held).
        `queued` is set once the update waits in line (an update arriving later, anywhere, queues behind it)."""
        ...

    async def album_add(self, album_key: str, update_id: int, payload: str) -> bool:
        """Add an album item (its update as JSON); True when this caller opened the album and must collect it."""
        ...

    async def album_collect(self, album_key: str, *, quiet: float, longest: float) -> list[tuple[int, str]]:
        """Wait until no item arrived for `quiet` seconds (at most `longest`), close the album, return its items
        (update id, payload) in update order."""
        ...

    async def rate_slot(self, user_id: int, allowed: int, per_seconds: float) -> float | None:
        """A user's request rate: None if one more request is allowed now (and counted), else seconds to wait."""
        ...

    async def announce_stream(self, stream_id: int, chat_id: int, asker_id: int | None) -> None:
        """An answer is streaming with this Stop id (kept until `forget_stream`, or an hour at most)."""
        ...

    async def forget_stream(self, stream_id: int) -> None: ...

    async def stream_owner(self, stream_id: int) -> tuple[int, int | None] | None:
        """(chat id, asker id) of a live stream on any replica; None if none."""
        ...

    async def publish_stop(self, stream_id: int) -> None:
        """Stop pressed: every replica's listeners hear `stream_id` (the one streaming it stops)."""
        ...

    def on_stop(self, listener: StopListener) -> None: ...

    async def hold_update(self, update_id: int) -> bool:
        """This replica handles the update: False if a live replica already does (its lease is renewed while
        held, and lapses shortly after that replica dies, so a survivor can take the update over)."""
        ...

    async def release_update(self, update_id: int) -> None: ...

    async def offer(self, update_id: int) -> None:
        """Polling with replicas: an update the poller recorded, for whichever replica takes it first."""
        ...

    async def take(self, wait: float) -> int | None:
        """The oldest offered update id, or None after `wait` seconds without one."""
        ...

    async def poll_lease(self) -> bool:
        """Take or renew the right to poll Telegram (one replica polls; the lease lapses if it dies)."""
        ...

    async def close(self) -> None: ...
