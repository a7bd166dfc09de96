"""Text that reaches a chat or a voice: invisible characters, links and invites."""

from __future__ import annotations

import re
import unicodedata

# Links a chat client would open: URLs with a scheme, www. hosts, and Discord invites (linked even without one).
LINK = re.compile(
    r"(?:\b[a-z][a-z0-9+.-]*://|\bwww\.|\b(?:discord(?:app)?\.(?:gg|com/invite)|dsc\.gg|discord\.me)/)\S*",
    re.IGNORECASE,
)


def strip_invisible(text: str) -> str:
    """Drop invisible formatting characters (Unicode category Cf: zero-width spaces, bidi overrides, …)."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def remove_links(text: str) -> str:
    """Drop links and invites altogether (for text that is also spoken)."""
    return LINK.sub("", text)


def defang_links(text: str) -> str:
    """Keep links and invites readable but not clickable: `https[:]//evil[.]example/x`."""
    return LINK.sub(lambda m: m.group(0).replace("://", "[:]//").replace(".", "[.]"), text)
