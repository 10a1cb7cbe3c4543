"""The value types settings are made of: modes, providers, model image limits, rates; parsed and checked here."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class StreamMode(StrEnum):
    AUTO = "auto"
    EDIT = "edit"


class BotMode(StrEnum):
    POLLING = "polling"
    WEBHOOK = "webhook"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class ImageDetail(StrEnum):
    AUTO = "auto"
    LOW = "low"
    HIGH = "high"


class ImageFormat(StrEnum):
    """How images travel to the provider; `auto` learns per model what the provider accepts."""

    AUTO = "auto"
    DATA_URL = "data_url"
    RAW_BASE64 = "raw_base64"
    URL = "url"


# Images per request by model-name prefix (longest first); other models get DEFAULT_IMAGES_PER_REQUEST.
KNOWN_IMAGE_LIMITS: tuple[tuple[str, int], ...] = (
    ("glm-4v-flash", 1),
    ("glm-4v-plus", 5),
    ("glm-4v", 1),
)
DEFAULT_IMAGES_PER_REQUEST = 10

# Fields the bot itself must control (a `max_tokens` of the operator's goes in VISION_MAX_TOKENS, where budgets see
# it); VISION_EXTRA_BODY may add or override anything else.
RESERVED_BODY_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "max_tokens"})


def image_limit_of(model: str) -> int:
    """Images per request a model is known to accept (VISION_MAX_IMAGES_PER_REQUEST overrides it)."""
    name = model.lower()
    for prefix, limit in KNOWN_IMAGE_LIMITS:
        if name.startswith(prefix):
            return limit
    return DEFAULT_IMAGES_PER_REQUEST


def split_keys(value: SecretStr) -> list[SecretStr]:
    """`key1,key2` -> each key on its own; whitespace around commas is ignored."""
    return [SecretStr(part.strip()) for part in value.get_secret_value().split(",") if part.strip()]


def checked_extra_body(value: object) -> dict[str, Any]:
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object, e.g. {\"top_p\": 0.9}")  # noqa: TRY004 - pydantic wants ValueError
    reserved = RESERVED_BODY_FIELDS & value.keys()
    if reserved:
        raise ValueError(f"may not set {', '.join(sorted(reserved))} (the bot controls them)")
    if not isinstance(value.get("n", 1), int) or value.get("n", 1) != 1:
        raise ValueError("may not ask for n > 1 answers (each is billed, one is shown)")
    return value


def checked_http_url(value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


class FallbackProvider(BaseModel):
    """One entry of VISION_FALLBACKS: another OpenAI-compatible provider asked when the ones before it fail."""

    model_config = ConfigDict(extra="forbid")

    base_url: str
    api_key: SecretStr
    model: str
    image_format: ImageFormat = ImageFormat.AUTO
    max_images: int | None = Field(default=None, ge=1, le=50)
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return checked_http_url(value)

    @field_validator("extra_body", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
        return checked_extra_body(value)

    @field_validator("api_key")
    @classmethod
    def _some_key(cls, value: SecretStr) -> SecretStr:
        if not split_keys(value):
            raise ValueError("api_key is empty")
        return value

    @property
    def api_keys(self) -> list[SecretStr]:
        return split_keys(self.api_key)

    @property
    def max_images_per_request(self) -> int:
        return self.max_images if self.max_images is not None else image_limit_of(self.model)


_RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600, "day": 86400}


def parse_rate(value: str) -> tuple[int, int]:
    """'10/min' -> (10, 60): that many requests per that many seconds."""
    count, _, unit = value.strip().partition("/")
    unit = unit.strip().lower()
    seconds = _RATE_UNITS.get(unit) or _RATE_UNITS.get(unit.removesuffix("s"))
    if not count.strip().isdigit() or int(count) < 1 or seconds is None:
        raise ValueError("must look like 10/min (units: s, min, hour, day)")
    return int(count), seconds
