"""What a Telegram message holds for us: images to look at, the question text, whether it is meant for us."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from aiogram.types import Message, MessageEntity, PhotoSize, User

from bot.services.downloads import ImageRef
from bot.services.images import ImageTarget, smallest_sufficient

# For documents sent without an image mime type (Telegram passes on whatever the sender's app said).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif",
                              ".avif"})
# Image types with no pixels to decode: "send a photo" helps the sender more than "this image may be damaged".
VECTOR_MIME_TYPES = frozenset({"image/svg+xml"})


@dataclass(slots=True)
class Attachments:
    images: list[ImageRef] = field(default_factory=list)
    unsupported: bool = False  # a file, animated sticker, video... we cannot look at


def attachments_of(messages: Sequence[Message], target: ImageTarget) -> Attachments:
    found = Attachments()
    for message in messages:
        image = image_of(message, target)
        if image is not None:
            found.images.append(image)
        elif _has_other_media(message):
            found.unsupported = True
    return found


def image_of(message: Message, target: ImageTarget) -> ImageRef | None:
    if message.photo:
        return _photo_ref(message.photo, target)
    document = message.document
    if document is not None and _is_image_document(document.mime_type, document.file_name):
        return ImageRef(document.file_id, document.file_unique_id, document.file_size)
    sticker = message.sticker
    if sticker is not None and not sticker.is_animated and not sticker.is_video:
        return ImageRef(sticker.file_id, sticker.file_unique_id, sticker.file_size)
    return None


def text_of(messages: Sequence[Message]) -> str:
    """The text or caption; in an album it may sit on any item."""
    for message in messages:
        content = message.text or message.caption
        if content and content.strip():
            return content.strip()
    return ""


def mentions(message: Message, me: User) -> bool:
    return any(_is_mention_of(entity, message, me) for entity in _entities(message))


def without_mentions(message: Message, me: User) -> str:
    """The text with the bot's @mentions cut out (entity offsets are UTF-16 code units; an entity that splits an emoji
    leaves half of it, which is dropped)."""
    content = message.text or message.caption or ""
    encoded = content.encode("utf-16-le")
    for entity in sorted(_entities(message), key=lambda entity: entity.offset, reverse=True):
        if _is_mention_of(entity, message, me):
            encoded = encoded[: entity.offset * 2] + encoded[(entity.offset + entity.length) * 2:]
    return " ".join(encoded.decode("utf-16-le", errors="ignore").split())


def replies_to(message: Message, me: User) -> bool:
    reply = real_reply(message)
    return reply is not None and reply.from_user is not None and reply.from_user.id == me.id


def real_reply(message: Message) -> Message | None:
    """In forum topics every message "replies" to the topic's first message; that is not a reply."""
    reply = message.reply_to_message
    if reply is None or (message.is_topic_message and reply.message_id == message.message_thread_id):
        return None
    return reply


def author_of(message: Message) -> str | None:
    if message.sender_chat is not None:
        return message.sender_chat.title or message.sender_chat.first_name
    return message.from_user.first_name if message.from_user else None


def _is_mention_of(entity: MessageEntity, message: Message, me: User) -> bool:
    if entity.type == "text_mention":
        return entity.user is not None and entity.user.id == me.id
    if entity.type == "mention" and me.username:
        return _entity_text(entity, message.text or message.caption or "").lower() == f"@{me.username.lower()}"
    return False


def _entity_text(entity: MessageEntity, content: str) -> str:
    """Like `entity.extract_from`, which raises where an offset falls between the two halves of an emoji."""
    units = content.encode("utf-16-le")[entity.offset * 2:(entity.offset + entity.length) * 2]
    return units.decode("utf-16-le", errors="replace")


def _entities(message: Message) -> list[MessageEntity]:
    return list(message.entities or message.caption_entities or [])


def _photo_ref(sizes: list[PhotoSize], target: ImageTarget) -> ImageRef:
    chosen = sizes[smallest_sufficient([(size.width, size.height) for size in sizes], target)]
    return ImageRef(chosen.file_id, chosen.file_unique_id, chosen.file_size, telegram_photo=True)


def _is_image_document(mime_type: str | None, file_name: str | None) -> bool:
    """Any raster image type: Pillow (with pillow-heif) decodes by content, whatever the name says."""
    if mime_type and mime_type.startswith("image/"):
        return mime_type not in VECTOR_MIME_TYPES
    return bool(file_name) and PurePosixPath(file_name.lower()).suffix in IMAGE_EXTENSIONS


def _has_other_media(message: Message) -> bool:
    return any((message.document, message.sticker, message.video, message.animation, message.video_note,
                message.voice, message.audio))
