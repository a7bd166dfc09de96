"""Whether the GPU machine's own packages plus the wheels `bench/gpu.sh prepare` saved are all that the GPU run
imports.

    python -m bench.gpu_deps .whl    # here, in the project's environment (`bench/gpu.sh prepare` runs it)

The GPU machine has no registry, so a module missing there is a lost run. This installs the wheels that this
Python can load into a private folder (the others, built for Python 3.12, stand in through this environment's
copies of the same versions), then runs what `bench/gpu.sh run` runs, on a CPU, in a child Python without
site-packages that sees only that folder, the project and this environment's distributions that the machine has
too (bench/gpu-machine-packages.txt): the smoke test's and benchmarks' imports, a tiny server speaking, and the
reference engine under parler-tts' own streamer. It prints one JSON line and exits 1 when that fails. Not covered:
Python 3.12 itself (`prepare` installs the wheels under it separately), CUDA, and the versions of the machine's
packages (this environment's stand in for them).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

PROJECT = {"audio", "bot", "bench", "tests"}
ROOT = Path(__file__).resolve().parents[1]
MACHINE = Path(__file__).with_name("gpu-machine-packages.txt")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def machine_packages() -> set[str]:
    lines = MACHINE.read_text().splitlines()
    return {canonical(line) for line in lines if line.strip() and not line.startswith("#")}


def link_allowed(allowed: set[str], skip: set[str], folder: Path) -> None:
    """Link into `folder` the top-level files and folders of this environment's distributions named in `allowed`
    (except those in `skip`): a site folder holding nothing else."""
    for distribution in metadata.distributions():
        name = canonical(distribution.metadata["Name"])
        if name not in allowed or name in skip:
            continue
        base = Path(str(distribution.locate_file("")))
        for top in {Path(str(file)).parts[0] for file in distribution.files or [] if not str(file).startswith("..")}:
            link = folder / top
            if not link.exists() and (base / top).exists():
                link.symlink_to(base / top)


def install_loadable(wheels: list[Path], target: Path) -> list[str]:
    """Install the wheels this Python can load into `target`; the names of those it cannot."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    supported = set(sys_tags())
    loadable = [wheel for wheel in wheels if parse_wheel_filename(wheel.name)[3] & supported]
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target)]
    subprocess.run([*command, *map(str, loadable)], check=True)
    return sorted(wheel.name for wheel in wheels if wheel not in loadable)


def exercise() -> None:
    """The GPU run's code paths, on a CPU and the tiny model."""
    import bench.gpu_smoke  # noqa: F401
    from audio.speech import DEFAULT_VOICE, TTSConfig
    from audio.speech.reference import TTSEngine
    from audio.speech.server import SpeechServer
    from bench.tts_serve import SwitchableCodec  # noqa: F401
    from bench.tts_stream import DecodeTimer, run_reference
    from tests.fakes.tiny_parler import build_parler

    with tempfile.TemporaryDirectory() as folder:
        config = TTSConfig(model=str(build_parler(Path(folder) / "tiny")), device="cpu")
        server = SpeechServer.load(config, frames_per_sentence=16)
        try:
            assert server.synthesize("Yes.", DEFAULT_VOICE).size
        finally:
            server.close()
        engine = TTSEngine.load(config, frames_per_sentence=16)
        assert run_reference(engine, DecodeTimer(engine), 0.1).audio.size


def main() -> None:
    wheels = sorted(Path(sys.argv[1]).glob("*.whl"))
    shipped = {canonical(wheel.name.split("-")[0]) for wheel in wheels}
    result: dict[str, Any] = {"wheels": len(wheels)}
    with tempfile.TemporaryDirectory() as folder:
        target, site = Path(folder) / "target", Path(folder) / "site"
        site.mkdir()
        result["stand_ins"] = stand_ins = install_loadable(wheels, target)
        for module in PROJECT & {path.name for path in target.iterdir()}:  # e.g. the codec's own `tests`
            shutil.rmtree(target / module)
        installed = shipped - {canonical(name.split("-")[0]) for name in stand_ins}
        link_allowed(machine_packages() | shipped, installed, site)
        # -S: no site-packages, so the child sees the standard library, the project and these two folders only.
        paths = [str(ROOT), str(target), str(site)]
        code = f"import sys; sys.path[:0] = {paths!r}; import bench.gpu_deps as deps; deps.exercise()"
        child = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True)
    result["ok"] = child.returncode == 0
    if not result["ok"]:
        result["error"] = child.stderr.strip().splitlines()[-1:]
        result["trace"] = child.stderr[-3000:]
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
