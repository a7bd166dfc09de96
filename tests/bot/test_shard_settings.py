"""SHARD_COUNT and SHARD_IDS: parsed from the environment, refused with one sentence when they can't work."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.settings import Settings
from tests.bot.helpers import SECRET, run_cli


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("count", "ids", "expected"),
    [("4", "0-3", (0, 1, 2, 3)), ("8", "4,5", (4, 5)), ("16", " 0-1, 6 ,3-4", (0, 1, 3, 4, 6)), ("2", "1", (1,))],
)
def test_shard_ranges_and_lists(
    monkeypatch: pytest.MonkeyPatch, count: str, ids: str, expected: tuple[int, ...]
) -> None:
    parsed = settings(monkeypatch, SHARD_COUNT=count, SHARD_IDS=ids)
    assert (parsed.shard_count, parsed.shard_ids) == (int(count), expected)


def test_empty_means_discords_recommendation_and_every_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = settings(monkeypatch, SHARD_COUNT="", SHARD_IDS="")
    assert parsed.shard_count is None and parsed.shard_ids is None


@pytest.mark.parametrize(
    ("env", "sentence"),
    [
        ({"SHARD_IDS": "0-3"}, "SHARD_IDS needs SHARD_COUNT: set the total number of shards of all processes too."),
        (
            {"SHARD_COUNT": "4", "SHARD_IDS": "2-5"},
            "SHARD_IDS must list shard numbers below SHARD_COUNT (4) like 0-3 or 4,5, not '2-5'.",
        ),
        (
            {"SHARD_COUNT": "4", "SHARD_IDS": "3-1"},
            "SHARD_IDS must list shard numbers below SHARD_COUNT (4) like 0-3 or 4,5, not '3-1'.",
        ),
        (
            {"SHARD_COUNT": "4", "SHARD_IDS": "one"},
            "SHARD_IDS must list shard numbers below SHARD_COUNT (4) like 0-3 or 4,5, not 'one'.",
        ),
    ],
)
def test_bad_shard_ids_are_one_sentence(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], sentence: str) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(monkeypatch, **env)
    (error,) = caught.value.errors()
    assert str(error["ctx"]["error"]) == sentence


def test_zero_shards_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(monkeypatch, SHARD_COUNT="0")
    assert caught.value.errors()[0]["loc"] == ("shard_count",)


def test_the_cli_says_what_is_wrong_in_one_sentence(tmp_path: Path) -> None:
    result = run_cli(env={"DISCORD_TOKEN": SECRET, "SHARD_COUNT": "2", "SHARD_IDS": "0-2"}, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: SHARD_IDS must list shard numbers below SHARD_COUNT (2) like 0-3 or 4,5, not '0-2'."
    )
