"""Photos and follow-up texts in private chats become questions."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.types import Message, PhotoSize

from bot.handlers.common import conversation_key, reply_target, user_language
from bot.services.answering import AnswerService, Question
from bot.services.downloads import ImageRef
from bot.services.images import smallest_sufficient
from bot.texts import text


def create_router() -> Router:
    router = Router(name="questions")
    router.message.filter(F.chat.type == "private")
    router.message.register(on_photo, F.photo)
    router.message.register(on_text, F.text)
    return router


async def on_photo(message: Message, answers: AnswerService) -> None:
    language = user_language(message)
    question = message.caption or text("default_question", language)
    await answers.answer(_question(message, question, images=(_photo_ref(message.photo or []),)))


async def on_text(message: Message, answers: AnswerService) -> None:
    await answers.answer(_question(message, message.text or ""))


def _question(message: Message, question: str, images: tuple[ImageRef, ...] = ()) -> Question:
    return Question(
        key=conversation_key(message),
        target=reply_target(message),
        text=question,
        language=user_language(message),
        author=None,
        images=images,
    )


def _photo_ref(sizes: list[PhotoSize]) -> ImageRef:
    chosen = sizes[smallest_sufficient([(size.width, size.height) for size in sizes])]
    return ImageRef(file_id=chosen.file_id, file_unique_id=chosen.file_unique_id, file_size=chosen.file_size)
