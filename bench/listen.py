"""Asking aloud: end of the member's speech → first answer audio at the far end, and the CPU cost of listening.

`python -m bench.listen --json` runs three measurements:

- latency: the real bot against `tests.emulator` with the fake Inference API (answering at once) and the tiny
  voiced Parler-TTS checkpoint (`tests.e2e.harness`); a far-end member (`tests.emulator.speaker`) runs /ask and
  says a 1.2 s question `--questions` times. Each is timed on one monotonic clock from the last frame of speech
  sent to the first RTP packet of the answer at the far end, and to the utterance reaching the transcription
  service. Both include LISTEN_SILENCE_SECONDS (0.8 s) of waiting for the end of the question, by design.
- cpu: one member's receive path (RTP parsing, transport decryption, DAVE decryption with an emulated call's MLS
  key, jitter buffer, Opus decoding to 16 kHz, voice activity, utterance cutting) over `--cpu-seconds` of speech,
  in process CPU time: percent of one core while the member speaks; and the same without DAVE (protocol version 0).
- vad: the WebRTC detector (with the energy gate the bot uses) against Silero VAD (when `silero_vad` imports) on
  the test recordings: share of speech frames found in speech-like recordings, of noise frames called speech, and
  CPU per second of audio.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from audio.formats import from_pcm16, to_pcm16
from audio.listen.opus import FRAME_SAMPLES
from audio.listen.rtp import XCHACHA, Dave, decrypt_transport, open_frame, parse_header
from audio.listen.segmenter import SegmenterConfig
from audio.listen.stream import MemberStream
from audio.listen.vad import WebRtcVad
from bench import report
from bench.e2e import summary
from bot.cogs.listening import ASK_ALOUD
from bot.voice_receive import receiving
from tests.bot.helpers import answered, join
from tests.e2e.harness import build_scene, load_voiced_engine, serving
from tests.emulator import DiscordEmulator
from tests.emulator.dave import DaveCall, FarEndMember
from tests.emulator.records import Notifier
from tests.emulator.speaker import OPUS_SILENCE, FarEndSpeaker, opus_frames, rtp_packet
from tests.fakes.audio_files import speechlike
from tests.fakes.inference import FakeInference

RATE = 48_000
SPEAKER_ID = 1001  # the member whose receive path is measured


def question(seconds: float, seed: int) -> np.ndarray:
    gap = np.zeros(RATE // 4, np.float32)
    return np.concatenate([gap, speechlike(seconds, seed=seed), gap])


async def latency(questions: int, workdir: Path) -> dict[str, Any]:
    """End of speech → first answer packet at the far end, in ms."""
    engine = await asyncio.to_thread(load_voiced_engine, workdir / "voiced-parler")
    values: list[float] = []
    heard: list[float] = []  # end of speech → the utterance reaching the (fake) transcription service
    async with FakeInference() as fake, DiscordEmulator() as emu:
        with emu.patch():
            scene = build_scene(emu)
            async with serving(scene, workdir, fake, engine):
                await join(scene)
                voice = emu.voice(scene.guild.id)
                speaker = FarEndSpeaker(emu.voice_server, scene.guild.id, scene.alice.id)
                for index in range(questions):
                    record = await scene.command("ask")
                    await record.wait_for(lambda r: any(e.body.get("content") == ASK_ALOUD for e in r.edits), 30)
                    start = len(voice.packets)
                    ended = await speaker.speak(question(1.2, index))
                    await record.wait_for(answered, 60)
                    first = await emu.wait_for(
                        lambda start=start: next((p for p in voice.packets[start:] if not p.silence), None), 60
                    )
                    values.append((first.arrival - ended) * 1000)
                    asr = [r for r in fake.requests if r.path.startswith("/asr")][-1]
                    heard.append((asr.received_at - ended) * 1000)
                    print(
                        f"{index + 1:>3}: end of speech → first answer audio {values[-1]:7.1f} ms "
                        f"(→ sent to transcription {heard[-1]:6.1f} ms)"
                    )
                    await voice.wait_for_utterances(index + 1, 60)
    engine.close()
    return {
        "questions": questions,
        **summary("speech_end_to_answer_audio_ms", values),
        **summary("speech_end_to_transcription_ms", heard),
    }


async def _dave_pair() -> tuple[Callable[[bytes], bytes], Dave]:
    """Two members of one emulated DAVE call: the speaker's encryption, and the listener's `Dave` for its frames."""
    notifier = Notifier()
    call = DaveCall(SPEAKER_ID + 1, notifier)
    speaker, listener = FarEndMember(SPEAKER_ID, call), FarEndMember(SPEAKER_ID + 2, call)
    for member in (speaker, listener):
        member.start()
    await notifier.wait_for(lambda: call.secured and speaker.session.ready and listener.session.ready, 30, "a group")
    speaking, listening = speaker.session, listener.session
    speaker.close()
    listener.close()
    return speaking.encrypt_opus, receiving(listening)


def cpu(seconds: float, dave: bool) -> float:
    """Percent of one core that one member's receive path takes while they speak (`dave`: frames end-to-end
    encrypted, as Discord sends them, and opened with the listener's DAVE session)."""
    key = bytes(range(32))
    encrypt, session = asyncio.run(_dave_pair()) if dave else (None, None)
    frames = [*opus_frames(speechlike(seconds)), *[OPUS_SILENCE] * 5]
    payloads = [encrypt(f) if encrypt is not None and f != OPUS_SILENCE else f for f in frames]
    packets = [rtp_packet(XCHACHA, key, i, i * 960, 7, payload, i + 1) for i, payload in enumerate(payloads)]
    stream = MemberStream(SegmenterConfig(max_seconds=seconds + 1), WebRtcVad())
    unread = 0
    began = time.process_time()
    for index, packet in enumerate(packets):
        header = parse_header(packet)
        opus = open_frame(decrypt_transport(packet, header, XCHACHA, key), SPEAKER_ID, session)
        unread += opus is None
        stream.push(header.sequence, header.timestamp, opus, index * 0.02)
    spent = time.process_time() - began
    if unread:
        raise RuntimeError(f"{unread} of {len(packets)} frames could not be opened")
    return round(100 * spent / seconds, 2)


def _frames16k(samples: np.ndarray) -> np.ndarray:
    pcm = to_pcm16(samples[::3])
    return pcm[: len(pcm) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)


def _recordings() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "speech": np.concatenate([_frames16k(speechlike(2.0, seed=seed)) for seed in range(5)]),
        "noise_-54dBFS": _frames16k(rng.normal(0, 0.002, 5 * RATE).astype(np.float32)),
        "noise_-40dBFS": _frames16k(rng.normal(0, 0.01, 5 * RATE).astype(np.float32)),
        "silence": _frames16k(np.zeros(5 * RATE, np.float32)),
    }


def vad() -> dict[str, Any]:
    """Speech found and noise called speech, per detector, with CPU per second of audio."""
    detectors: dict[str, Any] = {"webrtc": WebRtcVad().is_speech}
    try:
        import torch
        from silero_vad import load_silero_vad

        torch.set_num_threads(1)
        model = load_silero_vad()

        def silero(frame: np.ndarray) -> bool:
            with torch.inference_mode():
                return float(model(torch.from_numpy(from_pcm16(frame)), 16_000)) > 0.5

        detectors["silero"] = silero
    except ImportError:
        print("silero_vad is not installed: measuring WebRTC only")
    out: dict[str, Any] = {}
    for name, detect in detectors.items():
        total_frames, began = 0, time.process_time()
        for label, frames in _recordings().items():
            if name == "silero":  # Silero takes 512 samples at 16 kHz: 32 ms windows over the same audio
                flat = frames.reshape(-1)
                frames = flat[: len(flat) // 512 * 512].reshape(-1, 512)
                model.reset_states()
            verdicts = [detect(frame) for frame in frames]
            total_frames += len(frames) * frames.shape[1]
            out[f"{name}_{label}_speech_share"] = round(float(np.mean(verdicts)), 3)
        out[f"{name}_cpu_percent_of_a_core"] = round(100 * (time.process_time() - began) / (total_frames / 16_000), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--cpu-seconds", type=float, default=30.0)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "cpu_seconds_of_speech": args.cpu_seconds,
        "cpu_percent_of_a_core_per_member": cpu(args.cpu_seconds, dave=True),
        "cpu_percent_of_a_core_per_member_without_dave": cpu(args.cpu_seconds, dave=False),
        **vad(),
    }
    if not args.skip_latency:
        with tempfile.TemporaryDirectory() as tmp:
            result.update(asyncio.run(latency(args.questions, Path(tmp))))
    report(result, args.json)


if __name__ == "__main__":
    main()
