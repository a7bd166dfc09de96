"""Scenario 3: /stop silences the answer being spoken at once, and the next question plays normally."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from audio.source import FRAME_SECONDS
from audio.speech.server import SpeechServer
from bot.playback import GuildPlayer
from tests.bot.helpers import Scene, answered, final_embed, join
from tests.e2e.harness import assert_played_whole, heard, serving
from tests.emulator.voice import TRAILING_SILENCE_FRAMES
from tests.fakes.inference import FakeInference

pytestmark = pytest.mark.timeout(120)

LONG_ANSWER = (
    "Still waters run deep. The river does not hurry. Yet it reaches the sea. Patience is bitter. Its fruit is sweet."
)
STOP_BOUND = 0.1  # seconds from the bot acting on /stop to the last audio packet


class StopClock:
    """When a guild player's `stop()` ran, on the emulator's clock (time.monotonic): when the bot acted on /stop."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[float] = []
        original = GuildPlayer.stop

        def stop(player: GuildPlayer) -> int:
            self.calls.append(time.monotonic())
            return original(player)

        monkeypatch.setattr(GuildPlayer, "stop", stop)


async def test_stop_mid_answer_silences_within_100_ms_and_the_next_answer_plays(
    scene: Scene,
    tmp_path: Path,
    fake_inference: FakeInference,
    voiced_engine: SpeechServer,
    ffmpeg: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = StopClock(monkeypatch)
    fake_inference.chat_reply = LONG_ANSWER
    async with serving(scene, tmp_path, fake_inference, voiced_engine) as (_, spy):
        await join(scene)
        voice = scene.emu.voice(scene.guild.id)
        long = await scene.ask("Will it take long?")
        await scene.emu.wait_for(lambda: len(voice.packets) >= 25, 60)  # half a second of it was heard
        stop = await scene.command("stop")
        assert (await stop.wait_for_response()).data["content"] == "⏹️ Stopped 1 answer."
        await long.wait_for(lambda r: answered(r) and "footer" in final_embed(r), 30)
        cut = await heard(scene.emu, scene.guild.id)

        fake_inference.chat_reply = "Patience is bitter."
        start = len(voice.packets)
        after = await scene.ask("And now?")
        await after.wait_for(answered, 60)
        spoken_after = await heard(scene.emu, scene.guild.id, start)

    stopped_at = clock.calls[0]  # the later call is the shutdown's
    assert stop.dispatched_at is not None and stop.dispatched_at <= stopped_at
    last_audio = [p for p in cut if not p.silence][-1]
    assert last_audio.arrival - stopped_at <= STOP_BOUND
    interrupted = spy.spoken[0]
    assert len(cut) - TRAILING_SILENCE_FRAMES == interrupted.source.frames_read + interrupted.source.underruns
    whole = len(interrupted.audio) / voiced_engine.sample_rate / FRAME_SECONDS
    assert interrupted.source.frames_read < whole / 2  # most of the answer was never sent
    assert final_embed(long)["footer"]["text"] == "🔇 Speech was stopped before this answer was finished."

    assert "footer" not in final_embed(after)
    await assert_played_whole(spoken_after, spy.spoken[1], voiced_engine.sample_rate, ffmpeg)
