"""Several API keys for one provider: requests spread over them, a failing key rests while the others work.

Keys are named by position ("key 2 of 3") in everything this module says: the key itself never leaves it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.errors import VisionError

# A key rejected as invalid or out of quota is not asked again for this long.
KEY_REST_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class Key:
    secret: str
    position: int  # 1-based
    of: int

    @property
    def name(self) -> str:
        return f"key {self.position} of {self.of}"


class KeyRing:
    def __init__(self, secrets: Sequence[str], *, clock: Callable[[], float] = time.monotonic) -> None:
        if not secrets:
            raise ValueError("a provider needs at least one key")
        self._keys = [Key(secret, position, len(secrets)) for position, secret in enumerate(secrets, start=1)]
        self._turn = itertools.cycle(range(len(self._keys)))
        self._resting_until: dict[int, float] = {}
        self._last_reason: VisionError | None = None
        self._clock = clock

    @property
    def secrets(self) -> list[str]:
        return [key.secret for key in self._keys]

    def pick(self, *, excluding: frozenset[int] = frozenset()) -> Key | None:
        """The next key in turn that is not resting (nor already tried for this request), or None."""
        now = self._clock()
        for _ in range(len(self._keys)):
            key = self._keys[next(self._turn)]
            if key.position not in excluding and self._resting_until.get(key.position, 0.0) <= now:
                return key
        return None

    def rest(self, key: Key, seconds: float, reason: VisionError) -> bool:
        """Let a key rest; True when it was not resting already (the moment to tell operators)."""
        self._last_reason = reason
        now = self._clock()
        was_awake = self._resting_until.get(key.position, 0.0) <= now
        self._resting_until[key.position] = max(self._resting_until.get(key.position, 0.0), now + seconds)
        return was_awake

    @property
    def last_reason(self) -> VisionError | None:
        """Why a key was last put to rest: what to tell a user while every key rests."""
        return self._last_reason

    def next_wake(self, *, excluding: frozenset[int] = frozenset()) -> float | None:
        """Seconds until the earliest resting key (not excluded) may be asked again; None if there is none."""
        now = self._clock()
        waits = [until - now for position, until in self._resting_until.items() if position not in excluding]
        return max(0.0, min(waits)) if waits else None
