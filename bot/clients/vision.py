"""The vision client: one question, asked of the configured providers in turn until one starts answering.

The policy lives here: requests spread over keys and failing keys rested, retries where they help, the image
encoding each model takes (learned under VISION_IMAGE_FORMAT=auto), fallback providers, and one deadline for
the first text. Nothing is yielded before the first text has arrived, so every failure up to then can still be
retried or handed to the next provider; after it, the answer belongs to that provider.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType

import httpx

from bot import errors
from bot.clients.classify import request_id_of
from bot.clients.failover import Attempts, NextProvider
from bot.clients.keys import Key
from bot.clients.providers import Attempt, KeyEvent, KeyListener, Provider, ProviderConfig, RetryPolicy, VisionRequest
from bot.clients.publishing import ImagePublisher
from bot.clients.reading import Completion, deltas_of, parsed_unless_stream
from bot.clients.wire import ImageEncoding, build_body, encode_body, images_in
from bot.models import PromptMessage

log = logging.getLogger(__name__)

class VisionClient:
    def __init__(self, http: httpx.AsyncClient, providers: Sequence[ProviderConfig], policy: RetryPolicy | None = None,
                 *, publisher: ImagePublisher | None = None, on_key_rested: KeyListener | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not providers:
            raise ValueError("at least one provider is needed")
        self._http = http
        self._providers = [Provider(config, clock) for config in providers]
        self.policy = policy or RetryPolicy()
        self.publisher = publisher
        self._on_key_rested = on_key_rested
        self.clock = clock
        self._learned: dict[tuple[str, str], ImageEncoding] = {}
        self._secrets = sorted({key for provider in providers for key in provider.api_keys if key}, key=len,
                               reverse=True)

    @property
    def primary(self) -> ProviderConfig:
        return self._providers[0].config

    @property
    def http(self) -> httpx.AsyncClient:
        return self._http

    def complete(self, request: VisionRequest, *, model: str | None = None) -> _Answering:
        """`async with client.complete(request) as completion:` iterate `completion` for the text deltas.

        Entering raises the `VisionError` of a question no provider would start answering; iterating raises a
        failure after the first text. `model` replaces the primary provider's model (a chat's choice).
        """
        return _Answering(self, request, model)

    def learned_encoding(self, provider: ProviderConfig, model: str) -> ImageEncoding | None:
        return self._learned.get((provider.base_url, model))

    def scrub(self, text: str) -> str:
        """Some relays echo the key back in their replies: remove every key before anything is cut, logged, shown."""
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    async def _first_text(self, stack: AsyncExitStack, request: VisionRequest, model: str | None) -> Completion:
        attempts = Attempts(self, request.messages, self.clock() + self.policy.max_wait)
        last = len(self._providers) - 1
        for index, provider in enumerate(self._providers):
            chosen = model if index == 0 and model else provider.config.model
            try:
                return await attempts.ask(stack, provider, chosen, has_next=index < last)
            except NextProvider as moving_on:
                if index == last:
                    raise moving_on.error from None
                log.warning("provider %s failed (%s); asking %s", provider.config.label, moving_on.error.kind,
                            self._providers[index + 1].config.label)
        raise AssertionError("unreachable: the last provider raises")

    def has_alternative(self, provider: Provider) -> bool:
        """Another key or provider to turn to; with neither, resting the only key would only stop every answer."""
        return len(provider.config.api_keys) > 1 or len(self._providers) > 1

    async def key_rested(self, provider: Provider, key: Key, error: errors.VisionError, seconds: float) -> None:
        if not provider.keys.rest(key, seconds, error):
            return
        log.warning("%s of provider %s rests for %.0f s: %s", key.name, provider.config.label, seconds, error.kind)
        if self._on_key_rested is not None and not isinstance(error, errors.RateLimitError):
            await self._on_key_rested(KeyEvent(provider.config.label, key.name, error, seconds))

    async def attempt(self, stack: AsyncExitStack, attempt: Attempt, urls: Mapping[str, str],
                      budget: float) -> Completion:
        """One request; returns once its first text has arrived (the rest streams from the completion)."""
        config = attempt.provider.config
        payload = encode_body(build_body(
            attempt.messages, model=attempt.model, max_tokens=config.max_tokens, temperature=config.temperature,
            stream=config.stream, extra_body=config.extra_body, image_detail=config.image_detail,
            encoding=attempt.encoding, urls=urls))
        completion = Completion(provider=config.label, model=attempt.model)
        attempt_stack = AsyncExitStack()
        timeout = min(self.policy.first_token_timeout, budget)
        try:
            async with asyncio.timeout(timeout):
                response = await self._send(attempt_stack, attempt.provider, attempt.key, payload)
                del payload
                parsed = await parsed_unless_stream(response, self.scrub)
                completion.request_id = request_id_of(response.headers, None)
                deltas = deltas_of(completion, response, parsed, self.scrub)
                attempt_stack.push_async_callback(deltas.aclose)  # type: ignore[attr-defined]
                first = await anext(deltas)
        except TimeoutError:
            await attempt_stack.aclose()
            raise errors.ProviderTimeoutError(f"no text within {timeout:.0f} s", maybe_billed=not config.stream,
                                              request_id=completion.request_id) from None
        except BaseException:
            await attempt_stack.aclose()
            raise
        stack.push_async_exit(attempt_stack)
        completion.deltas = _starting_with(first, deltas)
        return completion

    async def _send(self, stack: AsyncExitStack, provider: Provider, key: Key, payload: bytes) -> httpx.Response:
        config = provider.config
        headers = {
            "Authorization": f"Bearer {key.secret}",
            "Content-Type": "application/json",
            # With a length, httpx sends the iterated body as-is (no chunked encoding, which some relays reject).
            "Content-Length": str(len(payload)),
            # Some relays insist on application/json even for streams (seed 003); offer both.
            "Accept": "text/event-stream, application/json" if config.stream else "application/json",
        }
        timeout = httpx.Timeout(self.policy.idle_timeout, connect=self.policy.connect_timeout)
        try:
            return await stack.enter_async_context(self._http.stream(
                "POST", provider.url, content=_sent_once(payload), headers=headers, timeout=timeout))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise errors.UnavailableError(f"cannot reach the provider: {type(exc).__name__}") from exc
        except httpx.TimeoutException as exc:
            raise errors.ProviderTimeoutError(f"timed out: {type(exc).__name__}",
                                              maybe_billed=not config.stream) from exc
        except httpx.TransportError as exc:
            raise errors.UnavailableError(f"connection lost: {type(exc).__name__}") from exc

    async def publish(self, messages: Sequence[PromptMessage], urls: dict[str, str]) -> None:
        """Publish the images not published yet for this question (a retry reuses their URLs)."""
        if self.publisher is None:
            raise errors.ImageUrlsRequiredError("images must be sent as URLs, but neither PUBLIC_BASE_URL nor S3 is "
                                                "configured")
        for image in images_in(messages):
            if image.image_id not in urls:
                try:
                    urls[image.image_id] = await self.publisher.publish(image)
                except Exception as exc:
                    raise errors.ImagePublishError(f"cannot publish the image: {self.scrub(str(exc))}") from exc

    def learn(self, provider: Provider, model: str, encoding: ImageEncoding) -> None:
        log.info("provider %s takes images for %s as %s", provider.config.label, model, encoding.value)
        self._learned[(provider.config.base_url, model)] = encoding


class _Answering:
    """The context manager `complete()` returns; it keeps the request only until the first text."""

    def __init__(self, client: VisionClient, request: VisionRequest, model: str | None) -> None:
        self._client = client
        self._request = request
        self._model = model
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Completion:
        try:
            completion = await self._client._first_text(self._stack, self._request, self._model)
        except BaseException:
            await self._stack.aclose()
            raise
        self._request.release()
        return completion

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self._stack.__aexit__(kind, error, trace)


async def _starting_with(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for delta in rest:
        yield delta


async def _sent_once(payload: bytes) -> AsyncIterator[bytes]:
    """A body httpx does not keep: given as bytes, it would stay referenced by the response until the stream ends."""
    yield payload
