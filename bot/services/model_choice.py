"""Which of the operator's models (VISION_MODEL, then VISION_MODELS) a chat or forum topic uses."""

from __future__ import annotations

from collections.abc import Sequence

from bot.errors import BotError
from bot.models import ConversationKey
from bot.storage.base import ConversationStore


class UnknownModel(BotError):
    """A user named a model the operator does not offer; the handler lists the ones on offer."""

    kind = "unknown_model"

    def __init__(self, name: str, available: tuple[str, ...]) -> None:
        super().__init__(f"unknown model {name!r}")
        self.name = name
        self.available = available


class ModelChoice:
    """The choice is a setting kept per conversation key, not conversation: /reset leaves it alone."""

    def __init__(self, store: ConversationStore, available: Sequence[str]) -> None:
        if not available:
            raise ValueError("at least one model must be available")
        self._store = store
        self._available = tuple(available)

    @property
    def available(self) -> tuple[str, ...]:
        """The models on offer, the default first."""
        return self._available

    @property
    def default(self) -> str:
        return self._available[0]

    async def current(self, key: ConversationKey) -> str:
        """The stored choice while the operator still offers it; otherwise the default."""
        chosen = await self._store.chat_model(key)
        return chosen if chosen in self._available else self.default

    async def choose(self, key: ConversationKey, name: str) -> str:
        """Switch by name (any letter case); returns the model's exact name, or raises UnknownModel."""
        model = self.find(name)
        if model is None:
            raise UnknownModel(name, self._available)
        await self._store.set_chat_model(key, model)
        return model

    def find(self, name: str) -> str | None:
        wanted = name.strip().casefold()
        return next((model for model in self._available if model.casefold() == wanted), None)

    def model_at(self, index: int) -> str | None:
        """The model behind a keyboard button's index; None for an index that no longer exists."""
        return self._available[index] if 0 <= index < len(self._available) else None
