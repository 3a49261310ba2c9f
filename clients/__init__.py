"""Programs that talk to a running graph (the Telegram bot)."""
