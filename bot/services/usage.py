"""Operators pay per token: a per-user request rate and daily token budgets, checked before the provider."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.coordination import Coordinator
from bot.errors import BudgetExhausted, UserRateLimited
from bot.models import Usage, UsageRecord, UsageTotal
from bot.storage.base import ConversationStore

# Without `usage` from the provider: about 3 characters a token, and what a 1024x768 image costs at gpt-4o.
_CHARS_PER_TOKEN = 3
_TOKENS_PER_IMAGE = 765


@dataclass(frozen=True, slots=True)
class UsageLimits:
    rate: tuple[int, int] | None = None  # requests, per seconds
    user_daily_tokens: int | None = None
    chat_daily_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class TodayUsage:
    user_tokens: int
    chat_tokens: int
    user_budget: int | None
    chat_budget: int | None


class UsageGuard:
    def __init__(self, store: ConversationStore, limits: UsageLimits, coordinator: Coordinator, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._limits = limits
        self._coordinator = coordinator
        self._clock = clock

    async def admit(self, *, user_id: int | None, chat_id: int) -> None:
        """Raises UserRateLimited or BudgetExhausted; an admitted request counts towards the rate."""
        day = self._day()
        limits = self._limits
        if user_id is not None and limits.user_daily_tokens is not None \
                and await self._store.tokens_on(day, user_id=user_id) >= limits.user_daily_tokens:
            raise BudgetExhausted("user")
        if limits.chat_daily_tokens is not None \
                and await self._store.tokens_on(day, chat_id=chat_id) >= limits.chat_daily_tokens:
            raise BudgetExhausted("chat")
        if user_id is not None and limits.rate is not None:
            wait = await self._coordinator.rate_slot(user_id, *limits.rate)  # counted on every replica
            if wait is not None:
                raise UserRateLimited(max(1.0, wait))

    async def record(self, *, chat_id: int, user_id: int | None, outcome: str, usage: Usage | None,
                     question_chars: int = 0, images: int = 0, answer_chars: int = 0,
                     error_kind: str | None = None) -> Usage:
        """Store what a request cost: the provider's count, or an estimate when it gave none."""
        estimated = usage is None and outcome != "failed"
        if usage is None:
            prompt = question_chars // _CHARS_PER_TOKEN + images * _TOKENS_PER_IMAGE if estimated else 0
            completion = answer_chars // _CHARS_PER_TOKEN if estimated else 0
            usage = Usage(prompt, completion, prompt + completion)
        await self._store.record_usage(UsageRecord(
            day=self._day(), chat_id=chat_id, user_id=user_id, outcome=outcome, usage=usage,
            created_at=self._clock(), error_kind=error_kind, estimated=estimated))
        return usage

    async def today(self, *, user_id: int | None, chat_id: int) -> TodayUsage:
        day = self._day()
        user_tokens = await self._store.tokens_on(day, user_id=user_id) if user_id is not None else 0
        return TodayUsage(user_tokens, await self._store.tokens_on(day, chat_id=chat_id),
                          self._limits.user_daily_tokens, self._limits.chat_daily_tokens)

    async def totals(self, days: int = 7) -> list[UsageTotal]:
        since = datetime.fromtimestamp(self._clock(), UTC).date() - timedelta(days=days - 1)
        return await self._store.usage_totals(since.isoformat())

    def _day(self) -> str:
        return datetime.fromtimestamp(self._clock(), UTC).date().isoformat()
