"""Persistence: conversations, prepared images, usage and the update inbox (SQLite or PostgreSQL)."""

from bot.storage.base import ConversationStore
from bot.storage.factory import open_store
from bot.storage.sqlite import SqliteConversationStore

__all__ = ["ConversationStore", "SqliteConversationStore", "open_store"]
