"""The main use case: a question (maybe with images) in, a streamed answer out, the exchange remembered."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from bot.clients.vision import Completion, VisionClient
from bot.errors import ContextTooLongError, ImageError, VisionError
from bot.models import ConversationKey, PreparedImage, PromptMessage, Turn
from bot.services.alerts import OperatorAlerts
from bot.services.context import ConversationContext
from bot.services.downloads import ImageFetcher, ImageRef
from bot.services.streaming import ReplyStream, ReplyStreamer, ReplyTarget
from bot.texts import Language, error_text, text

log = logging.getLogger(__name__)

# When the conversation no longer fits the model, keep only the last question and answer.
_KEPT_ON_OVERFLOW = 2


@dataclass(frozen=True, slots=True)
class Question:
    key: ConversationKey
    target: ReplyTarget
    text: str
    language: Language
    author: str | None = None
    images: tuple[ImageRef, ...] = ()


class AnswerService:
    def __init__(self, *, vision: VisionClient, context: ConversationContext, streamer: ReplyStreamer,
                 fetcher: ImageFetcher, alerts: OperatorAlerts) -> None:
        self._vision = vision
        self._context = context
        self._streamer = streamer
        self._fetcher = fetcher
        self._alerts = alerts

    async def answer(self, question: Question) -> None:
        stream = self._streamer.open(question.target)
        answer = _Answer()
        try:
            await self._answer(question, stream, answer)
        except ImageError as exc:
            log.info("image unusable in chat %s: %s", question.key.chat_id, exc)
            await stream.finish_plain(error_text(exc.kind, question.language))
        except VisionError as exc:
            await self._close_failed(question, stream, answer, error_text(exc.kind, question.language))
            await self._alerts.report(exc, chat_id=question.key.chat_id)
        except asyncio.CancelledError:
            note = text("cut_off", question.language) if answer.text else error_text("interrupted",
                                                                                     question.language)
            await self._close_failed(question, stream, answer, note)
            raise
        finally:
            await stream.close()

    async def _answer(self, question: Question, stream: ReplyStream, answer: _Answer) -> None:
        kept = question.images[: self._context.max_images_per_request]
        images = [await self._fetcher.fetch(ref) for ref in kept]
        answer.question = self._question_turn(question, images)
        history = await self._context.history(question.key)
        started = time.monotonic()
        try:
            completion = await self._stream(await self._context.prompt(history, answer.question, images), stream,
                                            answer)
        except ContextTooLongError:
            if answer.text or len(history) <= _KEPT_ON_OVERFLOW:
                raise
            log.info("context too long in chat %s; retrying with the last exchange only", question.key.chat_id)
            prompt = await self._context.prompt(history, answer.question, images, keep_turns=_KEPT_ON_OVERFLOW)
            completion = await self._stream(prompt, stream, answer)
        if completion is None:
            await self._close_stopped(question, stream, answer)
            return
        final = answer.text
        if completion.finish_reason == "length":
            final = f"{final}\n\n⚠️ {text('length_limit', question.language)}"
        if len(kept) < len(question.images):
            notice = text("images_capped", question.language).format(kept=len(kept), total=len(question.images))
            final = f"{final}\n\nℹ️ {notice}"
        await stream.finish(final)
        log.info("answered chat=%s request_id=%s tokens=%s latency_ms=%.0f", question.key.chat_id,
                 completion.request_id, completion.usage.total_tokens if completion.usage else "?",
                 (time.monotonic() - started) * 1e3)
        await self._context.record(
            question.key,
            answer.question,
            Turn(role="assistant", text=answer.text, created_at=self._context.now(), usage=completion.usage),
        )

    async def _stream(self, prompt: list[PromptMessage], stream: ReplyStream, answer: _Answer) -> Completion | None:
        """The answer as it streams; None when Stop was pressed (or the chat went away) first.

        The provider is read in a task of its own, so a stop cancels it at once, which closes the HTTP stream
        (no more tokens billed) instead of waiting for the next token.
        """
        reader = asyncio.create_task(self._read(prompt, stream, answer))
        stopped = asyncio.create_task(stream.stop_requested.wait())
        try:
            await asyncio.wait({reader, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        return None if reader.cancelled() else reader.result()

    async def _read(self, prompt: list[PromptMessage], stream: ReplyStream, answer: _Answer) -> Completion:
        async with self._vision.complete(prompt) as completion:
            async for delta in completion:
                answer.parts.append(delta)
                stream.push(answer.text)
        return completion

    async def _close_stopped(self, question: Question, stream: ReplyStream, answer: _Answer) -> None:
        """What was written stays as the answer, without a note: the user chose to stop."""
        log.info("answer stopped in chat %s after %d characters", question.key.chat_id, len(answer.text))
        if answer.text:
            await stream.finish(answer.text)
        else:
            await stream.finish_plain(text("stopped", question.language))
        await self._remember_partial(question, answer)

    def _question_turn(self, question: Question, images: list[PreparedImage]) -> Turn:
        return Turn(role="user", text=question.text, created_at=self._context.now(),
                    image_ids=tuple(image.image_id for image in images), author=question.author)

    async def _close_failed(self, question: Question, stream: ReplyStream, answer: _Answer, note: str) -> None:
        """Show what was written plus a note (or just the note), and remember the question with its images."""
        if answer.text:
            await stream.finish(f"{answer.text}\n\n⚠️ {note}")
        else:
            await stream.finish_plain(note)
        await self._remember_partial(question, answer)

    async def _remember_partial(self, question: Question, answer: _Answer) -> None:
        """The question (with its images, for a retry) and whatever part of an answer it got."""
        if answer.question is None:
            return
        turns = [answer.question]
        if answer.text:
            turns.append(Turn(role="assistant", text=answer.text, created_at=self._context.now()))
        await self._context.record(question.key, *turns)


@dataclass(slots=True)
class _Answer:
    """What an answer has produced so far, so a failure can keep it."""

    question: Turn | None = None
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts)
