"""End-to-end latency: /ask → first voice packet and → the answer's text, through the local Discord emulator.

`python -m bench.e2e --json` runs the real bot against `tests.emulator` with the fake Inference API (answering at
once) and the real streaming TTS engine on the tiny voiced Parler-TTS checkpoint (`tests.e2e.harness`: real DAC
codec, 0.46 s of audio per sentence), joins a voice channel and asks `--questions` questions one after the other.
Each is timed on the emulator's clock from INTERACTION_CREATE written to the gateway to the answer's first RTP
packet, to the answer embed (revealed when its audio starts) and to the deferral; the last line is one JSON object.
The questions are asked twice in the same run: on an end-to-end encrypted call (DAVE, a member listening and
decrypting) and on protocol version 0 (transport encryption only); first audio and underruns are reported for both.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from audio.speech.server import SpeechServer
from bench import report
from tests.bot.helpers import answered, join
from tests.e2e.harness import assert_heard_end_to_end, build_scene, heard, load_voiced_engine, serving
from tests.emulator import DiscordEmulator
from tests.fakes.inference import FakeInference

ANSWER = "A watched pot never boils. It is certain."  # two sentences: 0.93 s of audio


def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile of `values` (nearest rank)."""
    ranked = sorted(values)
    return ranked[max(0, min(len(ranked), -(-len(ranked) * q // 100)) - 1)]


def summary(name: str, values: list[float]) -> dict[str, float]:
    return {f"{name}_p50": round(statistics.median(values), 1), f"{name}_p95": round(percentile(values, 95), 1)}


async def measure(questions: int, workdir: Path) -> dict[str, Any]:
    """Ask `questions` questions in voice with DAVE on, then off; latencies in ms, underruns summed."""
    started = time.perf_counter()
    engine = await asyncio.to_thread(load_voiced_engine, workdir / "voiced-parler")
    print(f"built and loaded the voiced tiny model in {time.perf_counter() - started:.1f} s")
    results: dict[str, Any] = {"questions": questions}
    for name, dave in (("dave", True), ("version_0", False)):
        print(f"-- {name}")
        results[name] = await measure_call(engine, questions, workdir / name, dave)
    return results


async def measure_call(engine: SpeechServer, questions: int, workdir: Path, dave: bool) -> dict[str, Any]:
    """Ask `questions` questions on one call (`dave`: end-to-end encrypted, else protocol version 0)."""
    workdir.mkdir()
    first_audio, text, ack = [], [], []
    async with FakeInference() as fake, DiscordEmulator(dave=dave) as emu:
        fake.chat_reply = ANSWER
        with emu.patch():
            scene = build_scene(emu)
            async with serving(scene, workdir, fake, engine) as (_, spy):
                await join(scene)
                voice = emu.voice(scene.guild.id)
                for index in range(questions):
                    start = len(voice.packets)
                    record = await scene.ask(f"Question {index}?")
                    packets = await heard(emu, scene.guild.id, start)
                    if dave:
                        assert_heard_end_to_end(packets)
                    await record.wait_for(answered, 30)
                    assert record.dispatched_at is not None and record.callback is not None
                    reveal = next(e for e in record.edits if e.body.get("embeds"))
                    first_audio.append((packets[0].arrival - record.dispatched_at) * 1000)
                    text.append((reveal.at - record.dispatched_at) * 1000)
                    ack.append((record.callback.at - record.dispatched_at) * 1000)
                    underruns = spy.spoken[-1].source.underruns
                    print(
                        f"{index + 1:>3}: first audio {first_audio[-1]:7.1f} ms, text {text[-1]:7.1f} ms, "
                        f"ack {ack[-1]:5.1f} ms, {len(packets)} packets, {underruns} underruns"
                    )
    return {
        **summary("first_audio_ms", first_audio),
        **summary("text_reply_ms", text),
        **summary("ack_ms", ack),
        "underruns": sum(spoken.source.underruns for spoken in spy.spoken),
        "audio_s_per_answer": round(len(spy.spoken[0].audio) / engine.sample_rate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(measure(args.questions, Path(tmp)))
    report(result, args.json)


if __name__ == "__main__":
    main()
