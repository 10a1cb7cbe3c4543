"""The storage contract the services rely on; SQLite and PostgreSQL implement it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from bot.models import ConversationKey, InboxEntry, PreparedImage, Turn, UsageRecord, UsageTotal


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

    async def reserve_usage(self, record: UsageRecord, *, user_budget: int | None,
                            chat_budget: int | None) -> int | None:
        """Atomically: store `record` (a reservation of its tokens) if the user's and the chat's totals of its day
        are below their budgets (None: no budget); its id, or None when a budget is spent."""
        ...

    async def settle_usage(self, reservation: int, record: UsageRecord) -> None:
        """Replace a reservation with what the request really cost."""
        ...

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

    async def receive_update(self, update_id: int, chat_id: int | None, payload: str, *, now: float) -> bool:
        """Record an update before it is handled; False when its id was seen before (at any time, in any state)."""
        ...

    async def inbox_entry(self, update_id: int) -> InboxEntry | None: ...

    async def set_update_state(self, update_id: int, state: str, *, now: float, message_id: int | None = None,
                               answer: str | None = None) -> None:
        """Move an update on (see `bot.models.UNFINISHED_STATES`); a `message_id` or `answer` not given is kept."""
        ...

    async def unfinished_updates(self, *, limit: int = 10_000) -> list[InboxEntry]:
        """Updates received but not done or failed, oldest update first: what a restart must handle again."""
        ...

    async def earlier_unfinished(self, chat_id: int, update_id: int) -> bool:
        """Whether an update of the chat older than `update_id` is still unfinished (order across replicas)."""
        ...

    async def prune_inbox(self, *, older_than: float) -> int:
        """Delete done and failed updates last changed before the cut-off (their ids stop being deduplicated)."""
        ...

    async def prune_usage(self, *, before_day: str) -> int:
        """Delete usage rows of days before `before_day` (YYYY-MM-DD, UTC)."""
        ...

    async def maintain(self) -> None:
        """Periodic upkeep of the backend itself (SQLite: checkpoint the WAL); may do nothing."""
        ...

    async def close(self) -> None: ...
