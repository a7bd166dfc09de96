"""ffmpeg runs: their own bounded pools (uploads apart), off asyncio's default executor."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from audio.ffmpeg import FFMPEG_WORKERS, run_ffmpeg_work, run_upload_work
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


async def test_speaking_goes_on_while_slow_uploads_fill_their_pool() -> None:
    release = threading.Event()
    stuck = [asyncio.ensure_future(run_upload_work(release.wait)) for _ in range(FFMPEG_WORKERS)]
    try:
        assert await asyncio.wait_for(run_ffmpeg_work(lambda: "spoken"), 30) == "spoken"
        assert not any(task.done() for task in stuck)  # the uploads really held every worker of theirs
    finally:
        release.set()
        await asyncio.gather(*stuck)
