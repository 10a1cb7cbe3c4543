"""Last line of defence: a bug in one update is logged and apologised for, never shown raw."""

from __future__ import annotations

import logging

from aiogram import Router
from aiogram.exceptions import TelegramAPIError
from aiogram.types import ErrorEvent

from bot.services.inbox import Ticket
from bot.texts import error_text, language_of

log = logging.getLogger(__name__)


def create_router() -> Router:
    router = Router(name="errors")
    router.errors.register(on_error)
    return router


async def on_error(event: ErrorEvent, ticket: Ticket | None = None) -> None:
    log.error("unhandled error in update %s", event.update.update_id, exc_info=event.exception)
    if ticket is not None:
        ticket.failed = True  # handled (apologised for): not resumed after a restart
    message = event.update.message
    if message is None:
        return
    language = language_of(message.from_user.language_code if message.from_user else None)
    try:
        await message.answer(error_text("internal", language), parse_mode=None)
    except TelegramAPIError as exc:
        log.warning("cannot apologise in chat %s: %s", message.chat.id, exc)
