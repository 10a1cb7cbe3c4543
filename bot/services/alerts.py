"""Tell the operators what went wrong with the provider, in detail, without flooding them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError

from bot.clients.providers import KeyEvent
from bot.errors import VisionError

log = logging.getLogger(__name__)

ALERT_WINDOW_SECONDS = 600.0
_EXCERPT_CHARS = 600


class OperatorAlerts:
    """Logs every provider failure; messages each admin at most once per error kind per window."""

    def __init__(self, bot: Bot, admin_ids: Iterable[int], *, window: float = ALERT_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._bot = bot
        self._admin_ids = tuple(admin_ids)
        self._window = window
        self._clock = clock
        self._last_sent: dict[str, float] = {}

    async def report(self, error: VisionError, *, chat_id: int) -> None:
        log.warning(
            "provider error kind=%s status=%s request_id=%s chat=%s message=%r body=%r",
            error.kind, error.status, error.request_id, chat_id, error.message, error.body_excerpt[:_EXCERPT_CHARS],
        )
        if self._due(error.kind):
            await self._send(_describe(error, chat_id))

    async def report_key(self, event: KeyEvent) -> None:
        """A key was rejected (invalid, out of quota) and rests: told once per rest, the key named by position."""
        await self._send("\n".join([
            f"🔑 Provider {event.provider}: {event.key} was rejected ({event.error.kind}) and rests for "
            f"{event.seconds / 60:.0f} minutes; other keys and providers go on answering.",
            f"HTTP status: {event.error.status if event.error.status is not None else '-'}",
            f"Message: {event.error.message}",
        ]))

    @property
    def has_operators(self) -> bool:
        return bool(self._admin_ids)

    async def _send(self, text: str) -> None:
        for admin_id in self._admin_ids:
            try:
                await self._bot.send_message(admin_id, text, parse_mode=None)
            except TelegramAPIError as exc:
                log.warning("cannot alert admin %s: %s", admin_id, exc)

    def _due(self, kind: str) -> bool:
        now = self._clock()
        last = self._last_sent.get(kind)
        if last is not None and now - last < self._window:
            return False
        self._last_sent[kind] = now
        return True


def _describe(error: VisionError, chat_id: int) -> str:
    lines = [
        f"⚠️ Vision provider error: {error.kind}",
        f"HTTP status: {error.status if error.status is not None else '-'}",
        f"Request id: {error.request_id or '-'}",
        f"Chat: {chat_id}",
        f"Message: {error.message}",
    ]
    if error.body_excerpt:
        lines.append(f"Body: {error.body_excerpt[:_EXCERPT_CHARS]}")
    lines.append(f"(further '{error.kind}' errors are not reported for {ALERT_WINDOW_SECONDS / 60:.0f} minutes)")
    return "\n".join(lines)
