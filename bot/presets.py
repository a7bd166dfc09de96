"""Named voice presets: Parler-TTS descriptions of the speakers the checkpoints were trained on.

`parler-tts/parler-tts-mini-v1` (and large-v1) know 34 speakers by name; the Jenny fine-tunes know Jenny. A
description naming a speaker the loaded checkpoint doesn't know still works, with a less consistent voice.
"""

from __future__ import annotations

from dataclasses import dataclass

# The default speaker (the Jenny fine-tunes' description and a fixed seed) lives with the speech code.
from audio.speech import DEFAULT_SEED, JENNY_DESCRIPTION

_CLEAR = "with a very close recording that has almost no background noise"

# name → how that speaker delivers (the rest of the description is shared).
_SPEAKERS: dict[str, str] = {
    "Laura": "speaks in a warm, expressive tone at a moderate pace",
    "Gary": "speaks in a deep, steady voice at a slow pace",
    "Jon": "speaks in a monotone yet slightly fast delivery",
    "Lea": "speaks softly and gently at an average pace",
    "Karen": "speaks clearly and confidently at a brisk pace",
    "Rick": "speaks in a relaxed, slightly gravelly voice",
    "Brenda": "speaks in a bright, cheerful voice at a moderate pace",
    "David": "speaks in a calm, measured voice with a low pitch",
    "Eileen": "speaks in a clear, friendly voice at an average pace",
    "Jordan": "speaks in an energetic voice with a quick delivery",
    "Mike": "speaks in a casual, conversational tone",
    "Yann": "speaks in a smooth, unhurried voice",
    "Joy": "speaks in a lively, animated voice with a high pitch",
    "James": "speaks in a rich, resonant voice at a slow pace",
    "Eric": "speaks in a crisp, neutral voice at an average pace",
    "Lauren": "speaks in a soothing voice with a calm delivery",
    "Rose": "speaks in a gentle, slightly breathy voice",
    "Will": "speaks in an upbeat, friendly voice",
    "Jason": "speaks in a firm, authoritative voice",
    "Aaron": "speaks in a soft, thoughtful voice at a slow pace",
    "Naomie": "speaks in a melodic voice with a slight accent",
    "Alisa": "speaks in a clear, precise voice at a moderate pace",
    "Patrick": "speaks in a steady, deliberate voice",
    "Jerry": "speaks in a warm, grandfatherly voice",
    "Tina": "speaks in a bright voice with a quick delivery",
    "Jenna": "speaks in a calm, pleasant voice",
    "Bill": "speaks in a deep, slow and solemn voice",
    "Tom": "speaks in a plain, even voice at an average pace",
    "Carol": "speaks in a kind, motherly voice",
    "Barbara": "speaks in a poised, elegant voice at a slow pace",
    "Rebecca": "speaks in a confident, expressive voice",
    "Anna": "speaks in a light, airy voice at a moderate pace",
    "Bruce": "speaks in a booming, dramatic voice",
    "Emily": "speaks in a youthful, curious voice",
}


@dataclass(frozen=True)
class VoicePreset:
    """A named voice: the Parler description and the sampling seed that keeps it consistent."""

    name: str
    description: str
    seed: int = DEFAULT_SEED


DEFAULT_PRESET = "Jenny"

PRESETS: dict[str, VoicePreset] = {
    DEFAULT_PRESET: VoicePreset(DEFAULT_PRESET, JENNY_DESCRIPTION),
    **{name: VoicePreset(name, f"{name} {style}, {_CLEAR}.") for name, style in _SPEAKERS.items()},
}


def find_preset(name: str) -> VoicePreset | None:
    """The preset with this name, ignoring case and surrounding spaces."""
    wanted = name.strip().casefold()
    return next((p for p in PRESETS.values() if p.name.casefold() == wanted), None)


def search_presets(text: str, limit: int = 25) -> list[VoicePreset]:
    """Presets whose name starts with `text` first, then those containing it (Discord shows up to 25)."""
    needle = text.strip().casefold()
    starts = [p for p in PRESETS.values() if p.name.casefold().startswith(needle)]
    contains = [p for p in PRESETS.values() if needle in p.name.casefold() and p not in starts]
    return (starts + contains)[:limit]
