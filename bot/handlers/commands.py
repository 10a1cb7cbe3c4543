"""/start, /help, /reset (/new)."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command, CommandStart
from aiogram.types import BotCommand, Message

from bot.handlers.common import conversation_key, user_language
from bot.services.context import ConversationContext
from bot.texts import Language, text


def create_router() -> Router:
    router = Router(name="commands")
    router.message.register(on_start, CommandStart())
    router.message.register(on_help, Command("help"))
    router.message.register(on_reset, Command("reset", "new"))
    router.message.register(on_unknown_command, F.chat.type == "private", F.text.startswith("/"))
    return router


def bot_commands(language: Language) -> list[BotCommand]:
    """The menu Telegram shows; registered per language at start-up."""
    return [
        BotCommand(command=name, description=text(f"commands.{name}", language))
        for name in ("start", "help", "reset", "new")
    ]


async def on_start(message: Message) -> None:
    await message.answer(text("start", user_language(message)), parse_mode=None)


async def on_help(message: Message) -> None:
    await message.answer(text("help", user_language(message)), parse_mode=None)


async def on_reset(message: Message, context: ConversationContext) -> None:
    await context.reset(conversation_key(message))
    await message.answer(text("reset_done", user_language(message)), parse_mode=None)


async def on_unknown_command(message: Message) -> None:
    await message.answer(text("help", user_language(message)), parse_mode=None)
