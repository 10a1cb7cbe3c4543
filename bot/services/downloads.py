"""Fetch a Telegram image into memory and prepare it, once per file_unique_id.

Bytes always travel through us: a Telegram file URL contains the bot token and must never reach the provider.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiohttp import ClientError

from bot.errors import ImageDownloadError, ImageTooLargeError
from bot.models import PreparedImage
from bot.services.context import ConversationContext
from bot.services.images import DEFAULT_TARGET, ImageTarget, prepare_image_async

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_SECONDS = 60


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A Telegram file that holds an image (a photo size, an image document, a sticker)."""

    file_id: str
    file_unique_id: str
    file_size: int | None = None


class ImageFetcher:
    def __init__(self, bot: Bot, context: ConversationContext, *, max_bytes: int,
                 target: ImageTarget = DEFAULT_TARGET) -> None:
        self._bot = bot
        self._context = context
        self._max_bytes = max_bytes
        self._target = target

    async def fetch(self, ref: ImageRef) -> PreparedImage:
        # The same file prepared for another target (VISION_IMAGE_DETAIL changed) is another image.
        image_id = f"{ref.file_unique_id}@{self._target.long_side}x{self._target.short_side}"
        cached = await self._context.cached_image(image_id)
        if cached is not None:
            return cached
        if ref.file_size is not None and ref.file_size > self._max_bytes:
            raise ImageTooLargeError(f"file is {ref.file_size} bytes")
        data = await self._download(ref)
        prepared = await prepare_image_async(data, image_id, self._target)
        await self._context.keep_image(prepared)
        return prepared

    async def _download(self, ref: ImageRef) -> bytes:
        buffer = _BoundedBuffer(self._max_bytes)
        try:
            file = await self._bot.get_file(ref.file_id)
            if file.file_path is None:
                raise ImageDownloadError("Telegram gave no file path")
            await self._bot.download_file(file.file_path, destination=buffer, timeout=DOWNLOAD_TIMEOUT_SECONDS)
        except TelegramBadRequest as exc:
            if "too big" in exc.message:
                raise ImageTooLargeError(exc.message) from exc
            raise ImageDownloadError(exc.message) from exc
        except (TelegramAPIError, ClientError, TimeoutError) as exc:
            raise ImageDownloadError(f"download failed: {type(exc).__name__}") from exc
        return buffer.getvalue()


class _BoundedBuffer(io.BytesIO):
    """Stops a download that turns out larger than announced, before it eats the memory."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self._limit:
            raise ImageTooLargeError(f"download exceeds {self._limit} bytes")
        return super().write(data)
