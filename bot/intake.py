"""Where updates come in: long polling or the webhook hands each to the intake, which records it, then handles it.

Recording comes first: the polling offset moves past an update, and a webhook request is answered 200, only
once the update is in the inbox. Handling runs in a task of its own (one per update; aiogram's middlewares keep
each chat in order), so a slow answer never holds up receiving. On start, whatever a crash interrupted is fed
again, in update order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from contextlib import suppress

from aiogram import Bot, Dispatcher
from aiogram.exceptions import (
    TelegramConflictError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import Update

from bot.services.inbox import Inbox, Ticket

log = logging.getLogger(__name__)

POLL_TIMEOUT_SECONDS = 25
# A 409 this soon after polling started means this process is the second poller.
CONFLICT_GRACE_SECONDS = 3.0
_CONFLICT_RETRY_SECONDS = 0.2
_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)


class PollingConflict(Exception):
    """Telegram answered 409: another process polls with the same token."""


class Intake:
    def __init__(self, dispatcher: Dispatcher, bot: Bot, inbox: Inbox) -> None:
        self._dispatcher = dispatcher
        self._bot = bot
        self._inbox = inbox
        self._tasks: set[asyncio.Task[None]] = set()

    async def accept(self, update: Update) -> bool:
        """Record the update, then start handling it; False (and nothing handled) for a duplicate."""
        payload = update.model_dump_json(exclude_none=True)
        if not await self._inbox.receive(update.update_id, _chat_of(update), payload):
            return False
        self._spawn(update, Ticket(update.update_id))
        return True

    async def resume(self) -> int:
        """Feed again every update a crash (or a cut-off at shutdown) left unfinished, oldest first."""
        entries = await self._inbox.unfinished()
        for entry in entries:
            update = Update.model_validate_json(entry.payload, context={"bot": self._bot})
            self._spawn(update, Ticket.resuming(entry))
        if entries:
            log.info("resuming %d update(s) left unfinished by the last run", len(entries))
        return len(entries)

    async def close(self) -> None:
        """After the dispatcher's drain: whatever still runs is cut off (and resumed at the next start)."""
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with suppress(asyncio.CancelledError):
                await task

    def _spawn(self, update: Update, ticket: Ticket) -> None:
        task = asyncio.create_task(self._handle(update, ticket), name=f"update:{update.update_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, update: Update, ticket: Ticket) -> None:
        try:
            await self._dispatcher.feed_update(self._bot, update, ticket=ticket)
        except asyncio.CancelledError:
            raise  # not finished: the next start resumes it
        except Exception:
            log.exception("update %s failed", update.update_id)
            ticket.failed = True
        await self._inbox.finish(ticket)


async def poll(bot: Bot, intake: Intake, stop: asyncio.Event, *, allowed_updates: list[str]) -> None:
    """Long polling; each batch is recorded before the next request confirms it (its offset moves past it).

    Telegram ends the *older* of two concurrent getUpdates with 409. A poller that has been polling for a while
    answers a 409 with a quick new request, which ends the newcomer's; a poller whose first seconds bring a 409 is
    the newcomer and stops (`PollingConflict`). The first request does not wait (timeout 0), so a poller is
    established within moments of starting.
    """
    offset: int | None = None
    failures = 0
    established_at: float | None = None
    while not stop.is_set():
        timeout = POLL_TIMEOUT_SECONDS if established_at is not None else 0
        try:
            updates = await _until_stopped(bot.get_updates(offset=offset, timeout=timeout,
                                                           allowed_updates=allowed_updates), stop)
        except TelegramConflictError as exc:
            if established_at is None or time.monotonic() - established_at < CONFLICT_GRACE_SECONDS:
                raise PollingConflict(exc.message) from None
            log.warning("another process polled with this token (409); polling on")
            await _sleep_unless_stopped(_CONFLICT_RETRY_SECONDS, stop)
            continue
        except TelegramRetryAfter as exc:
            await _sleep_unless_stopped(exc.retry_after, stop)
            continue
        except (TelegramNetworkError, TelegramServerError) as exc:
            wait = _RETRY_SECONDS[min(failures, len(_RETRY_SECONDS) - 1)]
            failures += 1
            log.warning("getUpdates failed (%s); retrying in %.0f s", exc, wait)
            await _sleep_unless_stopped(wait, stop)
            continue
        failures = 0
        if established_at is None:
            established_at = time.monotonic()
        for update in updates or ():
            await intake.accept(update)
            offset = update.update_id + 1


async def _until_stopped(call: Awaitable[list[Update]], stop: asyncio.Event) -> list[Update] | None:
    """The call's result, or None once `stop` is set first (the pending long poll is abandoned)."""
    request = asyncio.ensure_future(call)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({request, stopped}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        request.cancel()
        raise
    finally:
        stopped.cancel()
    if request.done():
        return request.result()
    request.cancel()
    with suppress(asyncio.CancelledError):
        await request
    return None


async def _sleep_unless_stopped(seconds: float, stop: asyncio.Event) -> None:
    with suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def _chat_of(update: Update) -> int | None:
    for event in (update.message, update.edited_message, update.channel_post, update.callback_query):
        if event is None:
            continue
        chat = getattr(event, "chat", None) or getattr(getattr(event, "message", None), "chat", None)
        if chat is not None:
            return int(chat.id)
    return None
