"""Several photos combined into one numbered grid, for models that take fewer images per request than were sent.

Pure and synchronous: the caller runs it in the image worker thread, as it does `prepare_image`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from bot.errors import ImageError
from bot.models import PreparedImage
from bot.services.images import DECODE_ERRORS, DEFAULT_TARGET, RESAMPLE, ImageTarget

SEPARATOR = 4  # px between cells: thin, but it survives the provider's downscaling
SEPARATOR_COLOUR = (96, 96, 96)
BACKGROUND = (235, 235, 235)  # around a photo that does not fill its cell; light grey, so a white photo shows its edge
LABEL_BACKGROUND = (20, 20, 20)
LABEL_COLOUR = (255, 255, 255)
# Label font size as a share of the cell's short side, within bounds (px): readable in a 10-photo grid, not
# covering much of a 2-photo one.
LABEL_SHARE = 0.12
LABEL_SIZES = (14, 64)


@dataclass(frozen=True, slots=True)
class Grid:
    """The combined image and the sentence that tells the model how its photos are numbered."""

    image: PreparedImage
    columns: int
    rows: int
    description: str


@dataclass(frozen=True, slots=True)
class _Layout:
    columns: int
    rows: int
    cell: tuple[int, int]
    photos: tuple[tuple[int, int], ...]  # each photo's size in its cell, in order

    @property
    def canvas(self) -> tuple[int, int]:
        return (self.columns * self.cell[0] + (self.columns - 1) * SEPARATOR,
                self.rows * self.cell[1] + (self.rows - 1) * SEPARATOR)

    def origin(self, index: int) -> tuple[int, int]:
        """Top-left corner of cell `index`, counted left to right, top to bottom."""
        row, column = divmod(index, self.columns)
        return column * (self.cell[0] + SEPARATOR), row * (self.cell[1] + SEPARATOR)


def compose_grid(images: Sequence[PreparedImage], image_id: str, target: ImageTarget = DEFAULT_TARGET) -> Grid:
    """One JPEG within `target` holding every photo, as large as the limits allow, each numbered in its cell's corner.

    A single-image model then sees the whole album instead of its first photo only. The layout maximises the
    smallest photo's area (then the total), over all column counts and both orientations of the target.
    """
    if len(images) < 2:
        raise ValueError(f"a grid needs at least two images, got {len(images)}")
    shapes = _shapes(len(images), target)
    if not shapes:
        raise ValueError(f"{len(images)} images do not fit in {target.long_side}x{target.short_side}")
    try:
        with ExitStack() as stack:
            sources = [stack.enter_context(Image.open(io.BytesIO(image.data))) for image in images]
            layout = max((_fit([source.size for source in sources], *shape) for shape in shapes), key=_score)
            canvas = Image.new("RGB", layout.canvas, SEPARATOR_COLOUR)
            draw = ImageDraw.Draw(canvas)
            for index in range(layout.columns * layout.rows):  # empty trailing cells get the background too
                left, top = layout.origin(index)
                draw.rectangle((left, top, left + layout.cell[0] - 1, top + layout.cell[1] - 1), fill=BACKGROUND)
            for index, (source, size) in enumerate(zip(sources, layout.photos, strict=True)):
                source.draft("RGB", size)  # JPEG: decode at a reduced scale, still at least `size`
                photo = source.convert("RGB")
                if photo.size != size:
                    photo = photo.resize(size, RESAMPLE)
                left, top = layout.origin(index)
                canvas.paste(photo, (left + (layout.cell[0] - size[0]) // 2, top + (layout.cell[1] - size[1]) // 2))
            _draw_labels(draw, layout, len(images))
            out = io.BytesIO()
            canvas.save(out, format="JPEG", quality=target.quality)
    except DECODE_ERRORS as exc:
        raise ImageError(f"cannot decode image for the grid: {exc}") from exc
    description = _describe(len(images), layout.columns, layout.rows)
    return Grid(image=PreparedImage(image_id=image_id, data=out.getvalue(), mime="image/jpeg"),
                columns=layout.columns, rows=layout.rows, description=description)


def _shapes(count: int, target: ImageTarget) -> list[tuple[int, int, tuple[int, int]]]:
    """(columns, rows, each cell's share of the box) for every column count in both orientations of the target,
    landscape first, where cells have pixels. Depends on the count alone: checked before decoding anything."""
    boxes = [(target.long_side, target.short_side)]
    if target.long_side != target.short_side:
        boxes.append((target.short_side, target.long_side))
    shapes: list[tuple[int, int, tuple[int, int]]] = []
    for width, height in boxes:
        for columns in range(1, count + 1):
            rows = math.ceil(count / columns)
            share = ((width - (columns - 1) * SEPARATOR) // columns, (height - (rows - 1) * SEPARATOR) // rows)
            if min(share) >= 1:
                shapes.append((columns, rows, share))
    return shapes


def _fit(sizes: Sequence[tuple[int, int]], columns: int, rows: int, share: tuple[int, int]) -> _Layout:
    """Each photo scaled to fit its share, never enlarged; cells then shrink to the largest photo, so that photos too
    small to fill their share get a compact grid rather than empty space."""
    photos: list[tuple[int, int]] = []
    for width, height in sizes:
        scale = min(1.0, share[0] / width, share[1] / height)
        photos.append((max(1, min(share[0], round(width * scale))), max(1, min(share[1], round(height * scale)))))
    cell = (max(width for width, _ in photos), max(height for _, height in photos))
    return _Layout(columns=columns, rows=rows, cell=cell, photos=tuple(photos))


def _score(layout: _Layout) -> tuple[int, ...]:
    """Largest smallest photo; ties go to the larger total, fewer empty cells, a squarer grid, the smaller canvas.
    `max` keeps the first of equal scores, so the choice is deterministic."""
    areas = [width * height for width, height in layout.photos]
    width, height = layout.canvas
    empty = layout.columns * layout.rows - len(layout.photos)
    return min(areas), sum(areas), -empty, -abs(layout.columns - layout.rows), -width * height


def _draw_labels(draw: ImageDraw.ImageDraw, layout: _Layout, count: int) -> None:
    """White digits in a dark box at each cell's top-left corner: readable on any photo, outside it when the photo
    does not fill its cell."""
    low, high = LABEL_SIZES
    font = ImageFont.load_default(size=max(low, min(high, round(min(layout.cell) * LABEL_SHARE))))
    padding = max(2, round(font.size / 4))
    for index in range(count):
        label = str(index + 1)
        left, top = layout.origin(index)
        ink = draw.textbbox((0, 0), label, font=font)  # the digits' own extent, not the line's
        box = (left, top, left + ink[2] - ink[0] + 2 * padding - 1, top + ink[3] - ink[1] + 2 * padding - 1)
        draw.rectangle(box, fill=LABEL_BACKGROUND)
        draw.text((left + padding - ink[0], top + padding - ink[1]), label, font=font, fill=LABEL_COLOUR)


def _describe(count: int, columns: int, rows: int) -> str:
    """For the prompt: which photo is which, and that the numbers and lines are ours, not the photos' content."""
    if rows == 1:
        arrangement = f"{count} side by side in one row"
    elif columns == 1:
        arrangement = f"{count} stacked in one column"
    else:
        last = count - columns * (rows - 1)
        arrangement = f"{rows} rows of {columns}" + ("" if last == columns else f", the last row holding {last}")
    return (f"The image is a grid of {count} photos, numbered 1-{count} in the top-left corner of each cell, "
            f"left to right, top to bottom: {arrangement}. The numbers and grid lines are not part of the photos.")
