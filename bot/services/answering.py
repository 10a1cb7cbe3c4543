"""The main use case: a question (maybe with images) in, a streamed answer out, the exchange remembered."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.clients.providers import VisionRequest
from bot.clients.reading import Completion
from bot.clients.vision import VisionClient
from bot.errors import BudgetExhausted, ContextTooLongError, ImageError, RequestRefused, UserRateLimited, VisionError
from bot.metrics import Metrics
from bot.models import ConversationKey, Turn, Usage
from bot.services.alerts import OperatorAlerts
from bot.services.context import ConversationContext
from bot.services.downloads import ImageFetcher, ImageRef, ImageSaves
from bot.services.inbox import Inbox, Ticket
from bot.services.model_choice import ModelChoice
from bot.services.reply_calls import ReplyTarget
from bot.services.reply_stream import ReplyStream
from bot.services.streaming import ReplyStreamer
from bot.services.usage import UsageGuard
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
    update_id: int | None = None
    received_at: float = field(default_factory=time.monotonic)
    ticket: Ticket | None = None  # the inbox's record of the update; None outside the inbox (tests, checks)
    sent_at: float | None = None  # when the user sent it (Unix time), to tell whether a resumed question is stale


@dataclass(frozen=True, slots=True)
class AnswerOptions:
    max_images_for: Callable[[str], int]  # images per request a model takes
    album_grid: bool = True  # more images than that: one numbered grid instead of dropping some
    slow_notice_after: float = 15.0  # seconds without text before the user is told the bot is still waiting
    resume_max_age: float = 600.0  # an interrupted question older than this is not answered after a restart


class AnswerService:
    def __init__(self, *, vision: VisionClient, context: ConversationContext, streamer: ReplyStreamer,
                 fetcher: ImageFetcher, alerts: OperatorAlerts, usage: UsageGuard, metrics: Metrics,
                 models: ModelChoice, inbox: Inbox, options: AnswerOptions) -> None:
        self._vision = vision
        self._inbox = inbox
        self._models = models
        self._options = options
        self._context = context
        self._streamer = streamer
        self._fetcher = fetcher
        self._alerts = alerts
        self._usage = usage
        self._metrics = metrics

    async def answer(self, question: Question) -> None:
        ticket = question.ticket or Ticket(question.update_id or 0)
        if ticket.resumed and self._stale(question):
            await self._tell_to_ask_again(question, ticket)
            return
        reservation = None
        if not ticket.resumed:  # a resumed question was admitted before the interruption
            try:
                reservation = await self._usage.admit(
                    user_id=question.target.asker_id, chat_id=question.key.chat_id,
                    question_chars=len(question.text), images=len(question.images))
            except RequestRefused as exc:
                log.info("refused update=%s chat=%s: %s", question.update_id, question.key.chat_id, exc)
                self._metrics.refused.labels(exc.kind).inc()
                await self._streamer.notice(question.target, _refusal_text(exc, question.language))
                return
        await self._inbox.asking(ticket)
        stream = await self._streamer.open(question.target, adopt_message_id=ticket.message_id,
                                           on_message=lambda message_id: self._inbox.asking(ticket,
                                                                                           message_id=message_id))
        answer = _Answer(language=question.language, reservation=reservation)
        try:
            await self._answer(question, stream, answer, ticket)
        except ImageError as exc:
            log.info("image unusable in chat %s: %s", question.key.chat_id, exc)
            answer.fail(exc.kind)
            ticket.failed = True
            await stream.finish_plain(self._error_text(exc.kind, question.language))
        except VisionError as exc:
            answer.fail(exc.kind)
            ticket.failed = True
            await self._close_failed(question, stream, answer, self._error_text(exc.kind, question.language))
            await self._alerts.report(exc, chat_id=question.key.chat_id)
        except asyncio.CancelledError:
            # Cut off at shutdown: what was written stays with a note, and the next start resumes the question
            # (editing this message into the whole answer), so the exchange is not remembered now.
            answer.outcome = "cut_off"
            note = text("cut_off", question.language) if answer.text else error_text("interrupted",
                                                                                     question.language)
            await _finish_with_note(stream, answer, note)
            raise
        finally:
            await stream.close()
            await answer.saves.settle()
            await self._account(question, stream, answer)

    def _stale(self, question: Question) -> bool:
        return question.sent_at is not None and time.time() - question.sent_at > self._options.resume_max_age

    async def _tell_to_ask_again(self, question: Question, ticket: Ticket) -> None:
        """Interrupted too long ago to answer now: the half-written answer (if any) becomes the note."""
        log.info("update %s was interrupted too long ago; asking the user to ask again", ticket.update_id)
        ticket.failed = True
        stream = await self._streamer.open(question.target, adopt_message_id=ticket.message_id)
        try:
            await stream.finish_plain(error_text("interrupted", question.language))
        finally:
            await stream.close()

    def _error_text(self, kind: str, language: Language) -> str:
        return error_text(kind, language, operators_told=self._alerts.has_operators,
                          max_image_bytes=self._fetcher.max_bytes)

    async def _account(self, question: Question, stream: ReplyStream, answer: _Answer) -> None:
        """One log line, the usage record and the metrics for every answer, whatever its end."""
        usage = await self._usage.record(
            chat_id=question.key.chat_id, user_id=question.target.asker_id, outcome=answer.outcome,
            usage=answer.usage, question_chars=len(question.text), images=answer.images_sent,
            answer_chars=len(answer.text), error_kind=answer.error_kind, reservation=answer.reservation)
        metrics = self._metrics
        metrics.answers.labels(answer.outcome, answer.error_kind or "").inc()
        metrics.tokens.labels("prompt").inc(usage.prompt_tokens)
        metrics.tokens.labels("completion").inc(usage.completion_tokens)
        if stream.first_visible_at is not None:
            metrics.first_text_seconds.observe(stream.first_visible_at - question.received_at)
        finished = time.monotonic()
        metrics.final_seconds.observe(finished - question.received_at)
        log.info("answer update=%s chat=%s outcome=%s error=%s provider=%s model=%s request_id=%s tokens=%d "
                 "first_text_ms=%s total_ms=%.0f", question.update_id, question.key.chat_id, answer.outcome,
                 answer.error_kind, answer.provider or "-", answer.model or "-", answer.request_id, usage.total_tokens,
                 f"{(stream.first_visible_at - question.received_at) * 1e3:.0f}" if stream.first_visible_at else "-",
                 (finished - question.received_at) * 1e3)

    async def _answer(self, question: Question, stream: ReplyStream, answer: _Answer, ticket: Ticket) -> None:
        if ticket.answer is not None:
            await self._deliver_generated(stream, answer, ticket)
            return
        answer.model = await self._models.current(question.key)
        history = await self._context.history(question.key)
        try:
            completion = await self._stream(await self._request(question, history, answer), stream, answer)
        except ContextTooLongError:
            if answer.text or len(history) <= _KEPT_ON_OVERFLOW:
                raise
            log.info("context too long in chat %s; retrying with the last exchange only", question.key.chat_id)
            request = await self._request(question, history, answer, keep_turns=_KEPT_ON_OVERFLOW)
            completion = await self._stream(request, stream, answer)
        if completion is None:
            answer.outcome = "stopped"
            await self._close_stopped(question, stream, answer)
            return
        answer.usage, answer.request_id = completion.usage, completion.request_id
        final = answer.text
        if completion.finish_reason == "length":
            final = f"{final}\n\n⚠️ {text('length_limit', question.language)}"
        if answer.images_sent < len(question.images) and not answer.gridded:
            notice = text("images_capped", question.language).format(kept=answer.images_sent,
                                                                     total=len(question.images))
            final = f"{final}\n\nℹ️ {notice}"
        await self._inbox.generated(ticket, final)  # a crash from here on delivers this, not a second request
        await stream.finish(final)
        answer.outcome = "answered"
        await self._inbox.finish(ticket)
        await self._remember(question, answer, answer.question, Turn(
            role="assistant", text=answer.text, created_at=self._context.now(), usage=completion.usage))

    async def _deliver_generated(self, stream: ReplyStream, answer: _Answer, ticket: Ticket) -> None:
        """The provider had finished before the interruption: the same text is delivered, nothing asked again."""
        log.info("update %s: delivering the answer generated before the interruption", ticket.update_id)
        answer.parts.append(ticket.answer or "")
        await stream.finish(ticket.answer or "")
        answer.outcome = "answered"
        await self._inbox.finish(ticket)

    async def _request(self, question: Question, history: list[Turn], answer: _Answer, *,
                       keep_turns: int | None = None) -> VisionRequest:
        """The request. Its images live on only inside it, and it lets go of them once the answer has started, so
        a long answer holds none of its ~200 KB (a retry finds them prepared, in storage).

        More images than the model takes per request become one numbered grid (ALBUM_GRID), which is also what the
        conversation keeps; without the grid, the first ones are kept and the answer says so.
        """
        per_request = self._options.max_images_for(answer.model)
        question_text = question.text
        if len(question.images) > per_request and self._options.album_grid:
            grid = await self._fetcher.grid([await self._fetcher.fetch(ref, answer.saves) for ref in question.images],
                                            answer.saves)
            images = [grid.image]
            question_text = f"{question.text}\n\n({grid.description})"
            answer.gridded = True
        else:
            images = [await self._fetcher.fetch(ref, answer.saves) for ref in question.images[:per_request]]
        answer.images_sent = len(images)
        answer.question = Turn(role="user", text=question_text, created_at=self._context.now(),
                               image_ids=tuple(image.image_id for image in images), author=question.author)
        return VisionRequest(await self._context.prompt(history, answer.question, images, keep_turns=keep_turns,
                                                        images_per_request=per_request))

    async def _stream(self, request: VisionRequest, stream: ReplyStream, answer: _Answer) -> Completion | None:
        """The answer as it streams; None when Stop was pressed (or the chat went away) first.

        The provider is read in a task of its own, so a stop cancels it at once, which closes the HTTP stream
        (no more tokens billed) instead of waiting for the next token. A provider slow to start gets the user told
        that the bot is still waiting.
        """
        reader = asyncio.create_task(self._read(request, stream, answer))
        stopped = asyncio.create_task(stream.stop_requested.wait())
        slow = asyncio.create_task(self._tell_when_slow(stream, answer))
        try:
            await asyncio.wait({reader, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            slow.cancel()
            if not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        return None if reader.cancelled() else reader.result()

    async def _tell_when_slow(self, stream: ReplyStream, answer: _Answer) -> None:
        await asyncio.sleep(self._options.slow_notice_after)
        if not answer.parts:
            stream.show_status(text("still_waiting", answer.language))

    async def _read(self, request: VisionRequest, stream: ReplyStream, answer: _Answer) -> Completion:
        async with self._vision.complete(request, model=answer.model) as completion:
            answer.provider, answer.model = completion.provider, completion.model
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

    async def _close_failed(self, question: Question, stream: ReplyStream, answer: _Answer, note: str) -> None:
        """Show what was written plus a note (or just the note), and remember the question with its images."""
        await _finish_with_note(stream, answer, note)
        await self._remember_partial(question, answer)

    async def _remember_partial(self, question: Question, answer: _Answer) -> None:
        """The question (with its images, for a retry) and whatever part of an answer it got."""
        if answer.question is None:
            return
        turns = [answer.question]
        if answer.text:
            turns.append(Turn(role="assistant", text=answer.text, created_at=self._context.now()))
        await self._remember(question, answer, *turns)

    async def _remember(self, question: Question, answer: _Answer, *turns: Turn) -> None:
        """Turns name their images: only once those are stored (saved meanwhile, off the way to the provider)."""
        await answer.saves.wait()
        await self._context.record(question.key, *turns)


@dataclass(slots=True)
class _Answer:
    """What an answer has produced so far, so a failure can keep it."""

    language: Language = "en"
    reservation: int | None = None  # the tokens reserved against the daily budgets, settled once it ends
    question: Turn | None = None
    parts: list[str] = field(default_factory=list)
    outcome: str = "failed"
    error_kind: str | None = None
    usage: Usage | None = None
    request_id: str | None = None
    model: str = ""
    provider: str = ""
    images_sent: int = 0
    gridded: bool = False
    saves: ImageSaves = field(default_factory=ImageSaves)  # its question's new images, on their way to storage

    def fail(self, kind: str) -> None:
        self.outcome, self.error_kind = "failed", kind

    @property
    def text(self) -> str:
        return "".join(self.parts)


async def _finish_with_note(stream: ReplyStream, answer: _Answer, note: str) -> None:
    if answer.text:
        await stream.finish(f"{answer.text}\n\n⚠️ {note}")
    else:
        await stream.finish_plain(note)


def _refusal_text(exc: RequestRefused, language: Language) -> str:
    if isinstance(exc, UserRateLimited):
        return error_text(exc.kind, language, seconds=round(exc.retry_after))
    if isinstance(exc, BudgetExhausted):
        return error_text(exc.kind, language, scope=text(f"scope.{exc.scope}", language))
    return error_text(exc.kind, language)
