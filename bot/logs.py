"""Logging set-up: discord.py's text format, or one JSON object per line (`LOG_FORMAT=json`) for log collectors.

The guild a log line is about comes from `extra={"guild": id}` or else from `guild_context`, which the bot sets
when it starts handling a guild's interaction or message (tasks started from there inherit it).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import datetime, timezone
from typing import Literal

import discord

guild_context: contextvars.ContextVar[int | None] = contextvars.ContextVar("guild", default=None)


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "guild", "message"}` (plus `exception` with its traceback) on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "guild": getattr(record, "guild", None) or guild_context.get(),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str, log_format: Literal["text", "json"]) -> None:
    """Log to stderr at `level` (a name like INFO) in the chosen format."""
    numeric = logging.getLevelName(level.upper())
    if log_format == "text":
        discord.utils.setup_logging(level=numeric)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    discord.utils.setup_logging(handler=handler, formatter=handler.formatter, level=numeric)
