"""What keeps the bot's own work between an update and its provider request small (issue "Speed")."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from aiogram import Bot
from aiogram.methods import GetUpdates, Response
from aiogram.types import Update

from bot.factories import TelegramSession


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
