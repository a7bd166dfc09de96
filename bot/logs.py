"""Logging set-up: discord.py's text format, or one JSON object per line (`LOG_FORMAT=json`) for log collectors.

The guild a log line is about comes from `extra={"guild": id}` or else from `guild_context`, which the bot sets
when it starts handling a guild's interaction or message (tasks started from there inherit it). Python warnings
(e.g. a library's FutureWarning at model load) go through logging too, so they come out in the same format.
Either way a record can't forge lines or drive the terminal: text mode escapes control characters in what it
prints (messages carry strings from Discord and other servers), JSON mode escapes every line break.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import unicodedata
from datetime import datetime, timezone
from typing import Literal

import discord

guild_context: contextvars.ContextVar[int | None] = contextvars.ContextVar("guild", default=None)

# What JSON leaves raw with ensure_ascii=False but splitlines() splits on (U+0085, U+2028, U+2029), and lone
# surrogates, which can't be encoded to UTF-8 (the handler would drop the line).
_JSON_UNSAFE = re.compile("[\x85\u2028\u2029\ud800-\udfff]")
_UNPRINTABLE = {"Cc", "Cs", "Zl", "Zp"}  # control characters, lone surrogates, line and paragraph separators


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with control characters, line separators and lone surrogates as Python escapes (`\\x1b`, `\\n`),
    except newlines when `keep_newlines` (a traceback's own lines)."""
    return "".join(
        ch.encode("unicode_escape", "backslashreplace").decode("ascii")
        if unicodedata.category(ch) in _UNPRINTABLE and not (keep_newlines and ch == "\n")
        else ch
        for ch in text
    )


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
        return _JSON_UNSAFE.sub(_json_escape, json.dumps(entry, ensure_ascii=False, default=str))


class EscapingFormatter(logging.Formatter):
    """Formats with `inner` (discord.py's text format) after escaping control characters in the message and the
    traceback (whose own line breaks stay)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)
        safe.msg, safe.args = escape_controls(record.getMessage()), None
        if record.exc_info:
            safe.exc_info = None
            safe.exc_text = escape_controls(self.inner.formatException(record.exc_info), keep_newlines=True)
        if record.stack_info:
            safe.stack_info = escape_controls(record.stack_info, keep_newlines=True)
        return self.inner.format(safe)


def setup_logging(level: str, log_format: Literal["text", "json"]) -> None:
    """Log to stderr at `level` (a name like INFO) in the chosen format, Python warnings included."""
    numeric = logging.getLevelName(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "text":
        discord.utils.setup_logging(handler=handler, level=numeric)  # picks colours when stderr shows them
        handler.setFormatter(EscapingFormatter(handler.formatter or logging.Formatter()))
    else:
        discord.utils.setup_logging(handler=handler, formatter=JsonFormatter(), level=numeric)
    logging.captureWarnings(True)
