"""Reading a provider's reply: an SSE stream, a whole JSON completion where a stream was expected, or an error.

Errors are found before any text where the reply allows it (a non-2xx status, a JSON body without `choices`, an
event stream labelled as JSON); the rest surface while the deltas are iterated.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import EventSource

from bot import errors
from bot.clients.classify import classify, classify_stream_error, parse_body, request_id_of
from bot.models import Usage

log = logging.getLogger(__name__)

Scrub = Callable[[str], str]

_MAX_ERROR_BODY_BYTES = 64 * 1024
_MAX_JSON_BODY_BYTES = 4 * 1024 * 1024
_CONTENT_FILTER_REASONS = frozenset({"content_filter", "sensitive"})
_CUT_REASONS = frozenset({"network_error", "error"})
_MAX_TOKENS = 2**31 - 1  # what every storage backend's INTEGER column holds


@dataclass(slots=True)
class Completion:
    """An answer being read; iterate for text deltas, then read the metadata."""

    request_id: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    provider: str = ""
    model: str = ""
    text_parts: list[str] = field(default_factory=list)
    deltas: AsyncIterator[str] | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        if self.deltas is None:
            raise RuntimeError("completion has no body attached")
        return self.deltas

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


class BufferedEvents:
    """An event stream already read into memory (it came labelled as JSON or plain text)."""

    def __init__(self, headers: httpx.Headers, text: str) -> None:
        self.headers = httpx.Headers({**headers, "content-type": "text/event-stream"})
        self._text = text

    async def aiter_text(self) -> AsyncIterator[str]:
        yield self._text
        yield "\n\n"


class _EndTerminated:
    """Feeds httpx-sse a blank line after the body, so a final event without one is still dispatched."""

    def __init__(self, response: httpx.Response) -> None:
        self.headers = response.headers
        self._response = response

    async def aiter_text(self) -> AsyncIterator[str]:
        async for text in self._response.aiter_text():
            yield text
        yield "\n\n"


async def parsed_unless_stream(response: httpx.Response, scrub: Scrub) -> dict[str, Any] | BufferedEvents | None:
    """The parsed body, None for an event stream still to be read; raises the reply's `VisionError`."""
    if _is_event_stream(response) and response.is_success:
        return None
    limit = _MAX_JSON_BODY_BYTES if response.is_success else _MAX_ERROR_BODY_BYTES
    raw = scrub(await _read_bounded(response, limit))
    if response.is_success and raw.lstrip().startswith(("data:", ": ")):
        return BufferedEvents(response.headers, raw)  # an event stream with the wrong content type
    body = parse_body(raw)
    error = classify(response.status_code, response.headers, body, raw)
    if error is not None:
        raise error
    return body


def deltas_of(completion: Completion, response: httpx.Response, parsed: dict[str, Any] | BufferedEvents | None,
              scrub: Scrub) -> AsyncIterator[str]:
    if isinstance(parsed, dict):
        return _json_deltas(completion, parsed, response)
    return _sse_deltas(completion, response, parsed or _EndTerminated(response), scrub)


async def _json_deltas(completion: Completion, body: dict[str, Any], response: httpx.Response) -> AsyncIterator[str]:
    """A whole completion where a stream may have been expected: one delta with all of it."""
    completion.request_id = completion.request_id or request_id_of(response.headers, body)
    completion.usage = usage_of(body.get("usage"))
    choices = [choice for choice in body["choices"] if isinstance(choice, dict)]
    choice = next((choice for choice in choices if choice.get("index", 0) == 0), choices[0] if choices else {})
    completion.finish_reason = _finish_reason_of(choice)
    content = _content_of(choice.get("message") or choice)
    if content:
        completion.text_parts.append(content)
        yield content
    _check_ending(completion, done=True, response=response)


async def _sse_deltas(completion: Completion, response: httpx.Response, source: _EndTerminated | BufferedEvents,
                      scrub: Scrub) -> AsyncIterator[str]:
    done = False
    try:
        async for event in EventSource(source).aiter_sse():  # type: ignore[arg-type]
            data = event.data.strip()
            if not data:
                continue
            if data == "[DONE]":
                done = True
                break
            payload = parse_body(scrub(data))
            if not isinstance(payload, dict):
                log.debug("ignoring a non-JSON stream event: %.100s", data)
                continue
            if payload.get("error") or ("codes" in payload and not payload.get("choices")):
                raise classify_stream_error(payload, response.status_code, response.headers, scrub(data))
            for delta in _apply_chunk(completion, payload):
                yield delta
    except httpx.TimeoutException as exc:
        raise _cut(completion, response, "no data within the idle timeout") from exc
    except httpx.TransportError as exc:
        raise _cut(completion, response, f"connection lost: {type(exc).__name__}") from exc
    _check_ending(completion, done=done, response=response)


def _apply_chunk(completion: Completion, payload: dict[str, Any]) -> list[str]:
    if completion.request_id is None:
        completion.request_id = request_id_of({}, payload)
    usage = usage_of(payload.get("usage"))
    if usage is not None:
        completion.usage = usage
    deltas = []
    choices = payload.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        content = _content_of(choice.get("delta") or choice.get("message") or {})
        if content:
            completion.text_parts.append(content)
            deltas.append(content)
        completion.finish_reason = _finish_reason_of(choice) or completion.finish_reason
    return deltas


def _check_ending(completion: Completion, *, done: bool, response: httpx.Response) -> None:
    reason = completion.finish_reason
    if reason in _CONTENT_FILTER_REASONS:
        raise errors.ContentPolicyError(f"answer stopped by the provider's filter ({reason})",
                                        status=response.status_code, request_id=completion.request_id)
    if not completion.text:
        raise errors.EmptyAnswerError("the provider finished without any text",
                                      status=response.status_code, request_id=completion.request_id)
    if reason in _CUT_REASONS or (reason is None and not done):
        raise _cut(completion, response, f"stream ended early (finish_reason={reason})")


def _cut(completion: Completion, response: httpx.Response, why: str) -> errors.StreamCutError:
    return errors.StreamCutError(why, status=response.status_code, request_id=completion.request_id)


def _is_event_stream(response: httpx.Response) -> bool:
    return "text/event-stream" in response.headers.get("content-type", "")


async def _read_bounded(response: httpx.Response, limit: int) -> str:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    except httpx.TimeoutException as exc:
        raise errors.UnavailableError("timed out reading the reply", status=response.status_code) from exc
    except httpx.TransportError as exc:
        raise errors.UnavailableError(f"connection lost: {type(exc).__name__}", status=response.status_code) from exc
    return b"".join(chunks)[:limit].decode(response.encoding or "utf-8", errors="replace")


def _content_of(message: Any) -> str:
    """The text of a message or delta; anything not shaped like one (a relay's `"message": "..."`) has none."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    if isinstance(message.get("text"), str):
        return message["text"]
    return ""


def _finish_reason_of(choice: dict[str, Any]) -> str | None:
    reason = choice.get("finish_reason")
    if reason is None and isinstance(choice.get("finish_details"), dict):
        reason = choice["finish_details"].get("type")
    return str(reason) if reason else None


def usage_of(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt = _token_count(raw.get("prompt_tokens"))
    completion = _token_count(raw.get("completion_tokens"))
    return Usage(prompt, completion, _token_count(raw.get("total_tokens")) or min(prompt + completion, _MAX_TOKENS))


def _token_count(value: Any) -> int:
    """A provider's count, within what storage holds; what is no count at all ("abc", NaN, a list) is 0."""
    try:
        count = int(value or 0)
    except (TypeError, ValueError, OverflowError):
        return 0
    return max(0, min(count, _MAX_TOKENS))
