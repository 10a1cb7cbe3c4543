"""Telegram-facing layer: routers that turn updates into service calls, and nothing more."""

from aiogram import Router

from bot.handlers import commands, errors, models, questions, stop


def build_router() -> Router:
    root = Router(name="root")
    # /model comes before commands, whose catch-all answers unknown commands in private chats with the help.
    root.include_routers(models.create_router(), commands.create_router(), stop.create_router(),
                         questions.create_router(), errors.create_router())
    return root
