"""The open-mic wake phrase ("eight ball", "magic eight ball"…) at the start of a transcript."""

from __future__ import annotations

import re

# "eight ball" or "magic eight ball" as speech recognisers spell it ("8 ball", "8-ball", "eightball",
# "Magic 8-Ball"), optionally after "hey"/"ok"/"oh" and "the", and followed by punctuation.
_WAKE = re.compile(
    r"^\W*(?:(?:hey|ok|okay|oh)\W+)?(?:the\W+)?(?:magic\W*)?(?:eight|8)\W*balls?\b\W*",
    re.IGNORECASE,
)


def after_wake_phrase(transcript: str) -> str | None:
    """The question following the wake phrase ("" when nothing follows), or None when it doesn't start with one."""
    match = _WAKE.match(transcript)
    return transcript[match.end() :].strip() if match else None
