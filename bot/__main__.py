"""`python -m bot`: load settings, set up logging, run until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys

from aiogram.exceptions import TelegramUnauthorizedError

from bot.app import BotApp
from bot.config import SettingsError, load_settings
from bot.logs import setup_logging

EXIT_CONFIG = 2
EXIT_FAILURE = 1


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level,
                  [settings.bot_token.get_secret_value(), settings.vision_api_key.get_secret_value()])
    try:
        asyncio.run(BotApp(settings).run())
    except TelegramUnauthorizedError:
        print("Telegram rejected BOT_TOKEN: check it with @BotFather", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
