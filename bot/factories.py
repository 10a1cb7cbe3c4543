"""Clients and settings-derived parts built once at start-up: the Telegram bot, the provider HTTP client, the
providers with their keys, the retry policy, the image publisher; and `python -m bot check`, which uses them."""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlparse

import httpx
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.methods import Response, TelegramMethod

from bot.clients.providers import ProviderConfig, RetryPolicy
from bot.clients.publishing import ImagePublisher, LocalImageHost
from bot.config import ImageDetail, Settings
from bot.services.diagnostics import Finding, check_providers, check_telegram
from bot.services.images import ImageTarget

PROVIDER_CONNECT_TIMEOUT = 15.0
# Every streamed answer holds one provider connection (HTTP/1.1) for its whole length; a lower cap makes answers
# past it wait for whole earlier answers, and httpx rescans its queue on every connection event (BENCHMARKS.md).
PROVIDER_MAX_CONNECTIONS = 1000
PROVIDER_IDLE_CONNECTIONS = 100
# Image preparation is CPU-bound: a worker per core, less the one the event loop needs under load (each worker also
# keeps ~13 MB of decode buffers; BENCHMARKS.md).
IMAGE_WORKERS = max(1, (os.cpu_count() or 1) - 1)


class TelegramSession(AiohttpSession):
    """aiogram parses every answer as `Response[method.__returning__]`, a model pydantic caches only weakly: once
    the garbage collector has run, the next call rebuilds it (1-4 ms on the event loop, on every update's path).
    The session keeps each one it has used."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._response_models: dict[Any, type[Response[Any]]] = {}

    def check_response(self, bot: Bot, method: TelegramMethod[Any], status_code: int,
                       content: str) -> Response[Any]:
        returning = method.__returning__
        if returning not in self._response_models:
            self._response_models[returning] = Response[returning]  # type: ignore[valid-type]
        return super().check_response(bot, method, status_code, content)


def create_bot(settings: Settings) -> Bot:
    session = TelegramSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))
    return Bot(settings.bot_token.get_secret_value(), session=session)


def create_http_client(settings: Settings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(settings.vision_idle_timeout, connect=PROVIDER_CONNECT_TIMEOUT)
    limits = httpx.Limits(max_connections=PROVIDER_MAX_CONNECTIONS, max_keepalive_connections=PROVIDER_IDLE_CONNECTIONS)
    return httpx.AsyncClient(timeout=timeout, limits=limits, headers={"User-Agent": "vision-bot/0.1"})


def provider_configs(settings: Settings) -> list[ProviderConfig]:
    """The primary provider, then VISION_FALLBACKS in order; every key a plain string only from here on."""
    shared = {"max_tokens": settings.vision_max_tokens, "temperature": settings.vision_temperature,
              "stream": settings.vision_stream,
              "image_detail": settings.vision_image_detail.value if settings.vision_image_detail else None}
    # The primary's prompt is made for the chat's model (its own image limit), so the client trims nothing there.
    providers = [ProviderConfig(
        base_url=settings.vision_base_url, api_keys=tuple(key.get_secret_value() for key in settings.vision_api_keys),
        model=settings.vision_model, image_format=settings.vision_image_format.value, max_images=None,
        extra_body=settings.vision_extra_body, label="primary", **shared)]
    for number, fallback in enumerate(settings.vision_fallbacks, start=1):
        providers.append(ProviderConfig(
            base_url=fallback.base_url, api_keys=tuple(key.get_secret_value() for key in fallback.api_keys),
            model=fallback.model, image_format=fallback.image_format.value,
            max_images=fallback.max_images_per_request, extra_body=fallback.extra_body,
            label=f"fallback {number} ({urlparse(fallback.base_url).hostname}, {fallback.model})", **shared))
    return providers


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(first_token_timeout=settings.vision_first_token_timeout,
                       idle_timeout=settings.vision_idle_timeout, max_wait=settings.vision_max_wait,
                       connect_timeout=PROVIDER_CONNECT_TIMEOUT)


async def create_publisher(settings: Settings, stack: AsyncExitStack) -> ImagePublisher | None:
    """PUBLIC_BASE_URL: the bot's own server; else S3 if configured; else none (images travel inline only)."""
    if settings.public_base_url:
        host = LocalImageHost(settings.public_base_url, ttl=settings.image_url_ttl)
        stack.push_async_callback(host.close)
        return host
    if settings.s3_bucket and settings.s3_access_key_id and settings.s3_secret_access_key:
        from bot.clients.s3_publisher import S3ImagePublisher  # aiobotocore only where S3 is used (~15 MB)

        s3 = S3ImagePublisher(endpoint_url=settings.s3_endpoint_url, bucket=settings.s3_bucket,
                              access_key_id=settings.s3_access_key_id,
                              secret_access_key=settings.s3_secret_access_key.get_secret_value(),
                              region=settings.s3_region, ttl=settings.image_url_ttl)
        await s3.start()
        stack.push_async_callback(s3.close)
        return s3
    return None


def image_target(settings: Settings) -> ImageTarget:
    """`low` detail: the provider looks at 512 px at most, so sending more only costs upload time."""
    if settings.vision_image_detail is ImageDetail.LOW:
        return ImageTarget(long_side=512, short_side=512)
    return ImageTarget()


async def run_checks(settings: Settings) -> list[Finding]:
    """The same clients the bot uses, asked once each."""
    async with create_http_client(settings) as http:
        bot = create_bot(settings)
        try:
            findings = await check_telegram(bot)
        finally:
            await bot.session.close()
        async with AsyncExitStack() as stack:
            publisher = await create_publisher(settings, stack)
            findings += await check_providers(http, provider_configs(settings), retry_policy(settings), publisher)
    return findings
