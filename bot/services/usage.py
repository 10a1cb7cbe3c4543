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
    answer_tokens: int = 1024  # the longest answer (VISION_MAX_TOKENS), reserved with each admitted request


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

    async def admit(self, *, user_id: int | None, chat_id: int, question_chars: int = 0, images: int = 0
                    ) -> int | None:
        """Raises UserRateLimited or BudgetExhausted. An admitted request counts towards the rate and, under a
        budget, reserves what it may cost (its prompt estimated, its answer at the longest) until `record` settles
        it: twenty questions at once near the limit pass only while the reservations before them leave room.
        Returns the reservation (None without a budget)."""
        limits = self._limits
        if user_id is not None and limits.rate is not None:
            wait = await self._coordinator.rate_slot(user_id, *limits.rate)  # counted on every replica
            if wait is not None:
                raise UserRateLimited(max(1.0, wait))
        user_budget = limits.user_daily_tokens if user_id is not None else None
        if user_budget is None and limits.chat_daily_tokens is None:
            return None
        prompt = question_chars // _CHARS_PER_TOKEN + images * _TOKENS_PER_IMAGE
        reserved = UsageRecord(day=self._day(), chat_id=chat_id, user_id=user_id, outcome="reserved",
                               usage=Usage(prompt, limits.answer_tokens, prompt + limits.answer_tokens),
                               created_at=self._clock(), estimated=True)
        reservation = await self._store.reserve_usage(reserved, user_budget=user_budget,
                                                      chat_budget=limits.chat_daily_tokens)
        if reservation is None:
            over_user = user_id is not None and user_budget is not None \
                and await self._store.tokens_on(reserved.day, user_id=user_id) >= user_budget
            raise BudgetExhausted("user" if over_user else "chat")
        return reservation

    async def record(self, *, chat_id: int, user_id: int | None, outcome: str, usage: Usage | None,
                     question_chars: int = 0, images: int = 0, answer_chars: int = 0,
                     error_kind: str | None = None, reservation: int | None = None) -> Usage:
        """Store what a request cost (settling its reservation): the provider's count, or an estimate when it gave
        none, a partial answer included."""
        estimated = usage is None and outcome != "failed"
        if usage is None:
            prompt = question_chars // _CHARS_PER_TOKEN + images * _TOKENS_PER_IMAGE if estimated else 0
            completion = answer_chars // _CHARS_PER_TOKEN if estimated else 0
            usage = Usage(prompt, completion, prompt + completion)
        record = UsageRecord(day=self._day(), chat_id=chat_id, user_id=user_id, outcome=outcome, usage=usage,
                             created_at=self._clock(), error_kind=error_kind, estimated=estimated)
        if reservation is None:
            await self._store.record_usage(record)
        else:
            await self._store.settle_usage(reservation, record)
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
