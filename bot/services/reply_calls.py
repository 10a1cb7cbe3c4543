"""The Telegram calls an answer is made of, and the one way a final part is delivered: where an answer goes
(`ReplyTarget`), how its messages, edits and drafts are built, and the retry loop a final part goes through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest, TelegramNetworkError, TelegramRetryAfter, TelegramServerError
from aiogram.methods import EditMessageText, SendMessage, SendMessageDraft, SendRichMessage, TelegramMethod
from aiogram.types import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputRichMessage,
    LinkPreviewOptions,
    ReplyParameters,
)

from bot.services.formatting import RenderedText

log = logging.getLogger(__name__)

T = TypeVar("T")

STOP_CALLBACK_PREFIX = "stop:"
_FINAL_NETWORK_ATTEMPTS = 5
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """Where an answer goes: the chat, its forum topic, the message it answers and who asked."""

    chat_id: int
    is_private: bool
    thread_id: int | None = None
    reply_to_message_id: int | None = None
    asker_id: int | None = None
    stop_label: str = "⏹ Stop"

    def stop_markup(self, stream_id: int) -> InlineKeyboardMarkup:
        return InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(
            text=self.stop_label, callback_data=f"{STOP_CALLBACK_PREFIX}{stream_id}")]])

    def send_method(self, part: RenderedText, markup: InlineKeyboardMarkup | None, *, as_reply: bool) -> SendMessage:
        """`as_reply`: quoting the question (the answer's first message only)."""
        return SendMessage(chat_id=self.chat_id, text=part.text, entities=part.entities or None,
                           message_thread_id=self.thread_id, reply_parameters=self._reply() if as_reply else None,
                           link_preview_options=_NO_PREVIEW, parse_mode=None, reply_markup=markup)

    def rich_method(self, markdown: str) -> SendRichMessage:
        """A whole answer in one message rendered by Telegram (so always the first, quoting the question)."""
        return SendRichMessage(chat_id=self.chat_id, rich_message=InputRichMessage(markdown=markdown),
                               message_thread_id=self.thread_id, reply_parameters=self._reply())

    def edit_method(self, message_id: int, part: RenderedText,
                    markup: InlineKeyboardMarkup | None) -> EditMessageText:
        return EditMessageText(chat_id=self.chat_id, message_id=message_id, text=part.text,
                               entities=part.entities or None, link_preview_options=_NO_PREVIEW, parse_mode=None,
                               reply_markup=markup)

    def draft_method(self, draft_id: int, part: RenderedText) -> SendMessageDraft:
        return SendMessageDraft(chat_id=self.chat_id, draft_id=draft_id, text=part.text,
                                entities=part.entities or None, message_thread_id=self.thread_id,
                                parse_mode=None, can_stop=True, keep_on_stop=True)

    def _reply(self) -> ReplyParameters | None:
        if self.reply_to_message_id is None:
            return None
        return ReplyParameters(message_id=self.reply_to_message_id, allow_sending_without_reply=True)


async def deliver_final(bot: Bot, build: Callable[[RenderedText], TelegramMethod[T]],
                        part: RenderedText, chat_id: int) -> T | bool | None:
    """Retry until Telegram takes it: flood waits are waited out, rejected entities go out as plain text, network
    failures are retried a few times. None: refused for good. A chat that is gone raises TelegramForbiddenError."""
    network_failures = 0
    while True:
        try:
            return await bot(build(part))
        except TelegramRetryAfter as exc:  # counted and paced by the request middleware
            log.warning("flood control in chat %s: waiting %s s for the final answer", chat_id, exc.retry_after)
            await asyncio.sleep(exc.retry_after)
        except TelegramBadRequest as exc:
            if "message is not modified" in exc.message:
                return True
            if part.entities and entities_rejected(exc):
                log.warning("entities rejected in chat %s: %s; sending plain text", chat_id, exc)
                part = part.without_entities()
                continue
            log.warning("final message rejected in chat %s: %s", chat_id, exc)
            return None
        except (TelegramNetworkError, TelegramServerError) as exc:
            network_failures += 1
            if network_failures >= _FINAL_NETWORK_ATTEMPTS:
                log.error("giving up on the final answer in chat %s: %s", chat_id, exc)  # noqa: TRY400
                return None
            await asyncio.sleep(min(2.0**network_failures, 10.0))


def entities_rejected(exc: TelegramBadRequest) -> bool:
    message = exc.message.lower()
    return "entit" in message or "can't parse" in message
