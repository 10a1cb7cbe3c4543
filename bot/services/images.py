"""Prepare an image before it leaves the machine: decode, validate, orient, strip metadata, downscale, re-encode.

Runs in a worker thread: decoding a 12-megapixel photo would otherwise stall every other chat.

A Telegram *photo* (not a document or sticker) has been re-encoded by Telegram already. When its bytes prove to be a
bare JPEG (no EXIF, XMP, ICC, comment or anything after the picture) close enough to the target, it leaves as
downloaded: the provider scales it to the same size and bills the same tiles, and the ~25 ms of decoding, resizing
and re-encoding a 1280x960 photo are saved (bench/image_passthrough.py has the numbers).
"""

from __future__ import annotations

import asyncio
import functools
import io
import re
from collections.abc import Callable, Iterator
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
# A Telegram photo size "fills" the target when it reaches this share of it. A 16:9 photo's 1280x720 (720 = 0.94 of
# 768) then replaces its 2560x1440: the same 6 tiles billed, 6 % fewer pixels per side, a quarter of the download,
# and sent as downloaded instead of ~25-35 ms of decoding and re-encoding (bench/image_passthrough.py). 4:3's 800x600
# (0.78) and a phone screenshot's 591x1280 (0.77) lose too much: their larger size is still taken.
FILL_SHARE = 0.9
# A Telegram photo is sent as downloaded when our downscale would keep at least this share of each side (1280x960 ->
# 1024x768 keeps 0.8; 3:2 1280x854 keeps 0.9; 16:9 1280x720 fits). The provider then scales it down as we would have
# and bills the same tiles (GUIDE: fit 2048, then short side 768). bench/image_passthrough.py: 11-16 ms of CPU saved
# per 1280 px photo for 1.25-2x its base64 (+13 to +207 KB: 1-17 ms at 100 Mbit/s, a tenth of that at 1 Gbit/s).
# A 2560 px size keeps 0.4-0.53: 2.6-13x the upload to save 13-37 ms, so it is re-encoded, as is `low` detail's
# 800x600 (0.64): 2-2.8x the upload to save ~4 ms.
PASSTHROUGH_MIN_SCALE = 0.75
# JPEG markers allowed in a photo sent as downloaded: frames (baseline, extended, progressive Huffman), tables (DHT,
# DQT, DRI) and scans. Everything else (APP1 EXIF/XMP, APP2 ICC/MPF, APP13 IPTC, APP14 Adobe, COM...) sends the photo
# through the full pipeline, which drops it.
_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
_TABLES = frozenset({0xC4, 0xDB, 0xDD})
_SOS, _EOI, _APP0 = 0xDA, 0xD9, 0xE0
# The next marker after entropy-coded data: 0xFF followed by neither a stuffed 0x00, a restart marker nor fill.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


@dataclass(frozen=True, slots=True)
class ImageTarget:
    """OpenAI's `high` detail keeps at most 2048 px on the long side and 768 px on the short side."""

    long_side: int = 2048
    short_side: int = 768
    quality: int = 85


DEFAULT_TARGET = ImageTarget()


def prepare_image(data: bytes, image_id: str, target: ImageTarget = DEFAULT_TARGET, *,
                  telegram_photo: bool = False) -> PreparedImage:
    """A clean JPEG: EXIF orientation applied, then every metadata block dropped; never upscaled.

    An animation (GIF, APNG, WebP) gives its first frame and a HEIF its primary image: the frame Pillow opens at.
    No `seek(0)`: a HEIF's primary image need not be its first.

    `telegram_photo`: the bytes are a Telegram photo size (`message.photo`), never a document or sticker; they are
    returned unchanged when `passthrough` accepts them.
    """
    if telegram_photo:
        unchanged = passthrough(data, image_id, target)
        if unchanged is not None:
            return unchanged
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
                              workers: Executor | None = None, *, telegram_photo: bool = False) -> PreparedImage:
    """In `workers` (the loop's default pool if None): decoding a 12-megapixel photo would stall every chat."""
    if telegram_photo:
        # On the loop: the check reads bytes without decoding them (~0.03-0.2 ms for a 1280 px photo, and a photo too
        # large to pass is refused at its header), cheaper than the hop to a worker, which may be busy decoding.
        unchanged = passthrough(data, image_id, target)
        if unchanged is not None:
            return unchanged
    return await asyncio.get_running_loop().run_in_executor(workers, prepare_image, data, image_id, target)


def passthrough(data: bytes, image_id: str, target: ImageTarget = DEFAULT_TARGET) -> PreparedImage | None:
    """The photo as downloaded, if it is a bare JPEG within reach of the target; None: prepare it instead.

    Nothing is decoded (~0.1 ms against ~25 ms for a 1280x960 photo). For Telegram photos only: Telegram re-encodes
    them, and still every byte is checked, as `bare_jpeg_size` describes; a document may be anything its sender made.
    """
    def near_target(size: tuple[int, int]) -> bool:
        return size[0] * size[1] <= MAX_PIXELS and _scale_for(size, target) >= PASSTHROUGH_MIN_SCALE

    if bare_jpeg_size(data, near_target) is None:
        return None
    return PreparedImage(image_id=image_id, data=data, mime="image/jpeg")


def bare_jpeg_size(data: bytes, accept: Callable[[tuple[int, int]], bool] | None = None) -> tuple[int, int] | None:
    """(width, height) of a JPEG holding its picture and nothing else; None for anything else.

    `accept`: asked about the size as soon as the header gives it; False stops the walk before the scans are read.

    Walks every marker up to the end of the file, scans included: allowed are an optional JFIF header without a
    thumbnail, one 8-bit 3-component (YCbCr) Huffman frame, baseline or progressive, its tables and scans, and the
    end-of-image marker as the very last two bytes (nothing appended: no second MPO picture, no hidden payload).
    Greyscale, CMYK, arithmetic-coded or lossless JPEGs are left to the full pipeline, as are fill bytes between
    segments and anything else unusual: a refusal costs only the time the fast path would have saved.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    size: tuple[int, int] | None = None
    scanned = False
    for position, marker, body in _segments(data):
        if marker == _EOI:
            return size if scanned and position + 2 == len(data) else None
        if marker in _FRAMES and size is None:
            size = _frame_size(body)
            allowed = size is not None and (accept is None or accept(size))
        else:  # APP0 of 14 bytes, first: a JFIF header without a thumbnail
            allowed = (marker in _TABLES or (marker == _SOS and size is not None)
                       or (marker == _APP0 and position == 2 and len(body) == 14 and body.startswith(b"JFIF\x00")))
        if not allowed:
            return None
        scanned = scanned or marker == _SOS
    return None


def _segments(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(position, marker, body) of each segment after the start-of-image marker, entropy-coded data skipped; the end
    marker has an empty body; anything malformed or truncated ends the walk with marker -1."""
    position = 2
    while position + 2 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == _EOI:
            yield position, marker, b""
            return
        length = int.from_bytes(data[position + 2:position + 4], "big")
        body = data[position + 4:position + 2 + length]
        if length < 2 or len(body) != length - 2:
            break
        yield position, marker, body
        position += 2 + length
        if marker == _SOS:
            found = _NEXT_MARKER.search(data, position)
            if found is None:
                break
            position = found.start()
    yield position, -1, b""


def _frame_size(body: bytes) -> tuple[int, int] | None:
    """A start-of-frame segment: 8-bit samples and 3 components (YCbCr), or None."""
    if len(body) < 6 or body[0] != 8 or body[5] != 3:
        return None
    height, width = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big")
    return (width, height) if width and height else None


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
    """Index of the smallest size that (nearly: `FILL_SHARE`) fills the target after our downscale; else the largest.

    Telegram offers each photo in several sizes (ascending); a bigger one costs download time and nothing else.
    """
    if not sizes:
        raise ValueError("no sizes to choose from")
    by_area = sorted(range(len(sizes)), key=lambda index: sizes[index][0] * sizes[index][1])
    for index in by_area:
        width, height = sizes[index]
        if (max(width, height) >= target.long_side * FILL_SHARE
                or min(width, height) >= target.short_side * FILL_SHARE):
            return index
    return by_area[-1]
