"""`python -m bot check`: is the Telegram token good, and does the provider answer a real vision request?"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramNetworkError, TelegramUnauthorizedError
from PIL import Image, ImageDraw

from bot import errors
from bot.clients.providers import ProviderConfig, RetryPolicy, VisionRequest
from bot.clients.publishing import ImagePublisher
from bot.clients.vision import VisionClient
from bot.models import PreparedImage, PromptMessage

CHECK_QUESTION = "What colour is the square in this picture? Answer in one word."
# Small, but enough for models that spend a few tokens before the answer.
CHECK_MAX_TOKENS = 64


@dataclass(frozen=True, slots=True)
class Finding:
    ok: bool
    subject: str
    message: str
    warning: bool = False

    def line(self) -> str:
        mark = "OK  " if self.ok and not self.warning else ("WARN" if self.ok else "FAIL")
        return f"[{mark}] {self.subject}: {self.message}"


async def check_telegram(bot: Bot) -> list[Finding]:
    try:
        me = await bot.get_me()
    except TelegramUnauthorizedError:
        return [Finding(False, "Telegram", "the bot token was rejected: check BOT_TOKEN with @BotFather")]
    except TelegramNetworkError as exc:
        return [Finding(False, "Telegram", f"cannot reach TELEGRAM_API_URL ({exc.message})")]
    except TelegramAPIError as exc:
        return [Finding(False, "Telegram", f"getMe failed: {exc.message}")]
    findings = [Finding(True, "Telegram", f"token accepted: @{me.username} (id {me.id})")]
    if not me.can_read_all_group_messages:
        findings.append(Finding(True, "Telegram", PRIVACY_MODE_WARNING, warning=True))
    return findings


PRIVACY_MODE_WARNING = (
    "privacy mode is on: in groups the bot only sees commands, replies to it and @mentions in text. "
    "For photos with an @mention in the caption, turn it off (@BotFather -> /setprivacy -> Disable, then "
    "re-add the bot to the group) or make the bot a group admin"
)


async def check_providers(http: httpx.AsyncClient, providers: Sequence[ProviderConfig], policy: RetryPolicy,
                          publisher: ImagePublisher | None = None) -> list[Finding]:
    """Every provider, and every key of each, asked once on its own (a fallback hides nothing here)."""
    findings = []
    for number, config in enumerate(providers):
        for position, key in enumerate(config.api_keys, start=1):
            single = dataclasses.replace(config, api_keys=(key,), max_tokens=min(config.max_tokens, CHECK_MAX_TOKENS))
            subject = f"{f'Fallback {number}' if number else 'Provider'} ({config.model} at {config.base_url})"
            if len(config.api_keys) > 1:
                subject += f", key {position} of {len(config.api_keys)}"
            findings.append(await _check_one(VisionClient(http, [single], policy, publisher=publisher), subject))
    return findings


async def _check_one(client: VisionClient, subject: str) -> Finding:
    """One tiny real request; if streaming is the problem, the same request without it tells so."""
    try:
        answer = await _ask(client)
    except errors.VisionError as exc:
        if client.primary.stream and isinstance(exc, _STREAMING_SYMPTOMS) and await _works_without_stream(client):
            return Finding(False, subject, "the endpoint does not speak SSE streaming: set VISION_STREAM=false")
        return Finding(False, subject, diagnose(exc))
    return Finding(True, subject, f"answered a test image: {answer.strip()[:80]!r}")


_STREAMING_SYMPTOMS = (errors.StreamCutError, errors.EmptyAnswerError, errors.BadRequestError,
                       errors.UnavailableError)


def diagnose(exc: errors.VisionError) -> str:
    """The operator's next step, in plain words; the provider's own message follows for detail."""
    advice = {
        "auth": "the key was rejected: check VISION_API_KEY",
        "quota": "quota or balance exhausted: top up the provider account",
        "misconfigured": "model not found: check VISION_MODEL (and VISION_BASE_URL, which usually ends in /v1)",
        "image_rejected": "the image was rejected: is VISION_MODEL a vision model? Zhipu's own API needs "
                          "VISION_IMAGE_FORMAT=raw_base64",
        "rate_limited": "rate limited right now: try again in a minute",
        "unavailable": "cannot reach the provider or it is down: check VISION_BASE_URL and the network",
        "content_policy": "the provider's content filter refused a harmless test image",
        "context_too_long": "the provider says the tiny test request is too long: check VISION_MAX_TOKENS",
        "empty_answer": "the provider returned an empty answer",
        "stream_cut": "the answer stopped half-way",
        "timeout": "the provider accepted the request but sent no text in time: it may be overloaded",
        "needs_image_urls": "this model takes images only as URLs: set PUBLIC_BASE_URL (the bot's own server, "
                            "reachable from the internet) or S3_BUCKET and the other S3_* settings",
        "image_publish": "the image could not be published for the provider: check the S3_* settings",
    }.get(exc.kind, "the request was refused")
    status = f"HTTP {exc.status}: " if exc.status is not None else ""
    return f"{advice} ({status}{exc.message[:200]})"


async def _ask(client: VisionClient) -> str:
    prompt = [PromptMessage(role="user", text=CHECK_QUESTION, images=(_test_image(),))]
    async with client.complete(VisionRequest(prompt)) as completion:
        return "".join([delta async for delta in completion])


async def _works_without_stream(client: VisionClient) -> bool:
    plain = VisionClient(client.http, [dataclasses.replace(client.primary, stream=False)], client.policy,
                         publisher=client.publisher)
    try:
        await _ask(plain)
    except errors.VisionError:
        return False
    return True


def _test_image() -> PreparedImage:
    image = Image.new("RGB", (128, 128), "white")
    ImageDraw.Draw(image).rectangle((32, 32, 96, 96), fill="red")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return PreparedImage(image_id="check", data=out.getvalue())
