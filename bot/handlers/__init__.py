"""Telegram-facing layer: routers that turn updates into service calls, and nothing more."""

from aiogram import Router

from bot.handlers import commands, errors, questions, stop


def build_router() -> Router:
    root = Router(name="root")
    root.include_routers(commands.create_router(), stop.create_router(), questions.create_router(),
                         errors.create_router())
    return root
