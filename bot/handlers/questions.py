"""Messages that ask something: photos, albums, image files, stickers and texts, in private chats and groups.

Private chats: everything is for the bot. Groups: only messages addressed to it (an @mention, a reply to
one of its messages, or /ask); a photo nobody asked about costs nothing.
"""

from __future__ import annotations

from aiogram import Bot, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message, Update

from bot.handlers.common import conversation_key, reply_target, user_language
from bot.handlers.filters import in_group, in_private_chat
from bot.handlers.inputs import (
    attachments_of,
    author_of,
    mentions,
    real_reply,
    replies_to,
    text_of,
    without_mentions,
)
from bot.services.answering import AnswerService, Question
from bot.services.images import ImageTarget
from bot.services.inbox import Ticket
from bot.texts import text


def create_router() -> Router:
    router = Router(name="questions")
    router.message.register(on_private_message, in_private_chat)
    router.message.register(on_ask_command, in_group, Command("ask"))
    router.message.register(on_group_message, in_group, addressed_to_bot)
    return router


async def addressed_to_bot(message: Message, bot: Bot, album: list[Message] | None = None) -> bool:
    if message.from_user is not None and message.from_user.is_bot:
        return False
    me = await bot.me()
    return replies_to(message, me) or any(mentions(item, me) for item in album or [message])


async def on_private_message(message: Message, *, answers: AnswerService, image_target: ImageTarget,
                             event_update: Update, album: list[Message] | None = None,
                             ticket: Ticket | None = None) -> None:
    items = album or [message]
    found = attachments_of(items, image_target)
    reply = real_reply(message)
    if not found.images and not found.unsupported and reply is not None:
        found = attachments_of([reply], image_target)
    question = text_of(items)
    if not found.images and (found.unsupported or not question):
        await message.answer(text("unsupported_file", user_language(message)), parse_mode=None)
        return
    await answers.answer(_question(message, question, found.images, author=None, update=event_update, ticket=ticket))


async def on_group_message(message: Message, *, bot: Bot, answers: AnswerService, image_target: ImageTarget,
                           event_update: Update, album: list[Message] | None = None,
                           ticket: Ticket | None = None) -> None:
    me = await bot.me()
    items = album or [message]
    question = next((without_mentions(item, me) for item in items if mentions(item, me)), text_of(items))
    await _ask_in_group(message, question, items, answers=answers, image_target=image_target, update=event_update,
                        ticket=ticket)


async def on_ask_command(message: Message, *, command: CommandObject, answers: AnswerService,
                         image_target: ImageTarget, event_update: Update, album: list[Message] | None = None,
                         ticket: Ticket | None = None) -> None:
    await _ask_in_group(message, (command.args or "").strip(), album or [message], answers=answers,
                        image_target=image_target, update=event_update, ticket=ticket)


async def _ask_in_group(message: Message, question: str, items: list[Message], *, answers: AnswerService,
                        image_target: ImageTarget, update: Update, ticket: Ticket | None) -> None:
    """A file we cannot read gets silence in a group: the bot must not chatter where people talk."""
    found = attachments_of(items, image_target)
    reply = real_reply(message)
    if not found.images and reply is not None:
        found = attachments_of([reply], image_target)
    if not found.images and (found.unsupported or not question):
        return
    await answers.answer(_question(message, question, found.images, author=author_of(message), update=update,
                                   ticket=ticket))


def _question(message: Message, question: str, images: list, *, author: str | None, update: Update,
              ticket: Ticket | None) -> Question:
    language = user_language(message)
    return Question(
        update_id=update.update_id,
        key=conversation_key(message),
        target=reply_target(message),
        text=question or text("default_question", language),
        language=language,
        author=author,
        images=tuple(images),
        ticket=ticket,
        sent_at=message.date.timestamp(),
    )
