"""Log lines as JSON objects for log collectors, tagged with the guild they are about."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from bot.logs import JsonFormatter, guild_context, setup_logging


def record(message: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("bot.test", level, __file__, 1, message, ("x",), None)
    entry.__dict__.update(extra)
    return entry


def test_one_json_object_with_time_level_logger_guild_and_message() -> None:
    token = guild_context.set(1234)
    try:
        line = JsonFormatter().format(record("answered %s"))
    finally:
        guild_context.reset(token)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry == {
        "time": entry["time"],
        "level": "INFO",
        "logger": "bot.test",
        "guild": 1234,
        "message": "answered x",
    }
    assert entry["time"].endswith("+00:00")


def test_extra_guild_wins_and_unknown_guild_is_null() -> None:
    assert json.loads(JsonFormatter().format(record("m %s", guild=99)))["guild"] == 99
    assert json.loads(JsonFormatter().format(record("m %s")))["guild"] is None


def test_exceptions_stay_on_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        entry = record("failed %s", logging.ERROR)
        entry.exc_info = sys.exc_info()
    line = JsonFormatter().format(entry)
    assert len(line.splitlines()) == 1
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_log_format_json_writes_json_lines_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        setup_logging("warning", "json")
        logging.getLogger("bot.somewhere").info("not shown")
        logging.getLogger("bot.somewhere").warning("shown %d", 1)
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["level"], line["logger"], line["message"]) for line in lines] == [
        ("WARNING", "bot.somewhere", "shown 1")
    ]
