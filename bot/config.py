"""Settings from the environment and `.env`, validated once at start-up."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any
from urllib.parse import urlparse

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.config_values import (
    BotMode,
    FallbackProvider,
    ImageDetail,
    ImageFormat,
    LogFormat,
    StreamMode,
    checked_extra_body,
    checked_http_url,
    image_limit_of,
    parse_rate,
    split_keys,
)

__all__ = ["BotMode", "FallbackProvider", "ImageDetail", "ImageFormat", "LogFormat", "Settings", "SettingsError",
           "StreamMode", "load_settings", "parse_rate"]


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
    vision_first_token_timeout: float = Field(default=40.0, gt=0, description="seconds one attempt waits for text")
    vision_idle_timeout: float = Field(default=60.0, gt=0, validation_alias=AliasChoices(
        "vision_idle_timeout", "vision_timeout"), description="seconds without new data once text is flowing")
    vision_max_wait: float = Field(default=90.0, gt=0, description="seconds a question waits for its first text, "
                                   "retries and fallbacks included")
    slow_notice_after: float = Field(default=15.0, ge=0, description="seconds without text before saying so")
    vision_system_prompt: str | None = None
    vision_max_images_per_request: int | None = Field(default=None, ge=1, le=50)
    vision_image_detail: ImageDetail | None = None
    vision_image_format: ImageFormat = ImageFormat.AUTO
    vision_stream: bool = True
    vision_extra_body: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict)
    vision_models: Annotated[tuple[str, ...], NoDecode] = ()
    vision_fallbacks: Annotated[tuple[FallbackProvider, ...], NoDecode] = ()
    album_grid: bool = True

    public_base_url: str | None = None
    image_url_ttl: float = Field(default=600.0, ge=10, le=7 * 86400)
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str | None = None

    database_url: str = "sqlite:///data/bot.sqlite3"
    redis_url: SecretStr | None = None
    redis_prefix: str = Field(default="vision-bot:", min_length=1, description="key prefix: one Redis, several bots")
    admin_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    allowed_user_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    allowed_chat_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    user_rate_limit: str | None = Field(default=None, description="e.g. 10/min; unset = no limit")
    user_daily_tokens: int | None = Field(default=None, ge=1)
    chat_daily_tokens: int | None = Field(default=None, ge=1)
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"  # operators' data: reachable from this host only, unless exposed on purpose
    metrics_token: SecretStr | None = None

    context_max_turns: int = Field(default=20, ge=1, le=200)
    context_max_images: int = Field(default=3, ge=0, le=20)
    context_ttl: int = Field(default=6 * 3600, ge=60, description="seconds of silence that start a new conversation")

    stream_mode: StreamMode = StreamMode.AUTO
    rich_messages: bool = False
    shutdown_grace: float = Field(default=15.0, ge=0, description="seconds in-flight answers get to finish")
    resume_max_age: float = Field(default=600.0, ge=0, description="seconds after which an interrupted question "
                                  "is not answered after a restart, but the asker told to ask again")
    inbox_retention: float = Field(default=7 * 86400, ge=60, description="seconds handled updates are remembered "
                                   "(duplicates within it are ignored)")
    usage_retention_days: int = Field(default=400, ge=1, description="days of usage records kept for /stats")
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
        return checked_extra_body(value)

    @field_validator("vision_models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
        return value

    @field_validator("vision_fallbacks", mode="before")
    @classmethod
    def _json_list(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return ()
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not valid JSON ({exc})") from None
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ValueError('must be a JSON list: [{"base_url": ..., "api_key": ..., "model": ...}]')  # noqa: TRY004
        return value

    @field_validator("vision_api_key")
    @classmethod
    def _some_key(cls, value: SecretStr) -> SecretStr:
        if not split_keys(value):
            raise ValueError("is empty")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and urlparse(value.get_secret_value()).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("public_base_url", "s3_endpoint_url")
    @classmethod
    def _optional_http_url(cls, value: str | None) -> str | None:
        return checked_http_url(value) if value else None

    @model_validator(mode="after")
    def _publishing_complete(self) -> Settings:
        s3 = {"S3_BUCKET": self.s3_bucket, "S3_ACCESS_KEY_ID": self.s3_access_key_id,
              "S3_SECRET_ACCESS_KEY": self.s3_secret_access_key}
        if any(s3.values()) and not all(s3.values()):
            missing = ", ".join(name for name, value in s3.items() if not value)
            raise ValueError(f"{missing} required when S3 publishing is configured")
        formats = [self.vision_image_format, *(fallback.image_format for fallback in self.vision_fallbacks)]
        if ImageFormat.URL in formats and not self.publishes_images:
            raise ValueError("VISION_IMAGE_FORMAT=url needs PUBLIC_BASE_URL or S3_BUCKET (somewhere to publish "
                             "images)")
        return self

    @field_validator("vision_base_url", "telegram_api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return checked_http_url(value)

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
    def _database_url(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must be sqlite:///path/to/file.sqlite3 or postgresql://user:password@host:port/database")
        return value

    def max_images_for(self, model: str) -> int:
        """VISION_MAX_IMAGES_PER_REQUEST, or what the primary provider's model is known to accept."""
        if self.vision_max_images_per_request is not None:
            return self.vision_max_images_per_request
        return image_limit_of(model)

    @property
    def max_images_per_request(self) -> int:
        return self.max_images_for(self.vision_model)

    @property
    def vision_api_keys(self) -> list[SecretStr]:
        return split_keys(self.vision_api_key)

    @property
    def selectable_models(self) -> tuple[str, ...]:
        """VISION_MODELS, with VISION_MODEL always first: the models users may choose per chat."""
        return tuple(dict.fromkeys((self.vision_model, *self.vision_models)))

    @property
    def publishes_images(self) -> bool:
        return bool(self.public_base_url or self.s3_bucket)

    def secrets(self) -> list[str]:
        """Every secret value, for log redaction: keys of every provider, tokens, passwords."""
        values = [self.bot_token, *self.vision_api_keys, self.vision_api_key, self.webhook_secret,
                  self.s3_secret_access_key, self.redis_url, self.metrics_token]
        for fallback in self.vision_fallbacks:
            values += [fallback.api_key, *fallback.api_keys]
        passwords = [urlparse(url).password for url in (self.database_url,)]
        return [value.get_secret_value() for value in values if value is not None] + [p for p in passwords if p]


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
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:  # a rule across settings: its message names them
            problems.append(message)
            continue
        variable, *inside = error["loc"]
        name = str(variable).upper()
        # Inside a JSON setting (VISION_FALLBACKS): the entry and field, e.g. "[0].api_key".
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in inside).lstrip(".")
        if error["type"] == "missing":
            problems.append(f"{name} is invalid: {where} is required" if where else f"{name} is required but not set")
        else:
            problems.append(f"{name} is invalid: {where + ': ' if where else ''}{message}")
    return "; ".join(problems)
