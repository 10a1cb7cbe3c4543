"""A local fake of the Telegram Bot API for driving the real aiogram ``Bot`` in tests.

The fake validates requests and answers errors the way api.telegram.org does (same status codes and
descriptions), so a test catches a message that is too long, a broken entity or a flood of edits before
Telegram would. Point aiogram at it with
``AiohttpSession(api=TelegramAPIServer.from_base(fake.base_url))`` and assert on ``fake.calls``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import html
import io
import itertools
import json
import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from inspect import isawaitable
from typing import Any

from aiohttp import web
from PIL import Image

Json = dict[str, Any]

MAX_TEXT_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024
MAX_DOWNLOAD_SIZE = 20 * 1024 * 1024

# Fields aiogram sends as JSON strings inside multipart forms.
_JSON_FIELDS = frozenset({
    "entities", "caption_entities", "reply_markup", "reply_parameters", "allowed_updates", "commands",
    "scope", "link_preview_options", "rich_message", "media", "menu_button", "reaction"
})
_INT_FIELDS = frozenset({
    "chat_id", "message_id", "draft_id", "message_thread_id", "offset", "limit", "timeout",
    "max_connections", "user_id"
})
_BOOL_FIELDS = frozenset({
    "can_stop", "keep_on_stop", "drop_pending_updates", "allow_sending_without_reply",
    "disable_notification", "protect_content", "show_alert", "is_big"
})
_INT_RE = re.compile(r"-?\d+")

ENTITY_TYPES = frozenset({
    "mention", "hashtag", "cashtag", "bot_command", "url", "email", "phone_number", "bold", "italic",
    "underline", "strikethrough", "spoiler", "blockquote", "expandable_blockquote", "code", "pre",
    "text_link", "text_mention", "custom_emoji", "date_time"
})
CHAT_ACTIONS = frozenset({
    "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
    "upload_document", "choose_sticker", "find_location", "record_video_note", "upload_video_note"
})
_BUTTON_ACTIONS = frozenset({
    "url", "callback_data", "web_app", "login_url", "switch_inline_query",
    "switch_inline_query_current_chat", "switch_inline_query_chosen_chat", "copy_text", "callback_game",
    "pay"
})
_COMMAND_RE = re.compile(r"[a-z0-9_]{1,32}")
_SECRET_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")
_CLIENT_COMMAND_RE = re.compile(r"/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]+)?")
# Methods that put something in a chat, and so count against Telegram's flood limits.
# Counted as strictly as messages (typing and callback answers too: Telegram does not publish their limits).
_RATE_LIMITED = frozenset({
    "sendmessage", "editmessagetext", "sendmessagedraft", "sendphoto", "senddocument", "sendrichmessage",
    "sendchataction", "answercallbackquery",
})
_DEFAULT_DESCRIPTIONS = {403: "Forbidden: bot was blocked by the user"}
# The rights every ChatMemberAdministrator carries (aiogram 3.31 requires them all).
_ADMIN_RIGHTS = (
    "can_manage_chat", "can_delete_messages", "can_manage_video_chats", "can_restrict_members", "can_promote_members",
    "can_change_info", "can_invite_users", "can_post_stories", "can_edit_stories", "can_delete_stories",
    "can_send_welcome_messages"
)

_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly the "
    "same as a current content and reply markup of the message"
)


def utf16_len(text: str) -> int:
    """Telegram measures text and entity offsets in UTF-16 code units, not code points."""
    return len(text.encode("utf-16-le")) // 2


@dataclass
class ApiCall:
    """One request the bot made, as the fake decoded and answered it (recorded once answered)."""

    method: str
    params: Json
    at: float
    status: int
    response: Json


class ApiError(Exception):
    """An error answer; raised anywhere inside a method to end it the way Telegram would."""

    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after

    def body(self) -> Json:
        """The JSON body Telegram sends for an error."""
        body: Json = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def _bad_request(reason: str) -> ApiError:
    return ApiError(400, f"Bad Request: {reason}")


def _entities_error(reason: str) -> ApiError:
    return _bad_request(f"can't parse entities: {reason}")


@dataclass
class _FailRule:
    method: str
    chat_id: int | None
    error: ApiError
    remaining: int


@dataclass
class _StoredFile:
    content: bytes
    file_unique_id: str
    file_size: int
    file_path: str


@dataclass
class _Bucket:
    tokens: float
    updated: float


# ---------------------------------------------------------------------------------------------------------
# Formatting: parse_mode parsers producing (text, entities) with UTF-16 offsets, as Telegram does.
# ---------------------------------------------------------------------------------------------------------


class _TextBuilder:
    """Collects parsed text and the entities found in it, tracking the UTF-16 position."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.entities: list[Json] = []

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.pos += utf16_len(text)

    def entity(self, type_: str, start: int, end: int | None = None, **extra: Any) -> None:
        """Telegram silently drops empty entities, so only non-empty ones are kept."""
        end = self.pos if end is None else end
        if end > start:
            self.entities.append({"type": type_, "offset": start, "length": end - start, **extra})

    def result(self) -> tuple[str, list[Json]]:
        return "".join(self.parts), sorted(self.entities, key=lambda e: (e["offset"], -e["length"]))


def _byte_offset(src: str, index: int) -> int:
    """Telegram reports parse errors at UTF-8 byte offsets of the source."""
    return len(src[:index].encode())


def _link_entity(url: str) -> tuple[str, Json]:
    """tg://user?id= links become text_mention entities, as in Telegram."""
    if url.startswith("tg://user?id=") and url[13:].isdigit():
        return "text_mention", {"user": {"id": int(url[13:]), "is_bot": False, "first_name": ""}}
    return "text_link", {"url": url}


_MDV2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")
_MDV2_MARKERS = {"__": "underline", "||": "spoiler", "*": "bold", "_": "italic", "~": "strikethrough"}
_ENTITY_NAMES = {
    "underline": "Underline",
    "spoiler": "Spoiler",
    "bold": "Bold",
    "italic": "Italic",
    "strikethrough": "Strikethrough",
    "[": "TextUrl",
}


class _MarkdownV2:
    """MarkdownV2 as documented: every reserved character outside markup must be escaped.

    Expandable block quotations (``**>``) and custom emoji are not supported and are rejected.
    """

    def __init__(self, src: str) -> None:
        self.src = src
        self.i = 0
        self.out = _TextBuilder()
        self.stack: list[tuple[str, int, int]] = []  # (marker, output start, source index)
        self.quote_start: int | None = None

    def parse(self) -> tuple[str, list[Json]]:
        src = self.src
        while self.i < len(src):
            if (self.i == 0 or src[self.i - 1] == "\n") and self._line_start():
                continue
            char = src[self.i]
            if char == "\\":
                self.out.add(self._escaped())
            elif src.startswith("```", self.i):
                self._pre()
            elif char == "`":
                self._code()
            elif char == "[":
                self.stack.append(("[", self.out.pos, self.i))
                self.i += 1
            elif char == "]":
                self._link_end()
            elif marker := self._marker():
                self._toggle(marker)
            elif char in _MDV2_RESERVED:
                raise self._reserved(char)
            else:
                self.out.add(char)
                self.i += 1
        if self.quote_start is not None:
            self.out.entity("blockquote", self.quote_start)
        if self.stack:
            marker, _, at = self.stack[-1]
            name = _ENTITY_NAMES[_MDV2_MARKERS.get(marker, marker)]
            raise _entities_error(f"Can't find end of {name} entity at byte offset {_byte_offset(src, at)}")
        return self.out.result()

    @staticmethod
    def _reserved(char: str) -> ApiError:
        return _entities_error(f"Character '{char}' is reserved and must be escaped with the preceding '\\'")

    def _line_start(self) -> bool:
        """Consecutive lines starting with '>' form one blockquote; True when a '>' was consumed."""
        if self.src[self.i] == ">":
            self.i += 1
            if self.quote_start is None:
                self.quote_start = self.out.pos
            return True
        if self.quote_start is not None:
            self.out.entity("blockquote", self.quote_start, self.out.pos - 1)  # without the line break
            self.quote_start = None
        return False

    def _escaped(self) -> str:
        nxt = self.src[self.i + 1 : self.i + 2]
        if not nxt or ord(nxt) > 126:
            raise self._reserved("\\")
        self.i += 2
        return nxt

    def _scan_until(self, terminator: str, entity_name: str) -> str:
        """Raw text up to an unescaped terminator (inside code, pre and URLs only escapes are special)."""
        start, chars = self.i, []
        while not self.src.startswith(terminator, self.i):
            if self.i >= len(self.src):
                offset = _byte_offset(self.src, start)
                raise _entities_error(f"Can't find end of {entity_name} entity at byte offset {offset}")
            if self.src[self.i] == "\\":
                chars.append(self._escaped())
            else:
                chars.append(self.src[self.i])
                self.i += 1
        self.i += len(terminator)
        return "".join(chars)

    def _pre(self) -> None:
        self.i += 3
        content = self._scan_until("```", "Pre")
        language = ""
        head, newline, rest = content.partition("\n")
        if newline and not any(c.isspace() for c in head):
            language, content = head, rest
        start = self.out.pos
        self.out.add(content)
        self.out.entity("pre", start, **({"language": language} if language else {}))

    def _code(self) -> None:
        self.i += 1
        start = self.out.pos
        self.out.add(self._scan_until("`", "Code"))
        self.out.entity("code", start)

    def _link_end(self) -> None:
        if not self.stack or self.stack[-1][0] != "[" or not self.src.startswith("(", self.i + 1):
            raise self._reserved("]")
        _, start, _ = self.stack.pop()
        self.i += 2
        type_, extra = _link_entity(self._scan_until(")", "TextUrl"))
        self.out.entity(type_, start, **extra)

    def _marker(self) -> str | None:
        for marker in _MDV2_MARKERS:
            if self.src.startswith(marker, self.i):
                return marker
        return None

    def _toggle(self, marker: str) -> None:
        if self.stack and self.stack[-1][0] == marker:
            _, start, _ = self.stack.pop()
            self.out.entity(_MDV2_MARKERS[marker], start)
        else:
            self.stack.append((marker, self.out.pos, self.i))
        self.i += len(marker)


def _parse_markdown_legacy(src: str) -> tuple[str, list[Json]]:
    """The legacy "Markdown" mode: no nesting, only _ * ` [ can be escaped."""
    out, i = _TextBuilder(), 0
    simple = {"*": "bold", "_": "italic", "`": "code"}
    while i < len(src):
        char = src[i]
        if char == "\\" and src[i + 1 : i + 2] in ("_", "*", "`", "["):
            out.add(src[i + 1])
            i += 2
            continue
        if char not in simple and char != "[":
            out.add(char)
            i += 1
            continue
        closer = "```" if src.startswith("```", i) else {"[": "]"}.get(char, char)
        end = src.find(closer, i + len(closer))
        if closer == "]" and not src.startswith("(", end + 1):
            end = -1
        url_end = src.find(")", end) if closer == "]" else end
        if end < 0 or url_end < 0:
            raise _entities_error(
                f"Can't find end of the entity starting at byte offset {_byte_offset(src, i)}"
            )
        start = out.pos
        out.add(src[i + len(closer) : end])
        if closer == "]":
            type_, extra = _link_entity(src[end + 2 : url_end])
            out.entity(type_, start, **extra)
        else:
            out.entity("pre" if closer == "```" else simple[char], start)
        i = url_end + len(closer)
    return out.result()


_HTML_TAG_RE = re.compile(r"<(/?)([a-zA-Z][\w-]*)(\s[^>]*)?>")
_HTML_ATTR_RE = re.compile(r"([\w-]+)(?:\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s\"'>]+)))?")
_HTML_CHAR_REF_RE = re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);")
_HTML_TYPES = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "code": "code",
    "pre": "pre",
    "a": "text_link",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}


@dataclass
class _OpenTag:
    name: str
    start: int
    attrs: dict[str, str] = field(default_factory=dict)


def _html_attrs(raw: str | None) -> dict[str, str]:
    return {
        m.group(1).lower(): html.unescape(m.group(2) or m.group(3) or m.group(4) or "")
        for m in _HTML_ATTR_RE.finditer(raw or "")
    }


def _close_html_tag(out: _TextBuilder, stack: list[_OpenTag], tag: _OpenTag) -> None:
    """Turns a closed tag into its entity; <pre><code class="language-x"> sets the pre's language."""
    attrs = tag.attrs
    if tag.name == "code" and stack and stack[-1].name == "pre" and stack[-1].start == tag.start:
        language = attrs.get("class", "")
        if language.startswith("language-"):
            stack[-1].attrs["language"] = language.removeprefix("language-")
            return
    type_, extra = _HTML_TYPES[tag.name], {}
    if tag.name == "a":
        if "href" not in attrs:
            return
        type_, extra = _link_entity(attrs["href"])
    elif tag.name == "pre" and attrs.get("language"):
        extra = {"language": attrs["language"]}
    elif tag.name == "blockquote" and "expandable" in attrs:
        type_ = "expandable_blockquote"
    elif tag.name == "tg-emoji":
        extra = {"custom_emoji_id": attrs.get("emoji-id", "")}
    out.entity(type_, tag.start, **extra)


def _html_tag(src: str, i: int, out: _TextBuilder, stack: list[_OpenTag]) -> int:
    """Handles the tag at src[i] and returns the index after it."""
    match = _HTML_TAG_RE.match(src, i)
    at = _byte_offset(src, i)
    if match is None:
        name = src[i + 1 :].split(">", 1)[0].split(maxsplit=1)
        raise _entities_error(f'Unsupported start tag "{name[0] if name else ""}" at byte offset {at}')
    closing, name, attrs = match.group(1) == "/", match.group(2).lower(), _html_attrs(match.group(3))
    if closing:
        if not stack:
            raise _entities_error(f"Unexpected end tag at byte offset {at}")
        if stack[-1].name != name:
            raise _entities_error(
                f'Unmatched end tag at byte offset {at}, expected "</{stack[-1].name}>", found "</{name}>"'
            )
        _close_html_tag(out, stack, stack.pop())
    elif name not in _HTML_TYPES or (name == "span" and attrs.get("class") != "tg-spoiler"):
        raise _entities_error(f'Unsupported start tag "{name}" at byte offset {at}')
    else:
        stack.append(_OpenTag(name, out.pos, attrs))
    return match.end()


def _parse_html(src: str) -> tuple[str, list[Json]]:
    out, i = _TextBuilder(), 0
    stack: list[_OpenTag] = []
    while i < len(src):
        if src[i] == "<":
            i = _html_tag(src, i, out, stack)
        elif src[i] == "&" and (ref := _HTML_CHAR_REF_RE.match(src, i)):
            out.add(html.unescape(ref.group()))
            i = ref.end()
        else:
            out.add(src[i])
            i += 1
    if stack:
        raise _entities_error(f'Can\'t find end tag corresponding to start tag "{stack[-1].name}"')
    return out.result()


def parse_formatted(text: str, parse_mode: str | None) -> tuple[str, list[Json]]:
    """Applies parse_mode the way Telegram does, returning the plain text and its entities."""
    mode = (parse_mode or "").lower()
    if not mode:
        return text, []
    if mode == "markdownv2":
        return _MarkdownV2(text).parse()
    if mode == "markdown":
        return _parse_markdown_legacy(text)
    if mode == "html":
        return _parse_html(text)
    raise _bad_request(f"unsupported parse_mode {parse_mode}")


def check_entities(text: str, entities: Any) -> list[Json]:
    """Validates explicit entities against the text (offsets in UTF-16 code units)."""
    if not isinstance(entities, list):
        raise _entities_error("entities must be an array")
    total = utf16_len(text)
    for n, entity in enumerate(entities):
        type_ = entity.get("type") if isinstance(entity, dict) else None
        if type_ not in ENTITY_TYPES:
            raise _entities_error(f'unsupported entity type "{type_}" in entity {n}')
        offset, length = entity.get("offset"), entity.get("length")
        if not isinstance(offset, int) or not isinstance(length, int):
            raise _entities_error(f"entity {n} must have integer offset and length")
        if offset < 0 or length <= 0 or offset + length > total:
            raise _entities_error(
                f"entity {n} ({type_}) at offset {offset} with length {length} is outside of the text "
                f"of length {total}"
            )
        required = {"text_link": "url", "text_mention": "user", "custom_emoji": "custom_emoji_id"}.get(type_)
        if required and not entity.get(required):
            raise _entities_error(f"{type_} entity {n} must have the field {required}")
    return entities


def check_reply_markup(markup: Any) -> Json:
    """Inline keyboards are validated like Telegram does; other keyboards are accepted as sent."""
    if not isinstance(markup, dict):
        raise _bad_request("can't parse reply keyboard markup JSON object")
    rows = markup.get("inline_keyboard")
    if rows is None:
        return markup
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise _bad_request('can\'t parse inline keyboard markup: field "inline_keyboard" must be an Array')
    for button in itertools.chain.from_iterable(rows):
        if not isinstance(button, dict) or not button.get("text"):
            raise _bad_request("can't parse inline keyboard button: Text must be non-empty")
        if not _BUTTON_ACTIONS & button.keys():
            raise _bad_request(
                "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
            )
        if "callback_data" in button and not 1 <= len(str(button["callback_data"]).encode()) <= 64:
            raise _bad_request("BUTTON_DATA_INVALID")
        if "url" in button and not re.match(r"(https?|tg)://\S+$", str(button["url"])):
            raise _bad_request(f"inline keyboard button URL '{button['url']}' is invalid: Wrong HTTP URL")
    return markup


# ---------------------------------------------------------------------------------------------------------
# Update builders
# ---------------------------------------------------------------------------------------------------------

_message_ids = itertools.count(1)


def make_user(
    user_id: int = 1001,
    first_name: str = "Alice",
    language_code: str | None = "en",
    username: str | None = None,
) -> Json:
    """A human User as Telegram sends it in updates."""
    user: Json = {"id": user_id, "is_bot": False, "first_name": first_name}
    if username is not None:
        user["username"] = username
    if language_code is not None:
        user["language_code"] = language_code
    return user


def private_chat(user: Json) -> Json:
    """The private Chat between the bot and ``user``."""
    chat: Json = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
    if "username" in user:
        chat["username"] = user["username"]
    return chat


def group_chat(chat_id: int = -100200300, title: str = "Test group", is_forum: bool = False) -> Json:
    """A supergroup Chat: what groups with topics, admins or history visible to new members are."""
    chat: Json = {"id": chat_id, "type": "supergroup", "title": title}
    if is_forum:
        chat["is_forum"] = True
    return chat


def message_update(
    chat: Json,
    from_user: Json,
    *,
    text: str | None = None,
    entities: list | None = None,
    photo: list | None = None,
    caption: str | None = None,
    caption_entities: list | None = None,
    document: Json | None = None,
    sticker: Json | None = None,
    reply_to_message: Json | None = None,
    message_thread_id: int | None = None,
    media_group_id: str | None = None,
    message_id: int | None = None,
) -> Json:
    """``{"message": {...}}`` ready for ``FakeTelegram.push_update``.

    Like real clients, a text starting with a command gets a ``bot_command`` entity when none are given.
    """
    message: Json = {
        "message_id": next(_message_ids) if message_id is None else message_id,
        "from": from_user,
        "chat": chat,
        "date": int(time.time()),
    }
    if message_thread_id is not None:
        message["message_thread_id"] = message_thread_id
        if chat.get("is_forum"):
            message["is_topic_message"] = True
    if text is not None:
        command = _CLIENT_COMMAND_RE.match(text) if entities is None else None
        if command:
            entities = [{"type": "bot_command", "offset": 0, "length": utf16_len(command.group())}]
    optional = {
        "media_group_id": media_group_id,
        "reply_to_message": reply_to_message,
        "text": text,
        "entities": entities,
        "photo": photo,
        "document": document,
        "sticker": sticker,
        "caption": caption,
        "caption_entities": caption_entities,
    }
    message.update({key: value for key, value in optional.items() if value is not None})
    return {"message": message}


# ---------------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------------


class FakeTelegram:
    """An aiohttp server on 127.0.0.1 speaking the Bot API, with state tests can inspect and steer."""

    def __init__(
        self,
        token: str = "123456:TEST-token-abc",
        *,
        bot_id: int = 123456,
        bot_username: str = "vision_test_bot",
        can_read_all_group_messages: bool = False,
        enforce_rate_limits: bool = False,
        download_seconds: float = 0.0,
    ) -> None:
        self.token = token
        self.enforce_rate_limits = enforce_rate_limits
        self.download_seconds = download_seconds  # how long each file download takes, like a slow link
        self.downloads_in_progress = 0
        self.most_downloads_at_once = 0
        self.bot_user: Json = {
            "id": bot_id,
            "is_bot": True,
            "first_name": "Vision Test",
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": can_read_all_group_messages,
            "supports_inline_queries": False,
        }
        self.calls: list[ApiCall] = []
        self.webhook_url: str | None = None
        self.rate_limited_responses = 0

        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._stopping = False
        self._updates: list[Json] = []
        self._pushed: dict[int, Json] = {}
        self._update_ids = itertools.count(1)
        self._wakeup = asyncio.Event()
        self._poll_generation = 0
        self._webhook_allowed_updates: list[str] | None = None
        self._chats: dict[int, Json] = {}
        self._users: dict[int, Json] = {}
        self._chat_admins: dict[int, tuple[int | None, frozenset[int]]] = {}  # chat -> (creator, administrators)
        self._messages: dict[int, dict[int, Json]] = {}
        self._next_message_id = 10_000
        self._callback_query_ids: set[str] = set()
        self._drafts: dict[int, Json] = {}
        self._commands: dict[tuple[str, str], list[Json]] = {}
        self._files: dict[str, _StoredFile] = {}
        self._file_paths: dict[str, str] = {}
        self._photo_sets: dict[str, list[Json]] = {}
        self._failures: list[_FailRule] = []
        self._buckets: dict[int, _Bucket] = {}
        self._group_sends: dict[int, deque[float]] = {}
        self._bot_sends: deque[float] = deque()
        handlers: dict[str, Callable[[Json], Any]] = {
            "getMe": lambda _: copy.deepcopy(self.bot_user),
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "sendMessage": self._send_message,
            "sendRichMessage": self._send_rich_message,
            "sendPhoto": self._send_photo,
            "sendDocument": self._send_document,
            "editMessageText": self._edit_message_text,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "deleteMessage": self._delete_message,
            "sendMessageDraft": self._send_message_draft,
            "sendChatAction": self._send_chat_action,
            "setMessageReaction": self._set_message_reaction,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "getFile": self._get_file,
            "answerCallbackQuery": self._answer_callback_query,
            "getChatMember": self._get_chat_member,
            "getChatAdministrators": self._get_chat_administrators,
            "close": lambda _: True,
            "logOut": lambda _: True,
        }
        self._handlers = {name.lower(): (name, handler) for name, handler in handlers.items()}

    # -- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Binds a free port on 127.0.0.1."""
        app = web.Application(client_max_size=60 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api)
        app.router.add_get("/file/bot{token}/{file_path:.+}", self._handle_file)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Answers pending long polls with no updates, then shuts the server down."""
        self._stopping = True
        self._notify()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeTelegram.start() has not been awaited")
        return f"http://127.0.0.1:{self._port}"

    # -- test helpers -----------------------------------------------------------------------------------

    def calls_to(self, method: str, chat_id: int | None = None) -> list[ApiCall]:
        """Calls of one method (any letter case), optionally to one chat."""
        return [
            call
            for call in self.calls
            if call.method.lower() == method.lower()
            and (chat_id is None or call.params.get("chat_id") == chat_id)
        ]

    def push_update(self, update_fields: Json) -> int:
        """Queues an update for getUpdates and remembers the chats and messages in it."""
        if len(update_fields) != 1:
            raise ValueError(f"an update has exactly one field like 'message', got {sorted(update_fields)}")
        update_id = next(self._update_ids)
        self._remember(update_fields)
        update = {"update_id": update_id, **copy.deepcopy(update_fields)}
        self._pushed[update_id] = update
        self._updates.append(copy.deepcopy(update))
        self._notify()
        return update_id

    def know(self, update_fields: Json) -> None:
        """Remember a user's message without queuing it for getUpdates: an update delivered by webhook."""
        self._remember(update_fields)

    def redeliver(self, update_id: int) -> None:
        """Delivers a pushed update again, same id: Telegram's at-least-once delivery (an offset that was never
        confirmed, a webhook retry)."""
        self._updates = sorted([*self._updates, copy.deepcopy(self._pushed[update_id])],
                               key=lambda update: update["update_id"])
        self._notify()

    def add_file(
        self, content: bytes, *, file_unique_id: str | None = None, file_size: int | None = None
    ) -> Json:
        """Registers a downloadable file; ``file_size`` can claim a size the content does not have."""
        number = len(self._files) + 1
        file_id = f"AgACAgIAAxkBAAIB{number:06d}"
        stored = _StoredFile(
            content=content,
            file_unique_id=file_unique_id or f"AQAD{number:06d}",
            file_size=len(content) if file_size is None else file_size,
            file_path=f"photos/file_{number}.jpg",
        )
        self._files[file_id] = stored
        return {"file_id": file_id, "file_unique_id": stored.file_unique_id, "file_size": stored.file_size}

    def photo_sizes(self, image_bytes: bytes, sides: tuple[int, ...] = (90, 320, 800, 1280)) -> list[Json]:
        """PhotoSize dicts like Telegram makes for a sent photo: JPEG copies, smallest first, original last.

        A JPEG original is kept byte for byte so tests can compare what the bot downloads.
        """
        with Image.open(io.BytesIO(image_bytes)) as image:
            original = image.convert("RGB") if image.mode != "RGB" else image.copy()
            is_jpeg = image.format == "JPEG"
        long_side = max(original.size)
        variants = []
        for side in sorted(set(sides)):
            if side < long_side:
                scale = side / long_side
                size = (max(1, round(original.width * scale)), max(1, round(original.height * scale)))
                variants.append(original.resize(size, Image.Resampling.LANCZOS))
        variants.append(original)
        sizes = []
        for variant in variants:
            content = image_bytes if variant is original and is_jpeg else _jpeg(variant)
            sizes.append({**self.add_file(content), "width": variant.width, "height": variant.height})
        for size in sizes:
            self._photo_sets[size["file_id"]] = sizes
        return copy.deepcopy(sizes)

    def fail_next(
        self,
        method: str,
        *,
        status: int = 429,
        description: str | None = None,
        retry_after: int | None = None,
        count: int = 1,
        chat_id: int | None = None,
    ) -> None:
        """Makes the next ``count`` calls of ``method`` (to ``chat_id`` if given) fail instead of running."""
        if status == 429:
            retry_after = 1 if retry_after is None else retry_after
            description = description or f"Too Many Requests: retry after {retry_after}"
        description = description or _DEFAULT_DESCRIPTIONS.get(status) or HTTPStatus(status).phrase
        error = ApiError(status, description, retry_after)
        self._failures.append(_FailRule(method.lower(), chat_id, error, count))

    def set_chat_admins(self, chat_id: int, admin_ids: list[int], *, creator_id: int | None = None) -> None:
        """Who getChatMember / getChatAdministrators report as the group's creator and administrators.

        Everyone else is an ordinary member; a group never configured has no admins at all.
        """
        self._chat_admins[chat_id] = (creator_id, frozenset(admin_ids) - {creator_id})

    def chat_messages(self, chat_id: int) -> list[Json]:
        """The bot's messages in a chat as they are now (after edits and deletions), oldest first."""
        messages = self._messages.get(chat_id, {})
        return [
            copy.deepcopy(messages[message_id])
            for message_id in sorted(messages)
            if messages[message_id].get("from", {}).get("id") == self.bot_user["id"]
        ]

    def sent_messages(self) -> list[Json]:
        """Every message the bot has in any chat, as it is now."""
        return [message for chat_id in list(self._messages) for message in self.chat_messages(chat_id)]

    def draft(self, chat_id: int) -> Json | None:
        """The draft currently shown in a private chat; sending a message there clears it, as in Telegram."""
        return copy.deepcopy(self._drafts.get(chat_id))

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Polls ``predicate`` every 10 ms; the bot works concurrently, so tests wait for its effects."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            await asyncio.sleep(0.01)

    # -- HTTP layer -------------------------------------------------------------------------------------

    async def _handle_api(self, request: web.Request) -> web.Response:
        received = time.monotonic()
        raw_method = request.match_info["method"]
        method = self._handlers.get(raw_method.lower(), (raw_method, None))[0]
        params: Json = {}
        try:
            params = await _read_params(request)
            result = await self._dispatch(request.match_info["token"], method, params)
            status, body = 200, {"ok": True, "result": result}
        except ApiError as error:
            status, body = error.status, error.body()
        self.calls.append(ApiCall(method, params, received, status, body))
        return web.json_response(body, status=status)

    async def _handle_file(self, request: web.Request) -> web.Response:
        file_id = self._file_paths.get(request.match_info["file_path"])
        if request.match_info["token"] != self.token or file_id is None:
            return web.json_response(ApiError(404, "Not Found").body(), status=404)
        self.downloads_in_progress += 1
        self.most_downloads_at_once = max(self.most_downloads_at_once, self.downloads_in_progress)
        try:
            await asyncio.sleep(self.download_seconds)
        finally:
            self.downloads_in_progress -= 1
        return web.Response(body=self._files[file_id].content, content_type="application/octet-stream")

    @staticmethod
    async def _handle_unknown(_: web.Request) -> web.Response:
        return web.json_response(ApiError(404, "Not Found").body(), status=404)

    async def _dispatch(self, token: str, method: str, params: Json) -> Any:
        if token != self.token:
            raise ApiError(401, "Unauthorized")
        key = method.lower()
        if key not in self._handlers:
            raise ApiError(404, "Not Found")
        for name in _JSON_FIELDS & params.keys():
            if isinstance(params[name], str):
                raise _bad_request(f"can't parse {name} JSON object")
        self._injected_failure(key, params)
        limited = self.enforce_rate_limits and key in _RATE_LIMITED
        if limited:
            self._check_rate(params.get("chat_id"))
        result = self._handlers[key][1](params)
        if isawaitable(result):
            result = await result
        if limited:
            self._count_send(params.get("chat_id"))
        return result

    def _injected_failure(self, method: str, params: Json) -> None:
        for rule in self._failures:
            if rule.method == method and rule.chat_id in (None, params.get("chat_id")):
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._failures.remove(rule)
                raise rule.error

    # -- flood control ----------------------------------------------------------------------------------

    def _check_rate(self, chat_id: Any) -> None:
        """Telegram's limits: 1 msg/s per private chat (bursts of 3), 20/min per group, 30/s per bot."""
        now = time.monotonic()
        _expire(self._bot_sends, now - 1.0)
        wait = self._bot_sends[0] + 1.0 - now if len(self._bot_sends) >= 30 else 0.0
        if isinstance(chat_id, int) and chat_id > 0:
            bucket = self._refilled(chat_id, now)
            wait = max(wait, 1.0 - bucket.tokens)
        elif isinstance(chat_id, int):
            sends = self._group_sends.setdefault(chat_id, deque())
            _expire(sends, now - 60.0)
            if len(sends) >= 20:
                wait = max(wait, sends[0] + 60.0 - now)
        if wait > 0:
            self.rate_limited_responses += 1
            retry_after = max(1, math.ceil(wait))
            raise ApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after)

    def _count_send(self, chat_id: Any) -> None:
        now = time.monotonic()
        self._bot_sends.append(now)
        if isinstance(chat_id, int) and chat_id > 0:
            self._refilled(chat_id, now).tokens -= 1.0
        elif isinstance(chat_id, int):
            self._group_sends.setdefault(chat_id, deque()).append(now)

    def _refilled(self, chat_id: int, now: float) -> _Bucket:
        bucket = self._buckets.setdefault(chat_id, _Bucket(3.0, now))
        bucket.tokens = min(3.0, bucket.tokens + (now - bucket.updated))
        bucket.updated = now
        return bucket

    # -- state helpers ----------------------------------------------------------------------------------

    def _notify(self) -> None:
        """Wakes every waiting getUpdates so it re-checks the queue."""
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    def _remember(self, value: Any) -> None:
        """Records chats, messages and callback queries from a pushed update (first sighting wins)."""
        if isinstance(value, list):
            for item in value:
                self._remember(item)
        if not isinstance(value, dict):
            return
        chat = value.get("chat")
        if isinstance(chat, dict) and isinstance(chat.get("id"), int):
            self._chats.setdefault(chat["id"], copy.deepcopy(chat))
            if isinstance(message_id := value.get("message_id"), int):
                self._messages.setdefault(chat["id"], {}).setdefault(message_id, copy.deepcopy(value))
                self._next_message_id = max(self._next_message_id, message_id + 1)
        sender = value.get("from")
        if isinstance(sender, dict) and isinstance(sender.get("id"), int):
            self._users.setdefault(sender["id"], copy.deepcopy(sender))
        if isinstance(value.get("chat_instance"), str) and "id" in value:
            self._callback_query_ids.add(str(value["id"]))
        for item in value.values():
            self._remember(item)

    def _chat(self, params: Json) -> Json:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise _bad_request("chat_id is empty")
        if not isinstance(chat_id, int):
            raise _bad_request("chat not found")
        if chat_id not in self._chats:
            if chat_id > 0:
                return {"id": chat_id, "type": "private", "first_name": f"User {chat_id}"}
            return {"id": chat_id, "type": "supergroup", "title": f"Group {chat_id}"}
        return copy.deepcopy(self._chats[chat_id])

    def _find_message(self, params: Json, not_found: str) -> Json:
        chat = self._chat(params)
        message_id = params.get("message_id")
        if not isinstance(message_id, int):
            raise _bad_request("message identifier is not specified")
        message = self._messages.get(chat["id"], {}).get(message_id)
        if message is None:
            raise _bad_request(not_found)
        return message

    def _own_message(self, params: Json) -> Json:
        message = self._find_message(params, "message to edit not found")
        if message.get("from", {}).get("id") != self.bot_user["id"]:
            raise _bad_request("message can't be edited")
        return message

    def _new_message(self, chat: Json, params: Json, **content: Any) -> Json:
        """Stores and returns a message the bot sent, with the fields every send method shares."""
        message: Json = {
            "message_id": self._next_message_id,
            "from": copy.deepcopy(self.bot_user),
            "chat": chat,
            "date": int(time.time()),
        }
        self._next_message_id += 1
        thread_id = params.get("message_thread_id")
        if isinstance(thread_id, int) and thread_id:
            message["message_thread_id"] = thread_id
            if chat.get("is_forum"):
                message["is_topic_message"] = True
        reply_to = self._reply_target(chat["id"], params)
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        message.update({key: value for key, value in content.items() if value})
        if "reply_markup" in params:
            message["reply_markup"] = check_reply_markup(params["reply_markup"])
        self._messages.setdefault(chat["id"], {})[message["message_id"]] = message
        self._drafts.pop(chat["id"], None)
        return copy.deepcopy(message)

    def _reply_target(self, chat_id: int, params: Json) -> Json | None:
        reply = params.get("reply_parameters")
        if reply is None:
            return None
        if not isinstance(reply, dict) or not isinstance(reply.get("message_id"), int):
            raise _bad_request("can't parse reply parameters JSON object")
        target = self._messages.get(reply.get("chat_id", chat_id), {}).get(reply["message_id"])
        if target is None:
            if reply.get("allow_sending_without_reply") or params.get("allow_sending_without_reply"):
                return None
            raise _bad_request("message to be replied not found")
        return {key: copy.deepcopy(value) for key, value in target.items() if key != "reply_to_message"}

    def _file(self, file_id: Any) -> tuple[str, _StoredFile]:
        if not isinstance(file_id, str) or file_id not in self._files:
            raise _bad_request("invalid file_id")
        return file_id, self._files[file_id]

    # -- Bot API methods --------------------------------------------------------------------------------

    async def _get_updates(self, params: Json) -> list[Json]:
        """Long polling: one poller at a time, woken by push_update, offset confirms earlier updates."""
        self._check_no_webhook()
        offset = params.get("offset")
        if isinstance(offset, int) and offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif isinstance(offset, int) and offset < 0:
            self._updates = self._updates[offset:]
        limit = params.get("limit")
        limit = min(max(limit, 1), 100) if isinstance(limit, int) else 100
        timeout = params.get("timeout")
        allowed = params.get("allowed_updates") or None
        self._poll_generation += 1
        generation = self._poll_generation
        self._notify()
        deadline = time.monotonic() + (timeout if isinstance(timeout, int) and timeout > 0 else 0)
        while True:
            if generation != self._poll_generation:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; "
                    "make sure that only one bot instance is running",
                )
            self._check_no_webhook()
            pending = [u for u in self._updates if allowed is None or _update_type(u) in allowed]
            remaining = deadline - time.monotonic()
            if pending or remaining <= 0 or self._stopping:
                return copy.deepcopy(pending[:limit])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _check_no_webhook(self) -> None:
        if self.webhook_url:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )

    def _set_webhook(self, params: Json) -> bool:
        url = str(params.get("url", ""))
        if url and not url.startswith("https://"):
            raise _bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET_TOKEN_RE.fullmatch(str(secret)):
            raise _bad_request("secret token contains unallowed characters")
        if params.get("drop_pending_updates") is True:
            self._updates.clear()
        self.webhook_url = url or None
        self._webhook_allowed_updates = params.get("allowed_updates") or None
        self._notify()
        return True

    def _delete_webhook(self, params: Json) -> bool:
        if params.get("drop_pending_updates") is True:
            self._updates.clear()
        self.webhook_url = None
        self._webhook_allowed_updates = None
        return True

    def _get_webhook_info(self, params: Json) -> Json:
        info: Json = {"url": self.webhook_url or "", "has_custom_certificate": False}
        info["pending_update_count"] = len(self._updates)
        if self.webhook_url:
            info["max_connections"] = 40
            if self._webhook_allowed_updates:
                info["allowed_updates"] = self._webhook_allowed_updates
        return info

    def _send_message(self, params: Json) -> Json:
        chat = self._chat(params)
        text, entities = _message_text(params)
        return self._new_message(chat, params, text=text, entities=entities)

    def _send_rich_message(self, params: Json) -> Json:
        chat = self._chat(params)
        rich = params.get("rich_message")
        if not isinstance(rich, dict):
            raise _bad_request("rich_message is empty")
        text = rich.get("markdown") or rich.get("html") or ""
        if not text.strip() and not rich.get("blocks"):
            raise _bad_request("message text is empty")
        return self._new_message(chat, params, text=text)

    def _send_photo(self, params: Json) -> Json:
        chat = self._chat(params)
        photo = params.get("photo")
        if isinstance(photo, bytes):
            try:
                sizes = self.photo_sizes(photo, sides=(90, 320, 800, 1280, 2560))
            except OSError as error:
                raise _bad_request("IMAGE_PROCESS_FAILED") from error
        elif isinstance(photo, str) and photo in self._photo_sets:
            sizes = copy.deepcopy(self._photo_sets[photo])
        else:
            raise _bad_request("wrong file identifier/HTTP URL specified")
        caption, entities = _caption(params)
        return self._new_message(chat, params, photo=sizes, caption=caption, caption_entities=entities)

    def _send_document(self, params: Json) -> Json:
        chat = self._chat(params)
        document = params.get("document")
        if isinstance(document, bytes):
            info = self.add_file(document)
        elif isinstance(document, str) and document in self._files:
            stored = self._files[document]
            info = {"file_id": document, "file_unique_id": stored.file_unique_id}
            info["file_size"] = stored.file_size
        else:
            raise _bad_request("wrong file identifier/HTTP URL specified")
        caption, entities = _caption(params)
        return self._new_message(chat, params, document=info, caption=caption, caption_entities=entities)

    def _edit_message_text(self, params: Json) -> Json:
        message = self._own_message(params)
        text, entities = _message_text(params)
        markup = check_reply_markup(params["reply_markup"]) if "reply_markup" in params else None
        if (text, entities, markup) == (
            message.get("text"),
            message.get("entities", []),
            message.get("reply_markup"),
        ):
            raise _bad_request(_NOT_MODIFIED)
        message["text"] = text
        _set_optional(message, "entities", entities)
        _set_optional(message, "reply_markup", markup)
        message["edit_date"] = int(time.time())
        return copy.deepcopy(message)

    def _edit_message_reply_markup(self, params: Json) -> Json:
        message = self._own_message(params)
        markup = check_reply_markup(params["reply_markup"]) if "reply_markup" in params else None
        if markup == message.get("reply_markup"):
            raise _bad_request(_NOT_MODIFIED)
        _set_optional(message, "reply_markup", markup)
        message["edit_date"] = int(time.time())
        return copy.deepcopy(message)

    def _delete_message(self, params: Json) -> bool:
        message = self._find_message(params, "message to delete not found")
        del self._messages[message["chat"]["id"]][message["message_id"]]
        return True

    def _send_message_draft(self, params: Json) -> bool:
        chat = self._chat(params)
        if chat["id"] <= 0:
            raise _bad_request("TEXTDRAFT_PEER_INVALID")
        draft_id = params.get("draft_id")
        if not isinstance(draft_id, int) or draft_id == 0:
            raise _bad_request("DRAFT_ID_INVALID")
        text, entities = _formatted(params, "text", "entities")
        if utf16_len(text) > MAX_TEXT_LENGTH:
            raise _bad_request("message is too long")
        draft: Json = {"draft_id": draft_id, "text": text}
        _set_optional(draft, "entities", entities)
        _set_optional(draft, "message_thread_id", params.get("message_thread_id"))
        self._drafts[chat["id"]] = draft
        return True

    def _send_chat_action(self, params: Json) -> bool:
        self._chat(params)
        if params.get("action") not in CHAT_ACTIONS:
            raise _bad_request("wrong parameter action in request")
        return True

    def _set_message_reaction(self, params: Json) -> bool:
        self._find_message(params, "message to react not found")
        return True

    def _set_my_commands(self, params: Json) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise _bad_request("can't parse commands JSON object")
        if len(commands) > 100:
            raise _bad_request("BOT_COMMANDS_TOO_MUCH")
        for command in commands:
            if not isinstance(command, dict) or not _COMMAND_RE.fullmatch(str(command.get("command", ""))):
                raise _bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", "")).strip()) <= 256:
                raise _bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        self._commands[_commands_key(params)] = commands
        return True

    def _get_my_commands(self, params: Json) -> list[Json]:
        return copy.deepcopy(self._commands.get(_commands_key(params), []))

    def _delete_my_commands(self, params: Json) -> bool:
        self._commands.pop(_commands_key(params), None)
        return True

    def _get_file(self, params: Json) -> Json:
        file_id, stored = self._file(params.get("file_id"))
        if stored.file_size > MAX_DOWNLOAD_SIZE:
            raise _bad_request("file is too big")
        self._file_paths[stored.file_path] = file_id
        return {
            "file_id": file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.file_size,
            "file_path": stored.file_path,
        }

    def _user(self, params: Json) -> Json:
        user_id = params.get("user_id")
        if not isinstance(user_id, int):
            raise _bad_request("invalid user_id specified")
        if user_id == self.bot_user["id"]:
            return copy.deepcopy(self.bot_user)
        unknown = {"id": user_id, "is_bot": False, "first_name": f"User {user_id}"}
        return copy.deepcopy(self._users.get(user_id, unknown))

    def _member(self, chat_id: int, user: Json) -> Json:
        creator, admins = self._chat_admins.get(chat_id, (None, frozenset()))
        if user["id"] == creator:
            return {"status": "creator", "user": user, "is_anonymous": False}
        if user["id"] in admins:
            rights = dict.fromkeys(_ADMIN_RIGHTS, False) | {"can_manage_chat": True, "can_change_info": True}
            return {"status": "administrator", "user": user, "can_be_edited": False, "is_anonymous": False, **rights}
        return {"status": "member", "user": user}

    def _get_chat_member(self, params: Json) -> Json:
        chat = self._chat(params)
        user = self._user(params)
        if chat["type"] == "private" and user["id"] not in (chat["id"], self.bot_user["id"]):
            raise _bad_request("member not found")
        return self._member(chat["id"], user)

    def _get_chat_administrators(self, params: Json) -> list[Json]:
        chat = self._chat(params)
        if chat["type"] == "private":
            raise _bad_request("there are no administrators in the private chat")
        creator, admins = self._chat_admins.get(chat["id"], (None, frozenset()))
        ids = ([creator] if creator is not None else []) + sorted(admins)
        return [self._member(chat["id"], self._user({"user_id": user_id})) for user_id in ids]

    def _answer_callback_query(self, params: Json) -> bool:
        query_id = str(params.get("callback_query_id", ""))
        if query_id not in self._callback_query_ids:
            raise _bad_request("query is too old and response timeout expired or query ID is invalid")
        self._callback_query_ids.discard(query_id)
        return True


# ---------------------------------------------------------------------------------------------------------
# Module helpers
# ---------------------------------------------------------------------------------------------------------


async def _read_params(request: web.Request) -> Json:
    """Merges query string and body (multipart, urlencoded or JSON) and decodes them like Telegram."""
    params: Json = dict(request.query)
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError as error:
            raise _bad_request("can't parse JSON request") from error
        if not isinstance(body, dict):
            raise _bad_request("JSON object expected")
        params.update(body)
    elif request.method == "POST":
        form = await request.post()
        for key, value in form.items():
            params[key] = value.file.read() if isinstance(value, web.FileField) else value
    for key, value in list(params.items()):
        if isinstance(value, str) and value.startswith("attach://") and value[9:] in params:
            params[key] = params.pop(value[9:])
    return {key: _decode_value(key, value) for key, value in params.items()}


def _decode_value(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if key in _JSON_FIELDS:
        try:
            return json.loads(value)
        except ValueError:
            return value  # reported as a 400 once the call is known to exist
    if key in _INT_FIELDS and _INT_RE.fullmatch(value):
        return int(value)
    if key in _BOOL_FIELDS and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    return value


def _formatted(params: Json, text_key: str, entities_key: str) -> tuple[str, list[Json]]:
    """Explicit entities win over parse_mode, as in Telegram."""
    text = str(params.get(text_key, ""))
    if entities_key in params:
        return text, check_entities(text, params[entities_key])
    return parse_formatted(text, params.get("parse_mode"))


def _message_text(params: Json) -> tuple[str, list[Json]]:
    text, entities = _formatted(params, "text", "entities")
    if not text.strip():
        raise _bad_request("message text is empty")
    if utf16_len(text) > MAX_TEXT_LENGTH:
        raise _bad_request("message is too long")
    return text, entities


def _caption(params: Json) -> tuple[str, list[Json]]:
    caption, entities = _formatted(params, "caption", "caption_entities")
    if utf16_len(caption) > MAX_CAPTION_LENGTH:
        raise _bad_request("message caption is too long")
    return caption, entities


def _set_optional(target: Json, key: str, value: Any) -> None:
    """Telegram omits empty optional fields instead of sending null."""
    if value:
        target[key] = value
    else:
        target.pop(key, None)


def _commands_key(params: Json) -> tuple[str, str]:
    scope = params.get("scope") or {"type": "default"}
    return json.dumps(scope, sort_keys=True), str(params.get("language_code", ""))


def _update_type(update: Json) -> str:
    return next(key for key in update if key != "update_id")


def _expire(times: deque[float], before: float) -> None:
    while times and times[0] <= before:
        times.popleft()


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
