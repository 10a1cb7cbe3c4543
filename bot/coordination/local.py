"""Everything replicas would share, kept in this process: the one-replica deployment, today's behaviour."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.coordination.base import StopListener

log = logging.getLogger(__name__)

# A chat whose turn is held: a heap of its waiters by update id (then arrival, for a repeated id).
_Waiters = list[tuple[int, int, asyncio.Future[None]]]


class LocalCoordinator:
    def __init__(self) -> None:
        self._lines: dict[int, _Waiters] = {}  # a chat is present exactly while its turn is held
        self._arrivals = itertools.count()
        self._albums: dict[str, tuple[int, dict[int, str], float]] = {}  # opener, items by update id, last arrival
        self._recent: dict[int, deque[float]] = {}
        self._work: asyncio.Queue[int] = asyncio.Queue()
        self._streams: dict[int, tuple[int, int | None]] = {}
        self._listeners: list[StopListener] = []
        self._held_updates: set[int] = set()

    @property
    def shared(self) -> bool:
        return False

    @asynccontextmanager
    async def chat_turn(self, chat_id: int, update_id: int, *,
                        queued: asyncio.Event | None = None) -> AsyncIterator[None]:
        waiters = self._lines.get(chat_id)
        if waiters is None:
            self._lines[chat_id] = []
            if queued is not None:
                queued.set()
        else:
            granted = asyncio.get_running_loop().create_future()
            entry = (update_id, next(self._arrivals), granted)
            heapq.heappush(waiters, entry)
            if queued is not None:
                queued.set()
            try:
                await granted
            except asyncio.CancelledError:
                if granted.cancelled():  # still waiting: leave the line
                    waiters.remove(entry)
                    heapq.heapify(waiters)
                else:  # granted as the cancel arrived: the turn is ours to pass on
                    self._pass_turn(chat_id)
                raise
        try:
            yield
        finally:
            self._pass_turn(chat_id)

    def _pass_turn(self, chat_id: int) -> None:
        """Hand the held turn to the lowest waiting update, or forget the chat when nobody waits."""
        waiters = self._lines[chat_id]
        while waiters:
            _, _, granted = heapq.heappop(waiters)
            if not granted.done():
                granted.set_result(None)
                return
        del self._lines[chat_id]

    async def album_add(self, album_key: str, update_id: int, payload: str) -> bool:
        """Also True for the opening update handled again (as after a takeover): the album still needs its collector."""
        opener, items, _ = self._albums.get(album_key, (update_id, {}, 0.0))
        items[update_id] = payload  # by update id: a redelivered update is not a second photo
        self._albums[album_key] = (opener, items, time.monotonic())
        return opener == update_id

    async def album_collect(self, album_key: str, *, quiet: float, longest: float) -> list[tuple[int, str]]:
        started = time.monotonic()
        try:
            while (album := self._albums.get(album_key)) is not None:
                _, items, last_arrival = album
                wait = min(last_arrival + quiet, started + longest) - time.monotonic()
                if wait <= 0:
                    return sorted(items.items())
                await asyncio.sleep(wait)
            return []
        finally:
            self._albums.pop(album_key, None)

    async def rate_slot(self, user_id: int, allowed: int, per_seconds: float) -> float | None:
        now = time.monotonic()
        recent = self._recent.setdefault(user_id, deque())
        while recent and recent[0] <= now - per_seconds:
            recent.popleft()
        if len(recent) >= allowed:
            return recent[0] + per_seconds - now
        recent.append(now)
        return None

    async def announce_stream(self, stream_id: int, chat_id: int, asker_id: int | None) -> None:
        self._streams[stream_id] = (chat_id, asker_id)

    async def forget_stream(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    async def stream_owner(self, stream_id: int) -> tuple[int, int | None] | None:
        return self._streams.get(stream_id)

    async def publish_stop(self, stream_id: int) -> None:
        for listener in list(self._listeners):
            try:
                listener(stream_id)
            except Exception:
                log.exception("stop listener failed for stream %d", stream_id)

    def on_stop(self, listener: StopListener) -> None:
        self._listeners.append(listener)

    async def hold_update(self, update_id: int) -> bool:
        """Only a redelivery of an update still being handled is refused: there is no other replica."""
        if update_id in self._held_updates:
            return False
        self._held_updates.add(update_id)
        return True

    async def release_update(self, update_id: int) -> None:
        self._held_updates.discard(update_id)

    async def offer(self, update_id: int) -> None:
        self._work.put_nowait(update_id)

    async def take(self, wait: float) -> int | None:
        try:
            return await asyncio.wait_for(self._work.get(), wait)
        except TimeoutError:
            return None

    async def poll_lease(self) -> bool:
        return True

    async def close(self) -> None:
        self._listeners.clear()
