"""ffmpeg runs: their own bounded pool, off asyncio's default executor."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from audio.formats import AudioLimits, upload_to_flac
from tests.fakes.audio_files import encode, speechlike


async def test_ffmpeg_work_goes_on_while_the_default_executor_is_busy(ffmpeg: str) -> None:
    loop = asyncio.get_running_loop()
    release = threading.Event()
    default = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(default)
    hog = loop.run_in_executor(None, release.wait)  # e.g. a DNS lookup stuck behind other work
    try:
        flac = await asyncio.wait_for(upload_to_flac(encode(speechlike(1.0), "ogg", ffmpeg), AudioLimits(), ffmpeg), 30)
        assert flac.startswith(b"fLaC")
    finally:
        release.set()
        await hog
        default.shutdown()
