"""The request body a provider receives: messages in OpenAI's shape, images in the encoding the provider takes."""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bot.models import PreparedImage, PromptMessage

OMITTED_IMAGE_NOTE = "[an earlier image is not attached: this provider takes fewer images per request]"


class ImageEncoding(StrEnum):
    """How one request carries its images (VISION_IMAGE_FORMAT=auto chooses among these per model)."""

    DATA_URL = "data_url"
    RAW_BASE64 = "raw_base64"  # Zhipu's own API, and GLM-4V behind some relays
    URL = "url"  # a published, expiring http(s) URL: glm-4v-flash as reported in the field


@dataclass(slots=True)
class Body:
    """A request body whose images' base64 stands apart until it is encoded: base64 has no character JSON escapes,
    so its bytes are spliced in rather than scanned by json.dumps (~1 ms for a 430 KB image on the event loop)."""

    fields: dict[str, Any] = field(default_factory=dict)
    images: list[bytes] = field(default_factory=list)  # base64, in the order of their placeholders' numbers
    marker: str = field(default_factory=lambda: secrets.token_hex(16))  # per body: no text sent can hold it

    def placeholder(self, data: bytes) -> str:
        """What stands in `fields` for the image's base64 until the body is encoded."""
        self.images.append(base64.b64encode(data))
        return f"{self.marker}{len(self.images) - 1}"


def build_body(messages: Sequence[PromptMessage], *, model: str, max_tokens: int, temperature: float | None,
               stream: bool, extra_body: Mapping[str, Any], image_detail: str | None, encoding: ImageEncoding,
               urls: Mapping[str, str]) -> Body:
    """`urls` maps image ids to their published URLs (needed with `ImageEncoding.URL` only)."""
    body = Body()
    body.fields.update({
        "model": model,
        "messages": [_wire_message(message, encoding, urls, image_detail, body) for message in messages],
        "max_tokens": max_tokens,
        "stream": stream,
    })
    if stream:
        body.fields["stream_options"] = {"include_usage": True}
    if temperature is not None:
        body.fields["temperature"] = temperature
    body.fields.update(extra_body)
    return body


def encode_body(body: Body) -> bytes:
    encoded = json.dumps(body.fields, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    pieces = re.split(re.escape(body.marker).encode() + rb"(\d+)", encoded)  # JSON, number, JSON, number...
    pieces[1::2] = [body.images[int(number)] for number in pieces[1::2]]
    return b"".join(pieces)


def images_in(messages: Sequence[PromptMessage]) -> list[PreparedImage]:
    return [image for message in messages for image in message.images]


def within_image_limit(messages: Sequence[PromptMessage], limit: int) -> list[PromptMessage]:
    """The newest `limit` images kept (a fallback may take fewer than the provider the prompt was made for)."""
    excess = len(images_in(messages)) - limit
    if excess <= 0:
        return list(messages)
    fitted: list[PromptMessage] = []
    for message in messages:
        dropped = min(excess, len(message.images))
        excess -= dropped
        fitted.append(PromptMessage(role=message.role, text=f"{OMITTED_IMAGE_NOTE}\n{message.text}",
                                    images=message.images[dropped:]) if dropped else message)
    return fitted


def _wire_message(message: PromptMessage, encoding: ImageEncoding, urls: Mapping[str, str],
                  detail: str | None, body: Body) -> dict[str, Any]:
    if not message.images:
        return {"role": message.role, "content": message.text}
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.text}]
    for image in message.images:
        image_url: dict[str, Any] = {"url": _image_reference(image, encoding, urls, body)}
        if detail:
            image_url["detail"] = detail
        parts.append({"type": "image_url", "image_url": image_url})
    return {"role": message.role, "content": parts}


def _image_reference(image: PreparedImage, encoding: ImageEncoding, urls: Mapping[str, str], body: Body) -> str:
    if encoding is ImageEncoding.URL:
        return urls[image.image_id]
    placeholder = body.placeholder(image.data)
    return placeholder if encoding is ImageEncoding.RAW_BASE64 else f"data:{image.mime};base64,{placeholder}"
