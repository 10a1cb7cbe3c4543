"""Shared fixtures: the two loopback fakes and the real bot application wired to them."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image, ImageDraw

from bot.app import BotApp
from bot.config import Settings, load_settings
from tests.fakes.telegram_server import FakeTelegram
from tests.fakes.vision_server import FakeVision
from tests.postgres import fresh_schema
from tests.redis_keys import delete_keys, unique_prefix

API_KEY = "sk-test-key-123"


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def vision() -> AsyncIterator[FakeVision]:
    fake = FakeVision(api_key=API_KEY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def bot_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Every end-to-end test runs on both storage backends (PostgreSQL: a fresh schema, dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'bot.sqlite3'}"
        return
    async with fresh_schema() as url:
        yield url


@pytest.fixture
def make_settings(bot_database_url: str, telegram: FakeTelegram, vision: FakeVision) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "bot_token": telegram.token,
            "telegram_api_url": telegram.base_url,
            "vision_base_url": vision.base_url,
            "vision_api_key": API_KEY,
            "database_url": bot_database_url,
            "shutdown_grace": 5.0,
        }
        values.update(overrides)
        return load_settings(_env_file=None, **values)

    return build


class RunningBot:
    """The application exactly as `python -m bot` runs it, minus the process and its signal handlers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = BotApp(settings)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.app.run(handle_signals=False))
        started = asyncio.create_task(self.app.wait_started())
        done, _ = await asyncio.wait({self._task, started}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            started.cancel()
            self._task.result()
        assert started in done, "bot did not start within 10 s"

    async def stop(self) -> None:
        if self._task is None:
            return
        if not self._task.done():
            await self.app.stop()
        await asyncio.wait_for(self._task, timeout=30)
        self._task = None


@pytest.fixture
async def start_bot(make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    """`await start_bot(**settings)` starts a bot; every bot started is stopped after the test."""
    running: list[RunningBot] = []

    async def start(**overrides: Any) -> RunningBot:
        bot = RunningBot(make_settings(**overrides))
        await bot.start()
        running.append(bot)
        return bot

    yield start
    for bot in running:
        await bot.stop()


def make_photo(width: int = 1280, height: int = 960, color: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    """A JPEG with some structure (so downscaling and re-encoding are real work)."""
    image = Image.new("RGB", (width, height), color)
    draw = ImageDraw.Draw(image)
    for step in range(0, width, 64):
        draw.line([(step, 0), (width - step, height)], fill=(255, 255 - step % 256, 0), width=5)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as client:
        yield client


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 protocol server (moto) on loopback for the whole run; port 0: the OS picks, read back after start."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def offline_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """botocore must not read the developer's AWS profile, probe instance metadata or go through a proxy."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """URL of a fresh, empty PostgreSQL database (TEST_POSTGRES_DSN's server), dropped after the test."""
    from tests.postgres import fresh_database

    async with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis tests share (TEST_REDIS_URL, else the local one); each test keeps to its own key prefix."""
    import os

    return os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix for one test's bots (REDIS_PREFIX); its keys are deleted afterwards."""
    prefix = unique_prefix()
    yield prefix
    await delete_keys(redis_url, prefix)
