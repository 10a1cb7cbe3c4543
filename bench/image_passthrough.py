"""Telegram photos: re-encoding them (decode, downscale, encode) against sending them as downloaded.

    python -m bench.image_passthrough [--repeat 15] [--json out.json]
    python -m bench.image_passthrough --inspect photo.jpg ...   # would these bytes leave as downloaded?

For each Telegram photo size (long side 90/320/800/1280/2560; 4:3, 3:2 and 16:9) of two contents, a noisy
synthetic photo like bench/run.py's and a smooth one (sky, blurred shapes, mild sensor noise, closer to a real
camera picture), all JPEG q87 as Telegram stores them, it reports:

- CPU ms (this thread, median of `--repeat`) of `prepare_image` (the full pipeline) and of `passthrough` (the fast
  path: the marker walk of `bare_jpeg_size`, nothing decoded), and what the bot now does with that size;
- upload: the base64 characters of each in the request body, and the CPU ms of base64 + JSON-encoding them
  (bot/clients/wire.py's share, which grows with the bytes);
- billing by ../shared/GUIDE.md: OpenAI `high` detail fits the image in 2048x2048, scales the short side down to
  768, bills 85 + 170 per 512 px tile for gpt-4o (gpt-4o-mini about 33x); `low` detail is 85 whatever the size.
  The GUIDE gives no tile rule for GLM-4V: what differs there is the bytes (base64, raw base64 or a published URL).

"picked" marks the size `smallest_sufficient` chooses for that target (the only one the bot downloads).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, features

from bot.services.images import (
    DEFAULT_TARGET,
    ImageTarget,
    bare_jpeg_size,
    passthrough,
    prepare_image,
    smallest_sufficient,
)

TELEGRAM_SIDES = (90, 320, 800, 1280, 2560)
SHAPES = {"4:3": (4, 3), "3:2": (3, 2), "16:9": (16, 9)}
TARGETS = {"high": DEFAULT_TARGET, "low": ImageTarget(long_side=512, short_side=512)}
QUALITY = 87
GPT_4O_MINI_FACTOR = 33.33  # GUIDE: gpt-4o-mini bills about 33x gpt-4o's image tokens
UPLINK_MBIT = 100  # for the "extra upload" column: a modest server uplink


def noisy(size: tuple[int, int], seed: int) -> Image.Image:
    """bench/loopback.py's PhotoMaker at any size: gradients, sensor noise, ellipses, text (~330 KB at 1280x960)."""
    rnd = random.Random(seed)
    width, height = size
    gradient = Image.linear_gradient("L")
    base = Image.merge("RGB", (gradient.resize(size), gradient.rotate(90).resize(size), Image.effect_noise(size, 40)))
    image = Image.blend(base, Image.effect_noise(size, 30).convert("RGB"), 0.2)
    draw = ImageDraw.Draw(image)
    scale = width / 1280
    for _ in range(12):
        x, y = rnd.randrange(width), rnd.randrange(height)
        colour = (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
        draw.ellipse([x, y, x + rnd.randrange(40, 400) * scale, y + rnd.randrange(40, 300) * scale], fill=colour)
    draw.text((rnd.randrange(max(1, width - 240)), rnd.randrange(max(1, height - 60))), f"photo {seed}",
              fill=(255, 255, 255), font_size=max(8, round(48 * scale)))
    return image


def smooth(size: tuple[int, int], seed: int) -> Image.Image:
    """A camera-like scene: a sky gradient over ground, soft objects, a sharp horizon and a little sensor noise."""
    rnd = random.Random(seed)
    width, height = size
    sky = Image.linear_gradient("L").resize(size)
    image = Image.merge("RGB", (sky.point(lambda v: 60 + v // 3), sky.point(lambda v: 110 + v // 3),
                                sky.point(lambda v: 200 + v // 5)))
    draw = ImageDraw.Draw(image)
    horizon = int(height * 0.6)
    draw.rectangle([0, horizon, width, height], fill=(70, 110, 50))
    for _ in range(25):
        x, y = rnd.randrange(width), rnd.randrange(horizon // 2, height)
        radius = rnd.randrange(width // 40, width // 8)
        colour = (rnd.randrange(40, 220), rnd.randrange(40, 200), rnd.randrange(20, 160))
        draw.ellipse([x - radius, y - radius // 2, x + radius, y + radius // 2], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=width / 800))
    draw = ImageDraw.Draw(image)
    for index in range(8):  # window frames, a fence: edges and thin lines survive the blur
        x = width // 10 + index * width // 9
        draw.line([x, horizon - height // 8, x, horizon + height // 20], fill=(240, 240, 235),
                  width=max(1, width // 640))
    draw.text((width // 20, height // 20), f"No. {seed} Main Street", fill=(20, 20, 20), font_size=max(8, width // 30))
    noise = Image.effect_noise(size, 6).convert("RGB")
    return Image.blend(image, noise.point(lambda v: v), 0.06)


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=QUALITY)
    return out.getvalue()


def telegram_sizes(original: Image.Image) -> list[tuple[int, int, bytes]]:
    """(width, height, JPEG) for each Telegram side below or at the original's, as Telegram derives them."""
    long_side = max(original.size)
    sizes = []
    for side in TELEGRAM_SIDES:
        if side > long_side:
            continue
        scale = side / long_side
        size = (max(1, round(original.width * scale)), max(1, round(original.height * scale)))
        variant = original if size == original.size else original.resize(size, Image.Resampling.LANCZOS)
        sizes.append((*size, jpeg(variant)))
    return sizes


def high_tiles(width: int, height: int) -> int:
    """OpenAI `high` detail: fit in 2048x2048, then the short side down to 768 (never up), 512 px tiles."""
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = round(width * scale), round(height * scale)
    return math.ceil(width / 512) * math.ceil(height / 512)


def gpt_4o_tokens(width: int, height: int) -> int:
    return 85 + 170 * high_tiles(width, height)


def median_ms(function: Callable[[], object], repeat: int) -> float:
    """Median CPU milliseconds of this thread (the image worker's share), after one warm-up call."""
    function()
    samples = []
    for _ in range(repeat):
        start = time.thread_time()
        function()
        samples.append((time.thread_time() - start) * 1000)
    return statistics.median(samples)


def request_ms(data: bytes, repeat: int) -> float:
    """base64 + the JSON body's encoding of one image: what wire.py spends on its bytes."""
    def encode() -> bytes:
        url = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
        body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return median_ms(encode, repeat)


@dataclass
class Row:
    content: str
    shape: str
    size: str
    target: str
    picked: bool
    jpeg_kb: float
    prepared_size: str
    prepare_ms: float
    passthrough_ms: float
    bot_sends: str  # "as downloaded" or "re-encoded"
    b64_kb_downloaded: float
    b64_kb_prepared: float
    wire_ms_downloaded: float
    wire_ms_prepared: float
    tokens_downloaded: int
    tokens_prepared: int
    extra_upload_ms: float


def measure(repeat: int) -> list[Row]:
    rows = []
    for content, make in (("noisy", noisy), ("smooth", smooth)):
        for shape, (wide, high) in SHAPES.items():
            original = make((2560, round(2560 * high / wide)), seed=7)
            sizes = telegram_sizes(original)
            for target_name, target in TARGETS.items():
                picked = smallest_sufficient([(width, height) for width, height, _ in sizes], target)
                for index, (width, _, data) in enumerate(sizes):
                    if width < 320 or (target_name == "low" and index != picked):
                        continue  # 90 px thumbnails are never picked; `low`: only the size the bot downloads
                    rows.append(_row(data, repeat if width <= 1280 else max(3, repeat // 3), content=content,
                                     shape=shape, target_name=target_name, picked=index == picked))
    return rows


def bench_photo_row(repeat: int) -> Row:
    """bench/run.py's photo exactly: drawn at 1280x960, q87 (Telegram's fake keeps the original's bytes)."""
    data = jpeg(noisy((1280, 960), seed=7))
    return _row(data, repeat, content="bench", shape="4:3", target_name="high", picked=True)


def _row(data: bytes, repeat: int, *, content: str, shape: str, target_name: str, picked: bool) -> Row:
    target = TARGETS[target_name]
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    prepared = prepare_image(data, "bench", target)
    with Image.open(io.BytesIO(prepared.data)) as image:
        prepared_size = image.size
    fast = passthrough(data, "bench", target)
    sent = data if fast is not None else prepared.data
    assert sent == prepare_image(data, "bench", target, telegram_photo=True).data
    b64_downloaded, b64_prepared = len(base64.b64encode(data)), len(base64.b64encode(prepared.data))
    if target_name == "low":
        tokens_downloaded = tokens_prepared = 85
    else:
        tokens_downloaded, tokens_prepared = gpt_4o_tokens(width, height), gpt_4o_tokens(*prepared_size)
    return Row(
        content=content, shape=shape, size=f"{width}x{height}", target=target_name, picked=picked,
        jpeg_kb=round(len(data) / 1024, 1), prepared_size=f"{prepared_size[0]}x{prepared_size[1]}",
        prepare_ms=round(median_ms(lambda: prepare_image(data, "bench", target), repeat), 2),
        passthrough_ms=round(median_ms(lambda: passthrough(data, "bench", target), repeat * 4), 3),
        bot_sends="as downloaded" if fast is not None else "re-encoded",
        b64_kb_downloaded=round(b64_downloaded / 1024, 1), b64_kb_prepared=round(b64_prepared / 1024, 1),
        wire_ms_downloaded=round(request_ms(data, repeat), 2),
        wire_ms_prepared=round(request_ms(prepared.data, repeat), 2),
        tokens_downloaded=tokens_downloaded, tokens_prepared=tokens_prepared,
        extra_upload_ms=round((b64_downloaded - b64_prepared) * 8 / (UPLINK_MBIT * 1000), 1),
    )


def table(rows: list[Row]) -> str:
    header = ("content", "shape", "size", "target", "picked", "JPEG KB", "prepared", "prepare ms", "pass ms",
              "bot sends", "b64 KB dl/prep", "wire ms dl/prep", f"+upload ms@{UPLINK_MBIT}M", "gpt-4o tok dl/prep")
    lines = [[row.content, row.shape, row.size, row.target, "*" if row.picked else "", f"{row.jpeg_kb:.0f}",
              row.prepared_size, f"{row.prepare_ms:.1f}", f"{row.passthrough_ms:.2f}", row.bot_sends,
              f"{row.b64_kb_downloaded:.0f} / {row.b64_kb_prepared:.0f}",
              f"{row.wire_ms_downloaded:.2f} / {row.wire_ms_prepared:.2f}", f"{row.extra_upload_ms:+.1f}",
              f"{row.tokens_downloaded} / {row.tokens_prepared}"] for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines, strict=True)]
    out = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)) + " |",
           "|" + "|".join("-" * (width + 2) for width in widths) + "|"]
    out += ["| " + " | ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)) + " |"
            for line in lines]
    return "\n".join(out)


def markers(data: bytes) -> list[str]:
    """The JPEG's segments before its first scan, e.g. ['E0 JFIF', 'DB', 'C0', 'C4', 'DA']: what a photo carries."""
    found, position = [], 2
    while data.startswith(b"\xff\xd8") and position + 4 <= len(data) and data[position] == 0xFF:
        marker, length = data[position + 1], int.from_bytes(data[position + 2:position + 4], "big")
        label = data[position + 4:position + 2 + length].split(b"\x00", 1)[0][:12] if 0xE0 <= marker <= 0xEF else b""
        found.append(f"{marker:02X} {label.decode('latin-1')}".strip())
        if marker == 0xDA:
            break
        position += 2 + length
    return found


def inspect(paths: list[Path]) -> None:
    """For photos downloaded from Telegram: their segments, and whether the bot would send them as downloaded."""
    for path in paths:
        data = path.read_bytes()
        verdict = {name: "as downloaded" if passthrough(data, "x", target) else "re-encoded"
                   for name, target in TARGETS.items()}
        print(f"{path}: {len(data)} bytes, bare JPEG size {bare_jpeg_size(data)}, segments {markers(data)}, "
              f"high: {verdict['high']}, low: {verdict['low']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed calls per figure (median reported)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--inspect", type=Path, nargs="+", help="only report on these JPEG files")
    args = parser.parse_args(argv)
    if args.inspect:
        inspect(args.inspect)
        return 0
    rows = [bench_photo_row(args.repeat), *measure(args.repeat)]
    print(f"Pillow {Image.__version__}, libjpeg-turbo {features.version('libjpeg_turbo')}; CPU ms of this thread, "
          f"median of {args.repeat}; dl = as downloaded, prep = prepare_image's output")
    print(table(rows))
    if args.json:
        payload: dict[str, Any] = {"repeat": args.repeat, "rows": [asdict(row) for row in rows]}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
