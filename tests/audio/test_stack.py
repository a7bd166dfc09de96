"""The speech stack imports, and a broken package is named in one sentence (here, by the bot, and by pytest)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from audio.speech import speech_stack_problem
from tests.bot.helpers import ROOT
from tests.fakes.broken_stack import UNDEFINED_SYMBOL, broken_torchaudio


def test_the_speech_stack_imports() -> None:
    problem = speech_stack_problem()
    assert problem is None, problem
    import dac
    import parler_tts
    import torchaudio

    assert parler_tts.ParlerTTSForConditionalGeneration and dac.DAC and torchaudio.load


def _python(code: str, shim: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": f"{shim}:{ROOT}", "PATH": "/usr/bin:/bin"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_broken_package_is_named_in_one_sentence(tmp_path: Path) -> None:
    shim = broken_torchaudio(tmp_path / "shim")
    result = _python("from audio.speech import speech_stack_problem; print(speech_stack_problem())", shim, tmp_path)
    assert result.returncode == 0, result.stderr
    (sentence,) = result.stdout.splitlines()
    assert sentence.startswith("The speech package torchaudio ")
    assert UNDEFINED_SYMBOL in sentence and sentence.endswith("pip install -c requirements-lock.txt -e .")


def test_load_engine_refuses_with_the_sentence(tmp_path: Path) -> None:
    shim = broken_torchaudio(tmp_path / "shim")
    code = (
        "from audio.speech import SpeechStackError, TTSConfig, load_engine\n"
        "try:\n    load_engine(TTSConfig(model='unused'))\n"
        "except SpeechStackError as error:\n    print(error)\n"
    )
    result = _python(code, shim, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The speech package torchaudio ")


def test_the_test_suite_stops_with_the_sentence(tmp_path: Path) -> None:
    shim = broken_torchaudio(tmp_path / "shim")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(ROOT / "tests" / "tools")],
        env={"PYTHONPATH": f"{shim}:{ROOT}", "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "The speech package torchaudio " in result.stdout + result.stderr
    assert "ImportError while loading conftest" not in result.stdout + result.stderr
