"""The bot's HTTP side: the webhook endpoint, published images for URL-only providers, /healthz and /metrics."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from urllib.parse import urlparse

from aiogram import Bot, Dispatcher
from aiogram.types import Update
from aiogram.webhook.aiohttp_server import setup_application
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from bot.clients.publishing import IMAGE_PATH_PREFIX, LocalImageHost
from bot.intake import Intake
from bot.metrics import Metrics

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"


def health_handler(is_healthy: Callable[[], bool]) -> Callable[[web.Request], web.StreamResponse]:
    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok") if is_healthy() else web.Response(status=503, text="starting")

    return health


def metrics_app(metrics: Metrics, is_healthy: Callable[[], bool], *, token: str | None = None) -> web.Application:
    """With METRICS_TOKEN, /metrics wants `Authorization: Bearer <token>` (for a metrics port exposed on purpose)."""

    async def exposition(request: web.Request) -> web.Response:
        if token is not None and not hmac.compare_digest(request.headers.get("Authorization", "").encode(),
                                                         f"Bearer {token}".encode()):
            return web.Response(status=401, text="Unauthorized", headers={"WWW-Authenticate": "Bearer"})
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get(METRICS_PATH, exposition)
    app.router.add_get(HEALTH_PATH, health_handler(is_healthy))
    return app


def add_image_route(app: web.Application, host: LocalImageHost, public_base_url: str) -> None:
    """`GET {PUBLIC_BASE_URL}/images/<token>.jpg`: the published bytes, or 404 for anything unknown or expired.

    The route keeps PUBLIC_BASE_URL's path, for proxies that forward paths unchanged; there is no listing.
    """

    async def image(request: web.Request) -> web.Response:
        found = host.lookup(request.match_info["token"])
        if found is None:
            raise web.HTTPNotFound
        data, mime = found
        return web.Response(body=data, content_type=mime, headers={
            "Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"})

    prefix = urlparse(public_base_url).path.rstrip("/")
    app.router.add_get(prefix + IMAGE_PATH_PREFIX + "{token:[A-Za-z0-9_-]{16,128}}.jpg", image)


def images_app(host: LocalImageHost, public_base_url: str) -> web.Application:
    """Polling mode has no webhook server: this one serves the published images alone."""
    app = web.Application(client_max_size=1024)
    add_image_route(app, host, public_base_url)
    return app


def webhook_path(webhook_url: str) -> str:
    return urlparse(webhook_url).path or "/"


def webhook_app(dispatcher: Dispatcher, bot: Bot, intake: Intake, *, webhook_url: str, secret: str,
                is_healthy: Callable[[], bool]) -> web.Application:
    """Telegram's POSTs: refused (401) without the secret header; answered 200 only once the update is recorded
    (a storage failure answers 500, so Telegram delivers it again); handled after the answer."""
    app = web.Application(client_max_size=1024 * 1024)
    # First: on shutdown the dispatcher drains in-flight answers before the bot's session is closed.
    setup_application(app, dispatcher, bot=bot)

    async def receive(request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.headers.get(SECRET_HEADER, "").encode(), secret.encode()):
            return web.Response(status=401, text="Unauthorized")
        try:
            update = Update.model_validate(await request.json(), context={"bot": bot})
        except (ValueError, ValidationError):
            return web.Response(status=400, text="not an update")
        await intake.accept(update)
        return web.json_response({})

    app.router.add_post(webhook_path(webhook_url), receive)
    app.router.add_get(HEALTH_PATH, health_handler(is_healthy))
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
