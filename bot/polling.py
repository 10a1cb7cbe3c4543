"""Long polling: one poller per token (with Redis, the replica holding the lease), each batch recorded before the
next request confirms it (its offset moves past it)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from contextlib import suppress
from typing import Any

from aiogram import Bot
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramConflictError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import Update
from pydantic import ValidationError

from bot.coordination import Coordinator
from bot.intake import Intake

log = logging.getLogger(__name__)

POLL_TIMEOUT_SECONDS = 25
# With replicas the lease must outlive the long poll: a shorter poll, renewed before every request.
SHARED_POLL_TIMEOUT_SECONDS = 4
# A 409 this soon after polling started means this process is the second poller.
CONFLICT_GRACE_SECONDS = 3.0
_CONFLICT_RETRY_SECONDS = 0.2
_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)


class PollingConflict(Exception):
    """Telegram answered 409: another process polls with the same token."""


async def poll(bot: Bot, intake: Intake, coordinator: Coordinator, stop: asyncio.Event, *,
               allowed_updates: list[str]) -> None:
    """Long polling until `stop` is set.

    Telegram ends the *older* of two concurrent getUpdates with 409. Alone (no Redis), a poller that has been
    polling for a while answers a 409 with a quick new request, which ends the newcomer's; a poller whose first
    seconds bring a 409 is the newcomer and stops (`PollingConflict`). The first request does not wait (timeout
    0), so a poller is established within moments of starting. With replicas, only the holder of the poll lease
    polls; the others wait to take over should it die.
    """
    offset: int | None = None
    failures = 0
    established_at: float | None = None
    long_poll = SHARED_POLL_TIMEOUT_SECONDS if coordinator.shared else POLL_TIMEOUT_SECONDS
    while not stop.is_set():
        if not await coordinator.poll_lease():
            if established_at is not None:
                log.warning("lost the poll lease: another replica polls now")
            established_at = None
            await _sleep_unless_stopped(long_poll / 2, stop)
            continue
        if established_at is None and coordinator.shared:
            log.info("holding the poll lease: this replica polls Telegram")
        timeout = long_poll if established_at is not None else 0
        try:
            updates = await _until_stopped(bot.get_updates(offset=offset, timeout=timeout,
                                                           allowed_updates=allowed_updates), stop)
        except TelegramConflictError as exc:
            newcomer = established_at is None or time.monotonic() - established_at < CONFLICT_GRACE_SECONDS
            if newcomer and not coordinator.shared:
                raise PollingConflict(exc.message) from None
            log.warning("another process polled with this token (409); polling on")
            await _sleep_unless_stopped(_CONFLICT_RETRY_SECONDS, stop)
            continue
        except TelegramRetryAfter as exc:
            await _sleep_unless_stopped(exc.retry_after, stop)
            continue
        except ClientDecodeError as exc:  # an update aiogram cannot read must not stop polling for good
            updates = _readable_updates(exc.data, bot)
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
            await intake.accept(update, share=coordinator.shared)
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


def _readable_updates(data: Any, bot: Bot) -> list[Update]:
    """From a getUpdates answer aiogram could not read as a whole: the updates that can be read. The others are
    logged and left behind (the offset moves past them), or every later request would fail on them again."""
    raw = data.get("result") if isinstance(data, dict) else None
    readable: list[Update] = []
    for item in raw if isinstance(raw, list) else ():
        try:
            readable.append(Update.model_validate(item, context={"bot": bot}))
        except ValidationError as exc:
            log.warning("skipping update %s that cannot be read: %s", item.get("update_id") if isinstance(
                item, dict) else "?", exc.errors()[0].get("msg") if exc.errors() else exc)
            if isinstance(item, dict) and isinstance(item.get("update_id"), int):
                readable.append(Update(update_id=item["update_id"]))  # an empty update: recorded, then skipped
    return readable
