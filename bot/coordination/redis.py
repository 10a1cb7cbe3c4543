"""What replicas share, in one Redis: every replica of the bot connects to the same URL and key prefix.

Leases (a chat's turn, an update being handled, the right to poll) are keys with a short expiry that their holder
renews in the background every third of it; a replica that dies stops renewing and a survivor takes over once the
lease lapses. Waiting for a chat's turn is woken by a pub/sub message when the turn is handed on, and otherwise
polls every tenth of a second (which also notices lapsed leases and keeps the waiter's own entry alive).

Redis trouble: background tasks (renewals, the pub/sub listener) log and retry; releases log and leave the lease
to lapse; every other call may raise `redis.exceptions.ConnectionError` (or `TimeoutError`) to its caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, LockNotOwnedError, RedisError

from bot.coordination import redis_scripts as lua
from bot.coordination.base import StopListener
from bot.telegram_limits import BOT, GROUP, PRIVATE, URGENT_NEEDS, SendRate, rate_for

log = logging.getLogger(__name__)

_SOCKET_TIMEOUT = 5.0
_RESUBSCRIBE_SECONDS = 0.5  # after the subscription failed
_LONGEST_TURN_POLL = 0.1
_STREAM_SECONDS = 3600
_US = 1_000_000


class RedisCoordinator:
    def __init__(self, client: Redis, *, replica_id: str, key_prefix: str = "vision-bot:",
                 lease_seconds: float = 10.0, private: SendRate = PRIVATE, group: SendRate = GROUP,
                 bot: SendRate = BOT, album_seconds: float = 60.0) -> None:
        """Use `connect`, which also checks the server and starts listening for Stop and turn hand-overs."""
        self._redis = client
        self.replica_id = replica_id
        self._token = f"{self.replica_id}:{secrets.token_hex(4)}"  # unique even for two instances in one process
        self._prefix = key_prefix
        self._lease = lease_seconds
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._turn_poll = min(_LONGEST_TURN_POLL, lease_seconds / 5)
        self._private = private
        self._group = group
        self._bot_gap_us = round(bot.interval * _US)
        self._album_ms = round(album_seconds * 1000)
        self._stop_channel = f"{key_prefix}stop"
        self._turn_channel = f"{key_prefix}turn"
        self._serial = itertools.count()
        self._turn_try = client.register_script(lua.TURN_TRY)
        self._turn_renew = client.register_script(lua.TURN_RENEW)
        self._turn_leave = client.register_script(lua.TURN_LEAVE)
        self._album_add = client.register_script(lua.ALBUM_ADD)
        self._album_quiet = client.register_script(lua.ALBUM_QUIET)
        self._album_close = client.register_script(lua.ALBUM_CLOSE)
        self._send_slot = client.register_script(lua.SEND_SLOT)
        self._pause = client.register_script(lua.PAUSE)
        self._rate_slot = client.register_script(lua.RATE_SLOT)
        self._turn_wakers: dict[int, set[asyncio.Event]] = {}
        self._listeners: list[StopListener] = []
        self._held: dict[int, tuple[Lock, asyncio.Task[None]]] = {}
        self._poll_lock = client.lock(f"{key_prefix}poller", timeout=lease_seconds, thread_local=False)
        self._subscribed = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str, *, replica_id: str | None = None, key_prefix: str = "vision-bot:",
                      lease_seconds: float = 10.0, private: SendRate = PRIVATE, group: SendRate = GROUP,
                      bot: SendRate = BOT, album_seconds: float = 60.0) -> RedisCoordinator:
        """The replica (host and pid by default) also names its connections, for CLIENT LIST.
        Raises `redis.exceptions.ConnectionError` if Redis is unreachable."""
        replica_id = replica_id or f"{socket.gethostname()}-{os.getpid()}"
        client = Redis.from_url(url, decode_responses=True, client_name=f"{key_prefix}{replica_id}",
                                socket_timeout=_SOCKET_TIMEOUT, socket_connect_timeout=_SOCKET_TIMEOUT,
                                health_check_interval=30)
        coordinator = cls(client, replica_id=replica_id, key_prefix=key_prefix, lease_seconds=lease_seconds,
                          private=private, group=group, bot=bot, album_seconds=album_seconds)
        try:
            await client.ping()
            coordinator._listener = asyncio.create_task(coordinator._listen(), name="coordination-listener")
            async with asyncio.timeout(_SOCKET_TIMEOUT):
                await coordinator._subscribed.wait()  # a Stop published right after connect must reach us
        except BaseException:
            await coordinator.close()
            raise
        return coordinator

    @property
    def shared(self) -> bool:
        return True

    @asynccontextmanager
    async def chat_turn(self, chat_id: int, update_id: int, *,
                        queued: asyncio.Event | None = None) -> AsyncIterator[None]:
        keys = [self._key(f"turn:{chat_id}:waiting"), self._key(f"turn:{chat_id}:seen"),
                self._key(f"turn:{chat_id}:lease")]
        member = f"{self._token}:{next(self._serial)}"
        renewal: asyncio.Task[None] | None = None
        try:
            await self._wait_turn(chat_id, keys, member, update_id, queued)
            renewal = asyncio.create_task(self._keep_alive(
                lambda: self._turn_renew(keys=keys[2:], args=[member, self._lease_ms]), f"chat {chat_id}'s turn"))
            yield
        finally:
            if renewal is not None:
                renewal.cancel()
            try:  # also when cancelled while waiting: the script may have granted the turn all the same
                await self._turn_leave(keys=keys, args=[member, self._turn_channel, chat_id])
            except RedisError:
                log.warning("could not hand on chat %d's turn; it lapses in %.1f s", chat_id, self._lease)

    async def _wait_turn(self, chat_id: int, keys: list[str], member: str, update_id: int,
                         queued: asyncio.Event | None) -> None:
        wake = asyncio.Event()
        wakers = self._turn_wakers.setdefault(chat_id, set())
        wakers.add(wake)
        try:
            while True:
                wake.clear()  # before asking: a hand-over announced meanwhile wakes the wait below at once
                granted = await self._turn_try(keys=keys, args=[member, update_id, self._lease_ms])
                if queued is not None:
                    queued.set()  # in line now: the script registered this waiter
                if granted:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._turn_poll):
                        await wake.wait()
        finally:
            wakers.discard(wake)
            if not wakers:
                del self._turn_wakers[chat_id]

    async def album_add(self, album_key: str, update_id: int, payload: str) -> bool:
        """Also True for the opening update handled again after a takeover: the album still needs its collector."""
        keys = [self._key(f"album:{album_key}:items"), self._key(f"album:{album_key}:meta")]
        return bool(await self._album_add(keys=keys, args=[update_id, payload, self._album_ms]))

    async def album_collect(self, album_key: str, *, quiet: float, longest: float) -> list[tuple[int, str]]:
        keys = [self._key(f"album:{album_key}:items"), self._key(f"album:{album_key}:meta")]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + longest
        while (since_ms := await self._album_quiet(keys=keys[1:])) >= 0:
            wait = min(quiet - since_ms / 1000, deadline - loop.time())
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        flat: list[str] = await self._album_close(keys=keys)
        return sorted((int(update_id), payload) for update_id, payload in zip(flat[::2], flat[1::2], strict=True))

    async def send_slot(self, chat_id: int | str | None, *, needs: int = 1,
                        max_wait: float | None = None) -> float | None:
        rate = rate_for(chat_id, self._private, self._group)
        interval, tolerance = (0.0, 0.0) if rate is None else (rate.interval, rate.tolerance(needs))
        keys = [self._key(f"pace:{chat_id}"), self._key("pace:bot:slots"), self._key("pace:bot:paused")]
        wait_us = await self._send_slot(keys=keys, args=[round(interval * _US), round(tolerance * _US),
                                                          self._bot_gap_us,
                                                          -1 if max_wait is None else round(max_wait * _US)])
        return None if wait_us < 0 else wait_us / _US

    async def pause(self, chat_id: int | str | None, seconds: float, *, whole_bot: bool = False) -> None:
        """A paused chat's bucket is pushed so far that not even its burst is left for `seconds`."""
        rate = rate_for(chat_id, self._private, self._group)
        whole_bot = whole_bot or rate is None
        extra = 0.0 if whole_bot or rate is None else rate.tolerance(URGENT_NEEDS)
        key = self._key("pace:bot:paused" if whole_bot else f"pace:{chat_id}")
        await self._pause(keys=[key], args=[round((seconds + extra) * _US)])

    async def rate_slot(self, user_id: int, allowed: int, per_seconds: float) -> float | None:
        """A sliding window (a sorted set of request times): exactly today's rule, never a double burst at a window
        boundary, and at most `allowed` entries per user."""
        wait_us = await self._rate_slot(keys=[self._key(f"rate:{user_id}")],
                                        args=[allowed, round(per_seconds * _US), f"{self._token}:{next(self._serial)}"])
        return None if wait_us < 0 else wait_us / _US

    async def announce_stream(self, stream_id: int, chat_id: int, asker_id: int | None) -> None:
        asker = "" if asker_id is None else str(asker_id)
        await self._redis.set(self._key(f"stream:{stream_id}"), f"{chat_id}:{asker}", ex=_STREAM_SECONDS)

    async def forget_stream(self, stream_id: int) -> None:
        await self._redis.delete(self._key(f"stream:{stream_id}"))

    async def stream_owner(self, stream_id: int) -> tuple[int, int | None] | None:
        value: str | None = await self._redis.get(self._key(f"stream:{stream_id}"))
        if value is None:
            return None
        chat, asker = value.split(":")
        return int(chat), int(asker) if asker else None

    async def publish_stop(self, stream_id: int) -> None:
        await self._redis.publish(self._stop_channel, str(stream_id))

    def on_stop(self, listener: StopListener) -> None:
        self._listeners.append(listener)

    async def hold_update(self, update_id: int) -> bool:
        lock = self._redis.lock(self._key(f"update:{update_id}"), timeout=self._lease, thread_local=False)
        if not await lock.acquire(blocking=False, token=self._token):
            return False

        async def renew() -> bool:
            try:
                return await lock.reacquire()
            except LockNotOwnedError:
                return False

        self._held[update_id] = (lock, asyncio.create_task(self._keep_alive(renew, f"update {update_id}")))
        return True

    async def release_update(self, update_id: int) -> None:
        held = self._held.pop(update_id, None)
        if held is not None:
            lock, renewal = held
            renewal.cancel()
            await self._release(lock, f"update {update_id}")

    async def offer(self, update_id: int) -> None:
        await self._redis.rpush(self._key("work"), update_id)

    async def take(self, wait: float) -> int | None:
        """BLPOP waits server-side; kept below the socket timeout so a quiet queue is no connection error."""
        found = await self._redis.blpop([self._key("work")], timeout=min(wait, _SOCKET_TIMEOUT / 2))
        return int(found[1]) if found else None

    async def poll_lease(self) -> bool:
        with contextlib.suppress(LockError):  # not held (any more): try to take it
            return await self._poll_lock.reacquire()
        return await self._poll_lock.acquire(blocking=False, token=self._token)

    async def close(self) -> None:
        """Hands on what this replica holds (updates, polling) so that others need not wait for the leases."""
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        try:
            for update_id in list(self._held):
                await self.release_update(update_id)
            await self._release(self._poll_lock, "polling")
        finally:
            await self._redis.aclose()

    def _key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    async def _keep_alive(self, renew: Callable[[], Awaitable[Any]], what: str) -> None:
        """Renews a lease every third of it until cancelled or lost; Redis errors are retried, not raised."""
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                if not await renew():
                    log.warning("lost the lease on %s (it lapsed before it was renewed)", what)
                    return
            except RedisError as exc:
                log.warning("could not renew the lease on %s (%r); retrying", what, exc)

    async def _release(self, lock: Lock, what: str) -> None:
        try:
            await lock.release()
        except LockError:
            log.debug("%s was not held (any more)", what)
        except RedisError:
            log.warning("could not release %s; it lapses in %.1f s", what, self._lease)

    async def _listen(self) -> None:
        """Stop presses and turn hand-overs from every replica; resubscribes after a Redis error."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._stop_channel, self._turn_channel)
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None:
                            self._dispatch(message)
            except RedisError as exc:
                log.warning("lost the coordination subscription (%r); resubscribing", exc)
                await asyncio.sleep(_RESUBSCRIBE_SECONDS)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] == "subscribe":
            if message["data"] == 2:  # both channels confirmed
                self._subscribed.set()
        elif message["type"] != "message":
            return
        elif message["channel"] == self._turn_channel:
            for wake in self._turn_wakers.get(int(message["data"]), ()):
                wake.set()
        else:
            stream_id = int(message["data"])
            for listener in list(self._listeners):
                try:
                    listener(stream_id)
                except Exception:
                    log.exception("stop listener failed for stream %d", stream_id)
