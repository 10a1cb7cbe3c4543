"""/start, /help, /reset (/new)."""

from __future__ import annotations

from collections import defaultdict

from aiogram import Router
from aiogram.filters import Command, CommandStart
from aiogram.types import BotCommand, Message

from bot.config import Settings
from bot.handlers.common import conversation_key, user_language
from bot.handlers.filters import in_private_chat, looks_like_command
from bot.models import UsageTotal
from bot.services.chat_admins import ChatAdmins
from bot.services.context import ConversationContext
from bot.services.usage import UsageGuard
from bot.texts import Language, text


def create_router() -> Router:
    router = Router(name="commands")
    router.message.register(on_start, CommandStart())
    router.message.register(on_help, Command("help"))
    router.message.register(on_reset, Command("reset", "new"))
    router.message.register(on_usage, Command("usage"))
    router.message.register(on_stats, Command("stats"))
    router.message.register(on_unknown_command, in_private_chat, looks_like_command)
    return router


def bot_commands(language: Language) -> list[BotCommand]:
    """The menu Telegram shows; registered per language at start-up."""
    return [
        BotCommand(command=name, description=text(f"commands.{name}", language))
        for name in ("start", "help", "reset", "new", "model", "usage")
    ]


async def on_start(message: Message) -> None:
    await message.answer(text("start", user_language(message)), parse_mode=None)


async def on_help(message: Message) -> None:
    await message.answer(text("help", user_language(message)), parse_mode=None)


async def on_reset(message: Message, context: ConversationContext, chat_admins: ChatAdmins) -> None:
    """In groups the conversation belongs to everyone: only its admins (and ADMIN_IDS) may forget it."""
    language = user_language(message)
    if not await chat_admins.may_configure(message.chat.id, message.chat.type,
                                           message.from_user.id if message.from_user else None,
                                           sender_chat_id=message.sender_chat.id if message.sender_chat else None):
        await message.answer(text("reset_not_allowed", language), parse_mode=None)
        return
    await context.reset(conversation_key(message))
    await message.answer(text("reset_done", language), parse_mode=None)


async def on_unknown_command(message: Message) -> None:
    await message.answer(text("help", user_language(message)), parse_mode=None)


async def on_usage(message: Message, usage: UsageGuard) -> None:
    language = user_language(message)
    today = await usage.today(user_id=message.from_user.id if message.from_user else None, chat_id=message.chat.id)
    budget = text("usage_budget", language)
    await message.answer(text("usage", language).format(
        user_tokens=today.user_tokens, chat_tokens=today.chat_tokens,
        user_budget=budget.format(budget=today.user_budget) if today.user_budget else "",
        chat_budget=budget.format(budget=today.chat_budget) if today.chat_budget else "",
    ), parse_mode=None)


async def on_stats(message: Message, usage: UsageGuard, settings: Settings) -> None:
    """Operators only, and only in private (every chat's numbers are no group's business); for anyone else the
    command does not exist."""
    if message.from_user is None or message.from_user.id not in settings.admin_ids:
        return
    if message.chat.type != "private":
        await message.answer(text("stats_in_private", user_language(message)), parse_mode=None)
        return
    await message.answer(format_stats(await usage.totals(days=7)), parse_mode=None)


def format_stats(totals: list[UsageTotal]) -> str:
    if not totals:
        return "No answers in the last 7 days."
    by_day: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_chat: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    by_error: dict[str, int] = defaultdict(int)
    for row in totals:
        for bucket in (by_day[row.day], by_chat[row.chat_id]):
            bucket[0] += row.answers
            bucket[1] += row.tokens
        if row.error_kind:
            by_error[row.error_kind] += row.answers
    lines = ["Last 7 days (UTC)", "", "By day: answers / tokens"]
    lines += [f"{day}: {answers} / {tokens}" for day, (answers, tokens) in sorted(by_day.items(), reverse=True)]
    lines += ["", "Top chats: answers / tokens"]
    top = sorted(by_chat.items(), key=lambda item: item[1][1], reverse=True)[:10]
    lines += [f"{chat}: {answers} / {tokens}" for chat, (answers, tokens) in top]
    lines += ["", "Errors by class:"]
    lines += [f"{kind}: {count}" for kind, count in sorted(by_error.items(), key=lambda item: -item[1])] or ["none"]
    return "\n".join(lines)
