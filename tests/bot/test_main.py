"""`python -m bot`: start-up errors in one sentence, and `ask` on the command line."""

from __future__ import annotations

import asyncio
import os
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from audio.errors import UserFacingError
from audio.formats import from_pcm16
from audio.oracle import CLASSIC_ANSWERS, Oracle
from audio.speech import TTSConfig, Voice
from audio.speech.server import SpeechServer
from bot.__main__ import main, write_wav
from bot.client import SpeechStatus
from bot.settings import Settings
from tests.bot.helpers import ROOT, SECRET, Scene, fields, final_embed, run_cli
from tests.emulator import DiscordEmulator
from tests.fakes.audio_files import encode, speechlike
from tests.fakes.bot_process import spawn
from tests.fakes.broken_stack import UNDEFINED_SYMBOL, broken_torchaudio
from tests.fakes.inference import FakeInference


def test_missing_token_is_one_clear_sentence(tmp_path: Path) -> None:
    result = run_cli(env={}, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: DISCORD_TOKEN is not set")
    assert ".env" in result.stderr and result.stderr.count("\n") == 1


def test_malformed_token_is_reported_without_echoing_it(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DISCORD_TOKEN=hunter2-is-not-a-token\n")
    result = run_cli(env={}, cwd=tmp_path)
    assert result.returncode == 2
    assert "does not look like a Discord bot token" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_invalid_setting_names_the_variable(tmp_path: Path) -> None:
    result = run_cli(env={"DISCORD_TOKEN": SECRET, "MAX_VOICE_SECONDS": "soon"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "MAX_VOICE_SECONDS" in result.stderr and "Traceback" not in result.stderr
    assert SECRET not in result.stderr


def test_empty_values_in_env_file_mean_defaults(tmp_path: Path) -> None:
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    os.chdir(tmp_path)
    settings = Settings()
    assert settings.discord_token is None and settings.dev_guild_id is None and settings.ffmpeg_path is None
    assert settings.max_voice_seconds == 60


def test_secrets_do_not_print() -> None:
    database = "postgresql+asyncpg://bot:pg_supersecret@db.example/bot"
    settings = Settings(discord_token=SECRET, hf_token="hf_supersecret", database_url=database)
    for shown in (repr(settings), str(settings), repr(settings.model_dump())):
        assert SECRET not in shown and "hf_supersecret" not in shown and "pg_supersecret" not in shown
    assert settings.database_url.get_secret_value() == database


async def test_a_corrupt_database_at_start_up_is_one_sentence(emulator: DiscordEmulator, tmp_path: Path) -> None:
    (tmp_path / "bot.db").write_bytes(b"not a database, only bytes\n" * 200)
    async with spawn(emulator, tmp_path, {}) as process:
        assert process.stderr is not None
        stderr = (await asyncio.wait_for(process.stderr.read(), 60)).decode()
        assert await asyncio.wait_for(process.wait(), 30) == 2
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (
        f"error: The database in DATABASE_URL (sqlite+aiosqlite:///{tmp_path / 'bot.db'}) can't be used: "
        "file is not a database."
    )


async def test_an_unreachable_database_at_start_up_is_retried_then_one_sentence(
    emulator: DiscordEmulator, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": "postgresql+asyncpg://bot:pw@127.0.0.1:1/bot", "DATABASE_CONNECT_SECONDS": "1"}
    async with spawn(emulator, tmp_path, env) as process:
        assert process.stderr is not None
        stderr = (await asyncio.wait_for(process.stderr.read(), 60)).decode()
        assert await asyncio.wait_for(process.wait(), 30) == 2
    *logged, error = stderr.splitlines()
    assert any("The database can't be reached yet" in line for line in logged)
    assert "Traceback" not in stderr
    assert error == (
        "error: The database in DATABASE_URL (postgresql+asyncpg://bot:***@127.0.0.1:1/bot) can't be used: "
        "[Errno 111] Connect call failed ('127.0.0.1', 1)."
    )


def test_ask_offline_prints_a_classic_answer(tmp_path: Path) -> None:
    result = run_cli("ask", "Should I adopt a dog?", env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    answer = result.stdout.strip().removeprefix("Answer: ")
    assert answer in CLASSIC_ANSWERS


async def test_ask_with_audio_uses_asr_and_llm(
    fake_inference: FakeInference, ffmpeg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    question = tmp_path / "question.ogg"
    question.write_bytes(encode(speechlike(2.0), "ogg", ffmpeg))
    monkeypatch.setenv("HF_TOKEN", "hf_cli_token")
    monkeypatch.setenv("ASR_BASE_URL", f"{fake_inference.url}/asr")
    monkeypatch.setenv("LLM_BASE_URL", f"{fake_inference.url}/llm")
    code = await asyncio.to_thread(main, ["ask", "--audio", str(question)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.splitlines() == ["Transcript: Should I adopt a dog?", "Answer: A watched pot never boils."]
    assert [r.path for r in fake_inference.requests] == ["/asr", "/llm/v1/chat/completions"]
    assert "hf_cli_token" not in out.out + out.err


async def test_ask_reports_api_errors_in_one_line(
    fake_inference: FakeInference, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("LLM_BASE_URL", f"{fake_inference.url}/llm")
    fake_inference.fail(402)
    code = await asyncio.to_thread(main, ["ask", "Will it rain?"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: The oracle has used up its inference credits") and err.count("\n") == 1


def test_voice_questions_need_a_token(tmp_path: Path, ffmpeg: str) -> None:
    question = tmp_path / "q.wav"
    question.write_bytes(encode(speechlike(1.0), "wav", ffmpeg))
    result = run_cli("ask", "--audio", str(question), env={}, cwd=tmp_path)
    assert result.returncode == 2
    assert "HF_TOKEN or ASR_BASE_URL" in result.stderr and "Traceback" not in result.stderr


def test_write_wav_roundtrip(tmp_path: Path) -> None:
    samples = np.sin(np.linspace(0, 200, 4410)).astype(np.float32) * 0.5
    write_wav(tmp_path / "a.wav", samples, 44_100)
    with wave.open(str(tmp_path / "a.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getnframes()) == (44_100, 1, 4410)
        back = from_pcm16(wav.readframes(4410))
    assert np.allclose(back, samples, atol=1e-4)


async def test_token_refused_by_discord_is_one_sentence(
    emulator: DiscordEmulator, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", SECRET)
    monkeypatch.setenv("TTS_ENABLED", "false")
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:///refused.db")
    code = await asyncio.to_thread(main, [])
    err = capsys.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        "error: Discord refused DISCORD_TOKEN: copy a fresh token from the Discord Developer Portal "
        "(Bot → Reset Token) into the environment or your .env file."
    ]
    assert "Traceback" not in err and SECRET not in err
    assert emulator.requests[-1].status == 401


async def test_ask_speak_writes_the_spoken_answer(
    tiny_speech_server: SpeechServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    loaded: list[TTSConfig] = []

    def load(config: TTSConfig) -> SpeechServer:  # the real checkpoint can't be downloaded here
        loaded.append(config)
        return tiny_speech_server

    monkeypatch.setattr("bot.services.load_engine", load)
    monkeypatch.setenv("TTS_MODEL", "parler-tts/parler-tts-mini-v1")
    monkeypatch.setenv("TTS_DEVICE", "cpu")
    out = tmp_path / "answer.wav"
    code = await asyncio.to_thread(main, ["ask", "Should I adopt a dog?", "--speak", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0
    assert printed[-1] == f"Spoken answer written to {out}"
    answer = printed[0].removeprefix("Answer: ")
    assert (loaded[0].model, loaded[0].device) == ("parler-tts/parler-tts-mini-v1", "cpu")
    with wave.open(str(out)) as wav:
        frames = wav.readframes(wav.getnframes())
        assert wav.getframerate() == tiny_speech_server.sample_rate
    spoken = from_pcm16(frames)
    expected = tiny_speech_server.synthesize(answer, Voice(Settings().tts_voice_description, 42))
    assert spoken.size == expected.size > 0
    assert np.allclose(spoken, expected, atol=2e-4)  # the same voice and seed: the same audio


def test_unreadable_audio_file_is_one_sentence(tmp_path: Path) -> None:
    result = run_cli("ask", "--audio", str(tmp_path / "missing.ogg"), env={}, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == f"error: [Errno 2] No such file or directory: '{tmp_path / 'missing.ogg'}'"


def test_any_user_facing_error_is_one_sentence(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    async def asleep(self: Oracle, question: str) -> str:
        raise UserFacingError("The spirits are asleep; ask again at dawn.")

    monkeypatch.setattr(Oracle, "answer", asleep)
    assert main(["ask", "Are you there?"]) == 2
    err = capsys.readouterr().err  # log lines may come before it
    assert err.splitlines()[-1] == "error: The spirits are asleep; ask again at dawn. (UserFacingError)"


async def test_a_broken_speech_stack_starts_text_only_with_one_sentence(scene: Scene, tmp_path: Path) -> None:
    shim = broken_torchaudio(tmp_path / "shim")
    env = {"TTS_ENABLED": "true", "PYTHONPATH": f"{shim}:{ROOT}"}
    async with spawn(scene.emu, tmp_path, env) as process:
        assert process.stderr is not None
        lines: list[str] = []
        while "does not load" not in (line := (await asyncio.wait_for(process.stderr.readline(), 60)).decode()):
            assert line, "the bot exited before saying why speech is off:\n" + "".join(lines)
            lines.append(line)
        assert line.rstrip().endswith(
            "reinstall through the lock: pip install -c requirements-lock.txt -e . Answers stay text only."
        )
        assert "The speech package torchaudio " in line and UNDEFINED_SYMBOL in line
        await scene.emu.wait_for(lambda: scene.emu.command_syncs, 60, "the bot process to sync its commands")
        await scene.emu.set_voice_state(scene.guild.id, scene.alice.id, scene.lounge.id)
        joined = await scene.command("join")
        await joined.wait_for(lambda r: r.edits or r.followups or r.callback, 30)
        asked = await scene.ask("Will the install hold?")
        await asked.wait_for(lambda r: any(e.body.get("embeds") for e in r.edits), 60)
        embed = final_embed(asked)
        assert embed["footer"]["text"] == f"🔇 {SpeechStatus.FAILED.note}"
        assert fields(embed)["🎱 The ball says"] in CLASSIC_ANSWERS
    assert "Traceback" not in "".join(lines)
