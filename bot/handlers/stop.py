"""Stop: Telegram's button on a draft, or our inline button on a streaming message."""

from __future__ import annotations

import logging

from aiogram import Router
from aiogram.exceptions import TelegramAPIError
from aiogram.types import CallbackQuery, InaccessibleMessage, MessageGenerationStopped

from bot.handlers.filters import CallbackPrefix
from bot.services.reply_calls import STOP_CALLBACK_PREFIX
from bot.services.streaming import ReplyStreamer, StopOutcome
from bot.texts import language_of, text

log = logging.getLogger(__name__)


def create_router() -> Router:
    router = Router(name="stop")
    router.stopped_message_generation.register(on_draft_stopped)
    router.callback_query.register(on_stop_button, CallbackPrefix(STOP_CALLBACK_PREFIX))
    return router


async def on_draft_stopped(event: MessageGenerationStopped, streamer: ReplyStreamer) -> None:
    outcome = await streamer.stop(event.chat.id, event.draft_id)
    log.info("draft %s in chat %s stopped by the user: %s", event.draft_id, event.chat.id, outcome.value)


async def on_stop_button(query: CallbackQuery, streamer: ReplyStreamer) -> None:
    language = language_of(query.from_user.language_code)
    message = query.message
    stream_id = (query.data or "").removeprefix(STOP_CALLBACK_PREFIX)
    if message is None or not (stream_id.isascii() and stream_id.isdigit()):  # forged data: "stop:²" is no id
        await query.answer()
        return
    outcome = await streamer.stop(message.chat.id, int(stream_id), user_id=query.from_user.id)
    if outcome is StopOutcome.STOPPED:
        await query.answer()
    elif outcome is StopOutcome.NOT_ALLOWED:
        await query.answer(text("stop_not_allowed", language), show_alert=True)
    else:
        await query.answer(text("stop_unknown", language))
        if not isinstance(message, InaccessibleMessage):
            await _remove_stale_button(query)


async def _remove_stale_button(query: CallbackQuery) -> None:
    """A button left over from before a restart: nothing to stop any more."""
    try:
        await query.message.edit_reply_markup(reply_markup=None)  # type: ignore[union-attr]
    except TelegramAPIError as exc:
        log.debug("cannot remove a stale stop button: %s", exc)
