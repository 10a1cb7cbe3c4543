"""Prepare an image before it leaves the machine: decode, validate, orient, strip metadata, downscale, re-encode.

Runs in a worker thread: decoding a 12-megapixel photo would otherwise stall every other chat.
"""

from __future__ import annotations

import asyncio
import functools
import io
from concurrent.futures import Executor
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageMath, UnidentifiedImageError

from bot.errors import ImageError
from bot.models import PreparedImage

# A 100-megapixel decode needs ~300 MB; refuse anything bigger before decoding (pixel bombs).
MAX_PIXELS = 100_000_000
# Downscaling filter: area averaging (each output pixel is the mean of the source area it covers), the usual choice
# for shrinking photos; no ringing, small text stays legible, and it is Pillow's cheapest antialiased filter
# (1280x960 -> 1024x768: ~8 ms here against ~25 ms for bicubic, the largest step of the preparation; BENCHMARKS.md).
RESAMPLE = Image.Resampling.BOX
# EXIF orientation -> the transposition that shows the picture upright; 1, 0, 9, 255, "6"... mean "as stored".
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# What Pillow and pillow-heif raise on bytes they cannot make sense of (pillow-heif adds RuntimeError and EOFError;
# Pillow asserts on some, e.g. an ICNS icon whose PNG is paletted: a "P" image without a palette).
DECODE_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError, EOFError,
                 RuntimeError, AssertionError)


@dataclass(frozen=True, slots=True)
class ImageTarget:
    """OpenAI's `high` detail keeps at most 2048 px on the long side and 768 px on the short side."""

    long_side: int = 2048
    short_side: int = 768
    quality: int = 85


DEFAULT_TARGET = ImageTarget()


def prepare_image(data: bytes, image_id: str, target: ImageTarget = DEFAULT_TARGET) -> PreparedImage:
    """A clean JPEG: EXIF orientation applied, then every metadata block dropped; never upscaled.

    An animation (GIF, APNG, WebP) gives its first frame and a HEIF its primary image: the frame Pillow opens at.
    No `seek(0)`: a HEIF's primary image need not be its first.
    """
    _register_heif()  # idempotent: works before `load_decoders`, as in tests and tools
    try:
        with Image.open(io.BytesIO(data)) as source:
            if source.width * source.height > MAX_PIXELS:
                raise ImageError(f"image has {source.width}x{source.height} pixels, more than allowed")
            scale = _scale_for(source.size, target)
            if source.format in ("JPEG", "MPO") and scale < 1:  # MPO: phone JPEGs carrying a second picture
                # Decode at a reduced size directly: much faster than decoding everything, then shrinking.
                source.draft("RGB", (int(source.width * scale) + 1, int(source.height * scale) + 1))
            source.load()
            image = _to_rgb(_upright(source))
            scale = _scale_for(image.size, target)
            if scale < 1:
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                image = image.resize(size, RESAMPLE)
            # Pillow writes some of `info` back (a JPEG comment survives otherwise): keep none of it.
            image.info = {}
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=target.quality)
    except DECODE_ERRORS as exc:
        raise ImageError(f"cannot decode image: {exc}") from exc
    return PreparedImage(image_id=image_id, data=out.getvalue(), mime="image/jpeg")


async def prepare_image_async(data: bytes, image_id: str, target: ImageTarget = DEFAULT_TARGET,
                              workers: Executor | None = None) -> PreparedImage:
    """In `workers` (the loop's default pool if None): decoding a 12-megapixel photo would stall every chat."""
    return await asyncio.get_running_loop().run_in_executor(workers, prepare_image, data, image_id, target)


def load_decoders() -> None:
    """Pillow and pillow-heif import their format plugins on first use; at start-up, not inside an answer (~80 ms)."""
    _register_heif()
    Image.init()


@functools.cache
def _register_heif() -> None:
    """HEIC is what iPhones send as files. Imported here, not at module level: the import alone costs ~40 ms."""
    import pillow_heif

    pillow_heif.register_heif_opener()


def _scale_for(size: tuple[int, int], target: ImageTarget) -> float:
    long_side, short_side = max(size), min(size)
    return min(1.0, target.long_side / long_side, target.short_side / short_side)


def _upright(image: Image.Image) -> Image.Image:
    """EXIF orientation applied by hand: `ImageOps.exif_transpose` re-encodes the EXIF it leaves behind, which fails
    (struct.error) on some malformed tags, and we drop that EXIF anyway."""
    method = UPRIGHT.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    return image if method is None else image.transpose(method)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Transparent areas (alpha channel or a tRNS colour) become white, as most viewers show them, not JPEG's black."""
    if image.mode.startswith("I;16") or (image.mode == "I" and (image.getextrema()[1] or 0) > 255):
        image = _grey_to_8_bit(image)
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image


def _grey_to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale: a plain conversion clips everything above 255 to white and ignores a transparent grey level."""
    wide = image.convert("I")
    grey = wide.point(lambda value: value * (1 / 256)).convert("L")
    transparent = grey.info.pop("transparency", None)  # a 16-bit level: meaningless once the image has 8 bits
    if isinstance(transparent, int):
        grey.putalpha(ImageMath.lambda_eval(lambda ops: ops["convert"]((ops["wide"] != transparent) * 255, "L"),
                                            wide=wide))
    return grey


def smallest_sufficient(sizes: list[tuple[int, int]], target: ImageTarget = DEFAULT_TARGET) -> int:
    """Index of the smallest size that still fills the target after our downscale; else the largest.

    Telegram offers each photo in several sizes (ascending); a bigger one costs download time and nothing else.
    """
    if not sizes:
        raise ValueError("no sizes to choose from")
    by_area = sorted(range(len(sizes)), key=lambda index: sizes[index][0] * sizes[index][1])
    for index in by_area:
        width, height = sizes[index]
        if max(width, height) >= target.long_side or min(width, height) >= target.short_side:
            return index
    return by_area[-1]
