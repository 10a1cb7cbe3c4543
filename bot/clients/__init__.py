"""HTTP clients for outside services (no Telegram types here)."""
