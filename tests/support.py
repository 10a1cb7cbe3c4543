"""Helpers shared by the end-to-end and client tests: talking to the bot as a user, asking the client."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from typing import Any

import httpx
import pytest

from bot.clients.providers import ProviderConfig, RetryPolicy, VisionRequest
from bot.clients.reading import Completion
from bot.clients.vision import VisionClient
from bot.models import PreparedImage, PromptMessage
from tests.conftest import API_KEY, make_photo
from tests.fakes.telegram_server import FakeTelegram, message_update, private_chat
from tests.fakes.vision_server import FakeVision

Json = dict[str, Any]

PROMPT = [PromptMessage(role="user", text="What is this?",
                        images=(PreparedImage(image_id="sample", data=make_photo(64, 48)),))]


def send_photo(telegram: FakeTelegram, user: Json, caption: str | None = None, image: bytes | None = None) -> Json:
    """A photo in the user's private chat; returns the message as Telegram delivered it."""
    update = message_update(private_chat(user), user, photo=telegram.photo_sizes(image or make_photo()),
                            caption=caption)
    telegram.push_update(update)
    return update["message"]


def send_text(telegram: FakeTelegram, user: Json, text: str) -> Json:
    update = message_update(private_chat(user), user, text=text)
    telegram.push_update(update)
    return update["message"]


def final_texts(telegram: FakeTelegram, chat_id: int) -> list[str]:
    return [message["text"] for message in telegram.chat_messages(chat_id)]


async def answered(telegram: FakeTelegram, chat_id: int, count: int = 1) -> list[str]:
    """The bot's messages in the chat once there are at least `count` (the first may still be growing)."""
    await telegram.wait_for(lambda: len(telegram.chat_messages(chat_id)) >= count, timeout=10)
    return final_texts(telegram, chat_id)


async def ask_photos(telegram: FakeTelegram, vision: FakeVision, users: list[Json],
                     caption: str = "What is this?", image: bytes | None = None) -> list[str]:
    """One photo question per user (distinct chats), answered concurrently but asked in a known order.

    Each question is sent only once the previous one reached the provider, so scripted replies are consumed in
    `users` order; the chats then wait out Telegram's per-chat pacing in parallel.
    """
    before = {user["id"]: len(telegram.chat_messages(user["id"])) for user in users}
    requests = len(vision.requests)
    for position, user in enumerate(users, start=1):
        send_photo(telegram, user, caption, image or make_photo(640, 480))
        await vision.wait_for_requests(requests + position)
    return [(await answered(telegram, user["id"], before[user["id"]] + 1))[before[user["id"]]] for user in users]


_POLICY_FIELDS = frozenset(field.name for field in dataclasses.fields(RetryPolicy))


def client_for(http: httpx.AsyncClient, base_url: str, *, fallbacks: tuple[ProviderConfig, ...] = (),
               client_options: dict[str, Any] | None = None, **overrides: Any) -> VisionClient:
    """The real client with fast retries, for tests that talk to FakeVision directly.

    `overrides` name `ProviderConfig` or `RetryPolicy` fields; `client_options` go to `VisionClient` itself.
    """
    policy: dict[str, Any] = {"retry_delay": 0.01, "max_retry_wait": 2.0}
    provider: dict[str, Any] = {"base_url": base_url, "api_keys": (API_KEY,), "model": "glm-4v-flash",
                                "max_tokens": 300, "image_format": "data_url"}
    for name, value in overrides.items():
        (policy if name in _POLICY_FIELDS else provider)[name] = value
    return VisionClient(http, [ProviderConfig(**provider), *fallbacks], RetryPolicy(**policy),
                        **(client_options or {}))


async def ask(client: VisionClient, prompt: list[PromptMessage] = PROMPT) -> tuple[str, Completion]:
    async with client.complete(VisionRequest(prompt)) as completion:
        answer = "".join([delta async for delta in completion])
    return answer, completion


async def start_quietly(start_bot: Any, caplog: pytest.LogCaptureFixture, **overrides: Any) -> Any:
    """Starts the bot and waits for its first housekeeping sweep, so the sweep's log lines come before the test's."""
    caplog.set_level(logging.INFO, logger="bot.services.housekeeping")
    bot = await start_bot(**overrides)
    deadline = time.monotonic() + 10
    while not any(record.name == "bot.services.housekeeping" for record in caplog.records):
        assert time.monotonic() < deadline, "no housekeeping sweep within 10 s"
        await asyncio.sleep(0.01)
    return bot


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
