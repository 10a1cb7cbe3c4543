"""The one mechanism for every answer that appears while it is generated: the streamer opens each answer's
`ReplyStream` (bot/services/reply_stream.py), knows which are live for Stop (pressed on any replica), and
remembers where Telegram refused drafts or rich messages.
"""

from __future__ import annotations

import itertools
import logging
import random
from enum import Enum

from aiogram import Bot

from bot.config import StreamMode
from bot.coordination import Coordinator
from bot.metrics import Metrics
from bot.services.pacing import UpdatePacer
from bot.services.reply_calls import ReplyTarget
from bot.services.reply_stream import MessageListener, ReplyStream

log = logging.getLogger(__name__)

class StopOutcome(Enum):
    STOPPED = "stopped"
    NOT_ALLOWED = "not_allowed"
    UNKNOWN = "unknown"


class ReplyStreamer:
    """Bot-wide factory of reply streams; knows the live ones (for Stop) and where Telegram refused drafts."""

    def __init__(self, bot: Bot, pacer: UpdatePacer, mode: StreamMode, metrics: Metrics, coordinator: Coordinator,
                 *, rich_final: bool = False) -> None:
        self._bot = bot
        self._coordinator = coordinator
        coordinator.on_stop(self._stop_heard)
        self._pacer = pacer
        self._mode = mode
        self.metrics = metrics
        self._rich_final = rich_final
        self._stream_ids = itertools.count(random.randint(1, 2**30))
        self._live: dict[int, ReplyStream] = {}
        self._drafts_refused_in: set[int] = set()
        self._drafts_unsupported = False

    @property
    def live(self) -> int:
        return len(self._live)

    async def open(self, target: ReplyTarget, *, adopt_message_id: int | None = None,
                   on_message: MessageListener | None = None) -> ReplyStream:
        """`adopt_message_id`: an earlier, interrupted answer's message, which this one edits into itself (its Stop
        button goes with the final text). `on_message`: told the id of the first message this answer sends."""
        stream_id = next(self._stream_ids)
        stream = ReplyStream(self._bot, self._pacer, self, target, stream_id=stream_id,
                             use_drafts=self._drafts_allowed(target) and adopt_message_id is None,
                             adopt_message_id=adopt_message_id, on_message=on_message)
        self._live[stream_id] = stream
        self.metrics.active_streams.set(len(self._live))
        await self._coordinator.announce_stream(stream_id, target.chat_id, target.asker_id)
        stream.start()
        return stream

    async def notice(self, target: ReplyTarget, text: str) -> None:
        """A one-off message of our own (a refusal), paced like everything else, with no typing shown."""
        stream = ReplyStream(self._bot, self._pacer, self, target, stream_id=next(self._stream_ids),
                             use_drafts=False)
        await stream.finish_plain(text)

    async def stop(self, chat_id: int, stream_id: int, *, user_id: int | None = None) -> StopOutcome:
        """Stop pressed (on a draft: no user check needed, only the chat's user sees it; or on a button), on this
        replica or any other: the replica streaming the answer hears it and stops."""
        owner = await self._coordinator.stream_owner(stream_id)
        if owner is None or owner[0] != chat_id:
            return StopOutcome.UNKNOWN
        if user_id is not None and owner[1] not in (None, user_id):
            return StopOutcome.NOT_ALLOWED
        await self._coordinator.publish_stop(stream_id)
        return StopOutcome.STOPPED

    def _stop_heard(self, stream_id: int) -> None:
        stream = self._live.get(stream_id)
        if stream is not None:
            stream.request_stop()

    async def forget(self, stream: ReplyStream) -> None:
        if self._live.pop(stream.stream_id, None) is not None:
            await self._coordinator.forget_stream(stream.stream_id)
        self.metrics.active_streams.set(len(self._live))

    @property
    def rich_final(self) -> bool:
        return self._rich_final

    def refuse_rich(self) -> None:
        self._rich_final = False

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
