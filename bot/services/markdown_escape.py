"""Hide from the renderer what it would swallow, so only real Markdown formatting turns into entities.

telegramify_markdown reads Markdown with pulldown-cmark and drops what it has no entity for: raw HTML (a `<div>`
line hides the whole paragraph), HTML entities (`&amp;` becomes `&`), link reference definitions, link titles, links
with no text, links and maths inside table cells, and table cells beyond the header's count. `prepare` replaces the
characters that start such constructs with placeholders: rare Unicode punctuation, which the parser reads as plain
text (with the same emphasis rules as the ASCII punctuation it stands for). Each is one UTF-16 unit, so `restore`
puts the originals back without moving an entity, and code keeps its bytes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import pyromark
from telegramify_markdown import MessageEntity
from telegramify_markdown.converter import STANDARD_OPTIONS

_POOL = tuple(chr(code) for code in range(0x2E00, 0x2E80) if unicodedata.category(chr(code)) == "Po")
_HIDDEN = "<&[|$"  # HTML and entities; links, table pipes and maths that cannot render where they stand
_MAX_PASSES = 8  # neutralising a link can create another (`[a [b](c)](d)`); nesting is never this deep in practice
# A line that may be a link reference definition, after any blockquote / list markers: `[label]:`.
_DEFINITION = re.compile(r"^((?:[ \t]*(?:>|[-*+]|\d{1,9}[.)]))*[ \t]*)\[(?=(?:[^\]\\]|\\.){1,999}\]:)", re.MULTILINE)
# LaTeX delimiters; the renderer's own conversion (latex_escape) would also rewrite them inside code.
_LATEX = re.compile(
    r"(?<!\\)\\(?:\((?P<inline>(?:(?!\n[ \t]*\n).)+?)\\\)|\[(?P<block>(?:(?!\n[ \t]*\n).)+?)\\\])", re.DOTALL
)
_LATEX_LIKE = re.compile(r"\\[A-Za-z]|[\^_=]")
# What must reach the user: letters, digits, `<` and `&` (`>` is only ever lost as a blockquote marker).
_MUST_SHOW = re.compile(r"[^\W_]|[<&]")

Event = tuple[Any, dict[str, int]]


@dataclass(frozen=True, slots=True)
class Prepared:
    """The renderer's input, and what of the answer its output must still show."""

    text: str  # what the renderer gets
    originals: dict[int, str]  # placeholder code point -> the character it hides
    must_show: str  # the answer's letters, digits, `<`, `&` outside markup, in order

    def restore(self, text: str) -> str:
        return text.translate(self.originals)


def prepare(markdown: str) -> Prepared | None:
    """The renderer's input for `markdown`; None when it cannot be made safe (the caller shows plain text)."""
    free = [char for char in _POOL if char not in markdown]
    if len(free) < len(_HIDDEN):
        return None
    hide = dict(zip(_HIDDEN, free, strict=False))
    text = markdown.replace("<", hide["<"]).replace("&", hide["&"])
    text = _DEFINITION.sub(lambda match: match.group(1) + hide["["], text)
    text = _outside_code(text, hide)
    for _ in range(_MAX_PASSES):
        data = text.encode()
        events = _parse(text)
        edits = sorted(set(_unrenderable(data, events, hide)))
        if not edits:
            originals = {ord(placeholder): char for char, placeholder in hide.items()}
            shown = _outside(data, sorted(_markup(data, events))).translate(originals)
            return Prepared(text, originals, "".join(_MUST_SHOW.findall(shown)))
        text = _replace(data, edits)
    return None


def shows_everything(prepared: Prepared, text: str, entities: list[MessageEntity]) -> bool:
    """Whether the rendered text (with link targets where their links end) still holds all it must, in order."""
    stream = iter(_with_urls(text, entities))
    return all(char in stream for char in prepared.must_show)


def _parse(text: str) -> tuple[Event, ...]:
    return tuple(pyromark.events_with_range(text, options=STANDARD_OPTIONS))


def _replace(data: bytes, edits: list[tuple[int, str]]) -> str:
    """`data` with the (ASCII) character at each offset replaced by its placeholder."""
    pieces: list[bytes] = []
    cursor = 0
    for offset, placeholder in edits:
        pieces += [data[cursor:offset], placeholder.encode()]
        cursor = offset + 1
    pieces.append(data[cursor:])
    return b"".join(pieces).decode()


def _outside_code(text: str, hide: dict[str, str]) -> str:
    r"""Outside code, `\(...\)` and `\[...\]` become `$...$` / `$$...$$` (shown as code, LaTeX as Unicode) and
    `\<`, `\&` mean `<`, `&`; the renderer's own LaTeX conversion (latex_escape) would rewrite code as well."""
    if "\\" not in text:
        return text
    escaped = re.compile(rf"\\([\\{hide['<']}{hide['&']}])")
    data = text.encode()
    code = sorted(_code(_parse(text)))
    bounds = [0, *(edge for region in code for edge in region), len(data)]
    pieces = [data[start:end].decode() for start, end in pairwise(bounds)]
    return "".join(
        piece if index % 2 else escaped.sub(_unescape, _LATEX.sub(_math, piece)) for index, piece in enumerate(pieces)
    )


def _unescape(match: re.Match[str]) -> str:
    return match.group(0) if match.group(1) == "\\" else match.group(1)


def _math(match: re.Match[str]) -> str:
    inline, block = match.group("inline"), match.group("block")
    content = (inline if inline is not None else block).strip()
    if not content or "$" in content or not _LATEX_LIKE.search(content):
        return match.group(0)
    return f"${content}$" if inline is not None else f"$${content}$$"


def _code(events: tuple[Event, ...]) -> Iterator[tuple[int, int]]:
    for event, span in events:
        if isinstance(event, dict) and ("Code" in event or _opens(event, "CodeBlock")):
            yield span["start"], span["end"]


def _opens(event: dict[str, Any], tag: str) -> bool:
    start = event.get("Start")
    return isinstance(start, dict) and tag in start


def _unrenderable(data: bytes, events: tuple[Event, ...], hide: dict[str, str]) -> Iterator[tuple[int, str]]:
    """(UTF-8 offset, placeholder) for each character to hide so its construct is shown as typed instead of lost."""
    links: list[list[Any]] = []  # [offset of `[`, lost anyway, shows some text]
    in_cell, cell_end = False, 0
    for event, span in events:
        if not isinstance(event, dict):
            continue
        start, end = span["start"], span["end"]
        if "TableCell" in (event.get("Start"), event.get("End")):
            in_cell, cell_end = "Start" in event, end
        elif event.get("End") == "TableRow":
            yield from _excess_cells(data, cell_end, end, hide["|"])
        elif _opens(event, "Link") or _opens(event, "Image"):
            target = event["Start"].get("Link") or event["Start"]["Image"]
            bracket = start + 1 if _opens(event, "Image") else start  # `![alt](url)`
            links.append([bracket, in_cell or bool(target.get("title")), False])
        elif event.get("End") in ("Link", "Image"):
            bracket, lost, shown = links.pop()
            if (lost or not shown) and data[bracket:bracket + 1] == b"[":
                yield bracket, hide["["]
            if links:
                links[-1][2] = True
        elif "InlineMath" in event or "DisplayMath" in event:
            if in_cell:  # the renderer writes cell maths ahead of the table
                yield from ((index, hide["$"]) for index in range(start, end) if data[index] == ord("$"))
            if links:
                links[-1][2] = True
        elif links and str(event.get("Text", event.get("Code", ""))).strip():
            links[-1][2] = True


def _excess_cells(data: bytes, cell_end: int, row_end: int, placeholder: str) -> Iterator[tuple[int, str]]:
    """Pipes after a row's last rendered cell: hidden, the extra cells join that cell instead of being dropped."""
    rest = data[cell_end:row_end]
    if not rest.strip(b" \t\r\n|"):
        return
    pipes = [cell_end + index for index, byte in enumerate(rest) if byte == ord("|")]
    if rest.rstrip().endswith(b"|"):
        pipes.pop()
    yield from ((pipe, placeholder) for pipe in pipes)


def _markup(data: bytes, events: tuple[Event, ...]) -> Iterator[tuple[int, int]]:
    """Source ranges whose letters and digits may legitimately not appear as typed."""
    for event, span in events:
        start, end = span["start"], span["end"]
        if not isinstance(event, dict):
            continue
        if "InlineMath" in event or "DisplayMath" in event or "TaskListMarker" in event:
            yield start, end  # LaTeX becomes Unicode; `[x]` becomes a check mark
        elif event.get("Start") == "Item":
            marker = start + len(data[start:end]) - len(data[start:end].lstrip(b" \t"))
            digits = len(data[marker:end]) - len(data[marker:end].lstrip(b"0123456789"))
            yield marker, marker + digits  # ordered lists are renumbered
        elif _opens(event, "CodeBlock") and "Fenced" in str(event["Start"]["CodeBlock"]):
            line_end = data.find(b"\n", start, end)
            yield start, end if line_end < 0 else line_end  # the info string is only the language


def _outside(data: bytes, ranges: list[tuple[int, int]]) -> str:
    kept: list[bytes] = []
    cursor = 0
    for start, end in ranges:
        kept.append(data[cursor:max(cursor, start)])
        cursor = max(cursor, end)
    kept.append(data[cursor:])
    return b"".join(kept).decode()


def _with_urls(text: str, entities: list[MessageEntity]) -> str:
    """The text with each link's URL written where the link ends: there is no other place the URL shows."""
    units = text.encode("utf-16-le")
    ends = sorted((entity.offset + entity.length, -entity.offset, entity.url or "")
                  for entity in entities if entity.type == "text_link")
    pieces: list[str] = []
    cursor = 0
    for end, _, url in ends:
        pieces += [units[2 * cursor:2 * end].decode("utf-16-le"), url]
        cursor = end
    pieces.append(units[2 * cursor:].decode("utf-16-le"))
    return "".join(pieces)
