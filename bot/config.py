"""Settings from the environment and `.env`, validated once at start-up."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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
    DATA_URL = "data_url"
    RAW_BASE64 = "raw_base64"


# Images per request by model-name prefix (longest first); other models get DEFAULT_IMAGES_PER_REQUEST.
KNOWN_IMAGE_LIMITS: tuple[tuple[str, int], ...] = (
    ("glm-4v-flash", 1),
    ("glm-4v-plus", 5),
    ("glm-4v", 1),
)
DEFAULT_IMAGES_PER_REQUEST = 10

# Fields the bot itself must control; VISION_EXTRA_BODY may add or override anything else.
RESERVED_BODY_FIELDS = frozenset({"messages", "stream", "stream_options"})


class Settings(BaseSettings):
    """Every knob of the bot; names match the environment variables (case-insensitive)."""

    # An empty `VAR=` in .env means "not set", as operators expect from the commented example file.
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore",
                                      env_ignore_empty=True)

    bot_token: SecretStr
    telegram_api_url: str = "https://api.telegram.org"
    bot_mode: BotMode = BotMode.POLLING
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_host: str = "0.0.0.0"  # a container's webhook must be reachable from outside
    webhook_port: int = Field(default=8080, ge=1, le=65535)

    vision_base_url: str
    vision_api_key: SecretStr
    vision_model: str = "glm-4v-flash"
    vision_max_tokens: int = Field(default=1024, ge=1, le=128_000)
    vision_temperature: float | None = Field(default=None, ge=0, le=2)
    vision_timeout: float = Field(default=120.0, gt=0, description="seconds without a byte from the provider")
    vision_system_prompt: str | None = None
    vision_max_images_per_request: int | None = Field(default=None, ge=1, le=50)
    vision_image_detail: ImageDetail | None = None
    vision_image_format: ImageFormat = ImageFormat.DATA_URL
    vision_stream: bool = True
    vision_extra_body: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict)

    database_url: str = "sqlite:///data/bot.sqlite3"
    admin_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    allowed_user_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    allowed_chat_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    user_rate_limit: str | None = Field(default=None, description="e.g. 10/min; unset = no limit")
    user_daily_tokens: int | None = Field(default=None, ge=1)
    chat_daily_tokens: int | None = Field(default=None, ge=1)
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    context_max_turns: int = Field(default=20, ge=1, le=200)
    context_max_images: int = Field(default=3, ge=0, le=20)
    context_ttl: int = Field(default=6 * 3600, ge=60, description="seconds of silence that start a new conversation")

    stream_mode: StreamMode = StreamMode.AUTO
    rich_messages: bool = False
    shutdown_grace: float = Field(default=15.0, ge=0, description="seconds in-flight answers get to finish")
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)

    @field_validator("admin_ids", "allowed_user_ids", "allowed_chat_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(int(part) for part in value.replace(";", ",").split(",") if part.strip())
        return value

    @field_validator("user_rate_limit")
    @classmethod
    def _rate_shape(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_rate(value)
            return value.strip()
        return None

    @field_validator("webhook_secret")
    @classmethod
    def _secret_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and - (Telegram's rule)")
        return value

    @model_validator(mode="after")
    def _webhook_complete(self) -> Settings:
        if self.bot_mode is BotMode.WEBHOOK:
            missing = [name for name in ("webhook_url", "webhook_secret") if not getattr(self, name)]
            if missing:
                raise ValueError(f"{', '.join(name.upper() for name in missing)} required when BOT_MODE=webhook")
            if not (self.webhook_url or "").startswith("https://"):
                raise ValueError("WEBHOOK_URL must be an https:// URL (Telegram only calls https)")
        return self

    @field_validator("vision_extra_body", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
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
        return value

    @field_validator("vision_base_url", "telegram_api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("bot_token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        bot_id, _, secret = value.get_secret_value().partition(":")
        if not bot_id.isdigit() or not secret:
            raise ValueError("must look like 123456:ABC... (from @BotFather)")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("database_url")
    @classmethod
    def _sqlite_url(cls, value: str) -> str:
        if not value.startswith("sqlite:///"):
            raise ValueError("only sqlite:///path/to/file.sqlite3 is supported")
        return value

    @property
    def max_images_per_request(self) -> int:
        """VISION_MAX_IMAGES_PER_REQUEST, or what the model is known to accept."""
        if self.vision_max_images_per_request is not None:
            return self.vision_max_images_per_request
        model = self.vision_model.lower()
        for prefix, limit in KNOWN_IMAGE_LIMITS:
            if model.startswith(prefix):
                return limit
        return DEFAULT_IMAGES_PER_REQUEST

    @property
    def database_path(self) -> Path:
        return Path(self.database_url.removeprefix("sqlite:///"))


_RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600, "day": 86400}


def parse_rate(value: str) -> tuple[int, int]:
    """'10/min' -> (10, 60): that many requests per that many seconds."""
    count, _, unit = value.strip().partition("/")
    unit = unit.strip().lower()
    seconds = _RATE_UNITS.get(unit) or _RATE_UNITS.get(unit.removesuffix("s"))
    if not count.strip().isdigit() or int(count) < 1 or seconds is None:
        raise ValueError("must look like 10/min (units: s, min, hour, day)")
    return int(count), seconds


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the variable and is fit to print."""


def load_settings(**overrides: object) -> Settings:
    """Load settings, turning pydantic's report into one line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        variable = str(error["loc"][0]).upper() if error["loc"] else "BOT_MODE"
        if error["type"] == "missing":
            problems.append(f"{variable} is required but not set")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{variable} is invalid: {message}")
    return "; ".join(problems)
