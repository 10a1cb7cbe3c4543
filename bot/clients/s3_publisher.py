"""Publishing prepared images to an S3-compatible bucket (AWS S3, Cloudflare R2, Alibaba OSS, MinIO) behind presigned
URLs, for bots the provider cannot reach directly (a home server on long polling).

The bucket stays private: each object gets an unguessable key and the provider receives a presigned GET URL that
expires after `ttl` seconds; the object itself is deleted by a background sweep soon after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlsplit

from aiobotocore.session import AioSession
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from bot.clients.publishing import TOKEN_BYTES
from bot.models import PreparedImage

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "vision-bot/"
DEFAULT_SWEEP_INTERVAL = 60.0
# The longest lifetime S3 accepts for a SigV4 presigned URL (7 days).
MAX_TTL = 7 * 24 * 3600
# DeleteObjects takes at most 1000 keys per call.
DELETE_BATCH = 1000
# Used when no region is configured: AWS's default, and what MinIO and moto accept.
DEFAULT_REGION = "us-east-1"


class S3PublishError(RuntimeError):
    """The image could not be uploaded; names the bucket and the S3 error code, never a credential."""

    def __init__(self, bucket: str, code: str, detail: str) -> None:
        super().__init__(f"could not upload the image to S3 bucket {bucket!r}: {code} ({detail})")
        self.bucket = bucket
        self.code = code


class S3ImagePublisher:
    """`ImagePublisher` over any S3-compatible bucket; `await start()` before use, `await close()` at shutdown.

    Live keys are kept in upload order, which is expiry order (one TTL, a monotonic clock), so a sweep stops at the
    first live key. Deletion failures are only logged: the keys stay listed and the next sweep retries them.
    """

    def __init__(
        self,
        *,
        endpoint_url: str | None,
        bucket: str,
        access_key_id: str,
        secret_access_key: str,
        region: str | None,
        ttl: float,
        key_prefix: str = DEFAULT_PREFIX,
        sweep_interval: float = DEFAULT_SWEEP_INTERVAL,
        max_attempts: int = 3,
    ) -> None:
        if not 1 <= ttl <= MAX_TTL:
            raise ValueError(f"ttl must be between 1 and {MAX_TTL} seconds (a presigned URL's range), got {ttl}")
        self._endpoint_url = endpoint_url or None
        self._bucket = bucket
        self._access_key_id = access_key_id
        self._secret = secret_access_key
        self._region = region or DEFAULT_REGION
        self._ttl = ttl
        self._prefix = key_prefix
        self._sweep_interval = sweep_interval
        self._max_attempts = max_attempts
        self._alive: dict[str, float] = {}  # key -> monotonic expiry, in upload order
        self._stack = AsyncExitStack()
        self._client: Any = None  # aiobotocore's S3 client is generated at run time, without static types
        self._sweeper: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        """Create the one client every upload shares (connection pool, signer), and start the expiry sweep."""
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": _addressing_style(self._endpoint_url)},
            connect_timeout=5,
            read_timeout=20,
            retries={"mode": "standard", "total_max_attempts": self._max_attempts},
            # Since botocore 1.36 checksums are added to every upload by default; several S3-compatible services
            # (OSS, older MinIO, Ceph) reject them, and none needs them when only required ones are sent.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client = await self._stack.enter_async_context(
            AioSession().create_client(
                "s3",
                endpoint_url=self._endpoint_url,
                region_name=self._region,
                aws_access_key_id=self._access_key_id,
                aws_secret_access_key=self._secret,
                config=config,
            )
        )
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="s3-image-sweeper")

    async def publish(self, image: PreparedImage) -> str:
        """Upload the JPEG under a random key and return a presigned GET URL valid for `ttl` seconds."""
        if self._client is None:
            raise RuntimeError("S3ImagePublisher.start() must be awaited before publish()")
        key = f"{self._prefix}{secrets.token_urlsafe(TOKEN_BYTES)}.jpg"
        try:
            await self._client.put_object(Bucket=self._bucket, Key=key, Body=image.data, ContentType=image.mime)
        except (BotoCoreError, ClientError) as error:
            code, detail = self._describe(error)
            raise S3PublishError(self._bucket, code, detail) from error
        self._alive[key] = time.monotonic() + self._ttl
        if self._expired_keys():
            self._wake.set()  # the sweeper deletes them now, without delaying this answer
        url: str = await self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=int(self._ttl)
        )
        return url

    @property
    def published(self) -> int:
        """Objects uploaded and not yet confirmed deleted."""
        return len(self._alive)

    async def close(self) -> None:
        """Stop the sweep, delete every object still in the bucket, close the client; safe to call twice."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._client is not None and self._alive:
            await self._delete(list(self._alive))
        self._client = None
        await self._stack.aclose()

    async def _sweep_forever(self) -> None:
        """Delete expired objects every `sweep_interval` seconds, or at once when a publish finds some."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._sweep_interval)
            self._wake.clear()
            expired = self._expired_keys()
            if expired:
                await self._delete(expired)

    def _expired_keys(self) -> list[str]:
        now = time.monotonic()
        expired = []
        for key, expires_at in self._alive.items():
            if expires_at > now:
                break
            expired.append(key)
        return expired

    async def _delete(self, keys: list[str]) -> None:
        """Delete the keys (batched); forget those S3 confirms, keep the rest for the next sweep."""
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            try:
                failed = await self._delete_batch(batch)
            except (BotoCoreError, ClientError) as error:
                code, detail = self._describe(error)
                log.warning(
                    "could not delete %d image(s) from S3 bucket %r, will retry: %s (%s)",
                    len(batch),
                    self._bucket,
                    code,
                    detail,
                )
                continue
            if failed:
                codes = ", ".join(sorted(set(failed.values())))
                log.warning("S3 bucket %r kept %d image(s) on delete, will retry: %s", self._bucket, len(failed), codes)
            for key in batch:
                if key not in failed:
                    self._alive.pop(key, None)

    async def _delete_batch(self, batch: list[str]) -> dict[str, str]:
        """One request for the batch; the keys S3 refused to delete, with their error codes."""
        if len(batch) == 1:
            await self._client.delete_object(Bucket=self._bucket, Key=batch[0])
            return {}
        response = await self._client.delete_objects(
            Bucket=self._bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True}
        )
        return {error["Key"]: error.get("Code", "unknown") for error in response.get("Errors", [])}

    def _describe(self, error: BotoCoreError | ClientError) -> tuple[str, str]:
        """The S3 error code (or botocore's error class) and a short text, with the secret key scrubbed."""
        if isinstance(error, ClientError):
            details = error.response.get("Error", {})
            code = str(details.get("Code") or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
            text = str(details.get("Message") or code)
        else:
            code, text = type(error).__name__, str(error)
        if self._secret:
            text = text.replace(self._secret, "[redacted]")
        return code, text


def _addressing_style(endpoint_url: str | None) -> str:
    """Path style suits MinIO, R2, Ceph and moto; AWS prefers virtual hosts and Alibaba OSS accepts nothing else."""
    if endpoint_url is None:
        return "virtual"
    host = urlsplit(endpoint_url).hostname or ""
    return "virtual" if host.endswith(("aliyuncs.com", "amazonaws.com")) else "path"
