"""One error hierarchy for everything that can go wrong while answering.

Each class has a stable `kind` used to pick the user's text, the operator's alert and metrics labels.
"""

from __future__ import annotations


class BotError(Exception):
    """Base of every expected failure; anything else is a bug."""

    kind = "internal"


class ImageError(BotError):
    """The user's image cannot be used."""

    kind = "bad_image"


class ImageTooLargeError(ImageError):
    kind = "image_too_large"


class ImageDownloadError(ImageError):
    """Telegram did not hand the file over; usually passing."""

    kind = "image_download"


class RequestRefused(BotError):
    """Our own limits said no before any provider call."""

    kind = "refused"


class UserRateLimited(RequestRefused):
    kind = "user_rate_limited"

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited for {retry_after:.0f} s")
        self.retry_after = retry_after


class BudgetExhausted(RequestRefused):
    """The user's or the chat's daily token budget is spent."""

    kind = "daily_budget"

    def __init__(self, scope: str) -> None:
        super().__init__(f"daily token budget of the {scope} is spent")
        self.scope = scope


class VisionError(BotError):
    """The vision provider failed; carries what the operator needs to diagnose it."""

    kind = "provider"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body_excerpt: str = "",
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body_excerpt = body_excerpt
        self.request_id = request_id


class AuthError(VisionError):
    """The API key was rejected or expired."""

    kind = "auth"


class QuotaError(VisionError):
    """Balance or quota exhausted: retrying only burns time."""

    kind = "quota"


class ContentPolicyError(VisionError):
    """The provider refused the question or image on safety grounds."""

    kind = "content_policy"


class RateLimitError(VisionError):
    """Too many requests right now; worth retrying after a pause."""

    kind = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, **details: object) -> None:
        super().__init__(message, **details)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ContextTooLongError(VisionError):
    """The conversation no longer fits the model's context window."""

    kind = "context_too_long"


class ModelNotFoundError(VisionError):
    """VISION_MODEL or VISION_BASE_URL is wrong: the operator must fix the configuration."""

    kind = "misconfigured"


class BadRequestError(VisionError):
    """The provider rejected the request's shape; usually a configuration or compatibility problem."""

    kind = "bad_request"


class ImageRejectedError(VisionError):
    """The provider could not use the image."""

    kind = "image_rejected"


class UnavailableError(VisionError):
    """Provider down, overloaded, unreachable or too slow; a later try may work."""

    kind = "unavailable"


class StreamCutError(VisionError):
    """The answer stopped before the provider said it was finished."""

    kind = "stream_cut"


class EmptyAnswerError(VisionError):
    """The provider finished without a single word (some relays turn errors into empty streams)."""

    kind = "empty_answer"


class ProviderTimeoutError(UnavailableError):
    """The provider said nothing in time. `maybe_billed`: the request reached it and may be charged, so it is not
    sent to the same provider again."""

    kind = "timeout"

    def __init__(self, message: str, *, maybe_billed: bool = False, **details: object) -> None:
        super().__init__(message, **details)  # type: ignore[arg-type]
        self.maybe_billed = maybe_billed


class ImageUrlsRequiredError(VisionError):
    """The model takes images only as URLs, and the bot has nowhere to publish them (no PUBLIC_BASE_URL, no S3)."""

    kind = "needs_image_urls"


class ImagePublishError(VisionError):
    """An image could not be published for a provider that fetches URLs (S3 down, bucket missing)."""

    kind = "image_publish"
