"""Small translations from Telegram messages to service inputs."""

from __future__ import annotations

from aiogram.types import Message

from bot.models import ConversationKey
from bot.services.reply_calls import ReplyTarget
from bot.texts import Language, language_of, text


def conversation_key(message: Message) -> ConversationKey:
    thread_id = message.message_thread_id if message.is_topic_message else None
    return ConversationKey(chat_id=message.chat.id, thread_id=thread_id or 0)


def reply_target(message: Message) -> ReplyTarget:
    return ReplyTarget(
        chat_id=message.chat.id,
        is_private=message.chat.type == "private",
        thread_id=message.message_thread_id if message.is_topic_message else None,
        reply_to_message_id=message.message_id,
        asker_id=message.from_user.id if message.from_user else None,
        stop_label=text("stop_button", user_language(message)),
    )


def user_language(message: Message) -> Language:
    return language_of(message.from_user.language_code if message.from_user else None)
