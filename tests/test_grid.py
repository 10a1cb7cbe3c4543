"""Albums for single-image models: one numbered grid within the provider's limits, each photo findable by its number."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from bot.errors import ImageError
from bot.models import PreparedImage
from bot.services.grid import BACKGROUND, SEPARATOR, Grid, compose_grid
from bot.services.images import DEFAULT_TARGET, ImageTarget

# Saturated and far apart, none of them near-white or near-black (the label's colours) nor bright (grey level < 180).
COLOURS = [(200, 30, 30), (30, 170, 30), (30, 30, 200), (190, 190, 30), (190, 30, 190), (30, 170, 170),
           (130, 70, 10), (10, 70, 130), (90, 20, 140), (240, 140, 0)]


def photo(colour: tuple[int, int, int], size: tuple[int, int] = (1024, 768), index: int = 0) -> PreparedImage:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG", quality=95)
    return PreparedImage(image_id=f"photo-{index}", data=out.getvalue())


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def near(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 16) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def cells(grid: Grid, image: Image.Image) -> list[tuple[int, int, int, int]]:
    """(left, top, width, height) of every cell, left to right, top to bottom, from the output alone."""
    width = (image.width - (grid.columns - 1) * SEPARATOR) / grid.columns
    height = (image.height - (grid.rows - 1) * SEPARATOR) / grid.rows
    assert width.is_integer() and height.is_integer()
    return [(round(column * (width + SEPARATOR)), round(row * (height + SEPARATOR)), int(width), int(height))
            for row in range(grid.rows) for column in range(grid.columns)]


def within(image: Image.Image, target: ImageTarget) -> bool:
    return max(image.size) <= target.long_side and min(image.size) <= target.short_side


def is_dark(pixel: tuple[int, ...]) -> bool:
    return max(pixel) < 60


def dark_run(image: Image.Image, left: int, y: int) -> int:
    """Dark pixels from `left` along row `y`: the width of the label box there."""
    run = 0
    while left + run < image.width and is_dark(image.getpixel((left + run, y))):
        run += 1
    return run


@pytest.mark.parametrize("count", [2, 3, 4, 10])
def test_photos_appear_in_numbered_order_with_labels_within_the_limits(count: int) -> None:
    grid = compose_grid([photo(COLOURS[index], index=index) for index in range(count)], "grid-1")

    assert (grid.image.image_id, grid.image.mime) == ("grid-1", "image/jpeg")
    out = decode(grid.image.data)
    assert (out.format, out.mode) == ("JPEG", "RGB")
    assert within(out, DEFAULT_TARGET)
    assert grid.columns * (grid.rows - 1) < count <= grid.columns * grid.rows  # no empty row
    assert dict(out.getexif()) == {}
    assert b"Exif" not in grid.image.data
    for index, (left, top, width, height) in enumerate(cells(grid, out)[:count]):
        assert near(out.getpixel((left + width // 2, top + height // 2)), COLOURS[index]), index
        assert is_dark(out.getpixel((left + 2, top + 2))), f"no label in cell {index + 1}"
        label = out.crop((left, top, left + width // 3, top + height // 3))
        assert label.convert("L").getextrema()[1] > 230, f"no white digits in label {index + 1}"
    assert f"{count} photos" in grid.description
    assert f"1-{count}" in grid.description


def test_two_digit_labels_are_wider_than_one_digit_labels() -> None:
    grid = compose_grid([photo(COLOURS[index], index=index) for index in range(10)], "ten")
    out = decode(grid.image.data)
    boxes = cells(grid, out)

    widths = [dark_run(out, left, top + 2) for left, top, _, _ in boxes[:10]]

    assert len(set(widths[:9])) <= 2  # digits differ a little in width
    assert widths[9] > max(widths[:9]) * 1.4


def test_labels_scale_with_the_cells() -> None:
    big = compose_grid([photo(COLOURS[0]), photo(COLOURS[1])], "two")
    small = compose_grid([photo(colour) for colour in COLOURS], "ten")

    big_label = dark_run(decode(big.image.data), 0, 2)
    small_label = dark_run(decode(small.image.data), 0, 2)

    assert big_label > small_label >= 14


def test_layout_follows_the_photos_aspect() -> None:
    """Landscape photos stack in a column of the portrait box, portrait ones line up in a row: each photo larger."""
    landscape = compose_grid([photo(colour, (1024, 768)) for colour in COLOURS[:3]], "wide")
    portrait = compose_grid([photo(colour, (768, 1024)) for colour in COLOURS[:3]], "tall")

    assert (landscape.columns, landscape.rows) == (1, 3)
    assert "3 stacked in one column" in landscape.description
    assert (portrait.columns, portrait.rows) == (3, 1)
    assert "3 side by side in one row" in portrait.description
    assert decode(portrait.image.data).size == (3 * 576 + 2 * SEPARATOR, 768)


def test_ten_photos_fill_two_rows_of_five() -> None:
    grid = compose_grid([photo(colour) for colour in COLOURS], "ten")

    assert (grid.columns, grid.rows) == (5, 2)
    assert "2 rows of 5" in grid.description


def test_an_incomplete_last_row_is_described_and_left_empty() -> None:
    grid = compose_grid([photo(colour, (600, 600)) for colour in COLOURS[:5]], "five", ImageTarget(1200, 800))
    out = decode(grid.image.data)

    assert (grid.columns, grid.rows) == (3, 2)
    assert "the last row holding 2" in grid.description
    left, top, width, height = cells(grid, out)[5]
    assert near(out.getpixel((left + width // 2, top + height // 2)), BACKGROUND, tolerance=4)


def test_portrait_and_landscape_keep_their_shapes_on_a_light_background() -> None:
    grid = compose_grid([photo(COLOURS[0], (768, 1024)), photo(COLOURS[1], (1024, 768))], "mix")
    out = decode(grid.image.data)
    assert within(out, DEFAULT_TARGET)

    for index, (left, top, width, height) in enumerate(cells(grid, out)[:2]):
        middle_x, middle_y = left + width // 2, top + height // 2
        assert near(out.getpixel((middle_x, middle_y)), COLOURS[index])
        row = [out.getpixel((x, middle_y)) for x in range(left, left + width)]
        column = [out.getpixel((middle_x, y)) for y in range(top, top + height)]
        shown = [sum(near(pixel, COLOURS[index]) for pixel in line) for line in (row, column)]
        expected_ratio = 768 / 1024 if index == 0 else 1024 / 768
        assert shown[0] / shown[1] == pytest.approx(expected_ratio, rel=0.02)
        assert max(shown[0] / width, shown[1] / height) > 0.98  # as large as its cell allows
    portrait_left, portrait_top, _, portrait_height = cells(grid, out)[0]
    assert near(out.getpixel((portrait_left + 5, portrait_top + portrait_height // 2)), BACKGROUND, tolerance=4)


def test_small_photos_are_not_enlarged() -> None:
    grid = compose_grid([photo(colour, (100, 100)) for colour in COLOURS[:4]], "small")

    assert (grid.columns, grid.rows) == (2, 2)
    assert decode(grid.image.data).size == (200 + SEPARATOR, 200 + SEPARATOR)


def test_a_smaller_target_is_respected() -> None:
    target = ImageTarget(long_side=512, short_side=256, quality=70)

    grid = compose_grid([photo(colour) for colour in COLOURS[:3]], "small-target", target)

    assert within(decode(grid.image.data), target)


def test_same_photos_give_the_same_bytes() -> None:
    photos = [photo(colour, (800 + 10 * index, 600), index) for index, colour in enumerate(COLOURS[:4])]

    assert compose_grid(photos, "a") == compose_grid(photos, "a")


def test_a_grid_needs_two_photos_and_room_for_them() -> None:
    with pytest.raises(ValueError, match="at least two"):
        compose_grid([photo(COLOURS[0])], "one")
    with pytest.raises(ValueError, match="do not fit"):
        compose_grid([photo(colour) for colour in COLOURS], "tiny", ImageTarget(long_side=10, short_side=10))


def test_undecodable_photo_raises_image_error() -> None:
    with pytest.raises(ImageError):
        compose_grid([photo(COLOURS[0]), PreparedImage(image_id="bad", data=b"not a jpeg")], "bad")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(64, 1024), st.integers(64, 1024)).filter(lambda s: max(s) <= 4 * min(s)),
                min_size=2, max_size=10))
def test_any_album_fits_and_keeps_its_order(sizes: list[tuple[int, int]]) -> None:
    grid = compose_grid([photo(COLOURS[index], size, index) for index, size in enumerate(sizes)], "any")
    out = decode(grid.image.data)

    assert within(out, DEFAULT_TARGET)
    assert grid.columns * (grid.rows - 1) < len(sizes) <= grid.columns * grid.rows
    for index, (left, top, width, height) in enumerate(cells(grid, out)[: len(sizes)]):
        assert near(out.getpixel((left + width // 2, top + height // 2)), COLOURS[index]), index
