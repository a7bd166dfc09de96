"""Scenario 4: two members ask at once in one guild, in two guilds at once: no overlap, nothing lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import discord
import pytest

from audio.speech.server import SpeechServer
from tests.bot.helpers import Scene, answered, final_embed, join
from tests.e2e.harness import assert_played_whole, build_scene, heard, serving, settled
from tests.fakes.inference import FakeInference

pytestmark = pytest.mark.timeout(180)


def record_plays(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, discord.AudioSource]]:
    """(guild id, source) of every `VoiceClient.play` call, in order."""
    plays: list[tuple[int, discord.AudioSource]] = []
    play = discord.VoiceClient.play

    def recording_play(client: discord.VoiceClient, source: discord.AudioSource, **kwargs: Any) -> Any:
        plays.append((client.guild.id, source))
        return play(client, source, **kwargs)

    monkeypatch.setattr(discord.VoiceClient, "play", recording_play)
    return plays


async def test_simultaneous_questions_in_two_guilds_are_all_spoken_in_turn(
    scene: Scene,
    tmp_path: Path,
    fake_inference: FakeInference,
    voiced_engine: SpeechServer,
    ffmpeg: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plays = record_plays(monkeypatch)
    other = build_scene(scene.emu, "Second Guild")
    places = (scene, other)
    async with serving(scene, tmp_path, fake_inference, voiced_engine) as (bot, spy):
        for place in places:
            await join(place)
        asks = [
            place.ask(f"Me first, {who.user.name}?", user=who) for place in places for who in (place.alice, place.mod)
        ]
        records = await asyncio.gather(*asks)
        for record in records:
            await record.wait_for(answered, 120)
        heard_by_guild = {}
        for place in places:
            first = await heard(scene.emu, place.guild.id)
            heard_by_guild[place.guild.id] = [first, await heard(scene.emu, place.guild.id, len(first))]
        await settled(bot)

    assert all("footer" not in final_embed(record) for record in records)
    assert [record.response_delay < scene.emu.interaction_deadline for record in records] == [True] * 4
    spoken_by_source = {id(spoken.source): spoken for spoken in spy.spoken}
    assert len(plays) == len(spy.spoken) == 4
    for place in places:
        first, second = heard_by_guild[place.guild.id]
        assert first + second == scene.emu.voice(place.guild.id).packets  # two answers, nothing else
        assert second[0].arrival > first[-1].arrival  # the second started after the first had ended
        sources = [spoken_by_source[id(source)] for guild_id, source in plays if guild_id == place.guild.id]
        assert len(sources) == 2
        for packets, spoken in zip((first, second), sources, strict=True):
            await assert_played_whole(packets, spoken, voiced_engine.sample_rate, ffmpeg)
