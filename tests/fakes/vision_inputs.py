"""How the fake vision endpoint takes images: inline, URL-only (fetched by the fake) or bare base64 only.

Kept apart from vision_server.py so that module stays readable; vision_server re-exports the public names.
"""

from __future__ import annotations

import io
from typing import Final, Literal, NamedTuple, get_args

import aiohttp
from PIL import Image
from yarl import URL

ImageInput = Literal["inline", "url_only", "raw_base64_only"]
IMAGE_INPUT_MODES: Final[tuple[str, ...]] = get_args(ImageInput)

# Zhipu (open.bigmodel.cn) answer to an image it will not take, e.g. a data URL sent to glm-4v-flash; 400.
ZHIPU_INVALID_PARAMETER_CODE = "1210"
ZHIPU_INVALID_PARAMETER = {
    "error": {"code": ZHIPU_INVALID_PARAMETER_CODE, "message": "Invalid API parameter, please check the documentation."}
}

IMAGE_FORMATS: Final = ("jpeg", "png", "webp", "gif")
TELEGRAM_FILE_MARK: Final = "/file/bot"
FETCH_TIMEOUT: Final = 5.0
_MAX_REDIRECTS = 5
_MAX_IMAGE_BYTES = 20 * 1024 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchedImage(NamedTuple):
    """One image download made by the fake: status None when no HTTP answer came (refused, timeout)."""

    url: str
    status: int | None
    data: bytes | None


def zhipu_download_failed(reason: str) -> dict:
    """The 1210 body a URL-only provider sends when it cannot download an image."""
    message = f"图片下载失败 / image download failed: {reason}"
    return {"error": {"code": ZHIPU_INVALID_PARAMETER_CODE, "message": message}}


def is_zhipu_1210(body: object) -> bool:
    """True for any Zhipu 1210 body (invalid parameter or failed download)."""
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and error.get("code") == ZHIPU_INVALID_PARAMETER_CODE


def is_remote(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def is_image(data: bytes) -> bool:
    """True when Pillow recognises the bytes as one of the formats vision APIs accept."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            return (image.format or "").lower() in IMAGE_FORMATS
    except (OSError, SyntaxError, ValueError):
        return False


class ImageFetcher:
    """Downloads remote images the way a URL-only provider does: one GET, same-host redirects only."""

    def __init__(self, timeout: float = FETCH_TIMEOUT) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str) -> tuple[FetchedImage, str | None]:
        """The download and, when it failed, a short reason for the provider's error message."""
        if self._session is None:
            raise RuntimeError("ImageFetcher.start() has not been awaited")
        origin = current = URL(url)
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                outcome = await self._get(self._session, url, current)
            except TimeoutError:
                return FetchedImage(url, None, None), f"timeout after {self.timeout:g}s"
            except aiohttp.ClientError as exc:
                return FetchedImage(url, None, None), f"connection failed ({type(exc).__name__})"
            if not isinstance(outcome, URL):
                return outcome
            if outcome.host != origin.host or TELEGRAM_FILE_MARK in str(outcome):
                return FetchedImage(url, None, None), f"redirect to {outcome.host}"
            current = outcome
        return FetchedImage(url, None, None), "too many redirects"

    @staticmethod
    async def _get(session: aiohttp.ClientSession, url: str,
                   current: URL) -> URL | tuple[FetchedImage, str | None]:
        """One GET: the redirect target, or the finished download with its failure reason."""
        async with session.get(current, allow_redirects=False) as response:
            location = response.headers.get("Location")
            if response.status in _REDIRECTS and location:
                return response.url.join(URL(location))
            if response.status != 200:
                return FetchedImage(url, response.status, None), f"HTTP {response.status}"
            if (response.content_length or 0) > _MAX_IMAGE_BYTES:
                return FetchedImage(url, response.status, None), "image too large"
            data = await response.read()
        if len(data) > _MAX_IMAGE_BYTES:
            return FetchedImage(url, 200, None), "image too large"
        return FetchedImage(url, 200, data), None if is_image(data) else "not an image"
