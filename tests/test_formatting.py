"""Markdown -> Telegram text and entities, and splitting long answers into messages."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# --- everything the model writes is shown -------------------------------------------------------------------------


def shown(parts: list[RenderedText]) -> str:
    """The texts, with each link's URL where the link ends and each code block's language where it starts."""
    pieces: list[str] = []
    for part in parts:
        units = part.text.encode("utf-16-le")
        inserts = sorted(
            [(entity.offset + entity.length, 0, -entity.offset, entity.url or "")
             for entity in part.entities if entity.type == "text_link"]
            + [(entity.offset, 1, 0, entity.language or "") for entity in part.entities if entity.type == "pre"]
        )
        cursor = 0
        for offset, _, _, extra in inserts:
            pieces += [units[2 * cursor: 2 * offset].decode("utf-16-le"), extra]
            cursor = offset
        pieces.append(units[2 * cursor:].decode("utf-16-le"))
    return "".join(pieces)


# Characters that are (or may be) Markdown syntax: emphasis, strikethrough, code, links, images, headings, tables,
# maths, backslash escapes, rules, setext underlines and list bullets. They (and whitespace) may vanish anywhere;
# every other character (letters, digits, `<`, `>`, `&`, ...) must be shown.
MARKUP = frozenset("*_~`[]()#|$\\-=+!")
# Blockquote markers, list bullets / numbers (ordered lists are renumbered) and task boxes (`[x]` becomes ✅)
# at the start of a line.
CONTAINER_PREFIX = re.compile(r"^(?:[ \t]*(?:>|(?:[-*+]|\d+[.)]|\[[ xX]\])(?=[ \t]|$)))*", re.MULTILINE)
# A code fence's info string (the language) may go when the block is empty.
FENCE_LINE = re.compile(r"^[ \t>*+\-\d.)]*(?:`{3,}|~{3,}).*$", re.MULTILINE)
MATH_DELIMITER = re.compile(r"\$|\\[()\[\]]")


def markup_positions(markdown: str) -> set[int]:
    """Positions of letters, digits and `>` that are markup: container prefixes, fence info, LaTeX (which
    becomes Unicode: between the first and last maths delimiter of a paragraph)."""
    positions: set[int] = set()
    for match in (*CONTAINER_PREFIX.finditer(markdown), *FENCE_LINE.finditer(markdown)):
        positions.update(range(match.start(), match.end()))
    for paragraph in re.finditer(r"(?:[^\n]|\n(?![ \t]*\n))+", markdown):
        delimiters = [match.start() + paragraph.start() for match in MATH_DELIMITER.finditer(paragraph.group())]
        if len(delimiters) > 1:
            positions.update(range(delimiters[0], delimiters[-1]))
    return positions


def must_show(markdown: str) -> str:
    """Everything but whitespace and `MARKUP`, except at the positions `markup_positions` names."""
    markup = markup_positions(markdown)
    return "".join(char for index, char in enumerate(markdown)
                   if not char.isspace() and char not in MARKUP and index not in markup)


def is_subsequence(needle: str, haystack: str) -> bool:
    rest = iter(haystack)
    return all(char in rest for char in needle)


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("Use the <br> tag", "Use the <br> tag"),
        ("<div>hello</div> & more", "<div>hello</div> & more"),
        ("a < b > c & d", "a < b > c & d"),
        ("x &amp; y &#35; &nbsp;", "x &amp; y &#35; &nbsp;"),
        ("<script>alert(1)</script>", "<script>alert(1)</script>"),
        ("<!-- note -->\n<p>para</p>", "<!-- note -->\n<p>para</p>"),
        ("see <https://example.com>", "see <https://example.com>"),
        ("stray * and _ and ** here", "stray * and _ and ** here"),
        ("snake_case_name and 2 * 3 * 4", "snake_case_name and 2 * 3 * 4"),
        ("[1]: https://example.com/source", "[1]: https://example.com/source"),
        ("[a](https://example.com (title))", "[a](https://example.com (title))"),
        ("empty [](https://example.com) ![](https://example.com/i.png)",
         "empty [](https://example.com) ![](https://example.com/i.png)"),
    ],
)
def test_text_the_renderer_does_not_understand_is_shown_as_written(markdown: str, expected: str) -> None:
    [part] = render(markdown)

    assert part.text == expected
    assert part.entities == []


def test_real_formatting_next_to_html_still_becomes_entities() -> None:
    [part] = render("**bold** <b>x</b> & `a<b>&amp;`")

    assert part.text == "bold <b>x</b> & a<b>&amp;"
    assert [(entity.type, entity_text(part, index)) for index, entity in enumerate(part.entities)] == [
        ("bold", "bold"), ("code", "a<b>&amp;")]


def test_link_with_ampersand_keeps_its_url() -> None:
    [part] = render("[docs](https://example.com/?a=1&b=2) <3")

    assert part.text == "docs <3"
    assert [(entity.type, entity.url) for entity in part.entities] == [("text_link", "https://example.com/?a=1&b=2")]


def test_unclosed_code_fence_keeps_html_byte_exact() -> None:
    code = '<html>\n  <body class="x">&amp; \\(\\alpha\\) $x$ **y**</body>'
    [part] = render(f"Page:\n\n```html\n{code}")

    assert part.text == f"Page:\n\n{code}"
    assert [(entity.type, entity.language, entity_text(part, 0 if entity.type == "pre" else -1))
            for entity in part.entities] == [("pre", "html", code)]


def test_table_keeps_every_cell() -> None:
    markdown = "| a | b |\n|---|---|\n| <i> | [l](https://x.y) |\n| $x$ | 2 | extra |"

    [part] = render(markdown)

    assert [entity.type for entity in part.entities] == ["pre"]
    rows = [[cell.strip() for cell in line.split(" | ", 1)] for line in part.text.split("\n")]  # two columns
    assert rows[0] == ["a", "b"]
    assert rows[2] == ["<i>", "[l](https://x.y)"]
    assert rows[3] == ["$x$", "2 | extra"]


def test_latex_is_rendered_and_code_is_not() -> None:
    [part] = render("$$E=mc^2$$\n\nInline \\(\\alpha + \\beta\\) and `\\(\\alpha\\)`")

    assert part.text.startswith("E=mc²\n\nInline α + β and \\(\\alpha\\)")
    assert [entity.type for entity in part.entities] == ["pre", "code", "code"]


def test_escaped_brackets_stay_text() -> None:
    [part] = render("Footnote \\[1\\] and \\(see above\\)")

    assert part.text == "Footnote [1] and (see above)"


def test_a_huge_fence_line_does_not_stop_the_splitting() -> None:
    markdown = "```" + "x" * 200 + "\n" + "y\n" * 200

    chunks = split_markdown(markdown, budget=120)

    assert is_subsequence(visible(markdown), visible("".join(chunks)))


PIECES = [
    *"abxXé019", " ", " ", "\n", *"*_~`[]()<>&#|$\\-=+!",
    "**", "__", "~~", "```", "```py\n", "~~~", "\n\n", "\n- ", "\n1. ", "\n2) ", "\n# ", "\n> ", "[x] ", "](", "![",
    "<br>", "<div>", "</div>", "&amp;", "&#35;", "$$", "\\(", "\\)", "\\[", "\\]", "\n|---|---|\n", "| ", " |", "||",
    "    ", "[a]: b\n", "[ab](c)", "[a](b (c))", "![a](b)", "[](a)", "`a<b>`", "$a$", "[a][b]",
]
LINE_STARTS = [
    "", "", "- ", "1. ", "> ", "# ", "    ", "| ", "- [x] ", "> - ", "2) ", "```", "~~~ ", "[b]: ", "|---|---|",
    "---", "===",
]
# Loose character soup, and lines that start like Markdown blocks (lists, quotes, tables, fences, headings).
MARKDOWNISH = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=40).map("".join),
    st.lists(
        st.tuples(st.sampled_from(LINE_STARTS), st.lists(st.sampled_from(PIECES), max_size=8).map("".join),
                  st.sampled_from(["", " |", " | a |"])).map("".join),
        max_size=12,
    ).map("\n".join),
)


@settings(derandomize=True, max_examples=800, deadline=None)
@given(MARKDOWNISH)
def test_every_character_that_is_not_markup_reaches_the_user_in_order(markdown: str) -> None:
    """Letters, digits, `<`, `>` and `&` are never lost; only `MARKUP`, whitespace, and the letters, digits and `>`
    `markup_positions` names (list numbers, task boxes, blockquote markers, fence languages, LaTeX) may vanish.
    Link URLs and code languages count where Telegram shows them: on the link, on the code block."""
    parts = render(markdown)

    assert is_subsequence(must_show(markdown), shown(parts)), shown(parts)


def test_parts_before_the_last_never_change_as_html_laden_text_grows() -> None:
    answer = "\n\n".join(f"{paragraph} <b>&amp;</b> [x](https://e.com/?a&b) `<i>`" for paragraph in paragraphs(16))
    assert len(render(answer)) >= 3

    assert_earlier_parts_are_final(answer, range(1, len(answer) + 1, 29))
