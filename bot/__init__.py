"""Telegram vision bot: answers questions about photos through an OpenAI-compatible vision API."""
