"""A speech stack that does not load: a `torchaudio` package that fails as one built for another torch does."""

from __future__ import annotations

from pathlib import Path

UNDEFINED_SYMBOL = "undefined symbol: torch_exception_get_what_without_backtrace"


def broken_torchaudio(folder: Path) -> Path:
    """Write a `torchaudio` package into `folder` whose import raises like a mismatched build; returns `folder`,
    to be put first on PYTHONPATH."""
    package = folder / "torchaudio"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f'raise OSError("Could not load this library: {package}/lib/libtorchaudio.so ({UNDEFINED_SYMBOL})")\n'
    )
    return folder
