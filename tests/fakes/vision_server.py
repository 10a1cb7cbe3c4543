"""A fake OpenAI-compatible vision endpoint on loopback.

The bot's real httpx client talks to it over TCP, so tests exercise the actual wire format (SSE framing,
status codes, relay quirks such as HTTP 200 error bodies) instead of a mocked client. Tests script replies
with `enqueue` and afterwards assert on `requests`, `leaked_urls` and `disconnects`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiohttp import web

from tests.fakes.vision_inputs import (
    FETCH_TIMEOUT,
    IMAGE_FORMATS,
    IMAGE_INPUT_MODES,
    TELEGRAM_FILE_MARK,
    ZHIPU_INVALID_PARAMETER,
    FetchedImage,
    ImageFetcher,
    ImageInput,
    is_image,
    is_remote,
    is_zhipu_1210,
    zhipu_download_failed,
)

# --- Error bodies exactly as real services send them ------------------------------------------------------
# Seed relay (yewu.bcwhkj.cn) errors come with HTTP 200; the status for the others is noted per constant.

SEED_KEY_ERROR = {
    "codes": 900,
    "mess": "密钥错误或已过期，请通过微信访问yewu.bcwhkj.cn个人中心获取",
    "data": "token",
}
SEED_QUOTA_ERROR = {"codes": 300, "mess": "当前额度不足，请充值后继续使用", "data": ""}
SEED_ILLEGAL_CHARS = {"codes": 400, "mess": "非法字符。请勿提交", "data": ""}
SEED_CONTENT_SAFETY = {"codes": 402, "mess": "提交问题涉及内容安全，请修改问题", "data": ""}
SEED_CONTENT_POLICY = {  # seed 000, served with HTTP 200
    "error": {
        "code": "content_policy_violation",
        "message": "Your request was rejected as a result of our safety system. ",
        "param": None,
        "type": "invalid_request_error",
    }
}

OPENAI_INVALID_KEY = {  # 401
    "error": {
        "message": "Incorrect API key provided: sk-wrong***. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}
OPENAI_INSUFFICIENT_QUOTA = {  # 429
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}
OPENAI_RATE_LIMIT = {  # 429, usually with retry-after / retry-after-ms headers
    "error": {
        "message": "Rate limit reached for gpt-4o-mini in organization org-4Gv8hBqjD3mXk0pLrS2tYwZa on "
        "tokens per min (TPM): Limit 200000, Used 199012, Requested 1432. Please try again in 133ms. Visit "
        "https://platform.openai.com/account/rate-limits to learn more.",
        "type": "tokens",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
OPENAI_CONTEXT_LENGTH = {  # 400
    "error": {
        "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in "
        "130412 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
OPENAI_MODEL_NOT_FOUND = {  # 404
    "error": {
        "message": "The model `gpt-4-vision-preview` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
}
OPENAI_INVALID_IMAGE = {  # 400
    "error": {
        "message": "You uploaded an unsupported image. Please make sure your image has of one the following "
        "formats: ['png', 'jpeg', 'gif', 'webp'].",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_image_format",
    }
}

# Zhipu (open.bigmodel.cn): error.code is a string. ZHIPU_INVALID_PARAMETER (1210) lives in vision_inputs.
ZHIPU_AUTH_MISSING = {  # 401
    "error": {"code": "1001", "message": "Header中未收到Authorization参数，无法进行身份验证。"}
}
ZHIPU_ARREARS = {  # 429, not retryable
    "error": {"code": "1113", "message": "余额不足或无可用资源包,请充值。"}
}
ZHIPU_RATE_LIMIT = {  # 429, retryable
    "error": {"code": "1302", "message": "您当前使用该API的并发数过高，请降低并发，或联系客服增加限额。"}
}
ZHIPU_MODEL_NOT_FOUND = {"error": {"code": "1211", "message": "模型不存在，请检查模型代码。"}}  # 400
ZHIPU_PROMPT_TOO_LONG = {"error": {"code": "1261", "message": "Prompt exceeds max length"}}  # 400
ZHIPU_UNSAFE_CONTENT = {  # 400
    "contentFilter": [{"level": 1, "role": "user"}],
    "error": {
        "code": "1301",
        "message": "系统检测到输入或生成内容可能包含不安全或敏感内容，"
        "请您避免输入易产生敏感内容的提示语，感谢您的配合。",
    },
}

# one-api / new-api relays.
ONE_API_INSUFFICIENT_QUOTA = {  # 403
    "error": {
        "message": "user quota is not enough (request id: 2024040323172594066980027391365)",
        "type": "one_api_error",
        "param": "",
        "code": "insufficient_user_quota",
    }
}
NEW_API_INSUFFICIENT_QUOTA = {  # 403
    "error": {
        "message": "user quota is not enough (request id: 20240909152207513198801NCNrvKxv)",
        "type": "new_api_error",
        "param": "",
        "code": "insufficient_user_quota",
    }
}
NEW_API_INVALID_TOKEN = {  # 401
    "error": {
        "message": "无效的令牌 (request id: 20250428121756843291057aBcDeFgH)",
        "type": "new_api_error",
        "param": "",
        "code": "",
    }
}
NEW_API_NO_CHANNEL = {  # 503
    "error": {
        "message": "当前分组 default 下对于模型 glm-4v-flash 无可用渠道 "
        "(request id: 20250428121801538810962kLmNoPqR)",
        "type": "new_api_error",
        "param": "",
        "code": "model_not_found",
    }
}

DEFAULT_USAGE = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}

_ROLES = ("system", "user", "assistant")
_DATA_URL = re.compile(r"data:([^;,]*);base64,(.*)", re.DOTALL)
_JSON_TYPES = {str: "a string", int: "an integer", float: "a decimal", bool: "a boolean", list: "an array",
               dict: "an object", type(None): "null"}


# --- Scripted replies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamReply:
    """An SSE answer; served as an equivalent chat.completion JSON when the request did not ask to stream."""

    chunks: tuple[str, ...]
    delay: float
    first_delay: float
    finish_reason: str | None
    usage: dict | None
    model: str
    pings: bool
    error_event: dict | None
    error_after: int | None
    trailing_blank_line: bool
    done: bool
    cut_after: int | None
    gate: asyncio.Event | None
    request_id: str | None


@dataclass(frozen=True)
class JsonReply:
    """Any body with any status, served as-is even to stream requests (relays do that)."""

    body: dict | list | str
    status: int
    headers: dict[str, str]
    content_type: str
    delay: float


@dataclass(frozen=True)
class HangReply:
    """Accept the request, stay silent, then drop the connection: drives the client's timeouts."""

    seconds: float


@dataclass(frozen=True)
class SilentStreamReply:
    """Answer 200 with SSE headers at once, then send nothing (or only pings) and end the stream."""

    seconds: float
    pings: bool
    ping_interval: float
    drop: bool


Reply = StreamReply | JsonReply | HangReply | SilentStreamReply


def stream_reply(
    chunks: list[str],
    *,
    delay: float = 0.0,
    first_delay: float = 0.0,
    finish_reason: str | None = "stop",
    usage: dict | None = DEFAULT_USAGE,
    model: str = "glm-4v-flash",
    pings: bool = False,
    error_event: dict | None = None,
    error_after: int | None = None,
    trailing_blank_line: bool = True,
    done: bool = True,
    cut_after: int | None = None,
    gate: asyncio.Event | None = None,
    request_id: str | None = None,
) -> StreamReply:
    """Script a streamed answer.

    `gate` is awaited (not cleared) before every content chunk after the first: leave it unset to hold the
    stream, `set()` to release the rest, or `set(); clear()` while the server waits to release one chunk.
    `error_event` is the inner error object (wrapped as {"error": ...}) unless it already has an "error" key.
    """
    return StreamReply(
        chunks=tuple(chunks), delay=delay, first_delay=first_delay, finish_reason=finish_reason,
        usage=None if usage is None else dict(usage), model=model, pings=pings, error_event=error_event,
        error_after=error_after, trailing_blank_line=trailing_blank_line, done=done, cut_after=cut_after,
        gate=gate, request_id=request_id,
    )


def json_reply(
    body: dict | list | str,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
    delay: float = 0.0,
) -> JsonReply:
    """Script a literal response; str bodies are sent unchanged (seed 002 strings, HTML error pages)."""
    return JsonReply(body=body, status=status, headers=dict(headers or {}), content_type=content_type,
                     delay=delay)


def completion_reply(
    content: str,
    *,
    finish_reason: str = "stop",
    usage: dict | None = DEFAULT_USAGE,
    model: str = "glm-4v-flash",
    finish_details: bool = False,
    request_id: str | None = None,
    status: int = 200,
) -> JsonReply:
    """Script a non-stream chat.completion; `finish_details=True` uses the seed-000 schema instead."""
    body = _completion_body(content, finish_reason=finish_reason, usage=usage, model=model,
                            finish_details=finish_details, request_id=request_id)
    return json_reply(body, status=status, headers=_request_id_header(request_id))


def error_reply(status: int, body: dict | str, *, headers: dict[str, str] | None = None) -> JsonReply:
    """Script an error response (reads better than json_reply at call sites)."""
    return json_reply(body, status=status, headers=headers)


def hang_reply(seconds: float) -> HangReply:
    """Script silence for `seconds`, after which the connection is dropped without a response."""
    return HangReply(seconds=seconds)


def silent_stream_reply(seconds: float, pings: bool = False, *, ping_interval: float = 1.0,
                        drop: bool = False) -> SilentStreamReply:
    """Script a provider that accepts (200, text/event-stream) and then sends no data for `seconds`.

    With `pings` only `: PING` comments arrive, every `ping_interval` seconds. Afterwards the stream ends
    cleanly, or the connection is dropped when `drop` is set.
    """
    return SilentStreamReply(seconds=seconds, pings=pings, ping_interval=ping_interval, drop=drop)


# --- Recording --------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One POST to /v1/chat/completions as the server saw it; header names are lower-cased."""

    path: str
    headers: dict[str, str]
    body: dict
    raw: bytes
    at: float
    first_chunk_at: float | None = None
    finished_at: float | None = None
    fetched: list[FetchedImage] = field(default_factory=list)  # downloads made in url_only mode

    @property
    def messages(self) -> list[dict]:
        messages = self.body.get("messages")
        return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []

    @property
    def api_key(self) -> str | None:
        """The bearer token the request was sent with, or None without a bearer Authorization header."""
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" else None

    @property
    def model(self) -> str | None:
        model = self.body.get("model")
        return model if isinstance(model, str) else None

    def images(self) -> list[bytes]:
        """Bytes of every image in message order: decoded inline ones, downloaded ones for remote URLs."""
        downloads = self._downloads()
        return [image for message in self.messages for image in _message_images(message, downloads)]

    def last_user_images(self) -> list[bytes]:
        users = [m for m in self.messages if m.get("role") == "user"]
        return _message_images(users[-1], self._downloads()) if users else []

    def _downloads(self) -> dict[str, bytes]:
        return {item.url: item.data for item in self.fetched if item.data is not None}

    def text_parts(self) -> list[str]:
        texts: list[str] = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts += [part["text"] for part in content if _is_text_part(part)]
        return texts


# --- The server -------------------------------------------------------------------------------------------


class _Step(NamedTuple):
    """One SSE event to write (without its terminator); text None means: drop the connection here."""

    text: str | None
    content_index: int | None = None


class FakeVision:
    """aiohttp server on 127.0.0.1: validates requests like a real endpoint, then serves scripted replies."""

    def __init__(self, api_key: str = "sk-test-key-123", *, require_max_tokens: bool = False,
                 max_images_per_request: int | None = None, image_input: ImageInput = "inline",
                 error_status_200: bool = False, extra_keys: Iterable[str] = (),
                 key_replies: Mapping[str, Reply] | None = None, models: Iterable[str] | None = None,
                 fetch_timeout: float = FETCH_TIMEOUT) -> None:
        """`image_input`: "inline" (data URLs or bare base64), "url_only" (the fake downloads http(s) image
        URLs, inline images get Zhipu 1210) or "raw_base64_only" (data URLs get 1210). `error_status_200`
        sends those 1210 rejections with HTTP 200. Keys in `key_replies` are valid too and always get their
        reply instead of the queue's. With `models` set, any other model gets 404 model_not_found."""
        if image_input not in IMAGE_INPUT_MODES:
            raise ValueError(f"image_input must be one of {IMAGE_INPUT_MODES}, not {image_input!r}")
        self.api_key = api_key
        self.extra_keys: list[str] = list(extra_keys)
        self.key_replies: dict[str, Reply] = dict(key_replies or {})
        self.models: set[str] | None = None if models is None else set(models)
        self.image_input: ImageInput = image_input
        self.error_status_200 = error_status_200
        self.require_max_tokens = require_max_tokens
        self.max_images_per_request = max_images_per_request
        self._fetcher = ImageFetcher(fetch_timeout)
        self.requests: list[RecordedRequest] = []
        self.disconnects: list[float] = []
        self.leaked_urls: list[str] = []
        self.default_reply: Reply = stream_reply(["This is ", "a test ", "image."])
        self._queue: deque[Reply] = deque()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._stopping = False

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeVision.start() has not been awaited")
        return f"http://127.0.0.1:{self._port}/v1"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client going away cancels the handler at once, so `disconnects` is exact;
        # a short shutdown_timeout keeps stop() prompt while handlers hang or stream.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.05, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._port = self._runner.addresses[0][1]
        self._stopping = False
        await self._fetcher.start()

    async def stop(self) -> None:
        if self._runner is None:
            return
        self._stopping = True
        await self._runner.cleanup()
        self._runner = None
        await self._fetcher.close()

    def enqueue(self, *replies: Reply) -> None:
        self._queue.extend(replies)

    async def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (public API)
        try:
            async with asyncio.timeout(timeout), self._arrived:
                await self._arrived.wait_for(lambda: len(self.requests) >= n)
        except TimeoutError:
            raise TimeoutError(f"expected {n} requests within {timeout}s, got {len(self.requests)}") from None

    # --- request handling ---

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST" or request.path != "/v1/chat/completions":
            return _json_response(404, _openai_error(f"Invalid URL ({request.method} {request.path})"))
        raw = await request.read()
        parsed = _parse_json(raw)
        headers = {name.lower(): value for name, value in request.headers.items()}
        body = parsed if isinstance(parsed, dict) else {}
        record = RecordedRequest(path=request.path, headers=headers, body=body, raw=raw, at=time.monotonic())
        self.leaked_urls += _telegram_file_urls(parsed)
        async with self._arrived:
            self.requests.append(record)
            self._arrived.notify_all()

        rejection = self._reject(request, parsed)
        if rejection is not None:
            record.finished_at = time.monotonic()
            return rejection
        try:
            rejection = await self._fetch_images(record)
            if rejection is not None:
                record.finished_at = time.monotonic()
                return rejection
            return await self._serve(self._next_reply(record), request, record)
        except asyncio.CancelledError:
            self._note_disconnect(record)
            raise
        except ConnectionResetError:
            self._note_disconnect(record)
            return web.Response()  # never reaches the client; aiohttp drops it quietly

    def _note_disconnect(self, record: RecordedRequest) -> None:
        if record.finished_at is None and not self._stopping:
            self.disconnects.append(time.monotonic())

    def _next_reply(self, record: RecordedRequest) -> Reply:
        key_reply = self.key_replies.get(record.api_key or "")
        if key_reply is not None:
            return key_reply
        return self._queue.popleft() if self._queue else self.default_reply

    def _reject(self, request: web.Request, body: Any) -> web.Response | None:
        """Answer like the real endpoint would before any model runs, or None to serve the scripted reply."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token not in {self.api_key, *self.extra_keys, *self.key_replies}:
            return _json_response(401, _invalid_key_body(token))
        problem = _validate(body, self.image_input)
        if problem is not None:
            return self._problem_response(problem)
        if self.models is not None and body["model"] not in self.models:
            return _json_response(404, _openai_error(
                f"The model `{body['model']}` does not exist or you do not have access to it.",
                code="model_not_found"))
        count = sum(len(_image_urls(m)) for m in body["messages"])
        if self.max_images_per_request is not None and count > self.max_images_per_request:
            return _json_response(400, _openai_error(
                f"Too many images in request: {count} images were sent, but this model accepts at most "
                f"{self.max_images_per_request} per request.", param="messages"))
        if self.require_max_tokens and "max_tokens" not in body:
            return _json_response(200, {"codes": 400, "mess": "max_tokens 参数缺失", "data": ""})
        return None

    def _problem_response(self, problem: dict) -> web.Response:
        """400, except Zhipu 1210 rejections behind a relay that answers errors with 200."""
        return _json_response(200 if self.error_status_200 and is_zhipu_1210(problem) else 400, problem)

    async def _fetch_images(self, record: RecordedRequest) -> web.Response | None:
        """In url_only mode download every distinct image URL once, as the provider would, before replying."""
        if self.image_input != "url_only":
            return None
        urls = dict.fromkeys(url for message in record.messages for url in _image_urls(message))
        results = await asyncio.gather(*(self._fetcher.fetch(url) for url in urls))
        record.fetched += [fetched for fetched, _ in results]
        reason = next((reason for _, reason in results if reason is not None), None)
        return None if reason is None else self._problem_response(zhipu_download_failed(reason))

    async def _serve(self, reply: Reply, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        if isinstance(reply, StreamReply):
            if record.body.get("stream") is True:
                return await self._serve_stream(reply, request, record)
            return await self._serve_stream_as_json(reply, request, record)
        if isinstance(reply, JsonReply):
            return await self._serve_json(reply, request, record)
        if isinstance(reply, SilentStreamReply):
            return await _serve_silent_stream(reply, request, record)
        await asyncio.sleep(reply.seconds)
        _drop_connection(request, record)
        return web.Response()

    async def _serve_json(self, reply: JsonReply, request: web.Request,
                          record: RecordedRequest) -> web.StreamResponse:
        await asyncio.sleep(reply.delay)
        body = reply.body if isinstance(reply.body, str) else _dumps(reply.body)
        response = web.Response(status=reply.status, body=body.encode(),
                                headers={**reply.headers, "Content-Type": reply.content_type})
        await response.prepare(request)
        await response.write_eof()
        record.finished_at = time.monotonic()
        return response

    async def _serve_stream_as_json(self, reply: StreamReply, request: web.Request,
                                    record: RecordedRequest) -> web.StreamResponse:
        await asyncio.sleep(reply.first_delay + reply.delay * max(len(reply.chunks) - 1, 0))
        if reply.cut_after is not None:
            _drop_connection(request, record)
            return web.Response()
        if reply.error_event is not None:
            equivalent = json_reply(_error_event_body(reply.error_event))
        else:
            body = _completion_body("".join(reply.chunks), finish_reason=reply.finish_reason,
                                    usage=reply.usage, model=reply.model, finish_details=False,
                                    request_id=reply.request_id)
            equivalent = json_reply(body, headers=_request_id_header(reply.request_id))
        return await self._serve_json(equivalent, request, record)

    async def _serve_stream(self, reply: StreamReply, request: web.Request,
                            record: RecordedRequest) -> web.StreamResponse:
        stream_options = record.body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        steps = _stream_steps(reply, include_usage=include_usage)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache",
                                               **_request_id_header(reply.request_id)})
        await response.prepare(request)
        last = len(steps) - 1
        for position, step in enumerate(steps):
            if step.content_index is not None:
                await _pace(reply, step.content_index)
                if reply.pings:
                    await response.write(b": PING\n\n")
            if step.text is None:
                _drop_connection(request, record)
                return response
            terminator = "\n\n" if position < last or reply.trailing_blank_line else "\n"
            await response.write((step.text + terminator).encode())
            if step.content_index == 0:
                record.first_chunk_at = time.monotonic()
        await response.write_eof()
        record.finished_at = time.monotonic()
        return response


# --- helpers ----------------------------------------------------------------------------------------------


def _stream_steps(reply: StreamReply, *, include_usage: bool) -> list[_Step]:
    """Lay out the whole event sequence up front so the last event is known (trailing_blank_line)."""
    base: dict[str, Any] = {"id": reply.request_id or _new_id(), "object": "chat.completion.chunk",
                            "created": int(time.time()), "model": reply.model}
    if reply.request_id:
        base["request_id"] = reply.request_id

    def chunk(delta: dict, finish_reason: str | None = None) -> str:
        return _sse_data({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

    n = len(reply.chunks)
    cut_at = None if reply.cut_after is None else min(reply.cut_after, n)
    error_at = None
    if reply.error_event is not None:
        error_at = n if reply.error_after is None else min(reply.error_after, n)
    stop_at = min((x for x in (cut_at, error_at) if x is not None), default=n)

    steps = [_Step(chunk({"role": "assistant"}))]
    steps += [_Step(chunk({"content": text}), i) for i, text in enumerate(reply.chunks[:stop_at])]
    if stop_at == cut_at:
        steps.append(_Step(None))
    elif stop_at == error_at and reply.error_event is not None:
        steps.append(_Step(_sse_data(_error_event_body(reply.error_event))))
    else:
        if reply.finish_reason is not None:
            steps.append(_Step(chunk({}, reply.finish_reason)))
        if include_usage and reply.usage is not None:
            steps.append(_Step(_sse_data({**base, "choices": [], "usage": reply.usage})))
        if reply.done:
            steps.append(_Step("data: [DONE]"))
    return steps


async def _pace(reply: StreamReply, index: int) -> None:
    if index == 0:
        await asyncio.sleep(reply.first_delay)
        return
    await asyncio.sleep(reply.delay)
    if reply.gate is not None:
        await reply.gate.wait()


async def _serve_silent_stream(reply: SilentStreamReply, request: web.Request,
                               record: RecordedRequest) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    deadline = time.monotonic() + reply.seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, reply.ping_interval) if reply.pings else left)
        if reply.pings and time.monotonic() < deadline:
            await response.write(b": PING\n\n")
    if reply.drop:
        _drop_connection(request, record)
        return response
    await response.write_eof()
    record.finished_at = time.monotonic()
    return response


def _drop_connection(request: web.Request, record: RecordedRequest) -> None:
    """Close the socket mid-response, as a crashing relay does; marks the request finished by the server."""
    record.finished_at = time.monotonic()
    if request.transport is not None:
        request.transport.close()


def _validate(body: Any, mode: ImageInput = "inline") -> dict | None:
    """OpenAI-style 400 body for the first problem in the request, or None."""
    if not isinstance(body, dict):
        return _openai_error(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
            "valid JSON. If you have trouble figuring out how to fix this, please contact us through our "
            "help center at help.openai.com.)")
    if not isinstance(body.get("model"), str):
        return _openai_error("you must provide a model parameter")
    messages = body.get("messages")
    if messages is None:
        return _openai_error("Missing required parameter: 'messages'.", param="messages",
                             code="missing_required_parameter")
    if not isinstance(messages, list):
        return _type_error("messages", "an array", messages)
    if not messages:
        return _openai_error("Invalid 'messages': empty array. Expected an array with minimum length 1, but "
                             "got an empty array instead.", param="messages", code="empty_array")
    problems = (_validate_message(message, f"messages[{i}]", mode) for i, message in enumerate(messages))
    return next((problem for problem in problems if problem is not None), None)


def _validate_message(message: Any, where: str, mode: ImageInput) -> dict | None:
    if not isinstance(message, dict):
        return _type_error(where, "an object", message)
    role = message.get("role")
    if role not in _ROLES:
        return _openai_error(f"Invalid value: '{role}'. Supported values are: 'system', "
                             "'assistant' and 'user'.", param=f"{where}.role", code="invalid_value")
    content = message.get("content")
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return _type_error(f"{where}.content", "one of a string or array of objects", content)
    problems = (_validate_part(part, f"{where}.content[{j}]", mode) for j, part in enumerate(content))
    return next((problem for problem in problems if problem is not None), None)


def _validate_part(part: Any, where: str, mode: ImageInput) -> dict | None:
    if not isinstance(part, dict):
        return _type_error(where, "an object", part)
    kind = part.get("type")
    if kind == "text":
        return None if _is_text_part(part) else _type_error(f"{where}.text", "a string", part.get("text"))
    if kind != "image_url":
        return _openai_error(f"Invalid value: '{kind}'. Supported values are: 'text' and "
                             "'image_url'.", param=f"{where}.type", code="invalid_value")
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else None
    if not isinstance(url, str):
        return _openai_error(f"Missing required parameter: '{where}.image_url.url'.",
                             param=f"{where}.image_url.url", code="missing_required_parameter")
    return _validate_image_url(url, f"{where}.image_url.url", mode)


def _validate_image_url(url: str, where: str, mode: ImageInput = "inline") -> dict | None:
    """Inline images pass unless the mode forbids them (Zhipu 1210); remote URLs pass only in url_only mode
    (fetched later). A Telegram file URL never passes: fetching it would use the bot token."""
    if TELEGRAM_FILE_MARK in url or (is_remote(url) and mode != "url_only"):
        return _openai_error("invalid image url: send the image bytes as a base64 data URL; remote URLs are "
                             "not fetched.", param=where, code="invalid_image_url")
    if mode == "url_only":
        return None if is_remote(url) else ZHIPU_INVALID_PARAMETER
    if mode == "raw_base64_only" and url.startswith("data:"):
        return ZHIPU_INVALID_PARAMETER
    match = _DATA_URL.fullmatch(url)
    if match is not None and match.group(1) not in {f"image/{f}" for f in IMAGE_FORMATS}:
        return OPENAI_INVALID_IMAGE
    data = _decode_image_url(url)
    return None if data is not None and is_image(data) else OPENAI_INVALID_IMAGE


def _is_text_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)


def _image_urls(message: dict) -> list[str]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [p["image_url"]["url"] for p in content
            if isinstance(p, dict) and p.get("type") == "image_url" and isinstance(p.get("image_url"), dict)
            and isinstance(p["image_url"].get("url"), str)]


def _message_images(message: dict, downloads: Mapping[str, bytes] | None = None) -> list[bytes]:
    """Inline images decoded; remote ones as downloaded (`downloads` maps URL to bytes), else skipped."""
    downloads = downloads or {}
    found = (downloads.get(url) if is_remote(url) else _decode_image_url(url) for url in _image_urls(message))
    return [data for data in found if data is not None]


def _decode_image_url(url: str) -> bytes | None:
    """Bytes of a base64 data URL or of raw base64 (Zhipu style); None for remote URLs and garbage."""
    if is_remote(url):
        return None
    match = _DATA_URL.fullmatch(url)
    try:
        return base64.b64decode(match.group(2) if match else url, validate=True)
    except (binascii.Error, ValueError):
        return None


def _telegram_file_urls(value: Any) -> list[str]:
    """Every Telegram file URL (it carries the bot token) anywhere in the body, image parts or text."""
    if isinstance(value, str):
        return _urls_around_mark(value)
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [url for item in value for url in _telegram_file_urls(item)]
    return []


def _urls_around_mark(text: str) -> list[str]:
    """The whitespace-delimited words containing the mark; linear, unlike a regex over 100 KB of base64."""
    found = []
    index = text.find(TELEGRAM_FILE_MARK)
    while index != -1:
        start = max(text.rfind(" ", 0, index), text.rfind("\n", 0, index)) + 1
        ends = [end for end in (text.find(" ", index), text.find("\n", index)) if end != -1]
        end = min(ends) if ends else len(text)
        found.append(text[start:end])
        index = text.find(TELEGRAM_FILE_MARK, end)
    return found


def _completion_body(content: str, *, finish_reason: str | None, usage: dict | None, model: str,
                     finish_details: bool, request_id: str | None) -> dict:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content}}
    if finish_details:
        choice["finish_details"] = {"type": finish_reason, "stop": "<|endoftext|>"}
    else:
        choice["finish_reason"] = finish_reason
    body: dict[str, Any] = {"id": request_id or _new_id(), "object": "chat.completion",
                            "created": int(time.time()), "model": model, "choices": [choice]}
    if usage is not None:
        body["usage"] = dict(usage)
    if request_id:
        body["request_id"] = request_id
    return body


def _error_event_body(error_event: dict) -> dict:
    return error_event if "error" in error_event else {"error": error_event}


def _invalid_key_body(token: str) -> dict:
    return _openai_error(f"Incorrect API key provided: {token[:8]}***. You can find your API key at "
                         "https://platform.openai.com/account/api-keys.", code="invalid_api_key")


def _openai_error(message: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def _type_error(param: str, expected: str, value: Any) -> dict:
    got = _JSON_TYPES.get(type(value), "an unknown type")
    return _openai_error(f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
                         param=param, code="invalid_type")


def _request_id_header(request_id: str | None) -> dict[str, str]:
    return {"x-request-id": request_id} if request_id else {}


def _json_response(status: int, body: dict) -> web.Response:
    return web.Response(status=status, body=_dumps(body).encode(), content_type="application/json")


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _sse_data(payload: dict) -> str:
    return f"data: {_dumps(payload)}"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))  # compact, like the real services


def _new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"

