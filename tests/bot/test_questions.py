"""One set of question rules (bot/questions.py): the command line and /ask clean, refuse and cut alike."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from audio.oracle import Oracle
from bot.__main__ import main
from bot.settings import get_settings
from tests.bot.helpers import Scene, answered, ephemeral_reply, fields, final_embed, make_settings, running_bot
from tests.emulator.records import InteractionRecord
from tests.fakes.audio_files import encode, speechlike
from tests.fakes.inference import FakeInference

pytestmark = pytest.mark.timeout(120)

LIMIT = 80
ZERO_WIDTH = "\u200b\u200c\u200d"
LINKS = "@everyone <@123> see https://evil.example/x or discord.gg/free\u200b?"
LONG = "Will it rain tomorrow? " * 20
EMPTY = "Your question is empty: type something to ask."
NO_WORDS = "I couldn't make out any words in that recording."

# (what is asked, the outcome both ways must give): ("refused", sentence) or ("asked", the oracle's question, cut note)
TYPED = [
    (ZERO_WIDTH, ("refused", EMPTY)),
    ("", ("refused", EMPTY)),
    ("   ", ("refused", EMPTY)),
    (LONG, ("refused", f"Your question is {len(LONG.strip())} characters long; please keep it under {LIMIT}.")),
    (LINKS, ("asked", LINKS.replace("\u200b", ""), "")),
]
TRANSCRIBED = [
    (ZERO_WIDTH, ("refused", NO_WORDS)),
    ("", ("refused", NO_WORDS)),
    (LONG, ("asked", LONG[:LIMIT], f" (the first {LIMIT} characters)")),
    (LINKS, ("asked", LINKS.replace("\u200b", ""), "")),
]


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The questions that reached the oracle, in Discord or on the command line."""
    questions: list[str] = []

    async def answer(self: Oracle, question: str) -> str:
        questions.append(question)
        return "Yes."

    monkeypatch.setattr(Oracle, "answer", answer)
    return questions


async def by_cli(args: list[str], asked: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, ...]:
    before = len(asked)
    code = await asyncio.to_thread(main, ["ask", *args])
    out = capsys.readouterr()
    if code != 0:
        assert len(asked) == before
        return ("refused", out.err.splitlines()[-1].removeprefix("error: "))
    transcript = [line for line in out.out.splitlines() if line.startswith("Transcript")]
    note = transcript[0].partition(":")[0].removeprefix("Transcript") if transcript else ""
    return ("asked", asked[-1], note)


async def by_discord(record: InteractionRecord, asked: list[str]) -> tuple[str, ...]:
    await record.wait_for(lambda r: answered(r) or r.ephemeral or r.followups, 30)
    if not answered(record):
        return ("refused", await ephemeral_reply(record))
    (label,) = [name for name in fields(final_embed(record)) if "said" in name or "asked" in name]
    return ("asked", asked[-1], label.partition(" said")[2])


async def test_the_command_line_and_ask_give_the_same_outcome(
    scene: Scene,
    tmp_path: Path,
    fake_inference: FakeInference,
    ffmpeg: str,
    asked: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MAX_QUESTION_CHARS", str(LIMIT))
    monkeypatch.setenv("ASR_BASE_URL", f"{fake_inference.url}/asr")
    get_settings.cache_clear()
    recording = encode(speechlike(1.5), "ogg", ffmpeg)
    (tmp_path / "q.ogg").write_bytes(recording)
    settings = make_settings(tmp_path, max_question_chars=LIMIT, asr_base_url=f"{fake_inference.url}/asr")
    async with running_bot(scene.emu, settings):
        for question, expected in TYPED:
            cli = await by_cli([question], asked, capsys)
            discord = await by_discord(await scene.ask(question), asked)
            assert cli == discord == expected, repr(question)
        for transcript, expected in TRANSCRIBED:
            fake_inference.transcript = transcript
            cli = await by_cli(["--audio", str(tmp_path / "q.ogg")], asked, capsys)
            discord = await by_discord(await scene.ask_recording(recording), asked)
            assert cli == discord == expected, repr(transcript)
