"""The Pillow pipeline: orientation, metadata stripping, downscaling, re-encoding, refusing bad input."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pillow_heif
import pytest
from aiogram.types import Chat, Document, Message, PhotoSize, Sticker
from PIL import ExifTags, Image, ImageDraw, features

from bot.errors import ImageError
from bot.handlers.inputs import image_of
from bot.services.images import (
    DEFAULT_TARGET,
    MAX_PIXELS,
    ImageTarget,
    bare_jpeg_size,
    load_decoders,
    passthrough,
    prepare_image,
    prepare_image_async,
    smallest_sufficient,
)

RED = (220, 20, 20)
BLUE = (20, 20, 220)
GREEN = (20, 200, 20)
WHITE = (255, 255, 255)
GPS_MARKER = "SECRET-GPS-DATUM-1234"


def encode(image: Image.Image, image_format: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=image_format, **options)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def near(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG header with huge dimensions and almost no data: nothing is allocated until decoding."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def solid_png(colour_type: int, bit_depth: int, pixel: bytes, *chunks: bytes) -> bytes:
    """A 16x16 PNG of one pixel value, written by hand: Pillow cannot write 16-bit colour or a grey tRNS."""
    header = struct.pack(">IIBBBBB", 16, 16, bit_depth, colour_type, 0, 0, 0)
    rows = b"".join(b"\x00" + pixel * 16 for _ in range(16))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + b"".join(chunks) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def raw_exif(*entries: tuple[int, int, int, bytes]) -> bytes:
    """A big-endian EXIF block of (tag, type, count, value) entries, as wrong as a camera or editor may write them."""
    values_at = 8 + 2 + 12 * len(entries) + 4
    table, values = b"", b""
    for tag, kind, count, value in entries:
        inline = value.ljust(4, b"\x00") if len(value) <= 4 else struct.pack(">I", values_at + len(values))
        values += b"" if len(value) <= 4 else value
        table += struct.pack(">HHI", tag, kind, count) + inline
    return (b"Exif\x00\x00MM\x00\x2a" + struct.pack(">IH", 8, len(entries)) + table + struct.pack(">I", 0)
            + values)


def halves(size: tuple[int, int], left: tuple[int, ...], right: tuple[int, ...], mode: str = "RGB") -> Image.Image:
    image = Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, *size))
    return image


def heic(image: Image.Image, **options: Any) -> bytes:
    """Written through pillow-heif's own API: registering its Pillow opener here would hide a missing registration."""
    out = io.BytesIO()
    pillow_heif.from_pillow(image).save(out, quality=95, **options)
    return out.getvalue()


def phone_exif() -> Image.Exif:
    """Orientation 6 (shown rotated 90° clockwise), the maker, and a GPS block."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = "PhoneMaker"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 31.0, 12.5)
    gps[ExifTags.GPS.GPSMapDatum] = GPS_MARKER
    return exif


def assert_no_metadata(data: bytes) -> None:
    out = decode(data)
    assert dict(out.getexif()) == {}
    assert "exif" not in out.info
    assert b"Exif\x00\x00" not in data
    assert GPS_MARKER.encode() not in data
    assert b"PhoneMaker" not in data


@pytest.fixture(scope="module")
def phone_photo() -> bytes:
    """4000x3000 as the sensor stores it, with the phone's EXIF. Left half red, right half blue: red ends on top."""
    data = encode(halves((4000, 3000), RED, BLUE), "JPEG", exif=phone_exif(), quality=80)
    assert GPS_MARKER.encode() in data
    return data


# --- photos from phones -------------------------------------------------------------------------------------------


def test_phone_photo_is_rotated_downscaled_and_stripped(phone_photo: bytes) -> None:
    prepared = prepare_image(phone_photo, "photo-1")

    assert prepared.image_id == "photo-1"
    assert prepared.mime == "image/jpeg"
    out = decode(prepared.data)
    assert out.format == "JPEG"
    assert out.size == (768, 1024)
    assert near(out.getpixel((384, 100)), RED)
    assert near(out.getpixel((384, 924)), BLUE)
    assert_no_metadata(prepared.data)


def test_iphone_heic_is_decoded_rotated_and_stripped() -> None:
    """pillow-heif turns the EXIF orientation into the HEIF rotation; decoding applies it once, not twice."""
    data = heic(halves((1600, 1200), RED, BLUE), exif=phone_exif().tobytes())
    assert data[4:12] == b"ftypheic"
    assert GPS_MARKER.encode() in data

    prepared = prepare_image(data, "heic")

    out = decode(prepared.data)
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (768, 1024))
    assert near(out.getpixel((384, 100)), RED)
    assert near(out.getpixel((384, 924)), BLUE)
    assert_no_metadata(prepared.data)


def test_heif_gives_its_primary_image_even_when_it_is_not_the_first() -> None:
    container = pillow_heif.from_pillow(Image.new("RGB", (64, 64), RED))
    container.add_from_pillow(Image.new("RGB", (64, 64), BLUE))
    out = io.BytesIO()
    container.save(out, primary_index=1, quality=95)

    assert near(decode(prepare_image(out.getvalue(), "primary").data).getpixel((32, 32)), BLUE)


def test_heic_decodes_in_a_fresh_process_before_load_decoders_and_import_registers_nothing() -> None:
    script = (
        "import sys\n"
        "from PIL import Image\n"
        "from bot.services.images import prepare_image\n"
        "assert 'pillow_heif' not in sys.modules and 'HEIF' not in Image.OPEN\n"
        "print(prepare_image(sys.stdin.buffer.read(), 'fresh').data[:2].hex())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], input=heic(Image.new("RGB", (32, 32), RED)),
                          capture_output=True, check=False, timeout=60)

    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.strip() == b"ffd8"  # a JPEG


def test_load_decoders_registers_heif_and_can_run_twice() -> None:
    load_decoders()
    load_decoders()

    assert "HEIF" in Image.OPEN


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
def test_avif_is_converted() -> None:
    out = decode(prepare_image(encode(halves((300, 200), RED, BLUE), "AVIF", quality=95), "avif").data)

    assert (out.format, out.size) == ("JPEG", (300, 200))
    assert near(out.getpixel((50, 100)), RED, tolerance=20)
    assert near(out.getpixel((250, 100)), BLUE, tolerance=20)


def test_mpo_from_a_phone_gives_its_main_picture_rotated_and_downscaled() -> None:
    """Many phones store JPEGs as MPO (a second, smaller picture appended); decoded at reduced size like JPEG."""
    main, preview = halves((4000, 3000), RED, BLUE), Image.new("RGB", (400, 300), GREEN)
    data = encode(main, "MPO", save_all=True, append_images=[preview], exif=phone_exif(), quality=80)
    assert decode(data).format == "MPO"

    prepared = prepare_image(data, "mpo")

    out = decode(prepared.data)
    assert out.size == (768, 1024)
    assert near(out.getpixel((384, 100)), RED)
    assert near(out.getpixel((384, 924)), BLUE)
    assert_no_metadata(prepared.data)


@pytest.mark.parametrize(
    ("exif", "rotated"),
    [
        (raw_exif((0x0112, 3, 1, struct.pack(">H", 0))), False),
        (raw_exif((0x0112, 3, 1, struct.pack(">H", 9))), False),
        (raw_exif((0x0112, 3, 1, struct.pack(">H", 255))), False),
        (raw_exif((0x0112, 2, 2, b"6\x00")), False),  # text, not a number
        (raw_exif((0x0112, 7, 4, b"abcd")), False),  # opaque bytes
        (raw_exif((0x0112, 3, 1_000_000_000, b"\x00\x06")), False),  # a count pointing past the end
        (b"Exif\x00\x00garbage", False),
        # valid orientation beside a tag of the wrong type: ImageOps.exif_transpose raised struct.error here
        (raw_exif((0x0112, 3, 1, struct.pack(">H", 6)), (0x0100, 2, 5, b"wide\x00")), True),
    ],
    ids=["zero", "nine", "255", "ascii", "undefined", "huge-count", "garbage", "bad-neighbour-tag"],
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt EXIF it skips
def test_broken_exif_orientation_gives_an_image_instead_of_an_error(exif: bytes, rotated: bool) -> None:
    data = encode(halves((400, 200), RED, BLUE), "JPEG", exif=exif, quality=95)

    out = decode(prepare_image(data, "odd-exif").data)

    if rotated:  # left half red -> top half red
        assert out.size == (200, 400)
        assert near(out.getpixel((100, 50)), RED)
        assert near(out.getpixel((100, 350)), BLUE)
    else:
        assert out.size == (400, 200)
        assert near(out.getpixel((50, 100)), RED)
        assert near(out.getpixel((350, 100)), BLUE)


def test_smaller_target_is_respected(phone_photo: bytes) -> None:
    out = decode(prepare_image(phone_photo, "p", ImageTarget(long_side=512, short_side=512)).data)

    assert max(out.size) <= 512
    assert out.size == (384, 512)


def test_small_image_is_never_upscaled() -> None:
    out = decode(prepare_image(encode(Image.new("RGB", (300, 200), RED), "JPEG"), "small").data)

    assert out.size == (300, 200)


def test_transparent_png_becomes_rgb_jpeg_with_white_background() -> None:
    image = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    image.paste((200, 0, 0, 255), (100, 0, 200, 100))

    out = decode(prepare_image(encode(image, "PNG"), "png").data)

    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (200, 100))
    assert near(out.getpixel((20, 50)), (255, 255, 255))
    assert near(out.getpixel((180, 50)), (200, 0, 0))


def test_palette_image_with_transparent_index_gets_white() -> None:
    image = Image.new("P", (100, 100), 0)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    image.paste(1, (50, 0, 100, 100))

    out = decode(prepare_image(encode(image, "PNG", transparency=0), "palette").data)

    assert near(out.getpixel((10, 50)), (255, 255, 255))
    assert near(out.getpixel((90, 50)), (0, 200, 0))


@pytest.mark.parametrize(
    ("image_format", "options"),
    [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})],
    ids=["gif", "apng", "webp"],
)
def test_animation_gives_its_first_frame_as_a_still_jpeg(image_format: str, options: dict[str, Any]) -> None:
    frames = [Image.new("RGB", (120, 80), colour) for colour in (RED, BLUE, GREEN)]
    data = encode(frames[0], image_format, save_all=True, append_images=frames[1:], duration=100, loop=0, **options)
    source = decode(data)
    assert (source.format, source.n_frames) == (image_format, 3)

    out = decode(prepare_image(data, "animation").data)

    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (120, 80))
    assert getattr(out, "n_frames", 1) == 1
    assert near(out.getpixel((60, 40)), RED, tolerance=30)


def test_cmyk_jpeg_from_photoshop_keeps_its_colours() -> None:
    """Pillow writes CMYK JPEGs as Photoshop does (Adobe marker, inverted values) and reads them back the same way."""
    image = Image.new("CMYK", (3200, 1200), (0, 0, 0, 0))  # white
    for index, ink in enumerate([(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 255)]):
        image.paste(ink, (640 * (index + 1), 0, 640 * (index + 2), 1200))
    data = encode(image, "JPEG", quality=95)
    assert b"Adobe" in data

    out = decode(prepare_image(data, "cmyk").data)

    assert (out.mode, out.size) == ("RGB", (2048, 768))
    expected = [WHITE, (0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 0, 0)]  # white, cyan, magenta, yellow, black
    for index, colour in enumerate(expected):
        assert near(out.getpixel((205 + 410 * index, 384)), colour, tolerance=16), index


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (solid_png(2, 16, struct.pack(">HHH", 0xDC00, 0x1400, 0x1400)), RED),
        (solid_png(6, 16, struct.pack(">HHHH", 0xDC00, 0x1400, 0x1400, 0xFFFF)), RED),
        (solid_png(6, 16, struct.pack(">HHHH", 0xDC00, 0x1400, 0x1400, 0)), WHITE),
        (solid_png(4, 16, struct.pack(">HH", 0, 0x8000)), (127, 127, 127)),  # black, half transparent
        (solid_png(4, 8, bytes([0, 0])), WHITE),
        (solid_png(0, 16, struct.pack(">H", 0x1234), chunk(b"tRNS", struct.pack(">H", 0x1234))), WHITE),
        (solid_png(0, 16, struct.pack(">H", 0x1234), chunk(b"tRNS", struct.pack(">H", 0x1233))), (18, 18, 18)),
        (solid_png(0, 8, bytes([0x12]), chunk(b"tRNS", struct.pack(">H", 0x12))), WHITE),
        (solid_png(2, 8, bytes(RED), chunk(b"tRNS", struct.pack(">HHH", *RED))), WHITE),
        (solid_png(3, 8, b"\x00", chunk(b"PLTE", bytes(RED)), chunk(b"tRNS", b"\x80")), (237, 137, 137)),
        (encode(Image.new("LA", (16, 16), (0, 128)), "PNG"), (127, 127, 127)),
        (encode(Image.new("RGBA", (16, 16), (*RED, 128)).convert("PA"), "TIFF"), (237, 137, 137)),
    ],
    ids=["rgb16", "rgba16-opaque", "rgba16-clear", "la16-half", "la8-clear", "grey16-trns", "grey16-other-trns",
         "grey8-trns", "rgb8-trns", "palette-half-alpha", "la", "pa"],
)
def test_deep_and_transparent_images_get_their_colours_on_white(data: bytes, expected: tuple[int, int, int]) -> None:
    out = decode(prepare_image(data, "png").data)

    assert (out.format, out.mode) == ("JPEG", "RGB")
    assert near(out.getpixel((8, 8)), expected, tolerance=4)


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp_is_converted() -> None:
    image = Image.new("RGBA", (3000, 1000), (*BLUE, 255))

    out = decode(prepare_image(encode(image, "WEBP", quality=90), "webp").data)

    assert (out.format, out.mode) == ("JPEG", "RGB")
    assert out.size == (2048, 683)
    assert near(out.getpixel((1000, 300)), BLUE)


# --- image documents ---------------------------------------------------------------------------------------------


def document_message(mime_type: str | None, file_name: str | None) -> Message:
    document = Document(file_id="file", file_unique_id="unique", mime_type=mime_type, file_name=file_name)
    return Message(message_id=1, date=datetime.now(UTC), chat=Chat(id=1, type="private"), document=document)


@pytest.mark.parametrize(
    ("mime_type", "file_name"),
    [("image/heic", "IMG_0001.HEIC"), ("image/heif", "a.heif"), ("image/avif", "b.avif"), ("image/webp", "c.webp"),
     ("image/gif", "d.gif"), ("image/png", "e.png"), ("image/jpeg", None), ("application/octet-stream", "IMG.HEIC"),
     (None, "photo.avif")],
)
def test_image_documents_are_accepted(mime_type: str | None, file_name: str | None) -> None:
    assert image_of(document_message(mime_type, file_name), DEFAULT_TARGET) is not None


@pytest.mark.parametrize(
    ("mime_type", "file_name"),
    [("application/pdf", "report.pdf"), ("image/svg+xml", "logo.svg"), ("application/octet-stream", "notes.txt")],
)
def test_other_documents_are_not_images(mime_type: str, file_name: str) -> None:
    """An SVG has no pixels to decode: 'send a photo' helps the user more than 'this image may be damaged'."""
    assert image_of(document_message(mime_type, file_name), DEFAULT_TARGET) is None


# --- refusing input -----------------------------------------------------------------------------------------------


def _truncated_jpeg() -> bytes:
    data = encode(Image.effect_noise((800, 600), 50).convert("RGB"), "JPEG")
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\xff\xd8\xff", _truncated_jpeg(), b"\x89PNG\r\n\x1a\n" + b"\x00" * 40],
    ids=["empty", "text", "jpeg-magic-only", "truncated-jpeg", "corrupt-png"],
)
def test_undecodable_bytes_raise_image_error(data: bytes) -> None:
    with pytest.raises(ImageError):
        prepare_image(data, "bad")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("width", "height"), [(20_000, 20_000), (10_001, 10_000)])
def test_pixel_bombs_are_refused_before_decoding(width: int, height: int) -> None:
    data = png_claiming(width, height)
    assert len(data) < 200
    assert width * height > MAX_PIXELS

    with pytest.raises(ImageError, match=r"pixels"):
        prepare_image(data, "bomb")


def test_header_only_png_of_ordinary_size_fails_for_its_missing_data() -> None:
    """Keeps the bomb test honest: the same crafted file at a normal size is refused for another reason."""
    with pytest.raises(ImageError) as refused:
        prepare_image(png_claiming(100, 100), "tiny")

    assert "pixels" not in str(refused.value)


# --- choosing a Telegram photo size -------------------------------------------------------------------------------


def test_smallest_sufficient_picks_the_smallest_size_that_fills_the_target() -> None:
    telegram_sizes = [(90, 67), (320, 240), (800, 600), (1280, 960), (2560, 1920)]

    assert smallest_sufficient(telegram_sizes) == 3
    assert smallest_sufficient([(90, 67), (800, 600), (4000, 300)]) == 2  # long side alone fills 2048
    assert smallest_sufficient(telegram_sizes, ImageTarget(long_side=320, short_side=240)) == 1


def test_smallest_sufficient_falls_back_to_the_largest() -> None:
    assert smallest_sufficient([(320, 240), (800, 600), (90, 67)]) == 1
    assert smallest_sufficient([(100, 100)]) == 0
    with pytest.raises(ValueError, match="no sizes"):
        smallest_sufficient([])


# --- off the event loop -------------------------------------------------------------------------------------------


async def test_async_version_gives_the_same_bytes(phone_photo: bytes) -> None:
    threaded = await prepare_image_async(phone_photo, "same")

    assert threaded == prepare_image(phone_photo, "same")


def test_16_bit_greyscale_keeps_its_tones_instead_of_turning_white() -> None:
    gradient = Image.new("I;16", (256, 16))
    gradient.putdata([x * 256 for _ in range(16) for x in range(256)])
    source = io.BytesIO()
    gradient.save(source, format="PNG")

    result = Image.open(io.BytesIO(prepare_image(source.getvalue(), "grey16").data)).convert("L")

    assert result.getpixel((2, 8)) < 16
    assert 112 < result.getpixel((128, 8)) < 144
    assert result.getpixel((253, 8)) > 240


def test_a_jpeg_comment_does_not_reach_the_provider() -> None:
    source = io.BytesIO()
    Image.new("RGB", (1280, 960), (10, 20, 30)).save(source, format="JPEG", comment=b"SECRET-NOTE")

    prepared = prepare_image(source.getvalue(), "comment")

    assert b"SECRET-NOTE" not in prepared.data


# --- Telegram photos sent as downloaded ---------------------------------------------------------------------------


def telegram_photo(size: tuple[int, int], **options: Any) -> bytes:
    """A photo-like JPEG as Telegram stores a photo size: q87, JFIF header, no metadata (unless `options` add some)."""
    image = Image.merge("RGB", (Image.linear_gradient("L").resize(size), Image.effect_noise(size, 30).convert("L"),
                                Image.linear_gradient("L").rotate(90).resize(size)))
    ImageDraw.Draw(image).ellipse((size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2), fill=RED)
    return encode(image, "JPEG", quality=87, **options)


@pytest.fixture(scope="module")
def fitting_photo() -> bytes:
    return telegram_photo((1280, 960))


@pytest.mark.parametrize(
    ("size", "options"),
    [((1280, 960), {}), ((960, 1280), {}), ((1280, 854), {}), ((1280, 720), {}), ((800, 600), {}),
     ((1280, 960), {"progressive": True}), ((1280, 960), {"optimize": True, "subsampling": 0})],
    ids=["4:3", "portrait", "3:2", "16:9", "small", "progressive", "optimized-444"],
)
def test_a_telegram_photo_within_reach_of_the_target_leaves_byte_for_byte(size: tuple[int, int],
                                                                        options: dict[str, Any]) -> None:
    """The provider scales 1280x960 to 1024x768 itself and bills the same tiles: re-encoding would only cost CPU."""
    data = telegram_photo(size, **options)
    assert bare_jpeg_size(data) == size

    prepared = prepare_image(data, "photo", telegram_photo=True)

    assert prepared.data is data
    assert (prepared.image_id, prepared.mime) == ("photo", "image/jpeg")


async def test_the_async_fast_path_gives_the_same_bytes_without_a_worker(fitting_photo: bytes) -> None:
    class NoWorkers(ThreadPoolExecutor):
        def submit(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a photo sent as downloaded needs no worker")

    with NoWorkers() as workers:
        prepared = await prepare_image_async(fitting_photo, "photo", workers=workers, telegram_photo=True)

    assert prepared.data is fitting_photo


@pytest.mark.parametrize(
    "options",
    [{"exif": phone_exif()}, {"exif": phone_exif(), "progressive": True}],
    ids=["baseline", "progressive"],
)
async def test_a_telegram_photo_carrying_exif_gps_is_rotated_and_stripped_by_the_full_pipeline(
        options: dict[str, Any]) -> None:
    data = encode(halves((1280, 960), RED, BLUE), "JPEG", quality=87, **options)
    assert GPS_MARKER.encode() in data
    assert bare_jpeg_size(data) is None

    for prepared in (prepare_image(data, "gps", telegram_photo=True),
                     await prepare_image_async(data, "gps", telegram_photo=True)):
        assert prepared.data != data
        assert_no_metadata(prepared.data)
        out = decode(prepared.data)
        assert out.size == (768, 1024)  # orientation 6 applied, then downscaled to the target
        assert near(out.getpixel((384, 100)), RED)


def appended(data: bytes) -> bytes:
    return data + b"SECRET-PAYLOAD"


def with_segment(data: bytes, segment: bytes) -> bytes:
    """`segment` (marker and body) inserted after the JFIF header, or between the scans of a progressive JPEG."""
    return data[:20] + segment + data[20:]


def segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def between_scans(data: bytes, extra: bytes) -> bytes:
    second_scan = data.index(b"\xff\xda", data.index(b"\xff\xda") + 2)
    return data[:second_scan] + extra + data[second_scan:]


@pytest.mark.parametrize(
    "dress",
    [
        lambda data: with_segment(data, segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00SECRET-XMP")),
        lambda data: with_segment(data, segment(0xE2, b"ICC_PROFILE\x00\x01\x01SECRET-ICC")),
        lambda data: with_segment(data, segment(0xED, b"Photoshop 3.0\x00SECRET-IPTC")),
        lambda data: with_segment(data, segment(0xFE, b"SECRET-COMMENT")),
        lambda data: with_segment(data, segment(0xEB, b"SECRET-JUMBF")),
        appended,
        lambda data: data + telegram_photo((64, 48)),  # a second picture after the first, as in MPO
        lambda data: between_scans(data, segment(0xE1, b"Exif\x00\x00SECRET-LATE-EXIF")),
        lambda data: between_scans(data, segment(0xFE, b"SECRET-LATE-COMMENT")),
    ],
    ids=["xmp", "icc", "iptc", "comment", "app11", "trailing-bytes", "second-picture", "exif-between-scans",
         "comment-between-scans"],
)
def test_any_metadata_or_extra_bytes_send_a_telegram_photo_through_the_full_pipeline(dress: Any) -> None:
    data = dress(telegram_photo((1280, 960), progressive=True))
    assert decode(data).size == (1280, 960)  # still an image Pillow reads
    assert bare_jpeg_size(data) is None

    prepared = prepare_image(data, "dressed", telegram_photo=True)

    assert decode(prepared.data).size == (1024, 768)
    assert b"SECRET" not in prepared.data
    assert_no_metadata(prepared.data)


@pytest.mark.parametrize(
    "data",
    [
        encode(halves((1280, 960), RED, BLUE), "PNG"),
        encode(halves((1280, 960), RED, BLUE), "WEBP", quality=90),
        encode(halves((1280, 960), RED, BLUE).convert("L"), "JPEG", quality=87),  # greyscale
        encode(Image.new("CMYK", (1280, 960), (0, 200, 200, 0)), "JPEG", quality=87),  # Adobe marker, 4 components
        heic(halves((1280, 960), RED, BLUE)),
    ],
    ids=["png", "webp", "greyscale-jpeg", "cmyk-jpeg", "heic"],
)
def test_a_telegram_photo_that_is_not_a_plain_colour_jpeg_is_converted(data: bytes) -> None:
    assert bare_jpeg_size(data) is None

    prepared = prepare_image(data, "odd", telegram_photo=True)

    out = decode(prepared.data)
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (1024, 768))


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xd8", b"\xff\xd8\xff\xd9", _truncated_jpeg(), b"\xff\xd8\xff\xe0\x00", b"\xff\xd8\xff\xc4\x00\x02",
     b"\xff\xd8\xff\xc4\xff\xff" + b"\x00" * 40],
    ids=["empty", "soi-only", "no-frame", "truncated", "cut-length", "cut-after-table", "length-past-the-end"],
)
def test_broken_jpegs_never_take_the_fast_path_and_still_raise_image_error(data: bytes) -> None:
    assert bare_jpeg_size(data) is None
    assert passthrough(data, "broken") is None
    with pytest.raises(ImageError):
        prepare_image(data, "broken", telegram_photo=True)


@pytest.mark.parametrize(
    ("size", "target", "expected"),
    [((2560, 1920), DEFAULT_TARGET, (1024, 768)), ((2560, 1440), DEFAULT_TARGET, (1365, 768)),
     ((1920, 1080), DEFAULT_TARGET, (1365, 768)),
     ((800, 600), ImageTarget(long_side=512, short_side=512), (512, 384)),
     ((1280, 960), ImageTarget(long_side=512, short_side=512), (512, 384))],
    ids=["2560-4:3", "2560-16:9", "1920-16:9", "low-800", "low-1280"],
)
def test_a_telegram_photo_far_above_the_target_is_downscaled(size: tuple[int, int], target: ImageTarget,
                                                             expected: tuple[int, int]) -> None:
    """Sent as downloaded, a 2560 px photo would upload 3-13x the bytes for the same tiles (bench/image_passthrough)."""
    data = telegram_photo(size)
    assert bare_jpeg_size(data) == size

    prepared = prepare_image(data, "big", target, telegram_photo=True)

    assert decode(prepared.data).size == expected


def test_without_the_telegram_photo_flag_even_a_bare_fitting_jpeg_is_re_encoded(fitting_photo: bytes) -> None:
    """Documents and stickers: the sender's own bytes, whatever they look like, always take the full pipeline."""
    prepared = prepare_image(fitting_photo, "document")

    assert prepared.data != fitting_photo
    assert decode(prepared.data).size == (1024, 768)


async def test_without_the_flag_the_async_version_re_encodes_too(fitting_photo: bytes) -> None:
    prepared = await prepare_image_async(fitting_photo, "document")

    assert decode(prepared.data).size == (1024, 768)


def test_documents_and_stickers_are_never_marked_as_telegram_photos() -> None:
    sticker = Sticker(file_id="s", file_unique_id="su", type="regular", width=512, height=512, is_animated=False,
                      is_video=False)
    sticker_message = Message(message_id=2, date=datetime.now(UTC), chat=Chat(id=1, type="private"), sticker=sticker)

    for message in (document_message("image/jpeg", "IMG_0001.JPG"), document_message(None, "photo.jpg"),
                    sticker_message):
        ref = image_of(message, DEFAULT_TARGET)
        assert ref is not None
        assert ref.telegram_photo is False


def test_a_photo_message_is_marked_as_a_telegram_photo() -> None:
    photo = PhotoSize(file_id="p", file_unique_id="pu", width=1280, height=960)
    message = Message(message_id=3, date=datetime.now(UTC), chat=Chat(id=1, type="private"), photo=[photo])

    ref = image_of(message, DEFAULT_TARGET)
    assert ref is not None
    assert ref.telegram_photo is True


def test_smallest_sufficient_takes_a_size_that_nearly_fills_the_target() -> None:
    """16:9: 1280x720 bills the same 6 tiles as 2560x1440 brought to 1365x768, for a quarter of the download."""
    wide = [(90, 51), (320, 180), (800, 450), (1280, 720), (2560, 1440)]
    screenshot = [(41, 90), (148, 320), (370, 800), (591, 1280), (1179, 2556)]
    panorama = [(90, 45), (320, 160), (800, 400), (1280, 640), (2560, 1280)]

    assert smallest_sufficient(wide) == 3
    assert smallest_sufficient(screenshot) == 4  # 591 px of text is too little: the full size is worth it
    assert smallest_sufficient(panorama) == 4
    assert smallest_sufficient([(90, 67), (320, 240), (800, 600), (1280, 960), (2560, 1920)]) == 3
