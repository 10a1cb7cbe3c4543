"""The provider request body as it leaves: images spliced into the JSON exactly where a plain encoding puts them."""

from __future__ import annotations

import base64
import json

import pytest

from bot.clients.wire import Body, ImageEncoding, build_body, encode_body
from bot.models import PreparedImage, PromptMessage

FIRST = PreparedImage(image_id="first", data=bytes(range(256)) * 40)
SECOND = PreparedImage(image_id="second", data=b"\xff\xd8\xff" + bytes(5000), mime="image/png")
URLS = {"first": "https://images.example/first?sig=a&b=1", "second": "https://images.example/second"}
MESSAGES = [
    PromptMessage(role="system", text="Describe images."),
    PromptMessage(role="user", text='An "old" photo\n\\ ü 😀', images=(FIRST,)),
    PromptMessage(role="assistant", text="A cat."),
    PromptMessage(role="user", text="And these?", images=(SECOND, FIRST)),
]


def _reference(image: PreparedImage, encoding: ImageEncoding) -> str:
    encoded = base64.b64encode(image.data).decode()
    return {ImageEncoding.URL: URLS[image.image_id], ImageEncoding.RAW_BASE64: encoded,
            ImageEncoding.DATA_URL: f"data:{image.mime};base64,{encoded}"}[encoding]


def _built(encoding: ImageEncoding, messages: list[PromptMessage] = MESSAGES) -> Body:
    return build_body(messages, model="glm-4v", max_tokens=100, temperature=0.2, stream=True,
                      extra_body={"do_sample": False}, image_detail="high", encoding=encoding, urls=URLS)


@pytest.mark.parametrize("encoding", list(ImageEncoding))
def test_the_body_holds_every_image_where_it_belongs(encoding):
    sent = json.loads(encode_body(_built(encoding)))

    def image_part(image: PreparedImage) -> dict:
        return {"type": "image_url", "image_url": {"url": _reference(image, encoding), "detail": "high"}}

    assert sent == {
        "model": "glm-4v",
        "messages": [
            {"role": "system", "content": "Describe images."},
            {"role": "user", "content": [{"type": "text", "text": 'An "old" photo\n\\ ü 😀'}, image_part(FIRST)]},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": [{"type": "text", "text": "And these?"}, image_part(SECOND),
                                         image_part(FIRST)]},
        ],
        "max_tokens": 100,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
        "do_sample": False,
    }


def test_a_question_quoting_another_bodys_marker_is_sent_as_written():
    """The marker is random per body: text copied from one request cannot pull images into the next."""
    earlier = _built(ImageEncoding.RAW_BASE64)
    quoted = f"{earlier.marker}0"
    body = _built(ImageEncoding.RAW_BASE64, [PromptMessage(role="user", text=quoted, images=(FIRST,))])

    sent = json.loads(encode_body(body))

    assert sent["messages"][0]["content"] == [
        {"type": "text", "text": quoted},
        {"type": "image_url", "image_url": {"url": _reference(FIRST, ImageEncoding.RAW_BASE64), "detail": "high"}},
    ]
    assert body.marker != earlier.marker
