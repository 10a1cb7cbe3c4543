"""Plain data shared by services, clients and storage (no I/O, no framework types)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """A conversation lives in one chat, or in one forum topic of it (thread 0 = no topic)."""

    chat_id: int
    thread_id: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An image ready to leave the machine: re-encoded, metadata stripped, sized for the provider."""

    image_id: str
    data: bytes
    mime: str = "image/jpeg"


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    text: str
    created_at: float
    image_ids: tuple[str, ...] = field(default=())
    author: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class PromptMessage:
    """One message for the model, provider-neutral; the vision client decides the wire format."""

    role: Literal["system", "user", "assistant"]
    text: str
    images: tuple[PreparedImage, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One request's cost, for budgets and statistics (kept when conversations are reset)."""

    day: str  # UTC, YYYY-MM-DD
    chat_id: int
    user_id: int | None
    outcome: str  # "answered", "stopped", "cut_off" or "failed"
    usage: Usage
    created_at: float
    error_kind: str | None = None
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class UsageTotal:
    day: str
    chat_id: int
    outcome: str
    error_kind: str | None
    answers: int
    tokens: int


# An update's way through the inbox: received (recorded, not yet handled), asking (the provider is being asked;
# `message_id` is the half-written answer, if any), generated (the full answer is known, not yet delivered), then
# done or failed. After a crash, every update not done or failed is handled again.
UNFINISHED_STATES = ("received", "asking", "generated")


@dataclass(frozen=True, slots=True)
class InboxEntry:
    update_id: int
    chat_id: int | None
    payload: str  # the update as Telegram sent it (JSON)
    state: str
    received_at: float
    updated_at: float
    message_id: int | None = None
    answer: str | None = None
