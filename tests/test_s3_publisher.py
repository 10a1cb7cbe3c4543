"""S3ImagePublisher against a real S3 protocol server (moto's server mode) on loopback; nothing leaves the machine.

moto does not verify presigned-URL signatures, so "a tampered signature is refused" cannot be shown here; what is
shown is that the object is private (an unsigned GET is refused) and that a guessed key finds nothing.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import traceback
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from aiobotocore.session import AioSession
from PIL import Image

from bot.clients.s3_publisher import S3ImagePublisher, S3PublishError, _addressing_style
from bot.models import PreparedImage

ACCESS_KEY_ID = "AKIATESTPUBLISHER"
SECRET = "s3-secret-DO-NOT-LEAK-0123456789abcdef"
REGION = "us-east-1"


def small_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 120, 200)).save(out, format="JPEG")
    return out.getvalue()


IMAGE = PreparedImage(image_id="photo-1", data=small_jpeg())


@pytest.fixture(autouse=True)
def _offline(offline_aws_env: None) -> None:
    """Every test here talks to botocore."""


@pytest.fixture
async def admin(moto_endpoint: str) -> AsyncIterator[Any]:
    """A separate client playing the operator: creates buckets and looks inside them."""
    async with AioSession().create_client(
        "s3", endpoint_url=moto_endpoint, region_name=REGION, aws_access_key_id="admin", aws_secret_access_key="admin"
    ) as client:
        yield client


@pytest.fixture
async def bucket(admin: Any) -> str:
    name = f"vision-{uuid.uuid4().hex[:12]}"
    await admin.create_bucket(Bucket=name)
    return name


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        yield client


@pytest.fixture
async def make_publisher(moto_endpoint: str) -> AsyncIterator[Any]:
    """`await make_publisher(bucket, **overrides)` gives a started publisher; all are closed after the test."""
    started: list[S3ImagePublisher] = []

    async def make(bucket: str, **overrides: Any) -> S3ImagePublisher:
        values: dict[str, Any] = {
            "endpoint_url": moto_endpoint,
            "bucket": bucket,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET,
            "region": REGION,
            "ttl": 600,
        }
        values.update(overrides)
        publisher = S3ImagePublisher(**values)
        await publisher.start()
        started.append(publisher)
        return publisher

    yield make
    for publisher in started:
        await publisher.close()


async def keys_in(admin: Any, bucket: str) -> list[str]:
    listing = await admin.list_objects_v2(Bucket=bucket)
    return [entry["Key"] for entry in listing.get("Contents", [])]


async def eventually(condition: Any) -> None:
    """Poll the bucket's (outside) state for up to 3 s: there is no event to wait on."""
    for _ in range(60):
        if await condition():
            return
        await asyncio.sleep(0.05)
    pytest.fail("condition not met within 3 s")


def full_text(error: BaseException) -> str:
    """The message plus the whole chained traceback, as a log line with exc_info would show it."""
    return "".join(traceback.format_exception(error))


async def test_presigned_url_serves_exactly_the_jpeg_without_credentials(
    make_publisher: Any, bucket: str, admin: Any, http: httpx.AsyncClient
) -> None:
    publisher = await make_publisher(bucket)
    url = await publisher.publish(IMAGE)

    response = await http.get(url)
    assert response.status_code == 200
    assert response.content == IMAGE.data
    assert response.headers["content-type"] == "image/jpeg"

    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["600"]
    assert query["X-Amz-Credential"][0].startswith(f"{ACCESS_KEY_ID}/")
    assert SECRET not in url
    [key] = await keys_in(admin, bucket)
    assert parts.path == f"/{bucket}/{key}"  # path-style addressing on a custom endpoint
    assert key.startswith("vision-bot/")
    assert key.endswith(".jpg")
    assert len(key.removeprefix("vision-bot/").removesuffix(".jpg")) >= 43  # 32 random bytes, base64url
    assert publisher.published == 1


async def test_object_is_private_and_other_keys_find_nothing(
    make_publisher: Any, bucket: str, http: httpx.AsyncClient
) -> None:
    publisher = await make_publisher(bucket)
    url = await publisher.publish(IMAGE)
    parts = urlsplit(url)

    unsigned = await http.get(parts._replace(query="").geturl())
    assert unsigned.status_code == 403

    guessed_path = parts.path.rsplit("/", 1)[0] + "/guessed-token.jpg"
    guessed = await http.get(parts._replace(path=guessed_path).geturl())
    assert guessed.status_code in {403, 404}

    second = await publisher.publish(IMAGE)
    assert urlsplit(second).path != parts.path


async def test_sweep_deletes_objects_after_the_ttl(
    make_publisher: Any, bucket: str, admin: Any, http: httpx.AsyncClient
) -> None:
    publisher = await make_publisher(bucket, ttl=1, sweep_interval=0.05)
    url = await publisher.publish(IMAGE)
    assert (await http.get(url)).status_code == 200

    async def swept() -> bool:
        return publisher.published == 0

    await eventually(swept)
    assert await keys_in(admin, bucket) == []
    assert (await http.get(url)).status_code in {403, 404}


async def test_publish_wakes_the_sweep_for_expired_objects(make_publisher: Any, bucket: str, admin: Any) -> None:
    publisher = await make_publisher(bucket, ttl=1, sweep_interval=3600)
    await publisher.publish(IMAGE)
    [first] = await keys_in(admin, bucket)
    await asyncio.sleep(1.05)

    await publisher.publish(IMAGE)

    async def first_gone() -> bool:
        return first not in await keys_in(admin, bucket)

    await eventually(first_gone)  # the second may expire too on a slow machine: only the first is certain
    assert publisher.published <= 1


async def test_close_deletes_every_live_object(make_publisher: Any, bucket: str, admin: Any) -> None:
    publisher = await make_publisher(bucket)
    for _ in range(3):
        await publisher.publish(IMAGE)
    assert len(await keys_in(admin, bucket)) == 3

    await publisher.close()

    assert await keys_in(admin, bucket) == []
    assert publisher.published == 0
    await publisher.close()  # a second close is harmless


async def test_failed_deletion_is_logged_and_retried(
    make_publisher: Any, bucket: str, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    deny_delete = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:DeleteObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
            }
        ],
    }
    await admin.put_bucket_policy(Bucket=bucket, Policy=json.dumps(deny_delete))
    publisher = await make_publisher(bucket, ttl=1, sweep_interval=0.05)
    await publisher.publish(IMAGE)

    async def warned() -> bool:
        return any("could not delete" in record.getMessage() for record in caplog.records)

    with caplog.at_level(logging.WARNING, logger="bot.clients.s3_publisher"):
        await eventually(warned)
    assert publisher.published == 1
    assert len(await keys_in(admin, bucket)) == 1
    assert all(SECRET not in record.getMessage() for record in caplog.records)

    await admin.delete_bucket_policy(Bucket=bucket)

    async def swept() -> bool:
        return publisher.published == 0

    await eventually(swept)
    assert await keys_in(admin, bucket) == []


async def test_missing_bucket_raises_publish_error(make_publisher: Any) -> None:
    publisher = await make_publisher("no-such-bucket-here")

    with pytest.raises(S3PublishError) as caught:
        await publisher.publish(IMAGE)

    assert caught.value.code == "NoSuchBucket"
    assert caught.value.bucket == "no-such-bucket-here"
    assert "no-such-bucket-here" in str(caught.value)
    assert "NoSuchBucket" in str(caught.value)
    assert SECRET not in full_text(caught.value)
    assert publisher.published == 0


async def test_endpoint_down_raises_publish_error(make_publisher: Any, bucket: str) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    publisher = await make_publisher(bucket, endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1)

    with pytest.raises(S3PublishError) as caught:
        await publisher.publish(IMAGE)

    assert caught.value.code == "EndpointConnectionError"
    assert bucket in str(caught.value)
    assert SECRET not in full_text(caught.value)


async def test_publish_before_start_is_a_bug() -> None:
    publisher = S3ImagePublisher(
        endpoint_url=None, bucket="b", access_key_id="a", secret_access_key=SECRET, region=None, ttl=600
    )
    with pytest.raises(RuntimeError, match="start"):
        await publisher.publish(IMAGE)


@pytest.mark.parametrize("ttl", [0, 0.5, 8 * 24 * 3600])
def test_ttl_outside_presigned_range_is_refused(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        S3ImagePublisher(
            endpoint_url=None, bucket="b", access_key_id="a", secret_access_key=SECRET, region=None, ttl=ttl
        )


@pytest.mark.parametrize(
    ("endpoint", "style"),
    [
        (None, "virtual"),
        ("https://oss-cn-hangzhou.aliyuncs.com", "virtual"),
        ("https://s3.eu-west-1.amazonaws.com", "virtual"),
        ("https://0123abcd.r2.cloudflarestorage.com", "path"),
        ("http://minio.lan:9000", "path"),
    ],
)
def test_addressing_style_follows_the_provider(endpoint: str | None, style: str) -> None:
    assert _addressing_style(endpoint) == style
