"""Model Markdown -> Telegram text + entities, split into messages Telegram accepts.

Entities instead of parse_mode: Telegram never has to parse anything, so half-written Markdown cannot break an
update. Splitting happens on the Markdown (paragraphs, then lines; code fences closed and reopened), so each
message renders on its own and a part, once complete, never changes as more text arrives. Whatever the model
writes is shown: only real Markdown formatting disappears into entities (see markdown_escape).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiogram.types import MessageEntity
from telegramify_markdown import MessageEntity as RenderedEntity
from telegramify_markdown import convert, split_entities, utf16_len

from bot.services.markdown_escape import prepare, shows_everything

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
        text, entities = _convert(chunk)
        for piece, piece_entities in split_entities(text, entities, TELEGRAM_TEXT_LIMIT):
            parts.append(RenderedText(piece, [MessageEntity(**entity.to_dict()) for entity in piece_entities]))
    return parts


def _convert(chunk: str) -> tuple[str, list[RenderedEntity]]:
    """Text and entities for one part; the part as typed when the renderer would still lose a character of it.

    The fallback is deliberate: a quirk of the renderer we did not foresee (or a future version) costs the part its
    formatting, never its content.
    """
    prepared = prepare(chunk)
    if prepared is None:
        return chunk, []
    text, entities = convert(prepared.text, latex_escape=False)  # LaTeX delimiters: prepare, which spares code
    text = prepared.restore(text)
    for entity in entities:
        entity.url = entity.url and prepared.restore(entity.url)
        entity.language = entity.language and prepared.restore(entity.language)
    if not shows_everything(prepared, text, entities):
        return chunk, []
    return text, entities


def render_plain(text: str) -> list[RenderedText]:
    """Our own texts (errors, notices) go out as they are, split only if needed."""
    return [RenderedText(piece) for piece, _ in split_entities(text, [], TELEGRAM_TEXT_LIMIT)]


def split_markdown(markdown: str, budget: int = MARKDOWN_PART_BUDGET) -> list[str]:
    """Greedy packing of blocks into parts of at most `budget` UTF-16 units; oversized blocks are cut by lines.

    A part followed by another never changes as the answer grows (the streamer sends it as final): blocks are
    only appended, and a block too big for one part always starts a part of its own.
    """
    parts: list[str] = []
    current: list[str] = []
    size = 0
    for block in _blocks(markdown):
        block_size = utf16_len(block)
        if block_size > budget:
            if current:
                parts.append("\n\n".join(current))
            *whole, last = _cut_block(block, budget)
            parts.extend(whole)
            current, size = [last], utf16_len(last)
            continue
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
        fence = _fence_after(fence, line)
        if fence is None and not line.strip():
            if lines:
                blocks.append("\n".join(lines))
                lines = []
            continue
        lines.append(line)
    if lines:
        blocks.append("\n".join(lines))
    return blocks


def _cut_block(block: str, budget: int) -> list[str]:
    """Cut by lines; a code fence open at a cut is closed there and reopened after, so both halves render."""
    lines = block.split("\n")
    # Room to close and reopen a fence; capped, or a huge fence line would leave no room for text (and no progress).
    reserve = min(max((utf16_len(line) + 8 for line in lines if _fence_marker(line)), default=0), budget // 2)
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    opener: str | None = None
    for line in _cut_long_lines(lines, budget - reserve):
        line_size = utf16_len(line) + 1
        closer = _fence_marker(opener) if opener else None
        if current and size + line_size + (len(closer) + 1 if closer else 0) > budget:
            pieces.append("\n".join([*current, closer] if closer else current))
            current, size = ([opener], utf16_len(opener) + 1) if opener else ([], 0)
        current.append(line)
        size += line_size
        opener = _fence_after(opener, line)
    if current:
        pieces.append("\n".join(current))
    return pieces


def _fence_after(opener: str | None, line: str) -> str | None:
    """The fence line still open after `line` (None outside code)."""
    marker = _fence_marker(line)
    if opener is None:
        return line if marker else None
    return None if line.strip() == _fence_marker(opener) else opener


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
