"""What the vision client is configured with: providers (with their keys), the retry policy, and a request."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot import errors
from bot.clients.keys import KEY_REST_SECONDS, Key, KeyRing
from bot.clients.wire import ImageEncoding
from bot.models import PromptMessage

AUTO = "auto"


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One OpenAI-compatible endpoint with its keys; `image_format` is an `ImageEncoding` value or "auto"."""

    base_url: str
    api_keys: tuple[str, ...]
    model: str
    max_tokens: int
    temperature: float | None = None
    stream: bool = True
    image_detail: str | None = None
    image_format: str = AUTO
    max_images: int | None = None  # None: the prompt was made for this provider's model
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    label: str = "primary"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    first_token_timeout: float = 40.0  # one attempt, from sending to the first text
    idle_timeout: float = 60.0  # between two reads once the reply flows
    max_wait: float = 90.0  # from the question to the first text, every retry and provider included
    connect_timeout: float = 15.0
    rate_limit_attempts: int = 3
    max_retry_wait: float = 20.0
    unavailable_retries: int = 1
    retry_delay: float = 1.0
    key_rest: float = KEY_REST_SECONDS


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """A key was put to rest; `key` is its position ("key 2 of 3"), never its value."""

    provider: str
    key: str
    error: errors.VisionError
    seconds: float


KeyListener = Callable[[KeyEvent], Awaitable[None]]


class VisionRequest:
    """The prompt of one question; let go of once an answer has started (its images are ~200 KB, and hundreds of
    answers stream at once; a retry after that point builds a new request from storage)."""

    __slots__ = ("_messages",)

    def __init__(self, messages: Sequence[PromptMessage]) -> None:
        self._messages: list[PromptMessage] | None = list(messages)

    @property
    def messages(self) -> list[PromptMessage]:
        if self._messages is None:
            raise RuntimeError("the request was already answered")
        return self._messages

    def release(self) -> None:
        self._messages = None


class Provider:
    """A configured provider and the state of its keys."""

    def __init__(self, config: ProviderConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.keys = KeyRing(config.api_keys, clock=clock)
        self.url = f"{config.base_url}/chat/completions"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One request to one provider with one key: what is sent, and how its images travel."""

    provider: Provider
    key: Key
    model: str
    messages: Sequence[PromptMessage]
    encoding: ImageEncoding
