"""Settings from the environment and `.env`, validated once at start-up."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class StreamMode(StrEnum):
    AUTO = "auto"
    EDIT = "edit"


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

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    bot_token: SecretStr
    telegram_api_url: str = "https://api.telegram.org"

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
    log_level: str = "INFO"

    context_max_turns: int = Field(default=20, ge=1, le=200)
    context_max_images: int = Field(default=3, ge=0, le=20)
    context_ttl: int = Field(default=6 * 3600, ge=60, description="seconds of silence that start a new conversation")

    stream_mode: StreamMode = StreamMode.AUTO
    rich_messages: bool = False
    shutdown_grace: float = Field(default=15.0, ge=0, description="seconds in-flight answers get to finish")
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(int(part) for part in value.replace(";", ",").split(",") if part.strip())
        return value

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
        variable = str(error["loc"][0]).upper() if error["loc"] else "settings"
        if error["type"] == "missing":
            problems.append(f"{variable} is required but not set")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{variable} is invalid: {message}")
    return "; ".join(problems)
