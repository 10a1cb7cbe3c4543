"""One mechanism for every answer that appears while it is generated.

Private chats get animated drafts (`sendMessageDraft`) where Telegram accepts them; everywhere else one message
is edited as the text grows. Either way the final answer is sent as real message(s), every update is paced
bot-wide, and the complete final text is never lost: Telegram's "retry after" is waited out, rejected
entities fall back to plain text, a deleted message is replaced by a new one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import EditMessageText, SendChatAction, SendMessage, SendMessageDraft, TelegramMethod
from aiogram.types import LinkPreviewOptions, Message, ReplyParameters

from bot.config import StreamMode
from bot.services.formatting import RenderedText, render, render_plain
from bot.services.pacing import UpdatePacer

log = logging.getLogger(__name__)

T = TypeVar("T")

TYPING_REFRESH_SECONDS = 4.5
_FINAL_NETWORK_ATTEMPTS = 5
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """Where an answer goes: the chat, its forum topic, and the message it answers."""

    chat_id: int
    is_private: bool
    thread_id: int | None = None
    reply_to_message_id: int | None = None


class ReplyStreamer:
    """Bot-wide factory of reply streams; remembers where Telegram refused drafts."""

    def __init__(self, bot: Bot, pacer: UpdatePacer, mode: StreamMode) -> None:
        self._bot = bot
        self._pacer = pacer
        self._mode = mode
        self._draft_ids = itertools.count(random.randint(1, 2**30))
        self._drafts_refused_in: set[int] = set()
        self._drafts_unsupported = False

    def open(self, target: ReplyTarget) -> ReplyStream:
        stream = ReplyStream(self._bot, self._pacer, self, target, use_drafts=self._drafts_allowed(target))
        stream.start()
        return stream

    def next_draft_id(self) -> int:
        return next(self._draft_ids)

    def refuse_drafts(self, chat_id: int, *, everywhere: bool) -> None:
        if everywhere:
            self._drafts_unsupported = True
        self._drafts_refused_in.add(chat_id)

    def _drafts_allowed(self, target: ReplyTarget) -> bool:
        return (
            self._mode is StreamMode.AUTO
            and target.is_private
            and not self._drafts_unsupported
            and target.chat_id not in self._drafts_refused_in
        )


class ReplyStream:
    """One answer being shown in one chat: `push` the text so far as often as you like, then `finish`."""

    def __init__(self, bot: Bot, pacer: UpdatePacer, streamer: ReplyStreamer, target: ReplyTarget,
                 *, use_drafts: bool) -> None:
        self._bot = bot
        self._pacer = pacer
        self._streamer = streamer
        self._target = target
        self._use_drafts = use_drafts
        self._draft_id = streamer.next_draft_id()
        self._markdown = ""
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._sealed_parts = 0
        self._live_message_id: int | None = None
        self._live_shown: RenderedText | None = None
        self._closing = False
        self._plain_only = False
        self._updater: asyncio.Task[None] | None = None
        self._typing: asyncio.Task[None] | None = None
        self._final: asyncio.Task[None] | None = None
        self.gone = False
        self.first_visible_at: float | None = None
        self.sent_message_ids: list[int] = []

    @property
    def uses_drafts(self) -> bool:
        return self._use_drafts

    @property
    def draft_id(self) -> int:
        return self._draft_id

    def start(self) -> None:
        self._typing = asyncio.create_task(self._keep_typing(), name=f"typing:{self._target.chat_id}")
        self._updater = asyncio.create_task(self._run_updates(), name=f"updates:{self._target.chat_id}")

    def push(self, markdown: str) -> None:
        """The whole answer so far; only the newest text is ever shown."""
        self._markdown = markdown
        self._wake.set()

    async def finish(self, markdown: str) -> None:
        """Send the final answer; safe to call again (e.g. after a cancellation): the first text wins."""
        if self._final is None:
            self._final = asyncio.create_task(self._finalize(render(markdown) or render_plain("…")))
        await asyncio.shield(self._final)

    async def finish_plain(self, text: str) -> None:
        """A final notice of our own (an error message), with no Markdown interpretation."""
        if self._final is None:
            self._final = asyncio.create_task(self._finalize(render_plain(text)))
        await asyncio.shield(self._final)

    async def _keep_typing(self) -> None:
        action = SendChatAction(chat_id=self._target.chat_id, action="typing",
                                message_thread_id=self._target.thread_id)
        while True:
            try:
                await self._bot(action)
            except TelegramRetryAfter as exc:
                await asyncio.sleep(exc.retry_after)
                continue
            except TelegramAPIError as exc:
                log.debug("typing indicator failed in chat %s: %s", self._target.chat_id, exc)
            await asyncio.sleep(TYPING_REFRESH_SECONDS)

    async def _run_updates(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._pacer.wait_turn(self._target.chat_id)
            async with self._send_lock:
                if self._closing:
                    return
                await self._show_progress()

    async def _show_progress(self) -> None:
        parts = self._prepared(render(self._markdown))
        if not parts:
            return
        while len(parts) - 1 > self._sealed_parts and not self.gone:
            await self._deliver_final(parts[self._sealed_parts])
        if not self.gone:
            await self._show_live(parts[-1])

    async def _show_live(self, part: RenderedText) -> None:
        if part == self._live_shown:
            return
        if self._use_drafts and await self._try_draft(part):
            self._shown(part)
            return
        if self._live_message_id is None:
            message = await self._intermediate(self._send_method(part))
            if isinstance(message, Message):
                self._live_message_id = message.message_id
                self.sent_message_ids.append(message.message_id)
                self._shown(part)
        elif await self._intermediate(self._edit_method(self._live_message_id, part)) is not None:
            self._shown(part)

    def _shown(self, part: RenderedText) -> None:
        self._live_shown = part
        if self.first_visible_at is None:
            self.first_visible_at = time.monotonic()
            self._stop_typing()

    async def _try_draft(self, part: RenderedText) -> bool:
        method = SendMessageDraft(chat_id=self._target.chat_id, draft_id=self._draft_id, text=part.text,
                                  entities=part.entities or None, message_thread_id=self._target.thread_id,
                                  parse_mode=None)
        try:
            return await self._intermediate(method, reraise=(TelegramBadRequest, TelegramNotFound)) is not None
        except (TelegramBadRequest, TelegramNotFound) as exc:
            if _entities_rejected(exc) and part.entities:
                return await self._try_draft(part.without_entities())
            log.info("drafts refused in chat %s (%s); streaming with edits instead", self._target.chat_id, exc)
            self._streamer.refuse_drafts(self._target.chat_id, everywhere=isinstance(exc, TelegramNotFound))
            self._use_drafts = False
            return False

    async def _intermediate(self, method: TelegramMethod[T],
                            reraise: tuple[type[Exception], ...] = ()) -> T | bool | None:
        """One progress update: skipped (None) rather than retried, the next one carries newer text anyway."""
        try:
            return await self._bot(method)
        except reraise:
            raise
        except TelegramRetryAfter as exc:
            self._pacer.pause_chat(self._target.chat_id, exc.retry_after)
            self._wake.set()
        except TelegramBadRequest as exc:
            return self._handle_intermediate_rejection(method, exc)
        except TelegramForbiddenError as exc:
            self._mark_gone(exc)
        except TelegramAPIError as exc:
            log.warning("progress update failed in chat %s: %s", self._target.chat_id, exc)
        return None

    def _handle_intermediate_rejection(self, method: TelegramMethod[Any], exc: TelegramBadRequest) -> bool | None:
        if "message is not modified" in exc.message:
            return True
        if "message to edit not found" in exc.message:
            self._mark_gone(exc)
        elif _entities_rejected(exc) and isinstance(method, SendMessage | EditMessageText) and method.entities:
            self._plain_only = True
            self._wake.set()
            log.warning("entities rejected in chat %s: %s; going on in plain text", self._target.chat_id, exc)
        else:
            log.warning("progress update rejected in chat %s: %s", self._target.chat_id, exc)
        return None

    def _mark_gone(self, exc: TelegramAPIError) -> None:
        """The user deleted the answer or blocked the bot: generating more would be wasted."""
        log.info("chat %s no longer shows this answer: %s", self._target.chat_id, exc)
        self.gone = True

    def _prepared(self, parts: list[RenderedText]) -> list[RenderedText]:
        return [part.without_entities() for part in parts] if self._plain_only else parts

    async def _finalize(self, parts: list[RenderedText]) -> None:
        await self._stop_updates()
        for part in self._prepared(parts)[self._sealed_parts:]:
            await self._deliver_final(part)

    async def _deliver_final(self, part: RenderedText) -> None:
        """A part that will not change again: the live message becomes it, or it is sent as a new message."""
        message_id = None if self._use_drafts else self._live_message_id
        delivered = message_id is not None and part == self._live_shown
        if message_id is not None and not delivered:
            await self._pacer.wait_turn(self._target.chat_id)
            delivered = await self._final_call(lambda p: self._edit_method(message_id, p), part) is not None
        if not delivered:
            await self._pacer.wait_turn(self._target.chat_id)
            message = await self._final_call(self._send_method, part)
            if isinstance(message, Message):
                self.sent_message_ids.append(message.message_id)
        self._sealed_parts += 1
        self._live_message_id = None
        self._live_shown = None
        if self.first_visible_at is None:
            self.first_visible_at = time.monotonic()
        self._stop_typing()

    async def _final_call(self, build: Callable[[RenderedText], TelegramMethod[T]],
                          part: RenderedText) -> T | bool | None:
        """Retry until Telegram takes it: flood waits are waited out, rejected entities go out as plain text."""
        network_failures = 0
        while True:
            try:
                return await self._bot(build(part))
            except TelegramRetryAfter as exc:
                self._pacer.pause_chat(self._target.chat_id, exc.retry_after)
                log.warning("flood control in chat %s: waiting %s s for the final answer",
                            self._target.chat_id, exc.retry_after)
                await asyncio.sleep(exc.retry_after)
            except TelegramBadRequest as exc:
                if "message is not modified" in exc.message:
                    return True
                if part.entities and _entities_rejected(exc):
                    log.warning("entities rejected in chat %s: %s; sending plain text", self._target.chat_id, exc)
                    part = part.without_entities()
                    continue
                log.warning("final message rejected in chat %s: %s", self._target.chat_id, exc)
                return None
            except TelegramForbiddenError as exc:
                self._mark_gone(exc)
                return None
            except (TelegramNetworkError, TelegramServerError) as exc:
                network_failures += 1
                if network_failures >= _FINAL_NETWORK_ATTEMPTS:
                    log.error("giving up on the final answer in chat %s: %s", self._target.chat_id, exc)  # noqa: TRY400
                    return None
                await asyncio.sleep(min(2.0**network_failures, 10.0))

    async def _stop_updates(self) -> None:
        self._closing = True
        async with self._send_lock:  # an update already on the wire lands first
            if self._updater is not None:
                self._updater.cancel()
        await _cancelled(self._updater)
        self._stop_typing()

    def _stop_typing(self) -> None:
        if self._typing is not None:
            self._typing.cancel()

    async def close(self) -> None:
        """Release the background tasks of a stream that was never finished."""
        self._closing = True
        for task in (self._updater, self._typing):
            if task is not None:
                task.cancel()
                await _cancelled(task)

    def _send_method(self, part: RenderedText) -> SendMessage:
        reply = None
        if self._target.reply_to_message_id is not None and self._sealed_parts == 0:
            reply = ReplyParameters(message_id=self._target.reply_to_message_id, allow_sending_without_reply=True)
        return SendMessage(chat_id=self._target.chat_id, text=part.text, entities=part.entities or None,
                           message_thread_id=self._target.thread_id, reply_parameters=reply,
                           link_preview_options=_NO_PREVIEW, parse_mode=None)

    def _edit_method(self, message_id: int, part: RenderedText) -> EditMessageText:
        return EditMessageText(chat_id=self._target.chat_id, message_id=message_id, text=part.text,
                               entities=part.entities or None, link_preview_options=_NO_PREVIEW, parse_mode=None)


def _entities_rejected(exc: TelegramBadRequest) -> bool:
    message = exc.message.lower()
    return "entit" in message or "can't parse" in message


async def _cancelled(task: Awaitable[Any] | None) -> None:
    if task is not None:
        with suppress(asyncio.CancelledError):
            await task
