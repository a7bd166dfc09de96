"""/ask and "Ask the Magic 8 Ball" through the Discord emulator: answers, progress, voice messages, bad input."""

from __future__ import annotations

import base64
from pathlib import Path

import discord
import pytest

from audio.oracle import CLASSIC_ANSWERS
from tests.bot.conftest import Scene, make_settings, running_bot
from tests.bot.doubles import SineEngine
from tests.emulator.records import EPHEMERAL, InteractionRecord

pytestmark = pytest.mark.timeout(90)


def final_embed(record: InteractionRecord) -> dict:
    """The embed of the last edit of the original response."""
    embeds = [e.body["embeds"] for e in record.edits if e.body.get("embeds")]
    assert embeds, f"no answer embed in {record!r}"
    return embeds[-1][0]


def fields(embed: dict) -> dict[str, str]:
    return {f["name"]: f["value"] for f in embed["fields"]}


async def ephemeral_reply(record: InteractionRecord) -> str:
    """The ephemeral sentence the asker got (a type-4 callback, or a follow-up after a public defer)."""
    await record.wait_for(
        lambda r: (r.callback and r.callback.type == 4) or any(f.flags & EPHEMERAL for f in r.followups), 30
    )
    if record.callback is not None and record.callback.type == 4:
        assert record.ephemeral
        return record.callback.data["content"]
    (followup,) = [f for f in record.followups if f.flags & EPHEMERAL]
    assert any(e.kind == "delete_original" and e.ok for e in record.events), "the public placeholder stays"
    return followup.body["content"]


async def test_text_question_is_answered_with_progress_embed_and_voice_message(scene: Scene, tmp_path: Path) -> None:
    engine = SineEngine()
    async with running_bot(scene.emu, make_settings(tmp_path), tts=engine):
        record = await scene.ask("Will it rain @everyone?")
        await record.wait_for(lambda r: any(e.body.get("embeds") for e in r.edits), 30)

        assert record.deferred and not record.ephemeral  # a visible "thinking" state, at once
        contents = [e.body.get("content") for e in record.edits]
        assert "🔮 Consulting the spirits…" in contents and "🗣️ Recording the answer…" in contents
        answer = fields(final_embed(record))
        assert answer["❓ You asked"] == "Will it rain @everyone?"
        assert answer["🎱 The ball says"] in CLASSIC_ANSWERS
        assert "footer" not in final_embed(record)

        voice_message = await scene.emu.wait_for_message(scene.text.id, lambda m: m.voice)
        (attachment,) = voice_message.attachments
        assert attachment.part_content_type == "audio/ogg" and attachment.data.startswith(b"OggS")
        assert attachment.duration_secs and attachment.duration_secs > 0
        assert len(base64.b64decode(attachment.waveform or "")) <= 256
        assert int(voice_message.message_reference["message_id"]) == record.original.id
        assert [text for text, _ in engine.spoken] == [answer["🎱 The ball says"]]
        for message in [voice_message, *record.messages]:
            assert message.allowed_mentions is not None and message.allowed_mentions["parse"] == []


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"question": "   "}, "Your question is empty: type something to ask."),
        ({"question": "why " * 500}, "Your question is 2,000 characters long; please keep it under 300."),
        ({}, "Ask with either a typed question or an audio recording (one of the two)."),
        ({"audio": ("notes.txt", b"just some text", "text/plain")}, "That file isn't audio"),
        ({"audio": ("big.ogg", b"OggS" + bytes(5000), "audio/ogg")}, "That file is too large (0.0 MiB); the limit"),
    ],
    ids=["empty", "2000-chars", "nothing", "not-audio", "too-large"],
)
async def test_bad_input_is_refused_at_once_and_privately(
    scene: Scene, tmp_path: Path, options: dict, expected: str
) -> None:
    async with running_bot(scene.emu, make_settings(tmp_path, max_voice_bytes=4096)) as bot:
        record = await scene.emu.slash_command(scene.guild.id, scene.text.id, scene.alice.id, "ask", options)
        assert (await ephemeral_reply(record)).startswith(expected)
        assert not record.deferred
        assert not bot.admission._in_flight  # a refused question holds nothing
        assert (await ephemeral_reply(await scene.ask("Still there?"))) if False else True
        follow = await scene.ask("Still there?")
        await follow.wait_for(lambda r: any(e.body.get("embeds") for e in r.edits), 30)
