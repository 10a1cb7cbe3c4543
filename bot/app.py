"""The application factory: builds every dependency once, wires them into aiogram, runs, shuts down cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any

import httpx
from aiogram import Bot, Dispatcher
from aiogram.types import BotCommandScopeDefault

from bot.clients.publishing import ImagePublisher, LocalImageHost
from bot.clients.vision import VisionClient
from bot.config import BotMode, Settings, parse_rate
from bot.coordination import Coordinator, LocalCoordinator, SendBudget, open_coordinator
from bot.factories import (
    IMAGE_WORKERS,
    create_bot,
    create_http_client,
    create_publisher,
    image_target,
    provider_configs,
    retry_policy,
)
from bot.handlers import build_router
from bot.handlers.access import AccessMiddleware
from bot.handlers.commands import bot_commands
from bot.handlers.middlewares import ChatOrderMiddleware
from bot.intake import Intake
from bot.metrics import Metrics
from bot.polling import poll
from bot.services.alerts import OperatorAlerts
from bot.services.answering import AnswerOptions, AnswerService
from bot.services.chat_admins import ChatAdmins
from bot.services.context import ContextLimits, ConversationContext
from bot.services.diagnostics import PRIVACY_MODE_WARNING
from bot.services.downloads import ImageFetcher
from bot.services.housekeeping import Housekeeping, Retention
from bot.services.images import load_decoders
from bot.services.inbox import Inbox
from bot.services.model_choice import ModelChoice
from bot.services.ordering import ChatQueue
from bot.services.paced_requests import PacedRequests
from bot.services.pacing import UpdatePacer
from bot.services.streaming import ReplyStreamer
from bot.services.usage import UsageGuard, UsageLimits
from bot.storage.base import ConversationStore
from bot.storage.factory import open_store
from bot.texts import LANGUAGES
from bot.web import add_image_route, images_app, metrics_app, serve, webhook_app, webhook_path

log = logging.getLogger(__name__)

def create_dispatcher(settings: Settings, bot: Bot, http: httpx.AsyncClient, store: ConversationStore,
                      metrics: Metrics, *, image_workers: Executor, coordinator: Coordinator,
                      publisher: ImagePublisher | None = None) -> Dispatcher:
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
    # With replicas every turn is also reserved in the budget they share (the Redis coordinator is that budget).
    pacer = UpdatePacer(shared_budget=coordinator if isinstance(coordinator, SendBudget) else None)
    bot.session.middleware(PacedRequests(pacer, metrics))  # every call the bot makes, through the one scheduler
    streamer = ReplyStreamer(bot, pacer, settings.stream_mode, metrics, coordinator,
                             rich_final=settings.rich_messages)
    target = image_target(settings)
    usage = UsageGuard(store, UsageLimits(
        rate=parse_rate(settings.user_rate_limit) if settings.user_rate_limit else None,
        user_daily_tokens=settings.user_daily_tokens,
        chat_daily_tokens=settings.chat_daily_tokens,
        answer_tokens=settings.vision_max_tokens,
    ), coordinator)
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
    queue = ChatQueue(coordinator, inbox)
    chat_admins = ChatAdmins(bot, settings.admin_ids)
    # No FSM: conversations live in storage; aiogram's in-memory FSM would only keep a record per user forever.
    dispatcher = Dispatcher(disable_fsm=True, settings=settings, context=context, answers=answers, chat_queue=queue,
                            image_target=target, pacer=pacer, streamer=streamer, usage=usage,
                            model_choice=model_choice, chat_admins=chat_admins, inbox=inbox,
                            housekeeping=Housekeeping(store, context, inbox, Retention(
                                inbox_seconds=settings.inbox_retention, usage_days=settings.usage_retention_days)))
    dispatcher.update.outer_middleware(ChatOrderMiddleware(queue, coordinator))
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


class BotApp:
    """`python -m bot` and the end-to-end tests run exactly this."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dispatcher: Dispatcher | None = None
        self.publisher: ImagePublisher | None = None
        self.metrics = Metrics()
        self._started = asyncio.Event()
        self._stop = asyncio.Event()
        self._coordinator: Coordinator = LocalCoordinator()

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
            coordinator = await open_coordinator(
                settings.redis_url.get_secret_value() if settings.redis_url else None, key_prefix=settings.redis_prefix)
            stack.push_async_callback(coordinator.close)
            self.dispatcher = create_dispatcher(settings, bot, http, store, self.metrics, image_workers=image_workers,
                                                coordinator=coordinator, publisher=publisher)
            self.dispatcher.startup.register(self._mark_started)
            intake = Intake(self.dispatcher, bot, self.dispatcher["inbox"], coordinator)
            self._coordinator = coordinator
            stack.push_async_callback(intake.close)
            sweeper = asyncio.create_task(self.dispatcher["housekeeping"].run(), name="housekeeping")
            stack.push_async_callback(_cancelled, sweeper)
            if settings.metrics_port is not None:
                token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
                runner = await serve(metrics_app(self.metrics, self._started.is_set, token=token),
                                     settings.metrics_host, settings.metrics_port)
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
            async with self._resuming(intake):
                await poll(bot, intake, self._coordinator, self._stop,
                           allowed_updates=dispatcher.resolve_used_update_types())
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
            async with self._resuming(intake):
                await self._stop.wait()
        finally:
            await runner.cleanup()  # runs the dispatcher's shutdown: in-flight answers drain first

    @asynccontextmanager
    async def _resuming(self, intake: Intake) -> AsyncIterator[None]:
        """What an earlier run left unfinished: alone, all of it at start; with replicas, whatever no live replica
        holds, looked for all along (a replica may die at any time)."""
        if not self._coordinator.shared:
            await intake.resume()
            yield
            return
        tasks = [asyncio.create_task(intake.watch(), name="take-over")]
        if self.settings.bot_mode is BotMode.POLLING:  # the poller shares out what it receives
            tasks.append(asyncio.create_task(intake.work(), name="work"))
        try:
            yield
        finally:
            for task in tasks:
                await _cancelled(task)

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
