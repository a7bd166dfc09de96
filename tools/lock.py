"""Refresh ``requirements-lock.txt``: every package of every extra, pinned for Linux x86-64 on Python 3.10-3.12.

Run ``python -m tools.lock`` after changing a dependency in ``pyproject.toml``. It uses uv's universal resolution
(``uv pip compile --universal``), which writes one file whose environment markers serve every Python version the
project supports; ``[tool.uv] environments`` in ``pyproject.toml`` limits it to Linux x86-64. Every install
(the README's commands, ``.ci/run``) goes through this file with ``pip install -c requirements-lock.txt``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements-lock.txt"
#: The oldest Python the project supports; a universal resolution covers the newer ones from there.
PYTHON_FLOOR = "3.10"


def uv_command() -> list[str]:
    """The uv executable: the one installed with the test extra, else one on PATH."""
    exe = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if exe is None:
        sys.exit("uv is not installed: pip install -c requirements-lock.txt -e '.[test]' brings it.")
    return [exe]


def main() -> int:
    command = [
        *uv_command(), "pip", "compile", "pyproject.toml",
        "--all-extras", "--universal", "--python-version", PYTHON_FLOOR,
        "--custom-compile-command", "python -m tools.lock",
        *sys.argv[1:],  # e.g. --upgrade, or --upgrade-package NAME
        "-o", str(LOCK.relative_to(ROOT)),
    ]
    return subprocess.run(command, cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
