"""Locating and checking the ffmpeg binary (imageio-ffmpeg's static build by default)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from pathlib import Path
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

# Every ffmpeg command line starts with these: no banner, no progress lines, errors only, never read the terminal.
GLOBAL_ARGS = ("-nostdin", "-hide_banner", "-nostats", "-loglevel", "error")
# ffmpeg runs (decode, encode, starting and reaping processes) get their own bounded pools, so they never starve
# asyncio's default executor (aiohttp's DNS lookups) and never pile up without limit. Members' uploads (which can
# each take up to RUN_TIMEOUT) have a pool of their own, so slow uploads never hold up speaking answers.
FFMPEG_WORKERS = max(4, 2 * (os.cpu_count() or 1))
_executor = ThreadPoolExecutor(max_workers=FFMPEG_WORKERS, thread_name_prefix="ffmpeg_work")
_uploads = ThreadPoolExecutor(max_workers=FFMPEG_WORKERS, thread_name_prefix="ffmpeg_upload")


RUN_TIMEOUT = 60.0  # wall-clock seconds any one ffmpeg run (decode or encode of one answer) may take
_READ_SIZE = 64 * 1024


class FFmpegTimeout(RuntimeError):
    """An ffmpeg run passed its wall-clock limit and was killed."""


def run_ffmpeg(
    args: list[str], data: bytes, *, max_output: int | None = None, timeout: float = RUN_TIMEOUT
) -> tuple[bytes, int]:
    """Run ffmpeg (blocking) with `data` on stdin; return its stdout and exit status.

    Reading stops early once the output passes `max_output` bytes; past `timeout` seconds the process is killed
    and `FFmpegTimeout` raised.
    """
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError, ValueError), stdin:
            stdin.write(data)

    expired = threading.Event()

    def kill() -> None:
        expired.set()
        proc.kill()

    feeder = threading.Thread(target=feed, name="ffmpeg_feed", daemon=True)
    watchdog = threading.Timer(timeout, kill)
    feeder.start()
    watchdog.start()
    out = bytearray()
    try:
        while chunk := stdout.read1(_READ_SIZE):
            out += chunk
            if max_output is not None and len(out) > max_output:
                break
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        stdout.close()
        code = proc.wait()
        feeder.join()
    if expired.is_set():
        raise FFmpegTimeout(f"ffmpeg ran longer than {timeout:g} seconds")
    return bytes(out), code


async def run_ffmpeg_work(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking ffmpeg-related work (`func(*args, **kwargs)`) in the ffmpeg pool, off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_executor, partial(func, *args, **kwargs))


async def run_upload_work(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`run_ffmpeg_work` for members' uploads, in the uploads' own pool."""
    return await asyncio.get_running_loop().run_in_executor(_uploads, partial(func, *args, **kwargs))


class FFmpegUnavailable(RuntimeError):
    """ffmpeg is missing or does not run; the message is one sentence for operators."""


def ffmpeg_exe(path: Path | str | None = None) -> str:
    """Return a working ffmpeg executable: `path` if given, else imageio-ffmpeg's bundled binary.

    The binary is run once (per path) with `-version` so that a missing or broken one is reported at start-up.
    """
    return _checked_ffmpeg(None if path is None else str(path))


@lru_cache(maxsize=8)
def _checked_ffmpeg(path: str | None) -> str:
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
