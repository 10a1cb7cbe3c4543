"""`python -m bot`: load settings, set up logging, run until SIGTERM/SIGINT. `python -m bot check` diagnoses."""

from __future__ import annotations

import asyncio
import resource
import sys

from aiogram.exceptions import TelegramNetworkError, TelegramUnauthorizedError

from bot.app import BotApp
from bot.config import LogFormat, Settings, SettingsError, load_settings
from bot.factories import run_checks
from bot.logs import RedactingFormatter, setup_logging
from bot.polling import PollingConflict

EXIT_CONFIG = 2
EXIT_FAILURE = 1


USAGE = "usage: python -m bot [check]"
# Each streaming answer holds a provider connection (up to 1000) besides Telegram's and the database's.
OPEN_FILES_WANTED = 65536


def main(argv: list[str] | None = None) -> int:
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
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # start-up failures become one line each, never a traceback
        problem = start_up_problem(exc, settings)
        if problem is None:
            raise
        print(RedactingFormatter(settings.secrets()).redact(problem), file=sys.stderr)
        return EXIT_FAILURE
    return 0


def start_up_problem(exc: Exception, settings: Settings) -> str | None:
    """The one line an operator needs for a failure to start; None for anything else (a bug: the traceback)."""
    if isinstance(exc, TelegramUnauthorizedError):
        return "Telegram rejected BOT_TOKEN: check it with @BotFather"
    if isinstance(exc, PollingConflict):
        return ("another process is already polling Telegram with this BOT_TOKEN (409 Conflict): stop it, or run "
                "several replicas with REDIS_URL or BOT_MODE=webhook")
    if isinstance(exc, TelegramNetworkError):  # at start-up; once polling, the poller retries on its own
        return f"cannot reach Telegram at {settings.telegram_api_url}: {exc.message}"
    if _raised_by(exc, "redis"):
        return f"cannot use Redis at REDIS_URL: {exc}"
    if (_raised_by(exc, "asyncpg") or isinstance(exc, OSError)) and settings.database_url.startswith("postgres"):
        return f"cannot use the database at DATABASE_URL: {type(exc).__name__}: {exc}"
    return None


def _raised_by(exc: Exception, package: str) -> bool:
    """By the exception's package: redis-py and asyncpg are imported only when configured."""
    return any(cls.__module__.split(".")[0] == package for cls in type(exc).__mro__)


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
