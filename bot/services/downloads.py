"""Fetch a Telegram image into memory and prepare it, once per file_unique_id.

Bytes always travel through us: a Telegram file URL contains the bot token and must never reach the provider.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiohttp import ClientError

from bot.errors import ImageDownloadError, ImageTooLargeError
from bot.models import PreparedImage
from bot.services.context import ConversationContext
from bot.services.grid import Grid, compose_grid
from bot.services.images import DEFAULT_TARGET, ImageTarget, prepare_image_async

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_SECONDS = 60
# Photos downloading or being prepared at once, per image worker: enough to keep the workers busy, few enough
# that a burst of hundreds waits as updates (small) rather than as downloaded files (up to 20 MB each).
IN_FLIGHT_PER_WORKER = 4


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A Telegram file that holds an image (a photo size, an image document, a sticker).

    `telegram_photo`: a size of `message.photo`, which Telegram re-encoded; such a photo may leave as downloaded
    (`images.passthrough`). Documents and stickers never set it: they are the sender's own bytes, EXIF and all.
    """

    file_id: str
    file_unique_id: str
    file_size: int | None = None
    telegram_photo: bool = False


class ImageSaves:
    """One answer's newly prepared images on their way to storage, each saved in a task of its own: the question
    goes to the provider meanwhile, and the answer waits for them before it remembers its turn (which names them)."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, save: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(save))

    async def wait(self) -> None:
        """Raises the first failure. The saves are not cancelled with the waiter: an answer cut off at shutdown
        still leaves its images stored for the question's resumption."""
        if self._tasks:
            await asyncio.wait(self._tasks)
        for task in self._tasks:
            task.result()

    async def settle(self) -> None:
        """However the answer ended: none left running, a failure logged rather than raised."""
        try:
            await self.wait()
        except Exception:
            log.warning("an image of the question was not stored", exc_info=True)


class ImageFetcher:
    """Telegram images in, prepared images out (and an album's grid), each prepared once and kept in storage."""

    def __init__(self, bot: Bot, context: ConversationContext, *, max_bytes: int, workers: Executor,
                 worker_count: int, target: ImageTarget = DEFAULT_TARGET) -> None:
        self._bot = bot
        self._context = context
        self._max_bytes = max_bytes
        self._workers = workers
        self._in_flight = asyncio.Semaphore(IN_FLIGHT_PER_WORKER * worker_count)
        self._target = target

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    async def fetch(self, ref: ImageRef, saves: ImageSaves) -> PreparedImage:
        """A newly prepared image is saved in `saves`; until then, a second fetch of it downloads it again."""
        # The same file prepared for another target (VISION_IMAGE_DETAIL changed) is another image.
        image_id = f"{ref.file_unique_id}@{self._target.long_side}x{self._target.short_side}"
        cached = await self._context.cached_image(image_id)
        if cached is not None:
            return cached
        if ref.file_size is not None and ref.file_size > self._max_bytes:
            raise ImageTooLargeError(f"file is {ref.file_size} bytes")
        file_path = await self._file_path(ref)
        async with self._in_flight:  # from the download until prepared: a burst waits as updates, not as files
            prepared = await prepare_image_async(await self._download(file_path), image_id, self._target,
                                                 self._workers, telegram_photo=ref.telegram_photo)
        saves.add(self._context.keep_image(prepared))
        return prepared

    async def grid(self, images: Sequence[PreparedImage], saves: ImageSaves) -> Grid:
        """One numbered grid of an album, for models that take fewer images per request; kept like any image."""
        digest = hashlib.sha256("|".join(image.image_id for image in images).encode()).hexdigest()[:32]
        image_id = f"grid:{digest}@{self._target.long_side}x{self._target.short_side}"
        grid = await asyncio.get_running_loop().run_in_executor(self._workers, compose_grid, images, image_id,
                                                                 self._target)
        saves.add(self._context.keep_image(grid.image))
        return grid

    async def _file_path(self, ref: ImageRef) -> str:
        with _download_errors():
            file = await self._bot.get_file(ref.file_id)
        if file.file_path is None:
            raise ImageDownloadError("Telegram gave no file path")
        return file.file_path

    async def _download(self, file_path: str) -> bytes:
        buffer = _BoundedBuffer(self._max_bytes)
        with _download_errors():
            await self._bot.download_file(file_path, destination=buffer, timeout=DOWNLOAD_TIMEOUT_SECONDS)
        return buffer.getvalue()


@contextmanager
def _download_errors() -> Iterator[None]:
    try:
        yield
    except TelegramBadRequest as exc:
        if "too big" in exc.message:
            raise ImageTooLargeError(exc.message) from exc
        raise ImageDownloadError(exc.message) from exc
    except (TelegramAPIError, ClientError, TimeoutError) as exc:
        raise ImageDownloadError(f"download failed: {type(exc).__name__}") from exc


class _BoundedBuffer(io.BytesIO):
    """Stops a download that turns out larger than announced, before it eats the memory."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self._limit:
            raise ImageTooLargeError(f"download exceeds {self._limit} bytes")
        return super().write(data)
