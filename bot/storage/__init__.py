"""Persistence: conversations and prepared images."""

from bot.storage.base import ConversationStore
from bot.storage.sqlite import SqliteConversationStore

__all__ = ["ConversationStore", "SqliteConversationStore"]
