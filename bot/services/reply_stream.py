"""One answer shown while it is generated: drafts in private chats where Telegram takes them, else one message
edited as the text grows (with an inline Stop button); every update waits for its turn at the pacer, and the final
text is always delivered (flood waits waited out, rejected entities as plain text, an uneditable message replaced).
"""


from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any, TypeVar

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNotFound,
    TelegramRetryAfter,
)
from aiogram.methods import EditMessageText, SendChatAction, SendMessage, TelegramMethod
from aiogram.types import Message

from bot.services.formatting import RenderedText, render, render_plain
from bot.services.pacing import Priority, UpdatePacer
from bot.services.reply_calls import ReplyTarget, deliver_final, entities_rejected

if TYPE_CHECKING:
    from bot.services.streaming import ReplyStreamer

log = logging.getLogger(__name__)

T = TypeVar("T")
MessageListener = Callable[[int], Awaitable[None]]

TYPING_AFTER_SECONDS = 0.3
TYPING_REFRESH_SECONDS = 4.5


class ReplyStream:
    """One answer being shown in one chat: `push` the text so far as often as you like, then `finish`."""

    def __init__(self, bot: Bot, pacer: UpdatePacer, streamer: ReplyStreamer, target: ReplyTarget,
                 *, stream_id: int, use_drafts: bool, adopt_message_id: int | None = None,
                 on_message: MessageListener | None = None) -> None:
        self._bot = bot
        self._pacer = pacer
        self._streamer = streamer
        self.target = target
        self.stream_id = stream_id  # doubles as the draft id: unique and non-zero
        self._use_drafts = use_drafts
        self._markdown = ""
        self._status: str | None = None
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._sealed_parts = 0
        self._live_message_id: int | None = adopt_message_id
        self._on_message = on_message
        self._live_shown: RenderedText | None = None
        self._closing = False
        self._plain_only = False
        self._updater: asyncio.Task[None] | None = None
        self._typing: asyncio.Task[None] | None = None
        self._final: asyncio.Task[None] | None = None
        self.stop_requested = asyncio.Event()
        self.gone = False
        self.first_visible_at: float | None = None
        self.sent_message_ids: list[int] = []

    def start(self) -> None:
        self._typing = asyncio.create_task(self._keep_typing(), name=f"typing:{self.target.chat_id}")
        self._updater = asyncio.create_task(self._run_updates(), name=f"updates:{self.target.chat_id}")

    def push(self, markdown: str) -> None:
        """The whole answer so far; only the newest text is ever shown."""
        self._markdown = markdown
        self._wake.set()

    def show_status(self, status: str) -> None:
        """A note of ours where the answer will appear ("still waiting"), until the answer's first text replaces it."""
        if not self._markdown:
            self._status = status
            self._wake.set()

    def request_stop(self) -> None:
        self.stop_requested.set()

    async def finish(self, markdown: str) -> None:
        """Send the final answer; safe to call again (e.g. after a cancellation): the first text wins."""
        if self._final is None:
            self._final = asyncio.create_task(self._finalize(render(markdown) or render_plain("…"), markdown))
        await asyncio.shield(self._final)

    async def finish_plain(self, text: str) -> None:
        """A final notice of our own (an error message), with no Markdown interpretation."""
        if self._final is None:
            self._final = asyncio.create_task(self._finalize(render_plain(text), None))
        await asyncio.shield(self._final)

    async def close(self) -> None:
        """Release the background tasks (of a stream that was never finished, too)."""
        self._closing = True
        await self._streamer.forget(self)
        for task in (self._updater, self._typing):
            if task is not None:
                task.cancel()
                await _cancelled(task)

    async def _keep_typing(self) -> None:
        """Typing from TYPING_AFTER_SECONDS on: an answer shown sooner needs none, and keeps the chat's burst for its
        text. Each action goes only if a turn is free at once (bot/services/paced_requests.py)."""
        action = SendChatAction(chat_id=self.target.chat_id, action="typing", message_thread_id=self.target.thread_id)
        await asyncio.sleep(TYPING_AFTER_SECONDS)
        while True:
            try:
                await self._bot(action)
            except TelegramRetryAfter as exc:
                await asyncio.sleep(exc.retry_after)
                continue
            except TelegramAPIError as exc:
                log.debug("typing indicator failed in chat %s: %s", self.target.chat_id, exc)
            await asyncio.sleep(TYPING_REFRESH_SECONDS)

    async def _run_updates(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            urgent = self.first_visible_at is None
            async with self._pacer.turn(self.target.chat_id, Priority.FIRST if urgent else Priority.PROGRESS), \
                    self._send_lock:
                if self._closing or self.gone:
                    return
                await self._show_progress()

    async def _show_progress(self) -> None:
        if not self._markdown and self._status is not None:
            await self._show_live(render_plain(self._status)[0], status=True)
            return
        parts = self._prepared(render(self._markdown))
        if not parts:
            return
        while len(parts) - 1 > self._sealed_parts and not self.gone:
            await self._deliver_final(parts[self._sealed_parts])
        if not self.gone:
            await self._show_live(parts[-1])

    async def _show_live(self, part: RenderedText, *, status: bool = False) -> None:
        if part == self._live_shown:
            return
        if self._use_drafts:
            shown = await self._try_draft(part)
            if shown:
                self._shown(part, status=status)
            if shown is not False or self.gone:
                return  # shown, or skipped this time: only a refusal falls through to edited messages
        stop = self.target.stop_markup(self.stream_id)
        if self._live_message_id is None:
            message = await self._intermediate(self.target.send_method(part, stop, as_reply=self._first_part))
            if isinstance(message, Message):
                self._live_message_id = message.message_id
                await self._sent(message.message_id)
                self._shown(part, status=status)
        elif await self._intermediate(self.target.edit_method(self._live_message_id, part, stop)) is not None:
            self._shown(part, status=status)

    async def _sent(self, message_id: int) -> None:
        self.sent_message_ids.append(message_id)
        if self._on_message is not None and len(self.sent_message_ids) == 1:
            await self._on_message(message_id)

    def _shown(self, part: RenderedText, *, status: bool = False) -> None:
        """A status note is not the answer: the first text still counts (and goes first) when it comes."""
        self._live_shown = part
        if self.first_visible_at is None and not status:
            self.first_visible_at = time.monotonic()
            self._stop_typing()

    async def _try_draft(self, part: RenderedText) -> bool | None:
        """True: shown; None: not this time (flood wait, network); False: Telegram refuses drafts here."""
        method = self.target.draft_method(self.stream_id, part)
        try:
            return True if await self._intermediate(method, reraise=(TelegramBadRequest, TelegramNotFound)) else None
        except (TelegramBadRequest, TelegramNotFound) as exc:
            if entities_rejected(exc) and part.entities:
                return await self._try_draft(part.without_entities())
            log.info("drafts refused in chat %s (%s); streaming with edits instead", self.target.chat_id, exc)
            self._streamer.refuse_drafts(self.target.chat_id, everywhere=isinstance(exc, TelegramNotFound))
            self._use_drafts = False
            return False

    async def _intermediate(self, method: TelegramMethod[T],
                            reraise: tuple[type[Exception], ...] = ()) -> T | bool | None:
        """One progress update: skipped (None) rather than retried, the next one carries newer text anyway."""
        try:
            return await self._bot(method)
        except reraise:
            raise
        except TelegramRetryAfter:  # counted and paced by the request middleware; the next update carries newer text
            self._wake.set()
        except TelegramBadRequest as exc:
            return self._handle_intermediate_rejection(method, exc)
        except TelegramForbiddenError as exc:
            self._mark_gone(exc)
        except TelegramAPIError as exc:
            log.warning("progress update failed in chat %s: %s", self.target.chat_id, exc)
            self._wake.set()
        return None

    def _handle_intermediate_rejection(self, method: TelegramMethod[Any], exc: TelegramBadRequest) -> bool | None:
        if "message is not modified" in exc.message:
            return True
        if "message to edit not found" in exc.message:
            self._mark_gone(exc)
        elif entities_rejected(exc) and isinstance(method, SendMessage | EditMessageText) and method.entities:
            self._plain_only = True
            self._wake.set()
            log.warning("entities rejected in chat %s: %s; going on in plain text", self.target.chat_id, exc)
        else:
            log.warning("progress update rejected in chat %s: %s", self.target.chat_id, exc)
        return None

    def _mark_gone(self, exc: TelegramAPIError) -> None:
        """The user deleted the answer or blocked the bot: generating more would be wasted."""
        log.info("chat %s no longer shows this answer: %s", self.target.chat_id, exc)
        self.gone = True
        self.request_stop()

    def _prepared(self, parts: list[RenderedText]) -> list[RenderedText]:
        return [part.without_entities() for part in parts] if self._plain_only else parts

    async def _finalize(self, parts: list[RenderedText], markdown: str | None) -> None:
        await self._stop_updates()
        if self.gone:
            return
        if markdown is not None and await self._sent_as_rich(markdown):
            return
        for part in self._prepared(parts)[self._sealed_parts:]:
            await self._deliver_final(part)

    async def _sent_as_rich(self, markdown: str) -> bool:
        """RICH_MESSAGES: tables, code and maths rendered by Telegram itself, where it accepts them."""
        if not self._streamer.rich_final or self._sealed_parts or self._live_message_id is not None:
            return False
        try:
            async with self._pacer.turn(self.target.chat_id, Priority.URGENT):
                message = await self._bot(self.target.rich_method(markdown))
        except (TelegramBadRequest, TelegramNotFound) as exc:
            log.warning("rich message refused (%s); sending entities from now on", exc)
            self._streamer.refuse_rich()
            return False
        except TelegramAPIError as exc:
            log.warning("rich message failed in chat %s (%s); sending entities", self.target.chat_id, exc)
            return False
        await self._sent(message.message_id)
        self._stop_typing()
        return True

    async def _deliver_final(self, part: RenderedText) -> None:
        """A part that will not change again: the live message becomes it (losing its Stop button), or it is
        sent as a new message."""
        message_id = None if self._use_drafts else self._live_message_id
        delivered = False
        if message_id is not None:
            async with self._pacer.turn(self.target.chat_id, Priority.URGENT):
                edited = await self._final_call(lambda p: self.target.edit_method(message_id, p, None), part)
            delivered = edited is not None
        if not delivered and not self.gone:
            async with self._pacer.turn(self.target.chat_id, Priority.URGENT):
                as_reply = self._first_part
                message = await self._final_call(lambda p: self.target.send_method(p, None, as_reply=as_reply), part)
            if isinstance(message, Message):
                await self._sent(message.message_id)
        self._sealed_parts += 1
        self._live_message_id = None
        self._live_shown = None
        if self.first_visible_at is None:
            self.first_visible_at = time.monotonic()
        self._stop_typing()

    async def _final_call(self, build: Callable[[RenderedText], TelegramMethod[T]],
                          part: RenderedText) -> T | bool | None:
        try:
            return await deliver_final(self._bot, build, part, self.target.chat_id)
        except TelegramForbiddenError as exc:
            self._mark_gone(exc)
            return None

    @property
    def _first_part(self) -> bool:
        return not self._sealed_parts

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

async def _cancelled(task: Awaitable[Any] | None) -> None:
    if task is not None:
        with suppress(asyncio.CancelledError):
            await task
