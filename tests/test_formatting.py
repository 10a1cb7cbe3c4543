"""Markdown -> Telegram text and entities, and splitting long answers into messages."""

from __future__ import annotations

import re

import pytest

from bot.services.formatting import (
    MARKDOWN_PART_BUDGET,
    TELEGRAM_TEXT_LIMIT,
    RenderedText,
    render,
    render_plain,
    split_markdown,
)


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def utf16_offset(text: str, fragment: str) -> int:
    return utf16(text[: text.index(fragment)])


def entity_text(part: RenderedText, index: int) -> str:
    entity = part.entities[index]
    units = part.text.encode("utf-16-le")
    return units[2 * entity.offset: 2 * (entity.offset + entity.length)].decode("utf-16-le")


def visible(text: str) -> str:
    return re.sub(r"\s+", "", text)


def paragraphs(count: int, words: int = 70) -> list[str]:
    return [f"Paragraph {index} " + " ".join(f"w{index}x{word}" for word in range(words)) for index in range(count)]


PARAGRAPHS = paragraphs(30)
LONG_ANSWER = "\n\n".join(PARAGRAPHS)


# --- entities -----------------------------------------------------------------------------------------------------


def test_entities_have_utf16_offsets_after_an_emoji() -> None:
    [part] = render("Hi 😀 **bold** and `code`\n\n```python\nprint(1)\n```")

    assert [entity.type for entity in part.entities] == ["bold", "code", "pre"]
    bold, code, pre = part.entities
    assert (bold.offset, bold.length) == (utf16_offset(part.text, "bold"), 4)
    assert bold.offset == len("Hi 😀 ") + 1  # the emoji is two UTF-16 units
    assert (code.offset, code.length) == (utf16_offset(part.text, "code"), 4)
    assert (pre.offset, pre.language) == (utf16_offset(part.text, "print(1)"), "python")
    assert [entity_text(part, index) for index in range(3)] == ["bold", "code", "print(1)"]
    assert "*" not in part.text
    assert "`" not in part.text


@pytest.mark.parametrize("markdown", ["", "   ", "\n\n \n\t\n"])
def test_nothing_visible_renders_to_no_parts(markdown: str) -> None:
    assert render(markdown) == []
    assert split_markdown(markdown) == []


def test_unclosed_code_fence_renders_its_code() -> None:
    [part] = render("Look:\n\n```python\nprint(1)\nx = 2")

    assert "print(1)\nx = 2" in part.text
    assert [(entity.type, entity.language) for entity in part.entities] == [("pre", "python")]


@pytest.mark.parametrize(
    ("markdown", "shown"),
    [("**bold", "bold"), ("some **half", "half"), ("a `code", "code"), ("[link](http://exa", "link"),
     ("1. **item", "item"), ("> quote *half", "half")],
)
def test_half_written_markdown_still_renders(markdown: str, shown: str) -> None:
    parts = render(markdown)

    assert len(parts) == 1
    assert shown in parts[0].text


def test_render_plain_never_interprets_markdown() -> None:
    text = "**not bold** `not code` # not a heading\n\n```\nnot pre\n```\n[x](http://example.com) _y_"

    assert render_plain(text) == [RenderedText(text)]


def test_render_plain_splits_long_text_without_losing_any() -> None:
    text = "word " * 3000

    parts = render_plain(text)

    assert len(parts) > 1
    assert all(utf16(part.text) <= TELEGRAM_TEXT_LIMIT for part in parts)
    assert all(part.entities == [] for part in parts)
    assert "".join(part.text for part in parts) == text


# --- long answers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "markdown",
    [
        LONG_ANSWER,
        "😀" * 9000,
        "\n\n".join("😀🎉 " * 300 + "中文" for _ in range(20)),
        "𝕏𝔸" * 4000 + "\n" + "𝕏" * 3000,
        "a" * 10_000,
        "\n".join("- item " + "🙂" * 40 for _ in range(300)),
    ],
    ids=["paragraphs", "emoji", "emoji-paragraphs", "astral-lines", "one-long-line", "emoji-list"],
)
def test_every_part_fits_telegram_and_nothing_is_lost(markdown: str) -> None:
    parts = render(markdown)

    assert len(parts) > 1
    assert all(0 < utf16(part.text) <= TELEGRAM_TEXT_LIMIT for part in parts)
    assert all(utf16(chunk) <= MARKDOWN_PART_BUDGET for chunk in split_markdown(markdown))
    if not markdown.startswith("- "):  # list bullets are re-drawn; everything else must come out as written
        assert visible("".join(part.text for part in parts)) == visible(markdown)


def test_a_long_line_is_cut_without_splitting_surrogate_pairs() -> None:
    parts = render("x" + "😀" * 5000)

    assert all("\ud83d" not in part.text and "\ude00" not in part.text for part in parts)
    assert "".join(part.text for part in parts) == "x" + "😀" * 5000


def test_parts_break_at_paragraph_boundaries() -> None:
    parts = render(LONG_ANSWER)

    assert len(parts) > 2
    pieces = [part.text.strip().split("\n\n") for part in parts]
    assert [paragraph for piece in pieces for paragraph in piece] == PARAGRAPHS


def test_long_code_block_is_split_into_closed_fences() -> None:
    code_lines = [f"print('line {index:03d}')  # comment number {index}" if index % 25 else "" for index in range(400)]
    markdown = "Here is the script:\n\n```python\n" + "\n".join(code_lines) + "\n```\n\nThat is all."

    chunks = split_markdown(markdown)
    parts = render(markdown)

    assert len(chunks) > 2
    code_chunks = [chunk for chunk in chunks if "print(" in chunk]
    assert all(chunk.count("```python") == 1 and chunk.rstrip().endswith("```") for chunk in code_chunks[:-1])
    assert code_chunks[-1].count("```python") == 1
    assert code_chunks[-1].count("```") == 2
    shown_code: list[str] = []
    for part in parts:
        assert utf16(part.text) <= TELEGRAM_TEXT_LIMIT
        if "print(" not in part.text:
            continue
        pres = [index for index, entity in enumerate(part.entities) if entity.type == "pre"]
        assert len(pres) == 1
        assert part.entities[pres[0]].language == "python"
        shown_code.extend(entity_text(part, pres[0]).split("\n"))
    # Blank lines inside the fence must not end it; where they fall at a cut they may be dropped.
    assert [line for line in shown_code if line] == [line for line in code_lines if line]
    assert parts[0].text.startswith("Here is the script:")
    assert parts[-1].text.rstrip().endswith("That is all.")


def test_long_code_block_right_after_text_is_split_into_closed_fences() -> None:
    code_lines = [f"# step {index}\nprint({index})" for index in range(300)]
    markdown = "Here is the script:\n```python\n" + "\n".join(code_lines) + "\n```"

    parts = render(markdown)

    assert len(parts) > 1
    for part in parts:
        assert [(entity.type, entity.language) for entity in part.entities] == [("pre", "python")]


# --- streaming stability ------------------------------------------------------------------------------------------


def assert_earlier_parts_are_final(full_answer: str, prefix_lengths: range) -> None:
    final = render(full_answer)
    for length in prefix_lengths:
        growing = render(full_answer[:length])
        assert growing[:-1] == final[: len(growing) - 1], f"a sent part changed at prefix length {length}"


def test_parts_before_the_last_never_change_as_paragraphs_grow() -> None:
    answer = "\n\n".join(paragraphs(20)) + "\n\nThe **end**."
    assert len(render(answer)) >= 3

    assert_earlier_parts_are_final(answer, range(1, len(answer) + 1, 3))


def test_parts_before_the_last_never_change_as_a_long_paragraph_grows() -> None:
    answer = "Intro paragraph.\n\n" + " ".join(f"token{index}" for index in range(1000))

    assert_earlier_parts_are_final(answer, range(1, len(answer) + 1, 17))


def test_parts_before_the_last_never_change_as_a_long_list_grows() -> None:
    answer = "Intro\n\n" + "\n".join(f"line {index:03d} " + "x" * 40 for index in range(200))

    assert_earlier_parts_are_final(answer, range(MARKDOWN_PART_BUDGET - 100, MARKDOWN_PART_BUDGET + 100))
