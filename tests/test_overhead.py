"""What keeps the bot's own work between an update and its provider request small (issue "Speed")."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from aiogram import Bot, Dispatcher
from aiogram.dispatcher.event.handler import CallableObject
from aiogram.methods import GetUpdates, Response
from aiogram.types import Update

from bot.factories import TelegramSession
from bot.models import ConversationKey, PreparedImage, Turn
from bot.services.context import ConversationContext
from tests.fakes.telegram_server import make_user
from tests.fakes.vision_server import SEED_QUOTA_ERROR, json_reply, stream_reply
from tests.support import answered, send_photo

ALICE = make_user(1001, "Alice", "en")


async def test_no_handler_or_filter_of_an_update_runs_in_a_thread(start_bot):
    """aiogram runs a synchronous handler or filter through asyncio.to_thread: milliseconds on a busy loop."""
    running = await start_bot()
    synchronous = [f"{where}: {callable_.callback!r}" for where, callable_ in _callables(running.app.dispatcher)
                   if not callable_.awaitable]

    assert synchronous == []


def _callables(dispatcher: Dispatcher) -> Iterator[tuple[str, CallableObject]]:
    """Every handler and filter an update may run, with its router and event."""
    for router in dispatcher.chain_tail:
        for event, observer in router.observers.items():
            for filter_ in observer._handler.filters or []:  # given to observer.filter(), for all its handlers
                yield f"{router.name}/{event} filter", filter_
            for handler in observer.handlers:
                yield f"{router.name}/{event}", handler
                for filter_ in handler.filters or []:
                    yield f"{router.name}/{event} filter", filter_


def _response_model(returning: Any) -> weakref.ref[type]:
    """Taken inside a function: at module level pydantic would also keep the model in this module's namespace."""
    return weakref.ref(Response[returning])


def test_the_telegram_session_keeps_the_response_models_it_has_used():
    session = TelegramSession()
    bot = Bot("42:TEST", session=session)
    session.check_response(bot, GetUpdates(), 200, '{"ok": true, "result": []}')
    used = _response_model(list[Update])
    unused = _response_model(list[tuple[int, str]])
    gc.collect()

    assert used() is not None
    assert unused() is None  # what pydantic does on its own: rebuilt on the next use


def test_sniffio_is_installed():
    """httpcore imports it on every provider request; missing, the import fails anew each time."""
    assert importlib.util.find_spec("sniffio") is not None


@pytest.mark.parametrize("reply", [stream_reply(["A cat."]), json_reply(SEED_QUOTA_ERROR)], ids=["answer", "error"])
async def test_the_question_leaves_before_its_image_is_stored_and_is_remembered_after(
        telegram, vision, start_bot, monkeypatch, reply):
    """Storing the prepared image is off the way to the provider; remembering the turn that names it waits."""
    stored = asyncio.Event()
    events: list[str] = []
    keep_image, record = ConversationContext.keep_image, ConversationContext.record

    async def slow_keep_image(context: ConversationContext, image: PreparedImage) -> None:
        await stored.wait()
        await keep_image(context, image)
        events.append("image stored")

    async def recorded(context: ConversationContext, key: ConversationKey, *turns: Turn) -> None:
        events.extend(f"{turn.role} turn" for turn in turns)
        await record(context, key, *turns)

    monkeypatch.setattr(ConversationContext, "keep_image", slow_keep_image)
    monkeypatch.setattr(ConversationContext, "record", recorded)
    vision.enqueue(reply)
    await start_bot()
    send_photo(telegram, ALICE, caption="What is it?")

    await vision.wait_for_requests(1)
    await answered(telegram, ALICE["id"])
    await asyncio.sleep(0.1)
    assert events == []
    stored.set()
    await telegram.wait_for(lambda: len(events) >= 2)
    assert events[:2] == ["image stored", "user turn"]
