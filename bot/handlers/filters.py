"""The routers' filters, all `async`: aiogram runs a synchronous filter (a magic `F` filter or a plain function)
in a worker thread through `asyncio.to_thread`, a hop that costs milliseconds once the event loop is busy."""

from __future__ import annotations

from aiogram.filters import Filter
from aiogram.types import CallbackQuery, Message

GROUP_TYPES = frozenset({"group", "supergroup"})


async def in_private_chat(message: Message) -> bool:
    return message.chat.type == "private"


async def in_group(message: Message) -> bool:
    return message.chat.type in GROUP_TYPES


async def looks_like_command(message: Message) -> bool:
    """Any text starting with a slash, known command or not."""
    return message.text is not None and message.text.startswith("/")


class CallbackPrefix(Filter):
    """A button press whose callback data starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    async def __call__(self, query: CallbackQuery) -> bool:
        return query.data is not None and query.data.startswith(self.prefix)
