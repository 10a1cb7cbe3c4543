"""The application factory: builds every dependency once, wires them into aiogram, runs, shuts down cleanly."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AsyncExitStack, suppress
from typing import Any
from urllib.parse import urlparse

import httpx
from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import BotCommandScopeDefault

from bot.clients.providers import ProviderConfig, RetryPolicy
from bot.clients.publishing import ImagePublisher, LocalImageHost
from bot.clients.s3_publisher import S3ImagePublisher
from bot.clients.vision import VisionClient
from bot.config import BotMode, ImageDetail, Settings, parse_rate
from bot.handlers import build_router
from bot.handlers.access import AccessMiddleware
from bot.handlers.commands import bot_commands
from bot.handlers.middlewares import ChatOrderMiddleware
from bot.intake import Intake, poll
from bot.metrics import Metrics
from bot.services.alerts import OperatorAlerts
from bot.services.answering import AnswerOptions, AnswerService
from bot.services.chat_admins import ChatAdmins
from bot.services.context import ContextLimits, ConversationContext
from bot.services.diagnostics import PRIVACY_MODE_WARNING, Finding, check_providers, check_telegram
from bot.services.downloads import ImageFetcher
from bot.services.housekeeping import Housekeeping, Retention
from bot.services.images import ImageTarget, load_decoders
from bot.services.inbox import Inbox
from bot.services.model_choice import ModelChoice
from bot.services.ordering import AlbumCollector, ChatQueue
from bot.services.pacing import UpdatePacer
from bot.services.streaming import ReplyStreamer
from bot.services.usage import UsageGuard, UsageLimits
from bot.storage.base import ConversationStore
from bot.storage.factory import open_store
from bot.texts import LANGUAGES
from bot.web import add_image_route, images_app, metrics_app, serve, webhook_app, webhook_path

log = logging.getLogger(__name__)

PROVIDER_CONNECT_TIMEOUT = 15.0
# Every streamed answer holds one provider connection (HTTP/1.1) for its whole length; a lower cap makes answers
# past it wait for whole earlier answers, and httpx rescans its queue on every connection event (BENCHMARKS.md).
PROVIDER_MAX_CONNECTIONS = 1000
PROVIDER_IDLE_CONNECTIONS = 100
# Image preparation is CPU-bound: a worker per core, less the one the event loop needs under load (each worker also
# keeps ~13 MB of decode buffers; BENCHMARKS.md).
IMAGE_WORKERS = max(1, (os.cpu_count() or 1) - 1)


def create_bot(settings: Settings) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))
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


def create_dispatcher(settings: Settings, bot: Bot, http: httpx.AsyncClient, store: ConversationStore,
                      metrics: Metrics, *, image_workers: Executor, publisher: ImagePublisher | None = None
                      ) -> Dispatcher:
    """Every service is built here and handed to handlers as workflow data; nothing global."""
    context = ConversationContext(
        store,
        ContextLimits(
            max_turns=settings.context_max_turns,
            max_images=settings.context_max_images,
            idle_seconds=settings.context_ttl,
            max_images_per_request=settings.max_images_per_request,
        ),
        system_prompt=settings.vision_system_prompt,
    )
    pacer = UpdatePacer()
    streamer = ReplyStreamer(bot, pacer, settings.stream_mode, metrics, rich_final=settings.rich_messages)
    target = image_target(settings)
    usage = UsageGuard(store, UsageLimits(
        rate=parse_rate(settings.user_rate_limit) if settings.user_rate_limit else None,
        user_daily_tokens=settings.user_daily_tokens,
        chat_daily_tokens=settings.chat_daily_tokens,
    ))
    alerts = OperatorAlerts(bot, settings.admin_ids)
    model_choice = ModelChoice(store, settings.selectable_models)
    inbox = Inbox(store)
    vision = VisionClient(http, provider_configs(settings), retry_policy(settings), publisher=publisher,
                          on_key_rested=alerts.report_key)
    answers = AnswerService(
        vision=vision,
        context=context,
        streamer=streamer,
        fetcher=ImageFetcher(bot, context, max_bytes=settings.max_image_bytes, workers=image_workers,
                             worker_count=IMAGE_WORKERS, target=target),
        alerts=alerts,
        usage=usage,
        metrics=metrics,
        models=model_choice,
        inbox=inbox,
        options=AnswerOptions(max_images_for=settings.max_images_for, album_grid=settings.album_grid,
                              slow_notice_after=settings.slow_notice_after, resume_max_age=settings.resume_max_age),
    )
    queue = ChatQueue()
    chat_admins = ChatAdmins(bot, settings.admin_ids)
    # No FSM: conversations live in storage; aiogram's in-memory FSM would only keep a record per user forever.
    dispatcher = Dispatcher(disable_fsm=True, settings=settings, context=context, answers=answers, chat_queue=queue,
                            image_target=target, pacer=pacer, streamer=streamer, usage=usage,
                            model_choice=model_choice, chat_admins=chat_admins, inbox=inbox,
                            housekeeping=Housekeeping(store, context, inbox, Retention(
                                inbox_seconds=settings.inbox_retention, usage_days=settings.usage_retention_days)))
    dispatcher.update.outer_middleware(ChatOrderMiddleware(queue, AlbumCollector()))
    dispatcher.message.outer_middleware(AccessMiddleware(settings.allowed_user_ids, settings.allowed_chat_ids))
    dispatcher.include_router(build_router())
    dispatcher.startup.register(_on_startup)
    dispatcher.shutdown.register(_on_shutdown)
    return dispatcher


async def _on_startup(bot: Bot, settings: Settings, dispatcher: Dispatcher) -> None:
    if settings.bot_mode is BotMode.WEBHOOK and settings.webhook_url and settings.webhook_secret:
        await bot.set_webhook(settings.webhook_url, secret_token=settings.webhook_secret.get_secret_value(),
                              allowed_updates=dispatcher.resolve_used_update_types(), drop_pending_updates=False)
    else:
        await bot.delete_webhook(drop_pending_updates=False)
    for language in LANGUAGES:
        await bot.set_my_commands(bot_commands(language), scope=BotCommandScopeDefault(),
                                  language_code=None if language == "en" else language)
    load_decoders()
    me = await bot.me()
    if not me.can_read_all_group_messages:
        log.warning("@%s: %s", me.username, PRIVACY_MODE_WARNING)
    log.info("ready as @%s", me.username)


async def _on_shutdown(settings: Settings, chat_queue: ChatQueue, pacer: UpdatePacer) -> None:
    await chat_queue.drain(settings.shutdown_grace)
    await pacer.close()


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


class BotApp:
    """`python -m bot` and the end-to-end tests run exactly this."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dispatcher: Dispatcher | None = None
        self.publisher: ImagePublisher | None = None
        self.metrics = Metrics()
        self._started = asyncio.Event()
        self._stop = asyncio.Event()

    async def run(self, *, handle_signals: bool = True) -> None:
        settings = self.settings
        if handle_signals:
            loop = asyncio.get_running_loop()
            for signal_number in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signal_number, self._stop.set)
        async with AsyncExitStack() as stack:
            http = await stack.enter_async_context(create_http_client(settings))
            image_workers = stack.enter_context(ThreadPoolExecutor(IMAGE_WORKERS, thread_name_prefix="image"))
            store = await open_store(settings.database_url)
            stack.push_async_callback(store.close)
            bot = create_bot(settings)
            stack.push_async_callback(bot.session.close)
            publisher = await create_publisher(settings, stack)
            self.publisher = publisher
            self.dispatcher = create_dispatcher(settings, bot, http, store, self.metrics,
                                                image_workers=image_workers, publisher=publisher)
            self.dispatcher.startup.register(self._mark_started)
            intake = Intake(self.dispatcher, bot, self.dispatcher["inbox"])
            stack.push_async_callback(intake.close)
            sweeper = asyncio.create_task(self.dispatcher["housekeeping"].run(), name="housekeeping")
            stack.push_async_callback(_cancelled, sweeper)
            if settings.metrics_port is not None:
                runner = await serve(metrics_app(self.metrics, self._started.is_set), settings.webhook_host,
                                     settings.metrics_port)
                stack.push_async_callback(runner.cleanup)
            if settings.bot_mode is BotMode.WEBHOOK:
                await self._run_webhook(bot, self.dispatcher, intake)
            else:
                await self._run_polling(bot, self.dispatcher, intake, stack)
        log.info("stopped")

    async def _run_polling(self, bot: Bot, dispatcher: Dispatcher, intake: Intake, stack: AsyncExitStack) -> None:
        settings = self.settings
        if isinstance(self.publisher, LocalImageHost) and settings.public_base_url:
            runner = await serve(images_app(self.publisher, settings.public_base_url), settings.webhook_host,
                                 settings.webhook_port)
            stack.push_async_callback(runner.cleanup)
        workflow = {"dispatcher": dispatcher, "bots": (bot,), **dispatcher.workflow_data}
        await dispatcher.emit_startup(bot=bot, **workflow)
        try:
            await intake.resume()
            await poll(bot, intake, self._stop, allowed_updates=dispatcher.resolve_used_update_types())
        finally:
            await dispatcher.emit_shutdown(bot=bot, **workflow)  # in-flight answers drain first

    async def _run_webhook(self, bot: Bot, dispatcher: Dispatcher, intake: Intake) -> None:
        settings = self.settings
        if settings.webhook_url is None or settings.webhook_secret is None:
            raise RuntimeError("webhook mode without WEBHOOK_URL/WEBHOOK_SECRET")  # Settings already refuses this
        app = webhook_app(dispatcher, bot, intake, webhook_url=settings.webhook_url,
                          secret=settings.webhook_secret.get_secret_value(), is_healthy=self._started.is_set)
        if isinstance(self.publisher, LocalImageHost) and settings.public_base_url:
            add_image_route(app, self.publisher, settings.public_base_url)
        runner = await serve(app, settings.webhook_host, settings.webhook_port)
        log.info("webhook server on %s:%s%s", settings.webhook_host, settings.webhook_port,
                 webhook_path(settings.webhook_url))
        try:
            await intake.resume()
            await self._stop.wait()
        finally:
            await runner.cleanup()  # runs the dispatcher's shutdown: in-flight answers drain first

    async def _mark_started(self, **_: Any) -> None:
        self._started.set()

    async def wait_started(self) -> None:
        await self._started.wait()

    async def stop(self) -> None:
        self._stop.set()


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
