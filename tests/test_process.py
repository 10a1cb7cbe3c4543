"""`python -m bot` as an operator runs it: a real process, real signals, exit codes."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.__main__ import OPEN_FILES_WANTED, main
from tests.conftest import API_KEY, make_photo
from tests.fakes.telegram_server import FakeTelegram, make_user, message_update, private_chat
from tests.fakes.vision_server import FakeVision, stream_reply

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = {"BOT_TOKEN": "123456:ABCdef", "VISION_BASE_URL": "http://127.0.0.1:9/v1", "VISION_API_KEY": "sk-x"}


async def run_bot_process(env: dict[str, str], cwd: Path, *, stdout: Any = asyncio.subprocess.PIPE,
                          stderr: Any = asyncio.subprocess.PIPE) -> asyncio.subprocess.Process:
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith(("BOT_", "VISION_", "TELEGRAM_", "DATABASE_", "CONTEXT_", "STREAM_"))}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=cwd, env={**clean, "PYTHONPATH": str(ROOT), **env},
        stdout=stdout, stderr=stderr, preexec_fn=_low_open_file_limit)


def _low_open_file_limit() -> None:
    """Start the bot as a shell with `ulimit -n 256` would."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def _open_file_limit(pid: int) -> int:
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                if line.startswith("Max open files"))
    return int(line.split()[3])


@pytest.mark.parametrize(
    ("missing", "extra", "expected"),
    [
        ("VISION_BASE_URL", {}, "VISION_BASE_URL is required but not set"),
        ("VISION_API_KEY", {}, "VISION_API_KEY is required but not set"),
        (None, {"VISION_MAX_TOKENS": "lots"}, "VISION_MAX_TOKENS is invalid"),
        (None, {"VISION_BASE_URL": "api.example.com"}, "VISION_BASE_URL is invalid: must be an http(s) URL"),
        (None, {"STREAM_MODE": "fast"}, "STREAM_MODE is invalid"),
        (None, {"BOT_TOKEN": "not-a-token"}, "BOT_TOKEN is invalid"),
        (None, {"ADMIN_IDS": "12,abc"}, "ADMIN_IDS is invalid"),
        (None, {"VISION_API_KEY": " , "}, "VISION_API_KEY is invalid"),
        (None, {"VISION_FALLBACKS": "[{"}, "VISION_FALLBACKS is invalid: not valid JSON"),
        (None, {"VISION_FALLBACKS": '[{"base_url": "http://x/v1", "model": "m"}]'}, "VISION_FALLBACKS is invalid"),
        (None, {"VISION_FALLBACKS": '[{"base_url": "http://x/v1", "api_key": "sk-y", "model": "m", '
                                    '"extra_body": {"messages": []}}]'}, "may not set messages"),
        (None, {"VISION_EXTRA_BODY": '{"model": "gpt-4o"}'}, "VISION_EXTRA_BODY is invalid: may not set model"),
        (None, {"VISION_EXTRA_BODY": '{"max_tokens": 9, "top_p": 1}'}, "may not set max_tokens"),
        (None, {"VISION_EXTRA_BODY": '{"stream": false}'}, "may not set stream"),
        (None, {"VISION_EXTRA_BODY": '{"n": 3}'}, "VISION_EXTRA_BODY is invalid: may not ask for n > 1"),
        (None, {"VISION_IMAGE_FORMAT": "url"}, "VISION_IMAGE_FORMAT=url needs PUBLIC_BASE_URL or S3_BUCKET"),
        (None, {"S3_BUCKET": "b"}, "S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY required"),
        (None, {"PUBLIC_BASE_URL": "bot.example.com"}, "PUBLIC_BASE_URL is invalid: must be an http(s) URL"),
    ],
)
def test_each_bad_setting_is_named_in_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys, missing, extra,
                                                                  expected):
    monkeypatch.chdir(tmp_path)
    for key in os.environ:
        if key.startswith(("BOT_", "VISION_", "TELEGRAM_", "DATABASE_", "CONTEXT_", "STREAM_", "ADMIN_", "S3_",
                           "PUBLIC_")):
            monkeypatch.delenv(key)
    for key, value in ({k: v for k, v in REQUIRED.items() if k != missing} | extra).items():
        monkeypatch.setenv(key, value)

    assert main([]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert expected in err[0]
    assert "sk-x" not in err[0] and "sk-y" not in err[0]


async def test_the_real_process_exits_2_naming_a_missing_token(tmp_path):
    env = {key: value for key, value in REQUIRED.items() if key != "BOT_TOKEN"}
    process = await run_bot_process(env, tmp_path)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)

    assert process.returncode == 2
    assert stderr.decode().strip() == "configuration error: BOT_TOKEN is required but not set"
    assert stdout == b""


async def test_the_real_process_exits_1_in_one_line_when_telegram_is_unreachable(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    process = await run_bot_process({**REQUIRED, "TELEGRAM_API_URL": closed}, tmp_path)
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)

    assert process.returncode == 1
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"cannot reach Telegram at {closed}: ")
    assert REQUIRED["BOT_TOKEN"] not in lines[0]


async def test_the_real_process_exits_1_in_one_line_when_redis_is_unreachable(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await run_bot_process({**REQUIRED, "REDIS_URL": f"redis://:pw-s3cret@127.0.0.1:{port}/0"}, tmp_path)
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)

    assert process.returncode == 1
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("cannot use Redis at REDIS_URL: ")
    assert "pw-s3cret" not in lines[0]


async def test_the_bot_process_answers_a_photo_and_stops_cleanly_on_sigterm(tmp_path):
    telegram = FakeTelegram()
    vision = FakeVision(api_key=API_KEY)
    await telegram.start()
    await vision.start()
    gate = asyncio.Event()
    vision.enqueue(stream_reply(["Still ", "writing ", "this"], gate=gate))
    process = await run_bot_process({
        "BOT_TOKEN": telegram.token, "TELEGRAM_API_URL": telegram.base_url, "VISION_BASE_URL": vision.base_url,
        "VISION_API_KEY": API_KEY, "SHUTDOWN_GRACE": "0.5",
    }, tmp_path)
    try:
        user = make_user()
        telegram.push_update(message_update(private_chat(user), user, photo=telegram.photo_sizes(make_photo()),
                                            caption="What is it?"))
        await telegram.wait_for(lambda: telegram.calls_to("sendMessageDraft"), timeout=20)
        open_files = _open_file_limit(process.pid)

        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
    finally:
        if process.returncode is None:
            process.kill()
        await telegram.stop()
        await vision.stop()

    log = stderr.decode()
    assert process.returncode == 0, log
    assert [message["text"] for message in telegram.chat_messages(user["id"])] == [
        "Still\n\n⚠️ (answer cut off)"]
    assert (tmp_path / "data" / "bot.sqlite3").exists()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert open_files == min(OPEN_FILES_WANTED, hard if hard != resource.RLIM_INFINITY else OPEN_FILES_WANTED)
    assert "Traceback" not in log
    assert telegram.token not in log
    assert API_KEY not in log
