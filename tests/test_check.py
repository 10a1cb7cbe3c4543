"""`python -m bot check`: the operator's diagnosis of the Telegram token and the provider, against the fakes.

Most cases call `bot.app.run_checks(settings)` in the test's loop; `main(["check"])` runs once per outcome in a
worker thread (it calls `asyncio.run` itself) while the fakes keep serving from the test's loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot.__main__ import main
from bot.config import Settings
from bot.factories import run_checks
from bot.services.diagnostics import CHECK_MAX_TOKENS, Finding
from tests.conftest import API_KEY
from tests.fakes.telegram_server import FakeTelegram
from tests.fakes.vision_server import (
    OPENAI_INSUFFICIENT_QUOTA,
    OPENAI_MODEL_NOT_FOUND,
    SEED_KEY_ERROR,
    SEED_QUOTA_ERROR,
    FakeVision,
    Reply,
    completion_reply,
    error_reply,
    json_reply,
    stream_reply,
)

MakeSettings = Callable[..., Settings]


def lines(findings: list[Finding]) -> list[str]:
    return [finding.line() for finding in findings]


def provider_finding(findings: list[Finding]) -> Finding:
    found = [finding for finding in findings if finding.subject.startswith("Provider")]
    assert len(found) == 1, lines(findings)
    return found[0]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- run_checks ---------------------------------------------------------------------------------------------


async def test_all_good_reports_telegram_provider_and_the_privacy_mode_warning(
        telegram: FakeTelegram, vision: FakeVision, make_settings: MakeSettings) -> None:
    vision.enqueue(stream_reply(["Red", "."]))

    findings = await run_checks(make_settings())

    assert all(finding.ok for finding in findings)
    assert lines(findings)[0] == "[OK  ] Telegram: token accepted: @vision_test_bot (id 123456)"
    warnings = [finding for finding in findings if finding.warning]
    assert len(warnings) == 1
    assert warnings[0].line().startswith("[WARN] Telegram: privacy mode is on")
    provider = provider_finding(findings)
    assert provider.line() == f"[OK  ] Provider (glm-4v-flash at {vision.base_url}): answered a test image: 'Red.'"
    request = vision.requests[0]
    assert request.body["max_tokens"] == CHECK_MAX_TOKENS
    assert len(request.images()) == 1


async def test_privacy_mode_off_gives_no_warning(
        telegram: FakeTelegram, vision: FakeVision, make_settings: MakeSettings) -> None:
    telegram.bot_user["can_read_all_group_messages"] = True

    findings = await run_checks(make_settings())

    assert [finding.warning for finding in findings] == [False, False]
    assert all(finding.ok for finding in findings)


async def test_wrong_bot_token_is_rejected(
        telegram: FakeTelegram, vision: FakeVision, make_settings: MakeSettings) -> None:
    findings = await run_checks(make_settings(bot_token="654321:another-token"))

    telegram_findings = [finding for finding in findings if finding.subject == "Telegram"]
    assert len(telegram_findings) == 1
    assert not telegram_findings[0].ok
    assert "token was rejected" in telegram_findings[0].message
    assert telegram_findings[0].line().startswith("[FAIL] Telegram")
    assert "654321:another-token" not in telegram_findings[0].message
    assert provider_finding(findings).ok  # the provider is still checked


@pytest.mark.parametrize(("reply", "api_key", "expected"), [
    pytest.param(None, "sk-wrong-key", "key was rejected", id="401-invalid_api_key"),
    pytest.param(json_reply(SEED_KEY_ERROR), API_KEY, "key was rejected", id="seed-200-codes-900"),
    pytest.param(json_reply(SEED_QUOTA_ERROR), API_KEY, "quota", id="seed-200-codes-300"),
    pytest.param(error_reply(429, OPENAI_INSUFFICIENT_QUOTA), API_KEY, "quota", id="openai-429-insufficient_quota"),
    pytest.param(error_reply(404, OPENAI_MODEL_NOT_FOUND), API_KEY, "model not found", id="404-model_not_found"),
])
async def test_provider_failures_are_diagnosed(
        reply: Reply | None, api_key: str, expected: str, telegram: FakeTelegram, vision: FakeVision,
        make_settings: MakeSettings) -> None:
    if reply is not None:
        vision.enqueue(reply)

    findings = await run_checks(make_settings(vision_api_key=api_key))

    provider = provider_finding(findings)
    assert not provider.ok
    assert expected in provider.message
    assert "VISION_STREAM" not in provider.message
    assert len(vision.requests) == 1  # none of these is worth a retry or a second try without streaming


async def test_provider_echoing_the_key_is_diagnosed_without_printing_it(
        telegram: FakeTelegram, vision: FakeVision, make_settings: MakeSettings) -> None:
    vision.enqueue(error_reply(401, {"error": {"message": f"Incorrect API key provided: {API_KEY}",
                                               "type": "invalid_request_error", "code": "invalid_api_key"}}))

    findings = await run_checks(make_settings())

    provider = provider_finding(findings)
    assert "key was rejected" in provider.message
    assert API_KEY not in provider.line()


async def test_endpoint_that_only_fails_streaming_is_told_to_turn_streaming_off(
        telegram: FakeTelegram, vision: FakeVision, make_settings: MakeSettings) -> None:
    vision.enqueue(stream_reply(["Red"], cut_after=0), completion_reply("Red"))

    findings = await run_checks(make_settings())

    provider = provider_finding(findings)
    assert not provider.ok
    assert "set VISION_STREAM=false" in provider.message
    assert [request.body["stream"] for request in vision.requests] == [True, False]


async def test_endpoint_failing_both_ways_is_not_blamed_on_streaming(
        telegram: FakeTelegram, vision: FakeVision, make_settings: MakeSettings) -> None:
    vision.enqueue(stream_reply(["Red"], cut_after=0), json_reply({"error": {"message": "upstream is broken"}}))

    findings = await run_checks(make_settings())

    provider = provider_finding(findings)
    assert not provider.ok
    assert "VISION_STREAM" not in provider.message
    assert "stopped half-way" in provider.message
    assert [request.body["stream"] for request in vision.requests] == [True, False]


async def test_unreachable_provider_cannot_be_reached(
        telegram: FakeTelegram, make_settings: MakeSettings) -> None:
    findings = await run_checks(make_settings(vision_base_url=f"http://127.0.0.1:{closed_port()}/v1"))

    provider = provider_finding(findings)
    assert not provider.ok
    assert "cannot reach" in provider.message
    assert "VISION_STREAM" not in provider.message


# --- main(["check"]) ----------------------------------------------------------------------------------------


@pytest.fixture
def check_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, telegram: FakeTelegram,
              vision: FakeVision) -> Iterator[pytest.MonkeyPatch]:
    """A clean environment naming the fakes, a working directory without .env, and logging put back after."""
    fields = {name.upper() for name in Settings.model_fields}
    for name in list(os.environ):
        if name.upper() in fields or name.upper().startswith(("BOT_", "VISION_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BOT_TOKEN", telegram.token)
    monkeypatch.setenv("TELEGRAM_API_URL", telegram.base_url)
    monkeypatch.setenv("VISION_BASE_URL", vision.base_url)
    monkeypatch.setenv("VISION_API_KEY", API_KEY)
    monkeypatch.setenv("VISION_STREAM", "true")
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("aiogram.event").level, logging.getLogger("httpx").level)
    yield monkeypatch
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("aiogram.event").setLevel(saved[2])
    logging.getLogger("httpx").setLevel(saved[3])


async def test_main_check_all_good_exits_0(check_env: pytest.MonkeyPatch, vision: FakeVision,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(main, ["check"])
    out = capsys.readouterr().out.splitlines()

    assert code == 0
    assert out[0] == "[OK  ] Telegram: token accepted: @vision_test_bot (id 123456)"
    assert out[1].startswith("[WARN] Telegram: privacy mode is on")
    assert out[2].startswith(f"[OK  ] Provider (glm-4v-flash at {vision.base_url}): answered a test image")
    assert out[-1] == "all checks passed"
    assert len(vision.requests) == 1


async def test_main_check_with_a_wrong_token_exits_1(check_env: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    check_env.setenv("BOT_TOKEN", "654321:another-token")

    code = await asyncio.to_thread(main, ["check"])
    captured = capsys.readouterr()

    assert code == 1
    assert "token was rejected" in captured.out
    assert captured.out.splitlines()[-1] == "1 problem(s) found"
    assert "another-token" not in captured.out + captured.err
