"""Fuzzing `prepare_image`: whatever bytes arrive, the result is a clean JPEG within the target or an `ImageError`.

Generated inputs: every format and pixel mode Pillow can write (and so also read), tiny, huge and extreme aspect
ratios, EXIF blocks with broken orientation entries, then truncated, bit-flipped, padded or cut to nothing. A fixed
seed (`derandomize`) keeps the run the same everywhere; what a run once found stays below as explicit examples.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image

from bot.errors import ImageError
from bot.services.images import DEFAULT_TARGET, MAX_PIXELS, ImageTarget, prepare_image
from bot.texts import error_text
from tests.fakes.telegram_server import make_user, message_update, private_chat
from tests.support import start_quietly

SLOW_DRAWS = [HealthCheck.too_slow, HealthCheck.large_base_example]
# Pillow warns about what this module makes on purpose: corrupt EXIF, truncated files, deprecated formats, bombs.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]
ORIENTATION = ExifTags.Base.Orientation

# Formats Pillow writes; what it can write it can also be made to read, so each is attack surface of the decoder.
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "ICO", "ICNS", "PPM", "TGA", "PCX", "SGI", "IM", "DDS", "QOI",
           "JPEG2000", "MSP", "XBM", "BLP", "SPIDER", "AVIF", "HEIF", "MPO")
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F")


def encode(image: Image.Image, image_format: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=image_format, **options)
    return out.getvalue()


def _writable() -> list[tuple[str, str]]:
    """The (format, mode) pairs this Pillow can write (checked once, on an 8x6 image)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    pairs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for image_format in FORMATS:
            for mode in MODES:
                try:
                    encode(Image.new(mode, (8, 6)), image_format)
                except Exception:  # any refusal just means: not a combination to fuzz
                    continue
                pairs.append((image_format, mode))
    return pairs


WRITABLE = _writable()
MODES_OF = {image_format: [mode for known, mode in WRITABLE if known == image_format] for image_format, _ in WRITABLE}
# Formats that take an `exif=` block when saving.
EXIF_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF", "MPO", "AVIF", "HEIF"})
EXIF_TYPES = (*range(14), 255, 0xFFFF)


def raw_exif(kind: int, count: int, value: bytes, *, little: bool, extra: bytes = b"") -> bytes:
    """An EXIF block with one Orientation entry of any type, count and value: what broken editors write."""
    order = "<" if little else ">"
    inline = value[:4].ljust(4, b"\x00") if len(value) <= 4 else struct.pack(f"{order}I", 26)
    body = (b"II*\x00" if little else b"MM\x00*") + struct.pack(f"{order}IH", 8, 1)
    body += struct.pack(f"{order}HHI", ORIENTATION, kind, count) + inline + struct.pack(f"{order}I", 0)
    return b"Exif\x00\x00" + body + (value if len(value) > 4 else b"") + extra


def pillow_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


SIZES = st.one_of(
    st.tuples(st.integers(1, 48), st.integers(1, 48)),
    st.sampled_from([(1, 1), (1, 2), (2, 1), (20_000, 10), (10, 20_000), (3000, 40), (2049, 769), (769, 2049)]),
)
EXIF = st.one_of(
    st.none(),
    st.integers(0, 9).map(pillow_exif),
    st.builds(raw_exif, st.sampled_from(EXIF_TYPES), st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1)),
              st.binary(max_size=12), little=st.booleans(), extra=st.binary(max_size=8)),
    st.binary(max_size=40).map(lambda tail: b"Exif\x00\x00" + tail),
)


@st.composite
def images(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """An encoded image and how it was made (`intact`: the bytes are exactly what Pillow wrote)."""
    image_format = draw(st.sampled_from(sorted(MODES_OF)))
    mode = draw(st.sampled_from(MODES_OF[image_format]))
    width, height = draw(SIZES)
    if image_format in ("ICO", "ICNS", "DDS", "BLP", "AVIF", "HEIF", "JPEG2000") and width * height > 64 * 64:
        width, height = min(width, 64), min(height, 64)  # slow or size-limited encoders: small is enough
    image = Image.new(mode, (width, height), draw(st.integers(0, 255)))
    if width > 1:
        image.paste(draw(st.integers(0, 255)), (0, 0, width // 2, height))  # something to rotate
    exif = draw(EXIF) if image_format in EXIF_FORMATS else None
    try:
        data = encode(image, image_format, **({"exif": exif} if exif is not None else {}))
    except Exception:  # an EXIF block the writer refuses: the image without it
        exif = None
        try:
            data = encode(image, image_format)
        except Exception:  # too large for the format (WebP: 16383 px): a smaller one
            image = image.crop((0, 0, min(width, 64), min(height, 64)))
            width, height = image.size
            data = encode(image, image_format)
    return data, {"format": image_format, "mode": mode, "size": (width, height), "exif": exif}


@st.composite
def damaged(draw: st.DrawFn, source: st.SearchStrategy[bytes]) -> bytes:
    data = draw(source)
    how = draw(st.sampled_from(["truncate", "flip", "append", "zero", "splice", "empty"]))
    if how == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "flip":
        flipped = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(flipped) - 1))
            flipped[position] ^= 1 << draw(st.integers(0, 7))
        return bytes(flipped)
    if how == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    if how == "zero":
        start = draw(st.integers(0, len(data)))
        return data[:start] + b"\x00" * draw(st.integers(1, 64)) + data[start + 64:]
    if how == "splice":  # one format's header on another's body: a "wrong extension" from the inside
        other, _ = draw(images())
        cut = draw(st.integers(0, min(len(data), len(other))))
        return other[:cut] + data[cut:]
    return b""


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG header with any dimensions and almost no data: a decompression bomb's first bytes."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def gif_claiming(width: int, height: int) -> bytes:
    width, height = min(width, 0xFFFF), min(height, 0xFFFF)
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b",\x00\x00\x00\x00" \
        + struct.pack("<HH", width, height) + b"\x00\x02\x02\x44\x01\x00;"


def bmp_claiming(width: int, height: int) -> bytes:
    width, height = min(width, 2**31 - 1), min(height, 2**31 - 1)
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0,
                                                                    0, 0, 0, 0)


BOMBS = st.builds(
    lambda maker, width, height: maker(width, height),
    st.sampled_from([png_claiming, gif_claiming, bmp_claiming]),
    st.one_of(st.integers(1, 70_000), st.sampled_from([100_000, 2**31 - 1, 2**32 - 1])),
    st.one_of(st.integers(1, 70_000), st.sampled_from([100_000, 2**31 - 1, 2**32 - 1])),
)
GARBAGE = st.one_of(st.binary(max_size=256), st.sampled_from([b"", b"\xff\xd8", b"\xff\xd8\xff\xe1", b"GIF89a",
                                                              b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBP",
                                                              b"II*\x00", b"MM\x00*", b"BM", b"icns", b"\x00" * 64]))


def check_prepared(data: bytes, target: ImageTarget = DEFAULT_TARGET) -> Image.Image | None:
    """The property: an ImageError, or a decodable JPEG within the target and without any metadata."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            prepared = prepare_image(data, "fuzz", target)
    except ImageError:
        return None
    assert prepared.image_id == "fuzz"
    assert prepared.mime == "image/jpeg"
    assert prepared.data.startswith(b"\xff\xd8")
    assert b"Exif\x00\x00" not in prepared.data
    out = Image.open(io.BytesIO(prepared.data))
    out.load()
    assert out.format == "JPEG"
    assert out.mode == "RGB"
    assert max(out.size) <= target.long_side
    assert min(out.size) <= target.short_side
    assert not out.getexif()
    assert not {"exif", "icc_profile", "comment", "xmp"} & out.info.keys()
    return out


def expected_size(size: tuple[int, int], orientation: int | None, target: ImageTarget = DEFAULT_TARGET
                  ) -> tuple[int, int]:
    width, height = (size[1], size[0]) if orientation in (5, 6, 7, 8) else size
    scale = min(1.0, target.long_side / max(width, height), target.short_side / min(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


# --- properties -----------------------------------------------------------------------------------------------------


@settings(derandomize=True, max_examples=260, deadline=None, suppress_health_check=SLOW_DRAWS)
@given(images())
def test_any_image_pillow_writes_becomes_a_clean_jpeg_of_the_right_size(made: tuple[bytes, dict[str, Any]]) -> None:
    data, how = made
    out = check_prepared(data)
    if out is None:
        return  # e.g. a format outside what is decoded, or an encoder's output its own decoder refuses
    exif = how["exif"]
    orientation = None
    if exif is not None and exif.startswith(b"Exif\x00\x00") and len(exif) == len(pillow_exif(1)):
        orientation = Image.Exif()
        orientation.load(exif)
        orientation = orientation.get(ORIENTATION)
    if how["format"] in ("ICO", "ICNS", "XBM"):
        return  # icon formats hold fixed sizes; XBM is bilevel, the size check below is for the others
    expected = expected_size(how["size"], orientation if isinstance(orientation, int) else None)
    assert all(abs(a - e) <= 1 for a, e in zip(out.size, expected, strict=True)), (out.size, expected, how)


@settings(derandomize=True, max_examples=500, deadline=None, suppress_health_check=SLOW_DRAWS)
@given(damaged(images().map(lambda made: made[0])))
def test_damaged_images_give_a_clean_jpeg_or_an_image_error(data: bytes) -> None:
    check_prepared(data)


@settings(derandomize=True, max_examples=150, deadline=None, suppress_health_check=SLOW_DRAWS)
@given(BOMBS)
def test_headers_claiming_huge_images_are_refused_without_decoding(data: bytes) -> None:
    check_prepared(data)


@settings(derandomize=True, max_examples=200, deadline=None, suppress_health_check=SLOW_DRAWS)
@given(GARBAGE)
def test_bytes_that_are_no_image_give_an_image_error(data: bytes) -> None:
    check_prepared(data)


@settings(derandomize=True, max_examples=60, deadline=None, suppress_health_check=SLOW_DRAWS)
@given(images().map(lambda made: made[0]), st.builds(ImageTarget, st.integers(1, 4096), st.integers(1, 4096)))
def test_any_target_is_respected(data: bytes, target: ImageTarget) -> None:
    check_prepared(data, target)


# --- explicit cases (also the findings of earlier runs) -------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (2**31 - 1, 1), (MAX_PIXELS + 1, 1)])
def test_decompression_bomb_headers_raise_image_error(width: int, height: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageError):
            prepare_image(png_claiming(width, height), "bomb")


@pytest.mark.parametrize(("size", "expected"), [((1, 1), (1, 1)), ((20_000, 10), (2048, 1)), ((10, 20_000), (1, 2048))])
def test_tiny_and_extreme_aspect_images_are_prepared(size: tuple[int, int], expected: tuple[int, int]) -> None:
    out = check_prepared(encode(Image.new("RGB", size, (200, 10, 10)), "PNG"))
    assert out is not None and out.size == expected


@pytest.mark.parametrize("value", [0, 9, 255, 65535, -1])
def test_out_of_range_orientations_keep_the_image_as_stored(value: int) -> None:
    exif = raw_exif(3, 1, struct.pack(">h" if value < 0 else ">H", value) + b"\x00\x00", little=False)
    out = check_prepared(encode(Image.new("RGB", (40, 20)), "JPEG", exif=exif))
    assert out is not None and out.size == (40, 20)


@pytest.mark.parametrize(("kind", "count", "value"), [(2, 5, b"6\x00\x00\x00\x00"), (5, 1, b"\x00" * 8), (7, 0, b""),
                                                      (3, 2**32 - 1, b"\x00\x06"), (12, 1, b"\x00" * 8),
                                                      (0, 1, b"\x00\x06"), (255, 1, b"\x00\x06")])
def test_orientations_of_the_wrong_type_or_count_never_crash(kind: int, count: int, value: bytes) -> None:
    """A string "6", a rational, an empty UNDEFINED, an impossible count, unknown types: as stored or an ImageError."""
    check_prepared(encode(Image.new("RGB", (40, 20)), "JPEG", exif=raw_exif(kind, count, value, little=False)))


def test_a_paletted_icns_icon_is_an_image_error() -> None:
    """Found by the fuzzer: Pillow opens the icon's PNG as a "P" image without a palette and asserts on it."""
    with pytest.raises(ImageError):
        prepare_image(encode(Image.new("P", (8, 6)), "ICNS"), "icon")


def test_zero_byte_file_is_an_image_error() -> None:
    with pytest.raises(ImageError):
        prepare_image(b"", "empty")


# --- end to end: a damaged image sent as a document with a wrong name and type -------------------------------------


@pytest.fixture
def bot_database_url(tmp_path: Any) -> str:
    """Storage is not what is fuzzed here: SQLite only (the storage tests cover both backends)."""
    return f"sqlite:///{tmp_path / 'data' / 'bot.sqlite3'}"


async def test_a_damaged_image_document_gets_the_bad_image_text_and_no_unhandled_error(
        telegram, vision, start_bot, caplog) -> None:
    alice = make_user(7301, "Alice", "en")
    data = encode(Image.new("RGB", (640, 480), (10, 200, 10)), "PNG")
    document = {**telegram.add_file(data[: len(data) // 3]), "file_name": "holiday.jpg", "mime_type": "image/gif"}
    await start_quietly(start_bot, caplog)

    telegram.push_update(message_update(private_chat(alice), alice, document=document, caption="What is this?"))
    await telegram.wait_for(lambda: bool(telegram.chat_messages(alice["id"])), timeout=10)

    assert [message["text"] for message in telegram.chat_messages(alice["id"])] == [error_text("bad_image", "en")]
    assert vision.requests == []
    assert errors_logged(caplog) == []


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{record.name}: {record.getMessage()}" for record in caplog.records if record.levelno >= logging.ERROR]
