"""The OpenAI-compatible vision client: one request, streamed back as text deltas.

Everything provider-specific about the wire (request body, SSE quirks, JSON-instead-of-SSE replies, HTTP-200
errors, retries before the first byte) lives here, so services only see text or a typed `VisionError`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import EventSource

from bot import errors
from bot.clients.classify import classify, classify_stream_error, parse_body, request_id_of
from bot.models import PromptMessage, Usage

log = logging.getLogger(__name__)

_MAX_ERROR_BODY_BYTES = 64 * 1024
_MAX_JSON_BODY_BYTES = 4 * 1024 * 1024
_CONTENT_FILTER_REASONS = frozenset({"content_filter", "sensitive"})
_CUT_REASONS = frozenset({"network_error", "error"})


@dataclass(frozen=True, slots=True)
class VisionConfig:
    base_url: str
    api_key: str
    model: str
    max_tokens: int
    temperature: float | None = None
    timeout: float = 120.0
    stream: bool = True
    image_detail: str | None = None
    raw_base64_images: bool = False
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    rate_limit_attempts: int = 3
    max_retry_wait: float = 20.0
    unavailable_retries: int = 1
    retry_delay: float = 1.0


@dataclass(slots=True)
class Completion:
    """An answer being read; iterate for text deltas, then read the metadata."""

    request_id: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    text_parts: list[str] = field(default_factory=list)
    deltas: AsyncIterator[str] | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        if self.deltas is None:
            raise RuntimeError("completion has no body attached")
        return self.deltas

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


class VisionRequest:
    """An encoded request body, let go of once the provider has accepted it.

    With its images it is ~200 KB; kept for the length of every streamed answer, hundreds of concurrent answers
    would hold hundreds of megabytes that no retry can use any more.
    """

    __slots__ = ("_payload",)

    def __init__(self, payload: bytes) -> None:
        self._payload: bytes | None = payload

    @property
    def payload(self) -> bytes:
        if self._payload is None:
            raise RuntimeError("the request was already accepted by the provider")
        return self._payload

    def release(self) -> None:
        self._payload = None


class VisionClient:
    def __init__(self, http: httpx.AsyncClient, config: VisionConfig) -> None:
        self._http = http
        self._config = config
        self._url = f"{config.base_url}/chat/completions"

    @property
    def config(self) -> VisionConfig:
        return self._config

    @property
    def http(self) -> httpx.AsyncClient:
        return self._http

    def request(self, messages: Sequence[PromptMessage]) -> VisionRequest:
        body = json.dumps(self.build_body(messages), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return VisionRequest(body.encode())

    @asynccontextmanager
    async def complete(self, request: VisionRequest) -> AsyncIterator[Completion]:
        """Send the request, retrying where it helps, and yield the answer as it streams.

        Raises a `VisionError` on entry for a failed request, or while iterating for a failure mid-answer.
        """
        async with AsyncExitStack() as stack:
            response, parsed = await self._send_with_retries(stack, request)
            request.release()
            completion = Completion(request_id=request_id_of(response.headers, None))
            if isinstance(parsed, dict):
                completion.deltas = self._json_deltas(completion, parsed, response)
            else:
                completion.deltas = self._sse_deltas(completion, response, parsed or _EndTerminated(response))
            yield completion

    def build_body(self, messages: Sequence[PromptMessage]) -> dict[str, Any]:
        config = self._config
        body: dict[str, Any] = {
            "model": config.model,
            "messages": [self._wire_message(message) for message in messages],
            "max_tokens": config.max_tokens,
            "stream": config.stream,
        }
        if config.stream:
            body["stream_options"] = {"include_usage": True}
        if config.temperature is not None:
            body["temperature"] = config.temperature
        body.update(config.extra_body)
        return body

    def _wire_message(self, message: PromptMessage) -> dict[str, Any]:
        if not message.images:
            return {"role": message.role, "content": message.text}
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.text}]
        for image in message.images:
            encoded = base64.b64encode(image.data).decode("ascii")
            # Zhipu's own API wants bare base64; everyone else a data URL.
            image_url: dict[str, Any] = {
                "url": encoded if self._config.raw_base64_images else f"data:{image.mime};base64,{encoded}"
            }
            if self._config.image_detail:
                image_url["detail"] = self._config.image_detail
            parts.append({"type": "image_url", "image_url": image_url})
        return {"role": message.role, "content": parts}

    async def _send_with_retries(self, stack: AsyncExitStack, request: VisionRequest
                                 ) -> tuple[httpx.Response, dict[str, Any] | _BufferedEvents | None]:
        """The open response, and its parsed body unless it is an event stream still to be read."""
        rate_limited = 0
        unavailable = 0
        while True:
            started = time.monotonic()
            attempt_stack = AsyncExitStack()
            try:
                response = await self._send(attempt_stack, request.payload)
                parsed = await self._parsed_unless_stream(response)
            except errors.RateLimitError as exc:
                await attempt_stack.aclose()
                rate_limited += 1
                if rate_limited >= self._config.rate_limit_attempts:
                    raise
                await self._wait_before_retry(exc, self._backoff(rate_limited, exc.retry_after))
            except errors.UnavailableError as exc:
                await attempt_stack.aclose()
                unavailable += 1
                if unavailable > self._config.unavailable_retries:
                    raise
                await self._wait_before_retry(exc, self._config.retry_delay)
            except BaseException:
                await attempt_stack.aclose()
                raise
            else:
                stack.push_async_exit(attempt_stack)
                log.debug("provider answered %s in %.0f ms", response.status_code, (time.monotonic() - started) * 1e3)
                return response, parsed

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        wait = retry_after if retry_after is not None else self._config.retry_delay * 2 ** (attempt - 1)
        return min(wait, self._config.max_retry_wait)

    async def _wait_before_retry(self, exc: errors.VisionError, seconds: float) -> None:
        log.warning("provider %s (HTTP %s); retrying in %.1f s", exc.kind, exc.status, seconds)
        await asyncio.sleep(seconds)

    async def _send(self, stack: AsyncExitStack, payload: bytes) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {self._config.api_key}",
            "Content-Type": "application/json",
            # With a length, httpx sends the iterated body as-is (no chunked encoding, which some relays reject).
            "Content-Length": str(len(payload)),
            # Some relays insist on application/json even for streams (seed 003); offer both.
            "Accept": "text/event-stream, application/json" if self._config.stream else "application/json",
        }
        try:
            return await stack.enter_async_context(
                self._http.stream("POST", self._url, content=_sent_once(payload), headers=headers))
        except httpx.TimeoutException as exc:
            raise errors.UnavailableError(f"timed out: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise errors.UnavailableError(f"cannot reach the provider: {type(exc).__name__}") from exc

    async def _parsed_unless_stream(self, response: httpx.Response) -> dict[str, Any] | _BufferedEvents | None:
        """Errors are found before any text: a non-2xx status, or a JSON body without `choices`."""
        if _is_event_stream(response) and response.is_success:
            return None
        limit = _MAX_JSON_BODY_BYTES if response.is_success else _MAX_ERROR_BODY_BYTES
        raw = self._scrubbed(await _read_bounded(response, limit))
        if response.is_success and raw.lstrip().startswith(("data:", ": ")):
            return _BufferedEvents(response.headers, raw)  # an event stream with the wrong content type
        body = parse_body(raw)
        error = classify(response.status_code, response.headers, body, raw)
        if error is not None:
            raise error
        return body

    async def _json_deltas(self, completion: Completion, body: dict[str, Any],
                           response: httpx.Response) -> AsyncIterator[str]:
        """A whole completion where a stream may have been expected: one delta with all of it."""
        completion.request_id = completion.request_id or request_id_of(response.headers, body)
        completion.usage = _usage_of(body.get("usage"))
        choices = [choice for choice in body["choices"] if isinstance(choice, dict)]
        choice = next((choice for choice in choices if choice.get("index", 0) == 0), choices[0] if choices else {})
        completion.finish_reason = _finish_reason_of(choice)
        content = _content_of(choice.get("message") or choice)
        if content:
            completion.text_parts.append(content)
            yield content
        self._check_ending(completion, done=True, response=response)

    async def _sse_deltas(self, completion: Completion, response: httpx.Response,
                          source: _EndTerminated | _BufferedEvents) -> AsyncIterator[str]:
        done = False
        try:
            async for event in EventSource(source).aiter_sse():  # type: ignore[arg-type]
                data = event.data.strip()
                if not data:
                    continue
                if data == "[DONE]":
                    done = True
                    break
                payload = parse_body(self._scrubbed(data))
                if not isinstance(payload, dict):
                    log.debug("ignoring a non-JSON stream event: %.100s", data)
                    continue
                if payload.get("error") or ("codes" in payload and not payload.get("choices")):
                    raise classify_stream_error(payload, response.status_code, response.headers, self._scrubbed(data))
                for delta in self._apply_chunk(completion, payload):
                    yield delta
        except httpx.TimeoutException as exc:
            raise self._cut(completion, response, f"no data for {self._config.timeout:.0f} s") from exc
        except httpx.TransportError as exc:
            raise self._cut(completion, response, f"connection lost: {type(exc).__name__}") from exc
        self._check_ending(completion, done=done, response=response)

    def _apply_chunk(self, completion: Completion, payload: dict[str, Any]) -> list[str]:
        if completion.request_id is None:
            completion.request_id = request_id_of({}, payload)
        usage = _usage_of(payload.get("usage"))
        if usage is not None:
            completion.usage = usage
        deltas = []
        for choice in payload.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            content = _content_of(choice.get("delta") or choice.get("message") or {})
            if content:
                completion.text_parts.append(content)
                deltas.append(content)
            completion.finish_reason = _finish_reason_of(choice) or completion.finish_reason
        return deltas

    def _check_ending(self, completion: Completion, *, done: bool, response: httpx.Response) -> None:
        reason = completion.finish_reason
        if reason in _CONTENT_FILTER_REASONS:
            raise errors.ContentPolicyError(f"answer stopped by the provider's filter ({reason})",
                                            status=response.status_code, request_id=completion.request_id)
        if not completion.text:
            raise errors.EmptyAnswerError("the provider finished without any text",
                                          status=response.status_code, request_id=completion.request_id)
        if reason in _CUT_REASONS or (reason is None and not done):
            raise self._cut(completion, response, f"stream ended early (finish_reason={reason})")

    def _cut(self, completion: Completion, response: httpx.Response, why: str) -> errors.StreamCutError:
        return errors.StreamCutError(why, status=response.status_code, request_id=completion.request_id)

    def _scrubbed(self, text: str) -> str:
        """Some relays echo the key back in their replies: remove it before anything is cut, logged or shown."""
        key = self._config.api_key
        return text.replace(key, "[redacted]") if key else text


class _EndTerminated:
    """Feeds httpx-sse a blank line after the body, so a final event without one is still dispatched."""

    def __init__(self, response: httpx.Response) -> None:
        self.headers = response.headers
        self._response = response

    async def aiter_text(self) -> AsyncIterator[str]:
        async for text in self._response.aiter_text():
            yield text
        yield "\n\n"


class _BufferedEvents:
    """An event stream already read into memory (it came labelled as JSON or plain text)."""

    def __init__(self, headers: httpx.Headers, text: str) -> None:
        self.headers = httpx.Headers({**headers, "content-type": "text/event-stream"})
        self._text = text

    async def aiter_text(self) -> AsyncIterator[str]:
        yield self._text
        yield "\n\n"


async def _sent_once(payload: bytes) -> AsyncIterator[bytes]:
    """A body httpx does not keep: given as bytes, it would stay referenced by the response until the stream ends."""
    yield payload


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


def _content_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if isinstance(message.get("text"), str):
        return message["text"]
    return ""


def _finish_reason_of(choice: dict[str, Any]) -> str | None:
    reason = choice.get("finish_reason")
    if reason is None and isinstance(choice.get("finish_details"), dict):
        reason = choice["finish_details"].get("type")
    return str(reason) if reason else None


def _usage_of(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    return Usage(prompt, completion, int(raw.get("total_tokens") or prompt + completion))
