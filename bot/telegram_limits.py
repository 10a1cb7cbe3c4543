"""Telegram's sending budgets, as one table both schedulers (in-process and Redis) read.

Telegram allows about 1 message/s in a private chat with short bursts, about 20 per minute in a group and about
30/s for the whole bot. Each budget is a token bucket (held as a "theoretical arrival time", GCRA): `burst` sends at
once, then one per `interval`. Urgent sends (a final message, a command's reply) may use the whole burst; first texts
and progress updates keep one send in reserve so a final message never waits behind them; typing goes only when
the whole burst is there.
"""

from __future__ import annotations

from dataclasses import dataclass

URGENT_NEEDS = 1  # sends left in the bucket for an urgent send to go
PROGRESS_NEEDS = 2  # a first text or progress update leaves one for the final message
TYPING_NEEDS = 3  # typing only with the chat's bucket full: its first text and final message still go at once


@dataclass(frozen=True, slots=True)
class SendRate:
    interval: float
    burst: int = 1
    # Seconds of the bucket never used: Telegram counts a send when it arrives, up to this much after we let it go.
    slack: float = 0.0

    def tolerance(self, needs: int) -> float:
        """How far ahead of now the bucket's arrival time may be while `needs` sends are still left."""
        return max(0.0, (self.burst - min(needs, self.burst)) * self.interval - self.slack)


# 3 + 60 / 3.6 < 20 sends in any minute of a group. The bot has no burst: at 25/s a send may arrive 0.16 s late
# and still keep the bot under 30 in any second.
PRIVATE = SendRate(interval=1.0, burst=3, slack=0.25)
GROUP = SendRate(interval=3.6, burst=3, slack=0.25)
BOT = SendRate(interval=1 / 25)


def rate_for(chat_id: int | str | None, private: SendRate = PRIVATE, group: SendRate = GROUP) -> SendRate | None:
    """Groups and channels (negative ids, @usernames) have the stricter budget; None: no chat (a callback answer)."""
    if chat_id is None:
        return None
    if isinstance(chat_id, int) and chat_id > 0:
        return private
    return group
