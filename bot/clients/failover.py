"""The way one question goes through the providers: what to try after each failure, until one starts answering.

Keys that fail rest (invalid or out of quota: 10 minutes; rate limited: their Retry-After), an unavailable or
hanging provider hands over to the next one, a refused image encoding is swapped for another once (and learned),
and every wait counts against one deadline for the first text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot import errors
from bot.clients.classify import rejects_image_encoding
from bot.clients.providers import AUTO, Attempt, Provider
from bot.clients.reading import Completion
from bot.clients.wire import ImageEncoding, images_in, within_image_limit
from bot.models import PromptMessage

if TYPE_CHECKING:
    from bot.clients.vision import VisionClient

log = logging.getLogger(__name__)


class NextProvider(Exception):
    """This provider will not answer this question: the client moves on to the next (or raises `error`)."""

    def __init__(self, error: errors.VisionError) -> None:
        super().__init__(error.message)
        self.error = error


class Attempts:
    """One question's way through the providers: what was tried, what failed last, how much time is left."""

    def __init__(self, client: VisionClient, messages: Sequence[PromptMessage], deadline: float) -> None:
        self._client = client
        self._messages = messages
        self._deadline = deadline
        self._urls: dict[str, str] = {}
        self.last_error: errors.VisionError | None = None

    def _remaining(self) -> float:
        return self._deadline - self._client.clock()

    async def ask(self, stack: AsyncExitStack, provider: Provider, model: str, *, has_next: bool) -> Completion:
        client = self._client
        limit = provider.config.max_images
        messages = self._messages if limit is None else within_image_limit(self._messages, limit)
        encoding = self._initial_encoding(provider, model)
        state = ProviderState()
        while True:
            remaining = self._remaining()
            if remaining <= 0:
                raise NextProvider(self._out_of_time())
            key = provider.keys.pick()
            if key is None:
                await self._wait_for_key(provider, state, remaining, has_next=has_next)
                continue
            try:
                if encoding is ImageEncoding.URL and images_in(messages):
                    await client.publish(messages, self._urls)
                completion = await client.attempt(stack, Attempt(provider, key, model, messages, encoding),
                                                  self._urls, remaining)
            except errors.VisionError as exc:
                self.last_error = exc
                encoding = await self._after_failure(exc, Attempt(provider, key, model, messages, encoding), state,
                                                     has_next=has_next)
                continue
            if state.switched_encoding:
                client.learn(provider, model, encoding)
            return completion

    def _initial_encoding(self, provider: Provider, model: str) -> ImageEncoding:
        configured = provider.config.image_format
        if configured != AUTO:
            return ImageEncoding(configured)
        return self._client.learned_encoding(provider.config, model) or ImageEncoding.DATA_URL

    async def _after_failure(self, exc: errors.VisionError, attempt: Attempt, state: ProviderState, *,
                             has_next: bool) -> ImageEncoding:
        """What to try next after a failed attempt (the encoding to use); raises when this provider is done."""
        client, policy = self._client, self._client.policy
        provider, encoding = attempt.provider, attempt.encoding
        if isinstance(exc, errors.AuthError | errors.QuotaError):
            if not client.has_alternative(provider):
                raise NextProvider(exc)
            await client.key_rested(provider, attempt.key, exc, policy.key_rest)
        elif isinstance(exc, errors.RateLimitError):
            state.rate_limited += 1
            backoff = policy.retry_delay * 2 ** (state.rate_limited - 1)
            wait = exc.retry_after if exc.retry_after is not None else backoff
            await client.key_rested(provider, attempt.key, exc, min(wait, policy.max_retry_wait))
        elif isinstance(exc, errors.ProviderTimeoutError):
            if exc.maybe_billed or has_next or state.timed_out:
                raise NextProvider(exc)
            state.timed_out = True
        elif isinstance(exc, errors.UnavailableError | errors.ImageUrlsRequiredError):
            state.unavailable += 1
            if has_next or state.unavailable > policy.unavailable_retries or isinstance(
                    exc, errors.ImageUrlsRequiredError):
                raise NextProvider(exc)
            log.warning("provider %s %s (HTTP %s); retrying in %.1f s", provider.config.label, exc.kind, exc.status,
                        policy.retry_delay)
            await asyncio.sleep(min(policy.retry_delay, max(0.0, self._remaining())))
        elif images_in(attempt.messages) and rejects_image_encoding(exc) and not state.switched_encoding \
                and provider.config.image_format == AUTO:
            state.switched_encoding = True
            return self._other_encoding(exc, attempt)
        elif state.switched_encoding and rejects_image_encoding(exc) and client.publisher is None:
            raise NextProvider(urls_needed(exc, attempt.model))
        else:
            raise exc
        return encoding

    def _other_encoding(self, exc: errors.VisionError, attempt: Attempt) -> ImageEncoding:
        """Data URL refused: a published URL where the bot can publish, else bare base64; nothing left: URLs needed."""
        encoding, model = attempt.encoding, attempt.model
        has_publisher = self._client.publisher is not None
        if encoding is not ImageEncoding.URL and has_publisher:
            chosen = ImageEncoding.URL
        elif encoding is ImageEncoding.DATA_URL:
            chosen = ImageEncoding.RAW_BASE64
        else:
            raise NextProvider(urls_needed(exc, model))
        log.info("provider %s refused %s images for %s (%s); trying %s", attempt.provider.config.label, encoding.value,
                 model, exc.message, chosen.value)
        return chosen

    async def _wait_for_key(self, provider: Provider, state: ProviderState, remaining: float, *,
                            has_next: bool) -> None:
        """Every key rests: wait for the first to wake if that is soon and worth it, else give up on the provider."""
        policy = self._client.policy
        wake = provider.keys.next_wake()
        error = self.last_error or provider.keys.last_reason or errors.UnavailableError("every key is resting")
        if has_next or wake is None or not isinstance(error, errors.RateLimitError) \
                or state.rate_limited >= policy.rate_limit_attempts or wake > min(policy.max_retry_wait, remaining):
            raise NextProvider(error)
        log.warning("provider %s rate limited; retrying in %.1f s", provider.config.label, wake)
        await asyncio.sleep(wake)

    def _out_of_time(self) -> errors.VisionError:
        limit = self._client.policy.max_wait
        if isinstance(self.last_error, errors.ProviderTimeoutError) or self.last_error is None:
            return errors.ProviderTimeoutError(f"no text within {limit:.0f} s in all")
        return self.last_error


@dataclass(slots=True)
class ProviderState:
    rate_limited: int = 0
    unavailable: int = 0
    timed_out: bool = False
    switched_encoding: bool = False


def urls_needed(exc: errors.VisionError, model: str) -> errors.ImageUrlsRequiredError:
    return errors.ImageUrlsRequiredError(
        f"{model} refused images as data URLs and as raw base64 ({exc.message}); it needs image URLs: set "
        "PUBLIC_BASE_URL or S3_BUCKET", status=exc.status, body_excerpt=exc.body_excerpt, request_id=exc.request_id)


