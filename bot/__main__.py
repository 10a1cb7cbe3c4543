"""`python -m bot`: load settings, set up logging, run until SIGTERM/SIGINT. `python -m bot check` diagnoses."""

from __future__ import annotations

import asyncio
import resource
import sys

from aiogram.exceptions import TelegramNetworkError, TelegramUnauthorizedError

from bot.app import BotApp, run_checks
from bot.config import LogFormat, Settings, SettingsError, load_settings
from bot.intake import PollingConflict
from bot.logs import setup_logging

EXIT_CONFIG = 2
EXIT_FAILURE = 1


USAGE = "usage: python -m bot [check]"
# Each streaming answer holds a provider connection (up to 1000) besides Telegram's and the database's.
OPEN_FILES_WANTED = 65536


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0911 - one exit code per way to end
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["check"]):
        print(USAGE, file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level, settings.secrets(), json_lines=settings.log_format is LogFormat.JSON)
    if args == ["check"]:
        return check(settings)
    raise_open_file_limit()
    try:
        asyncio.run(BotApp(settings).run())
    except TelegramUnauthorizedError:
        print("Telegram rejected BOT_TOKEN: check it with @BotFather", file=sys.stderr)
        return EXIT_FAILURE
    except PollingConflict:
        print("another process is already polling Telegram with this BOT_TOKEN (409 Conflict): stop it, or run "
              "several replicas with REDIS_URL or BOT_MODE=webhook", file=sys.stderr)
        return EXIT_FAILURE
    except TelegramNetworkError as exc:  # at start-up; once polling, the poller retries on its own
        reason = exc.message.replace(settings.bot_token.get_secret_value(), "[redacted]")
        print(f"cannot reach Telegram at {settings.telegram_api_url}: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        pass
    return 0


def raise_open_file_limit() -> None:
    """The usual soft limit of 1024 open files is below what hundreds of streaming answers need; never lowered."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def check(settings: Settings) -> int:
    findings = asyncio.run(run_checks(settings))
    for finding in findings:
        print(finding.line())
    failed = [finding for finding in findings if not finding.ok]
    print("all checks passed" if not failed else f"{len(failed)} problem(s) found")
    return EXIT_FAILURE if failed else 0


if __name__ == "__main__":
    sys.exit(main())
