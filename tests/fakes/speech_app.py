"""The real Ray Serve speech app (`audio.serve`) on this machine, for tests and benchmarks: a small local Ray,
Serve on a free loopback port, one CPU replica serving a tiny checkpoint like the `tiny_speech_server` fixture."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from audio.speech import SpeechEngine, TTSConfig
from audio.speech.server import SpeechServer

FRAMES_PER_SENTENCE = 40  # 0.46 s of audio per sentence, as in the tiny fixtures
ROOT = Path(__file__).resolve().parents[2]


def tiny_engine(config: TTSConfig) -> SpeechServer:
    """The replica's engine: the tests' chunking (9 frames first, then 22, 8 of context) and exact lengths."""
    tiny = replace(config, device="cpu", first_chunk_s=0.1, chunk_s=0.25, context_frames=8)
    return SpeechServer.load(tiny, frames_per_sentence=FRAMES_PER_SENTENCE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def local_speech_app(
    model: Path,
    *,
    engine_factory: Callable[[TTSConfig], SpeechEngine] = tiny_engine,
    api_key: str | None = None,
    cpus: float = 1.0,
    cpu_path: str = "fp32",
) -> Iterator[str]:
    """Start Ray (2 CPUs, small object store, no dashboard) and the app; yield its base URL; shut both down.

    `engine_factory` must be importable by Ray's workers (a module-level function); `cpus` also sets the
    replica's torch threads (Ray exports it as OMP_NUM_THREADS); `cpu_path` is the replica's `TTS_CPU_PATH` (forced,
    so its audio equals an in-process engine's forced the same way)."""
    import ray
    from ray import serve

    from audio.serve import ServeSettings, build

    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
        log_to_driver=False,
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = ServeSettings(
            _env_file=None,  # type: ignore[call-arg]
            tts_model=str(model),
            tts_api_key=api_key,
            tts_replica_gpus=0,
            tts_replica_cpus=cpus,
            tts_cpu_path=cpu_path,
        )
        serve.run(build(settings, engine_factory), name="speech", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
