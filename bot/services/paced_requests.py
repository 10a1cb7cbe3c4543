"""The Bot's request middleware: every Telegram call that puts something in front of a user (a message, an edit, a
draft, a typing action, a callback answer) takes its turn at the one scheduler, whoever makes it; reads and set-up
calls (getUpdates, getFile, getChatMember, setWebhook...) go straight through. A flood wait on a call paced here (a
command's reply, an alert) is waited out and the call made again, so the reply is not lost.

A stream that already waited for its turn with its own priority marks the call with `UpdatePacer.turn_taken` and is
not paced twice. Typing only goes when a turn is free at once (else it is dropped, reported as sent). A flood wait
is counted and pauses the chat (or the bot) here, for every caller alike.
"""

from __future__ import annotations

import logging
from typing import Any

from aiogram import Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import SendChatAction, TelegramMethod
from aiogram.methods.base import TelegramType

from bot.metrics import Metrics
from bot.services.pacing import ChatKey, Priority, UpdatePacer

log = logging.getLogger(__name__)

_USER_FACING = ("send", "edit", "copy", "forward", "answer", "stop")
_ATTEMPTS = 3  # a reply, alert or callback answer Telegram asked to wait for is sent again after the wait


class PacedRequests(BaseRequestMiddleware):
    def __init__(self, pacer: UpdatePacer, metrics: Metrics) -> None:
        self._pacer = pacer
        self._metrics = metrics

    async def __call__(self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot,
                       method: TelegramMethod[TelegramType]) -> Any:
        if not method.__api_method__.startswith(_USER_FACING):
            return await make_request(bot, method)
        chat_id = _chat_of(method)
        if self._pacer.has_turn(chat_id):  # a stream's call: the stream handles a flood wait its own way
            return await self._counted(make_request, bot, method, chat_id)
        if isinstance(method, SendChatAction):
            if not await self._pacer.try_turn(chat_id):
                log.debug("typing in chat %s dropped: no free turn", chat_id)
                return True
            return await self._counted(make_request, bot, method, chat_id)
        attempt = 1
        while True:
            await self._pacer.wait_turn(chat_id, Priority.URGENT)
            try:
                return await self._counted(make_request, bot, method, chat_id)
            except TelegramRetryAfter as exc:
                if attempt == _ATTEMPTS:
                    raise
                attempt += 1
                log.warning("flood control in chat %s: %s again after %s s", chat_id, method.__api_method__,
                            exc.retry_after)

    async def _counted(self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot,
                       method: TelegramMethod[TelegramType], chat_id: ChatKey) -> Any:
        try:
            return await make_request(bot, method)
        except TelegramRetryAfter as exc:
            self._metrics.telegram_429.inc()
            self._pacer.pause_chat(chat_id, exc.retry_after)
            raise


def _chat_of(method: TelegramMethod[Any]) -> ChatKey:
    chat_id = getattr(method, "chat_id", None)
    return chat_id if isinstance(chat_id, int | str) else None
