"""/model: show the chat's model with buttons for the others, or switch by name; buttons switch too."""

from __future__ import annotations

import logging

from aiogram import Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from bot.handlers.common import conversation_key, user_language
from bot.handlers.filters import CallbackPrefix
from bot.services.chat_admins import ChatAdmins
from bot.services.model_choice import ModelChoice, UnknownModel
from bot.texts import language_of, text

log = logging.getLogger(__name__)

# Telegram allows 64 bytes of callback data, too few for some model names: buttons carry the model's index.
MODEL_CALLBACK_PREFIX = "model:"


def create_router() -> Router:
    router = Router(name="models")
    router.message.register(on_model_command, Command("model"))
    router.callback_query.register(on_model_button, CallbackPrefix(MODEL_CALLBACK_PREFIX))
    return router


async def on_model_command(message: Message, command: CommandObject, model_choice: ModelChoice,
                           chat_admins: ChatAdmins) -> None:
    language = user_language(message)
    key = conversation_key(message)
    current = await model_choice.current(key)
    if len(model_choice.available) == 1:
        await message.answer(text("model_only_one", language).format(model=current), parse_mode=None)
        return
    name = (command.args or "").strip()
    if not name:
        await message.answer(text("model_current", language).format(model=current), parse_mode=None,
                             reply_markup=model_keyboard(model_choice, current))
        return
    user_id = message.from_user.id if message.from_user else None
    sender_chat_id = message.sender_chat.id if message.sender_chat else None
    if not await chat_admins.may_configure(message.chat.id, message.chat.type, user_id,
                                           sender_chat_id=sender_chat_id):
        await message.answer(text("model_not_allowed", language), parse_mode=None)
        return
    try:
        chosen = await model_choice.choose(key, name)
    except UnknownModel as exc:
        await message.answer(text("model_unknown", language).format(name=exc.name, models=", ".join(exc.available)),
                             parse_mode=None)
        return
    done = "model_unchanged" if chosen == current else "model_changed"
    await message.answer(text(done, language).format(model=chosen), parse_mode=None)


async def on_model_button(query: CallbackQuery, model_choice: ModelChoice, chat_admins: ChatAdmins) -> None:
    """Always answers the query, so the button stops spinning; refusals come as an alert."""
    language = language_of(query.from_user.language_code)
    message = query.message
    model = _pressed_model(query, model_choice)
    if not isinstance(message, Message) or model is None:
        await query.answer(text("model_menu_stale", language), show_alert=True)
        return
    if not await chat_admins.may_configure(message.chat.id, message.chat.type, query.from_user.id):
        await query.answer(text("model_not_allowed", language), show_alert=True)
        return
    key = conversation_key(message)
    current = await model_choice.current(key)
    chosen = await model_choice.choose(key, model)
    confirmation = text("model_unchanged" if chosen == current else "model_changed", language).format(model=chosen)
    await query.answer(confirmation)
    try:
        await message.edit_text(confirmation, parse_mode=None, reply_markup=None)
    except TelegramAPIError as exc:
        log.debug("cannot confirm the model choice in chat %s: %s", message.chat.id, exc)


def model_keyboard(model_choice: ModelChoice, current: str) -> InlineKeyboardMarkup:
    """One button per other model, labelled with its exact name (the press handler checks the label)."""
    return InlineKeyboardMarkup(inline_keyboard=[
        [InlineKeyboardButton(text=model, callback_data=f"{MODEL_CALLBACK_PREFIX}{index}")]
        for index, model in enumerate(model_choice.available) if model != current
    ])


def _pressed_model(query: CallbackQuery, model_choice: ModelChoice) -> str | None:
    """The model behind the button, or None for a bad index or a menu from before the operator's list changed."""
    raw = (query.data or "").removeprefix(MODEL_CALLBACK_PREFIX)
    if not (raw.isascii() and raw.isdigit()):
        return None
    model = model_choice.model_at(int(raw))
    if model is None or not isinstance(query.message, Message) or query.message.reply_markup is None:
        return model
    labels = [button.text for row in query.message.reply_markup.inline_keyboard for button in row
              if button.callback_data == query.data]
    return model if model in labels else None
