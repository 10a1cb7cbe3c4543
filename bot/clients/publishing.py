"""Publishing prepared images at unguessable, expiring URLs, for providers that only take image URLs.

Two ways, chosen at start-up: the bot's own HTTP server (`LocalImageHost`, served by `bot.web`) or an S3-compatible
bucket with presigned URLs (`bot.clients.s3_publisher`). Either way the provider gets the same stripped JPEG the
bot would have sent inline; never a Telegram file URL (it holds the bot token).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bot.models import PreparedImage

# 32 random bytes: 256 bits, far beyond guessing (the issue asks for at least 128).
TOKEN_BYTES = 32
IMAGE_PATH_PREFIX = "/images/"


class ImagePublisher(Protocol):
    """Makes a prepared image fetchable by the provider for `ttl` seconds, then forgets it."""

    async def publish(self, image: PreparedImage) -> str:
        """An http(s) URL the provider can GET the image's JPEG bytes from until it expires."""
        ...

    async def close(self) -> None:
        """Delete what is still published and release connections."""
        ...


@dataclass(frozen=True, slots=True)
class _Published:
    data: bytes
    mime: str
    expires_at: float


class LocalImageHost:
    """Images kept in memory behind random tokens, served by the bot's own server at `{base}/images/<token>.jpg`.

    Expired entries are dropped on every publish and lookup, so memory holds at most `ttl` seconds of images.
    (One process's memory: with several replicas behind a load balancer, use S3.)
    """

    def __init__(self, public_base_url: str, *, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._base = public_base_url.rstrip("/")
        self._ttl = ttl
        self._clock = clock
        self._images: dict[str, _Published] = {}

    async def publish(self, image: PreparedImage) -> str:
        self._forget_expired()
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._images[token] = _Published(image.data, image.mime, self._clock() + self._ttl)
        return f"{self._base}{IMAGE_PATH_PREFIX}{token}.jpg"

    def lookup(self, token: str) -> tuple[bytes, str] | None:
        """The image's bytes and type, or None for an unknown or expired token."""
        self._forget_expired()
        published = self._images.get(token)
        return None if published is None else (published.data, published.mime)

    @property
    def published(self) -> int:
        return len(self._images)

    async def close(self) -> None:
        self._images.clear()

    def _forget_expired(self) -> None:
        """Insertion order is expiry order (one TTL, a monotonic clock): stop at the first live entry."""
        now = self._clock()
        while self._images:
            token, published = next(iter(self._images.items()))
            if published.expires_at > now:
                return
            del self._images[token]
