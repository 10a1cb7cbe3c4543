"""Upkeep while running: a bot that runs for months must not grow its database without bound.

Every sweep deletes turns past CONTEXT_TTL (and images nothing refers to any more), handled inbox rows past
INBOX_RETENTION, usage rows past USAGE_RETENTION_DAYS, and lets the backend tidy itself (SQLite: WAL checkpoint).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.services.context import ConversationContext
from bot.services.inbox import Inbox
from bot.storage.base import ConversationStore

log = logging.getLogger(__name__)

SWEEP_INTERVAL_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class Retention:
    inbox_seconds: float
    usage_days: int


@dataclass(frozen=True, slots=True)
class Swept:
    turns: int
    inbox: int
    usage: int


class Housekeeping:
    def __init__(self, store: ConversationStore, context: ConversationContext, inbox: Inbox, retention: Retention,
                 *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._context = context
        self._inbox = inbox
        self._retention = retention
        self._clock = clock

    async def sweep(self) -> Swept:
        now = self._clock()
        first_usage_day = (datetime.fromtimestamp(now, UTC) - timedelta(days=self._retention.usage_days)).date()
        swept = Swept(
            turns=await self._context.prune(),
            inbox=await self._inbox.prune(older_than=now - self._retention.inbox_seconds),
            usage=await self._store.prune_usage(before_day=first_usage_day.isoformat()),
        )
        await self._store.maintain()
        return swept

    async def run(self, interval: float = SWEEP_INTERVAL_SECONDS) -> None:
        """Sweep now and then every `interval` seconds, until cancelled; a failed sweep is logged and retried."""
        while True:
            try:
                swept = await self.sweep()
            except Exception:
                log.exception("housekeeping failed; trying again in %.0f s", interval)
            else:
                log.info("housekeeping: pruned %d turn(s), %d inbox row(s), %d usage row(s)", swept.turns,
                         swept.inbox, swept.usage)
            await asyncio.sleep(interval)
