"""Model Markdown -> Telegram text + entities, split into messages Telegram accepts.

Entities instead of parse_mode: Telegram never has to parse anything, so half-written Markdown cannot break an
update. Splitting happens on the Markdown (paragraphs, then lines; code fences closed and reopened), so each
message renders on its own and a part, once complete, never changes as more text arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiogram.types import MessageEntity
from telegramify_markdown import convert, split_entities, utf16_len

TELEGRAM_TEXT_LIMIT = 4096
# Rendering adds a few characters (heading and bullet symbols); keep Markdown parts below the limit.
MARKDOWN_PART_BUDGET = 3800
_FENCE_MARKERS = ("```", "~~~")


@dataclass(frozen=True, slots=True)
class RenderedText:
    text: str
    entities: list[MessageEntity] = field(default_factory=list)

    def without_entities(self) -> RenderedText:
        return RenderedText(self.text)


def render(markdown: str) -> list[RenderedText]:
    """Telegram-ready messages for a Markdown answer; empty when there is nothing visible."""
    parts: list[RenderedText] = []
    for chunk in split_markdown(markdown):
        text, entities = convert(chunk)
        for piece, piece_entities in split_entities(text, entities, TELEGRAM_TEXT_LIMIT):
            parts.append(RenderedText(piece, [MessageEntity(**entity.to_dict()) for entity in piece_entities]))
    return parts


def render_plain(text: str) -> list[RenderedText]:
    """Our own texts (errors, notices) go out as they are, split only if needed."""
    return [RenderedText(piece) for piece, _ in split_entities(text, [], TELEGRAM_TEXT_LIMIT)]


def split_markdown(markdown: str, budget: int = MARKDOWN_PART_BUDGET) -> list[str]:
    """Greedy packing of blocks into parts of at most `budget` UTF-16 units; oversized blocks are cut by lines."""
    parts: list[str] = []
    current: list[str] = []
    size = 0
    for block in _fit_blocks(_blocks(markdown), budget):
        block_size = utf16_len(block)
        if current and size + 2 + block_size > budget:
            parts.append("\n\n".join(current))
            current, size = [], 0
        size += block_size + (2 if current else 0)
        current.append(block)
    if current:
        parts.append("\n\n".join(current))
    return [part for part in parts if part.strip()]


def _blocks(markdown: str) -> list[str]:
    """Paragraphs separated by blank lines; a fenced code block stays whole even with blank lines inside."""
    blocks: list[str] = []
    lines: list[str] = []
    fence: str | None = None
    for line in markdown.split("\n"):
        marker = _fence_marker(line)
        if fence is None and marker:
            fence = marker
        elif fence is not None and marker == fence and line.strip() == fence:
            fence = None
        if fence is None and not line.strip():
            if lines:
                blocks.append("\n".join(lines))
                lines = []
            continue
        lines.append(line)
    if lines:
        blocks.append("\n".join(lines))
    return blocks


def _fit_blocks(blocks: list[str], budget: int) -> list[str]:
    fitted: list[str] = []
    for block in blocks:
        if utf16_len(block) <= budget:
            fitted.append(block)
        else:
            fitted.extend(_cut_block(block, budget))
    return fitted


def _cut_block(block: str, budget: int) -> list[str]:
    """Cut by lines; inside a code fence, close it at the cut and reopen it after, so both halves render."""
    lines = block.split("\n")
    opener = lines[0] if _fence_marker(lines[0]) else None
    closer = _fence_marker(opener) if opener else ""
    reserve = utf16_len(opener or "") + len(closer) + 2
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for line in _cut_long_lines(lines, budget - reserve):
        line_size = utf16_len(line) + 1
        if current and size + line_size > budget - reserve:
            pieces.append(_close(current, closer))
            current, size = ([opener], utf16_len(opener) + 1) if opener else ([], 0)
        current.append(line)
        size += line_size
    if current:
        pieces.append("\n".join(current))
    return pieces


def _close(lines: list[str], closer: str) -> str:
    text = "\n".join(lines)
    return f"{text}\n{closer}" if closer else text


def _cut_long_lines(lines: list[str], limit: int) -> list[str]:
    cut: list[str] = []
    for line in lines:
        rest = line
        while utf16_len(rest) > limit:
            head = _utf16_prefix(rest, limit)
            cut.append(head)
            rest = rest[len(head):]
        cut.append(rest)
    return cut


def _utf16_prefix(text: str, limit: int) -> str:
    """The longest prefix within `limit` UTF-16 units that does not split a surrogate pair."""
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return text[:index]
    return text


def _fence_marker(line: str) -> str | None:
    stripped = line.lstrip()
    for marker in _FENCE_MARKERS:
        if stripped.startswith(marker):
            return marker
    return None
