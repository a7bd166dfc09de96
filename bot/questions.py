"""What makes a question askable, whichever way it came: typed or recorded in Discord, or `python -m bot ask`.

No Discord types here: the bot (`bot.answering`, `bot.cogs.ask`) and the command line clean, check and cut
questions with these same rules, and refuse with the same sentences.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from audio.errors import UserFacingError
from audio.formats import AudioLimits, check_size
from audio.text import strip_invisible

AUDIO_TYPES = ("audio/", "video/ogg", "video/webm", "application/ogg")
AUDIO_EXTENSIONS = {".ogg", ".oga", ".opus", ".mp3", ".wav", ".flac", ".m4a", ".aac", ".webm"}


class QuestionRefused(UserFacingError):
    """A question that can't be asked as it is (the sentence says why); nothing was spent on it."""


def clean_question(text: str) -> str:
    """A typed question or transcript without invisible formatting characters or surrounding spaces."""
    return strip_invisible(text).strip()


def looks_like_audio(filename: str, content_type: str | None) -> bool:
    """Whether a file looks like a recording (by content type, or by extension when there is none)."""
    if content_type:
        return content_type.startswith(AUDIO_TYPES)
    return os.path.splitext(filename)[1].lower() in AUDIO_EXTENSIONS


@dataclass(frozen=True)
class Transcript:
    """What a recording said, cut to MAX_QUESTION_CHARS."""

    text: str
    cut: int | None = None  # the length it was cut to, or None when it is whole

    @property
    def note(self) -> str:
        """` (the first N characters)` when it was cut, else empty: shown after its label."""
        return "" if self.cut is None else f" (the first {self.cut:,} characters)"


@dataclass(frozen=True)
class QuestionRules:
    """MAX_QUESTION_CHARS and the limits on recordings, applied to every question before it reaches the oracle."""

    max_chars: int
    audio: AudioLimits

    def typed(self, text: str) -> str:
        """The cleaned question, or `QuestionRefused` when nothing is left of it or it is too long."""
        question = clean_question(text)
        if not question:
            raise QuestionRefused("Your question is empty: type something to ask.")
        if len(question) > self.max_chars:
            raise QuestionRefused(
                f"Your question is {len(question):,} characters long; please keep it under {self.max_chars:,}."
            )
        return question

    def check_recording(self, filename: str, content_type: str | None, size: int, duration: float | None) -> None:
        """Refuse a file that can't be a question (checked before reading it): not audio, empty, too large, or
        (when its duration is known) too long. Raises `QuestionRefused` or `AudioInputError`."""
        if not looks_like_audio(filename, content_type):
            raise QuestionRefused("That file isn't audio: attach a voice recording (ogg, mp3, wav, m4a…).")
        check_size(size, self.audio)
        limit = self.audio.max_seconds
        if duration is not None and duration > limit:
            raise QuestionRefused(f"That recording is {duration:.0f} seconds long; the limit is {limit:g} seconds.")

    def transcript(self, text: str) -> Transcript:
        """The cleaned transcript, cut to `max_chars`; `QuestionRefused` when no words are left."""
        said = clean_question(text)
        if not said:
            raise QuestionRefused("I couldn't make out any words in that recording.")
        return Transcript(said) if len(said) <= self.max_chars else Transcript(said[: self.max_chars], self.max_chars)
