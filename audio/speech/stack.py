"""Whether the local speech stack imports, said in one sentence when it does not.

Parler-TTS pulls in torch, torchaudio (through descript-audiotools) and the DAC codec; a torchaudio built against
another torch fails with an undefined symbol at import. Checking the packages one by one, in dependency order,
names the first broken one instead of surfacing an import error from deep inside parler_tts.
"""

from __future__ import annotations

import importlib
import importlib.metadata

from audio.speech.voice import TTSError

#: Import name → distribution name, in the order they import each other.
SPEECH_STACK = {
    "torch": "torch",
    "torchaudio": "torchaudio",
    "dac": "descript-audio-codec-unofficial",
    "parler_tts": "parler-tts",
}


class SpeechStackError(TTSError):
    """A package of the local speech stack is missing or does not load."""


def _installed(distribution: str) -> str:
    try:
        return f"{distribution} {importlib.metadata.version(distribution)}"
    except importlib.metadata.PackageNotFoundError:
        return distribution


def speech_stack_problem() -> str | None:
    """One sentence naming the first package of the speech stack that does not import, or None when all do."""
    for module, distribution in SPEECH_STACK.items():
        try:
            importlib.import_module(module)
        except Exception as error:  # ImportError, or OSError from a shared library that does not link
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            return (
                f"The speech package {_installed(distribution)} does not load ({type(error).__name__}: {reason}); "
                "reinstall through the lock: pip install -c requirements-lock.txt -e ."
            )
    return None


def check_speech_stack() -> None:
    """Raise `SpeechStackError` with `speech_stack_problem`'s sentence when the stack does not import."""
    if (problem := speech_stack_problem()) is not None:
        raise SpeechStackError(problem)
