"""Locating and checking the ffmpeg binary (imageio-ffmpeg's static build by default)."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path


class FFmpegUnavailable(RuntimeError):
    """ffmpeg is missing or does not run; the message is one sentence for operators."""


@lru_cache(maxsize=8)
def ffmpeg_exe(path: Path | str | None = None) -> str:
    """Return a working ffmpeg executable: `path` if given, else imageio-ffmpeg's bundled binary.

    The binary is run once with `-version` so that a missing or broken one is reported at start-up.
    """
    if path is None:
        try:
            import imageio_ffmpeg

            exe = imageio_ffmpeg.get_ffmpeg_exe()
        except Exception as exc:  # imageio-ffmpeg raises RuntimeError when its binary is absent
            raise FFmpegUnavailable(
                "No ffmpeg binary was found: reinstall imageio-ffmpeg or set FFMPEG_PATH to an ffmpeg executable."
            ) from exc
    else:
        exe = str(path)
    try:
        probe = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FFmpegUnavailable(f"The ffmpeg binary at {exe} cannot be run; set FFMPEG_PATH to a working one.") from exc
    if probe.returncode != 0 or not probe.stdout.startswith(b"ffmpeg version"):
        raise FFmpegUnavailable(f"The program at {exe} is not a working ffmpeg; set FFMPEG_PATH to a working one.")
    return exe
