"""The storage contract the services rely on; SQLite implements it today, PostgreSQL could tomorrow."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from bot.models import ConversationKey, PreparedImage, Turn, UsageRecord, UsageTotal


class ConversationStore(Protocol):
    async def recent_turns(self, key: ConversationKey, *, limit: int, idle_after: float, now: float) -> list[Turn]:
        """The newest `limit` turns of the live conversation, oldest first.

        A gap longer than `idle_after` seconds ends a conversation: turns before it are not returned.
        """
        ...

    async def add_turn(self, key: ConversationKey, turn: Turn) -> None: ...

    async def clear(self, key: ConversationKey) -> None:
        """Forget a conversation and the images only it referenced."""
        ...

    async def save_image(self, image: PreparedImage, *, now: float) -> None:
        """Keep prepared bytes once per image id; saving the same id again is a no-op."""
        ...

    async def load_images(self, image_ids: Iterable[str]) -> dict[str, PreparedImage]: ...

    async def prune(self, *, older_than: float) -> int:
        """Delete turns older than the cut-off and unreferenced images; returns deleted turns."""
        ...

    async def record_usage(self, record: UsageRecord) -> None: ...

    async def tokens_on(self, day: str, *, user_id: int | None = None, chat_id: int | None = None) -> int:
        """Tokens used on a UTC day by one user (or, without a user, in one chat)."""
        ...

    async def usage_totals(self, since_day: str) -> list[UsageTotal]:
        """Answers and tokens by day, chat, outcome and error kind, newest day first."""
        ...

    async def chat_model(self, key: ConversationKey) -> str | None:
        """The model chosen for a chat (or forum topic), None when it never chose; /reset keeps it."""
        ...

    async def set_chat_model(self, key: ConversationKey, model: str | None) -> None:
        """Remember a chat's (or topic's) model choice; None forgets it, so the default applies again."""
        ...

    async def close(self) -> None: ...
