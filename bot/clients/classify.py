"""Turn a provider's reply (status + headers + body) into a typed error, or None when it is a usable answer.

Relays disagree on everything: errors arrive as HTTP 200 with `{"codes": 900, "mess": ...}`, as OpenAI-style
`{"error": {...}}`, as Zhipu's numeric codes, or as plain text. Status and body are read together.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from bot import errors

BODY_EXCERPT_CHARS = 500

# The seed relays' numeric `codes` field.
_RELAY_CODES: dict[int, type[errors.VisionError]] = {
    900: errors.AuthError,
    300: errors.QuotaError,
    400: errors.ContentPolicyError,
    402: errors.ContentPolicyError,
}

_ERROR_CODES: dict[str, type[errors.VisionError]] = {
    # OpenAI
    "invalid_api_key": errors.AuthError,
    "invalid_authentication": errors.AuthError,
    "account_deactivated": errors.AuthError,
    "insufficient_quota": errors.QuotaError,
    "billing_hard_limit_reached": errors.QuotaError,
    "content_policy_violation": errors.ContentPolicyError,
    "content_filter": errors.ContentPolicyError,
    "invalid_prompt": errors.ContentPolicyError,
    "rate_limit_exceeded": errors.RateLimitError,
    "context_length_exceeded": errors.ContextTooLongError,
    "string_above_max_length": errors.ContextTooLongError,
    "model_not_found": errors.ModelNotFoundError,
    "invalid_image_format": errors.ImageRejectedError,
    "invalid_image": errors.ImageRejectedError,
    "image_parse_error": errors.ImageRejectedError,
    "invalid_image_url": errors.ImageRejectedError,
    "server_error": errors.UnavailableError,
    # one-api / new-api relays
    "insufficient_user_quota": errors.QuotaError,
    "pre_consume_token_quota_failed": errors.QuotaError,
    "token_quota_exhausted": errors.QuotaError,
    "invalid_token": errors.AuthError,
    "token_expired": errors.AuthError,
    "get_channel_failed": errors.UnavailableError,
    "model_not_exist": errors.ModelNotFoundError,
    # Zhipu (numeric codes arrive as strings)
    "1000": errors.AuthError,
    "1001": errors.AuthError,
    "1002": errors.AuthError,
    "1003": errors.AuthError,
    "1004": errors.AuthError,
    "1113": errors.QuotaError,
    "1210": errors.BadRequestError,
    "1211": errors.ModelNotFoundError,
    "1214": errors.BadRequestError,
    "1261": errors.ContextTooLongError,
    "1301": errors.ContentPolicyError,
    "1302": errors.RateLimitError,
    "1303": errors.RateLimitError,
    "1305": errors.RateLimitError,
}

_ERROR_TYPES: dict[str, type[errors.VisionError]] = {
    "authentication_error": errors.AuthError,
    "permission_error": errors.AuthError,
    "insufficient_quota": errors.QuotaError,
    "rate_limit_error": errors.RateLimitError,
    "overloaded_error": errors.UnavailableError,
    "server_error": errors.UnavailableError,
}

# Last resort when neither status nor code says it: words the services use in their messages.
_MESSAGE_PATTERNS: tuple[tuple[re.Pattern[str], type[errors.VisionError]], ...] = (
    (re.compile(r"quota|balance|credit|billing|余额|额度|欠费|充值", re.I), errors.QuotaError),
    (re.compile(r"api[ _-]?key|密钥|令牌|unauthori[sz]ed|invalid token|token.*(invalid|expired)", re.I),
     errors.AuthError),
    (re.compile(r"safety|content.?(policy|filter|management)|内容安全|敏感|违规|不合规|非法", re.I),
     errors.ContentPolicyError),
    (re.compile(r"context.?length|maximum context|too many tokens|prompt.*too long|超过.*长度", re.I),
     errors.ContextTooLongError),
    (re.compile(r"rate.?limit|too many requests|频率|并发", re.I), errors.RateLimitError),
    (re.compile(r"model.*(not (found|exist)|does not exist)|模型.*不存在|无可用渠道|no available channel", re.I),
     errors.ModelNotFoundError),
    (re.compile(r"image|图片|图像", re.I), errors.ImageRejectedError),
)

_MESSAGE_FIELDS = ("message", "msg", "mess", "detail", "error_msg", "errmsg")
_REQUEST_ID_IN_TEXT = re.compile(r"request id:?\s*([\w-]+)", re.I)
_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-oneapi-request-id", "x-new-api-request-id", "x-log-id")


def parse_body(text: str) -> Any:
    """JSON; JSON inside a JSON string; else a completion salvaged from `"content": "..."` in the text.

    Seed 002 documents its HTTP 200 body as a string "to be searched with a regular expression".
    """
    value: Any = text
    for _ in range(2):
        if not isinstance(value, str):
            return value
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack allows
            break
    return _salvage_completion(value) if isinstance(value, str) else value


_CONTENT_FIELD = re.compile(r'"content"\s*:\s*"((?:[^"\\]|\\.)*)"')


_CHOICES_FIELD = re.compile(r'"choices"\s*:')


def _salvage_completion(text: str) -> Any:
    """Only a `content` inside `choices`: one elsewhere may be the request echoed back (the user's own question)."""
    choices = _CHOICES_FIELD.search(text)
    if choices is None:
        return text
    match = _CONTENT_FIELD.search(text, choices.end())
    if match is None:
        return text
    try:
        content = json.loads(f'"{match.group(1)}"')
    except ValueError:
        return text
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


def classify(status: int, headers: Mapping[str, str], body: Any, raw: str) -> errors.VisionError | None:
    """None when `body` is a usable completion (a dict with `choices`); a typed error otherwise."""
    if 200 <= status < 300 and isinstance(body, dict) and isinstance(body.get("choices"), list) \
            and not _has_error(body):
        return None
    error_class = (
        _class_from_body(body)
        or _class_from_relay_code_in(_message_of(body, raw))
        or _class_from_status(status)
        or _class_from_message(_message_of(body, raw))
        or (errors.RateLimitError if status == 429 else errors.BadRequestError)
    )
    return build_error(error_class, status, headers, body, raw)


def classify_stream_error(payload: Mapping[str, Any], status: int, headers: Mapping[str, str],
                          raw: str) -> errors.VisionError:
    """An error event in the middle of an SSE stream."""
    error_class = _class_from_body(payload) or _class_from_message(_message_of(payload, raw))
    return build_error(error_class or errors.UnavailableError, status, headers, payload, raw)


def build_error(error_class: type[errors.VisionError], status: int, headers: Mapping[str, str], body: Any,
                raw: str) -> errors.VisionError:
    message = _message_of(body, raw) or f"HTTP {status}"
    details: dict[str, Any] = {
        "status": status,
        "body_excerpt": raw[:BODY_EXCERPT_CHARS],
        "request_id": request_id_of(headers, body, message),
    }
    if error_class is errors.RateLimitError:
        return errors.RateLimitError(message, retry_after=retry_after_of(headers), **details)
    return error_class(message, **details)


def _has_error(body: dict[str, Any]) -> bool:
    return bool(body.get("error")) or ("codes" in body and not body.get("choices"))


def _class_from_body(body: Any) -> type[errors.VisionError] | None:
    if not isinstance(body, dict):
        return None
    codes = body.get("codes")
    if isinstance(codes, int | str) and _RELAY_CODE.fullmatch(str(codes)):
        return _RELAY_CODES.get(int(codes)) or _class_from_message(_message_of(body, "")) \
            or errors.BadRequestError
    error = body.get("error")
    if isinstance(error, dict):
        for candidate in (error.get("code"), error.get("type")):
            if candidate is None:
                continue
            found = _ERROR_CODES.get(str(candidate)) or _ERROR_TYPES.get(str(candidate))
            if found:
                return _refine_rate_limit(found, error)
    code = body.get("code")
    if code is not None and str(code) in _ERROR_CODES:
        return _ERROR_CODES[str(code)]
    return None


# A relay's numeric `codes`, as int() takes it (str.isdigit also passes "²", "--1" and 5000 digits).
_RELAY_CODE = re.compile(r"-?[0-9]{1,18}")
# A proxy in between (LiteLLM) reports a relay's HTTP-200 error as a 500 quoting the raw body.
_EMBEDDED_RELAY_CODE = re.compile(r"""['"]codes['"]\s*:\s*['"]?([0-9]{1,18})(?![0-9])""")


def _class_from_relay_code_in(message: str) -> type[errors.VisionError] | None:
    match = _EMBEDDED_RELAY_CODE.search(message)
    return _RELAY_CODES.get(int(match.group(1))) if match else None


def _refine_rate_limit(found: type[errors.VisionError], error: dict[str, Any]) -> type[errors.VisionError]:
    """OpenAI sends quota exhaustion as a 429 whose type says insufficient_quota."""
    if found is errors.RateLimitError and _class_from_message(str(error.get("message", ""))) is errors.QuotaError:
        return errors.QuotaError
    return found


# 429 is absent on purpose: quota or rate limit, the message decides (rate limit by default).
_STATUS_CLASSES: dict[int, type[errors.VisionError]] = {
    401: errors.AuthError,
    403: errors.AuthError,
    402: errors.QuotaError,
    404: errors.ModelNotFoundError,
    413: errors.ImageRejectedError,
    408: errors.UnavailableError,
    409: errors.UnavailableError,
}


def _class_from_status(status: int) -> type[errors.VisionError] | None:
    if status >= 500:
        return errors.UnavailableError
    return _STATUS_CLASSES.get(status)


def _class_from_message(message: str) -> type[errors.VisionError] | None:
    for pattern, error_class in _MESSAGE_PATTERNS:
        if pattern.search(message):
            return error_class
    return None


def _message_of(body: Any, raw: str) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            for field in _MESSAGE_FIELDS:
                if isinstance(error.get(field), str) and error[field]:
                    return error[field]
        if isinstance(error, str) and error:
            return error
        for field in _MESSAGE_FIELDS:
            if isinstance(body.get(field), str) and body[field]:
                return body[field]
    if isinstance(body, str):
        return body.strip()[:BODY_EXCERPT_CHARS]
    return raw.strip()[:BODY_EXCERPT_CHARS]


def request_id_of(headers: Mapping[str, str], body: Any, message: str = "") -> str | None:
    for name in _REQUEST_ID_HEADERS:
        if headers.get(name):
            return headers[name]
    if isinstance(body, dict):
        for field in ("request_id", "requestId", "id"):
            if isinstance(body.get(field), str) and body[field]:
                return body[field]
    match = _REQUEST_ID_IN_TEXT.search(message)
    return match.group(1) if match else None


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI) or `Retry-After` (seconds)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue
    return None


# Zhipu answers 1210/1214 ("invalid parameter") to an image encoding it does not take; others name the encoding.
_ENCODING_REJECTION = re.compile(
    r"""['"]code['"]\s*:\s*['"]?(1210|1214)\b|base64|data:image|data url|image[ _]?(format|url|type|encoding)"""
    r"|invalid (api )?param|参数(有误|错误|非法)|非法参数|图片格式|图像格式", re.I)


def rejects_image_encoding(error: errors.VisionError) -> bool:
    """Whether a request with images may have been refused for how they were encoded, not for what they show."""
    if not isinstance(error, errors.BadRequestError | errors.ImageRejectedError):
        return False
    return bool(_ENCODING_REJECTION.search(f"{error.message}\n{error.body_excerpt}"))
