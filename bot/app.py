"""The application factory: builds every dependency once, wires them into aiogram, runs, shuts down cleanly."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AsyncExitStack
from typing import Any

import httpx
from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import BotCommandScopeDefault

from bot.clients.vision import VisionClient, VisionConfig
from bot.config import BotMode, ImageDetail, ImageFormat, Settings, parse_rate
from bot.handlers import build_router
from bot.handlers.access import AccessMiddleware
from bot.handlers.commands import bot_commands
from bot.handlers.middlewares import ChatOrderMiddleware
from bot.metrics import Metrics
from bot.services.alerts import OperatorAlerts
from bot.services.answering import AnswerService
from bot.services.context import ContextLimits, ConversationContext
from bot.services.diagnostics import PRIVACY_MODE_WARNING, Finding, check_provider, check_telegram
from bot.services.downloads import ImageFetcher
from bot.services.images import ImageTarget, load_decoders
from bot.services.ordering import AlbumCollector, ChatQueue
from bot.services.pacing import UpdatePacer
from bot.services.streaming import ReplyStreamer
from bot.services.usage import UsageGuard, UsageLimits
from bot.storage.sqlite import SqliteConversationStore
from bot.texts import LANGUAGES
from bot.web import metrics_app, serve, webhook_app, webhook_path

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
    timeout = httpx.Timeout(settings.vision_timeout, connect=PROVIDER_CONNECT_TIMEOUT)
    limits = httpx.Limits(max_connections=PROVIDER_MAX_CONNECTIONS, max_keepalive_connections=PROVIDER_IDLE_CONNECTIONS)
    return httpx.AsyncClient(timeout=timeout, limits=limits, headers={"User-Agent": "vision-bot/0.1"})


def vision_config(settings: Settings) -> VisionConfig:
    return VisionConfig(
        base_url=settings.vision_base_url,
        api_key=settings.vision_api_key.get_secret_value(),
        model=settings.vision_model,
        max_tokens=settings.vision_max_tokens,
        temperature=settings.vision_temperature,
        timeout=settings.vision_timeout,
        stream=settings.vision_stream,
        image_detail=settings.vision_image_detail.value if settings.vision_image_detail else None,
        raw_base64_images=settings.vision_image_format is ImageFormat.RAW_BASE64,
        extra_body=settings.vision_extra_body,
    )


def image_target(settings: Settings) -> ImageTarget:
    """`low` detail: the provider looks at 512 px at most, so sending more only costs upload time."""
    if settings.vision_image_detail is ImageDetail.LOW:
        return ImageTarget(long_side=512, short_side=512)
    return ImageTarget()


def create_dispatcher(settings: Settings, bot: Bot, http: httpx.AsyncClient, store: SqliteConversationStore,
                      metrics: Metrics, *, image_workers: Executor) -> Dispatcher:
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
    answers = AnswerService(
        vision=VisionClient(http, vision_config(settings)),
        context=context,
        streamer=streamer,
        fetcher=ImageFetcher(bot, context, max_bytes=settings.max_image_bytes, workers=image_workers,
                             worker_count=IMAGE_WORKERS, target=target),
        alerts=OperatorAlerts(bot, settings.admin_ids),
        usage=usage,
        metrics=metrics,
    )
    queue = ChatQueue()
    # No FSM: conversations live in storage; aiogram's in-memory FSM would only keep a record per user forever.
    dispatcher = Dispatcher(disable_fsm=True, settings=settings, context=context, answers=answers, chat_queue=queue,
                            image_target=target, pacer=pacer, streamer=streamer, usage=usage)
    dispatcher.update.outer_middleware(ChatOrderMiddleware(queue, AlbumCollector()))
    dispatcher.message.outer_middleware(AccessMiddleware(settings.allowed_user_ids, settings.allowed_chat_ids))
    dispatcher.include_router(build_router())
    dispatcher.startup.register(_on_startup)
    dispatcher.shutdown.register(_on_shutdown)
    return dispatcher


async def _on_startup(bot: Bot, context: ConversationContext, settings: Settings, dispatcher: Dispatcher) -> None:
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
    pruned = await context.prune()
    log.info("ready as @%s; pruned %d expired turn(s)", me.username, pruned)


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
        findings += await check_provider(VisionClient(http, vision_config(settings)))
    return findings


class BotApp:
    """`python -m bot` and the end-to-end tests run exactly this."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dispatcher: Dispatcher | None = None
        self.metrics = Metrics()
        self._started = asyncio.Event()
        self._stop_webhook = asyncio.Event()

    async def run(self, *, handle_signals: bool = True) -> None:
        settings = self.settings
        async with AsyncExitStack() as stack:
            http = await stack.enter_async_context(create_http_client(settings))
            image_workers = stack.enter_context(ThreadPoolExecutor(IMAGE_WORKERS, thread_name_prefix="image"))
            store = await SqliteConversationStore.open(settings.database_path)
            stack.push_async_callback(store.close)
            bot = create_bot(settings)
            stack.push_async_callback(bot.session.close)
            self.dispatcher = create_dispatcher(settings, bot, http, store, self.metrics,
                                                image_workers=image_workers)
            self.dispatcher.startup.register(self._mark_started)
            if settings.metrics_port is not None:
                runner = await serve(metrics_app(self.metrics, self._started.is_set), settings.webhook_host,
                                     settings.metrics_port)
                stack.push_async_callback(runner.cleanup)
            if settings.bot_mode is BotMode.WEBHOOK:
                await self._run_webhook(bot, self.dispatcher, handle_signals=handle_signals)
            else:
                await self.dispatcher.start_polling(bot, handle_signals=handle_signals, close_bot_session=False,
                                                    allowed_updates=self.dispatcher.resolve_used_update_types())
        log.info("stopped")

    async def _run_webhook(self, bot: Bot, dispatcher: Dispatcher, *, handle_signals: bool) -> None:
        settings = self.settings
        if settings.webhook_url is None or settings.webhook_secret is None:
            raise RuntimeError("webhook mode without WEBHOOK_URL/WEBHOOK_SECRET")  # Settings already refuses this
        app = webhook_app(dispatcher, bot, webhook_url=settings.webhook_url,
                          secret=settings.webhook_secret.get_secret_value(), is_healthy=self._started.is_set)
        if handle_signals:
            loop = asyncio.get_running_loop()
            for signal_number in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signal_number, self._stop_webhook.set)
        runner = await serve(app, settings.webhook_host, settings.webhook_port)
        log.info("webhook server on %s:%s%s", settings.webhook_host, settings.webhook_port,
                 webhook_path(settings.webhook_url))
        try:
            await self._stop_webhook.wait()
        finally:
            await runner.cleanup()  # runs the dispatcher's shutdown: in-flight answers drain first

    async def _mark_started(self, **_: Any) -> None:
        self._started.set()

    async def wait_started(self) -> None:
        await self._started.wait()

    async def stop(self) -> None:
        if self.settings.bot_mode is BotMode.WEBHOOK:
            self._stop_webhook.set()
        elif self.dispatcher is not None:
            await self.dispatcher.stop_polling()
