"""Log lines as JSON objects for log collectors, tagged with the guild they are about."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys

import discord
import pytest

from bot.logs import JsonFormatter, guild_context, setup_logging
from tests.bot.helpers import ROOT


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


def test_python_warnings_come_out_as_json_lines() -> None:
    code = (
        "import warnings; from bot.logs import setup_logging; setup_logging('info', 'json'); "
        "warnings.warn('torch.nn.utils.weight_norm is deprecated', FutureWarning)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    (entry,) = [json.loads(line) for line in result.stderr.splitlines()]  # every line is a JSON object
    assert (entry["level"], entry["logger"]) == ("WARNING", "py.warnings")
    assert "FutureWarning: torch.nn.utils.weight_norm is deprecated" in entry["message"]


def test_every_line_break_and_a_lone_surrogate_stay_inside_one_json_line() -> None:
    breaks = "a\nb\rc\x0bd\x0ce\x1cf\x1dg\x1eh\x85i\u2028j\u2029k\ud800l"
    buffer = io.BytesIO()
    stream = io.TextIOWrapper(buffer, encoding="utf-8", write_through=True)  # strict, like stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("bot.test.lines")
    logger.addHandler(handler)
    try:
        logger.warning("from the server: %s", breaks)
    finally:
        logger.removeHandler(handler)
    text = buffer.getvalue().decode("utf-8")
    (line,) = text.splitlines()
    assert json.loads(line)["message"] == f"from the server: {breaks}"


@pytest.mark.parametrize("colour", [False, True], ids=["plain", "colour"])
def test_text_logs_escape_control_characters(
    colour: bool, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discord.utils, "stream_supports_colour", lambda stream: colour)
    setup_logging("info", "text")
    log = logging.getLogger("bot.test.text")
    log.warning("guild name: %s", "\x1b[2J\x1b[31mowned\n[2026-12-03 00:00:00] [ERROR   ] fake: line\u2028\ud800")
    try:
        raise ValueError("bad\x1b]0;title\x07 value")
    except ValueError:
        log.exception("failed")
    err = capsys.readouterr().err
    assert "\x1b[2J" not in err and "\x1b]" not in err and "\x07" not in err and "\u2028" not in err
    err = re.sub("\x1b\\[[0-9;]*m", "", err)  # the formatter's own colours
    message, failed, *traceback = err.splitlines()
    assert message.endswith(
        "guild name: \\x1b[2J\\x1b[31mowned\\n[2026-12-03 00:00:00] [ERROR   ] fake: line\\u2028\\ud800"
    )
    assert failed.endswith("failed") and traceback[0] == "Traceback (most recent call last):"
    assert traceback[-1] == "ValueError: bad\\x1b]0;title\\x07 value"
