"""Shards: two bot processes (two clients here), shards 0 and 1 of 2, each answering only its own guilds."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from bot.client import MagicBot
from bot.playback import GuildPlayer
from tests.bot.doubles import SineEngine, until
from tests.bot.helpers import answered, final_embed, join, make_settings, running_bot
from tests.e2e.harness import SourceSpy, build_scene
from tests.emulator import DiscordEmulator
from tests.emulator.world import shard_of

pytestmark = pytest.mark.timeout(180)


async def test_two_shard_processes_answer_each_guild_from_exactly_one(
    emulator: DiscordEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenes = [build_scene(emulator, f"Guild {i}", shard=(i % 2, 2)) for i in range(4)]
    assert [shard_of(s.guild.id, 2) for s in scenes] == [0, 1, 0, 1]
    stopped: list[GuildPlayer] = []
    stop = GuildPlayer.stop
    monkeypatch.setattr(GuildPlayer, "stop", lambda player: stopped.append(player) or stop(player))
    async with AsyncExitStack() as stack:
        bots: list[MagicBot] = []
        for shard in (0, 1):
            settings = make_settings(tmp_path / f"shard{shard}", shard_count=2, shard_ids=(shard,))
            bots.append(await stack.enter_async_context(running_bot(emulator, settings, tts=SineEngine())))
        spies = [SourceSpy(bot) for bot in bots]
        assert [bot.shard_ids for bot in bots] == [[0], [1]]
        assert {shard: s.identify["shard"] for shard, s in emulator.gateway.sessions.items()} == {0: [0, 2], 1: [1, 2]}

        for scene in scenes:
            await join(scene)
            record = await scene.ask(f"Will {scene.guild.name} be answered?")
            await record.wait_for(answered, 60)
            assert "footer" not in final_embed(record)  # spoken in voice
            await emulator.voice(scene.guild.id).wait_for_utterances(1, 60)

        for index, scene in enumerate(scenes):
            owner, other = bots[index % 2], bots[1 - index % 2]
            assert owner.get_guild(scene.guild.id) is not None and other.get_guild(scene.guild.id) is None
            assert owner.voice.player(scene.guild.id) is not None and other.voice.player(scene.guild.id) is None
            assert len(emulator.voice(scene.guild.id).connections) == 1
        assert [len(spy.spoken) for spy in spies] == [2, 2]  # two answers spoken by each process

        # A long answer in guild 3 (shard 1): its /stop reaches shard 1's process, which stops it.
        scene, owner = scenes[3], bots[1]
        owner.oracle.answer = _long_answer  # type: ignore[method-assign]
        speaking = await scene.ask("Will this take long?")
        await speaking.wait_for(answered, 60)
        player = owner.voice.player(scene.guild.id)
        assert player is not None
        await until(lambda: player.busy, 30)
        record = await scene.command("stop")
        assert (await record.wait_for_response()).data["content"] == "⏹️ Stopped 1 answer."
        assert stopped == [player]
        await speaking.wait_for(lambda r: "footer" in final_embed(r), 30)
        assert final_embed(speaking)["footer"]["text"] == "🔇 Speech was stopped before this answer was finished."


async def _long_answer(question: str) -> str:
    return "Patience. " * 60  # six seconds of tone at 0.01 s per character


async def test_an_empty_shard_count_takes_discords_recommendation(emulator: DiscordEmulator, tmp_path: Path) -> None:
    emulator.recommended_shards = 2
    scenes = [build_scene(emulator, f"Guild {i}", shard=(i, 2)) for i in range(2)]
    async with running_bot(emulator, make_settings(tmp_path), tts=SineEngine()) as bot:
        assert bot.shard_count == 2 and sorted(bot.shards) == [0, 1]
        assert sorted(emulator.gateway.sessions) == [0, 1]
        for scene in scenes:
            await join(scene)
            assert bot.get_guild(scene.guild.id).shard_id == shard_of(scene.guild.id, 2)
    assert any(r.path == "/api/v10/gateway/bot" for r in emulator.requests)
