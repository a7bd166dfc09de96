"""The dependency lock, ``requirements-lock.txt``: refresh it, or check it against ``pyproject.toml``.

``python -m tools.lock`` re-resolves after a dependency changed in ``pyproject.toml`` (keeping every other pin;
pass ``--upgrade`` or ``--upgrade-package NAME`` to move pins). It uses uv's universal resolution
(``uv pip compile --universal``): one file whose environment markers serve every Python version the project
supports, limited to Linux x86-64 by ``[tool.uv] environments`` in ``pyproject.toml``. Every install (the README's
commands, ``.ci/run``) goes through it with ``pip install -c requirements-lock.txt``.

``python -m tools.lock --check`` (and the test suite) verifies, without network, that every requirement of every
extra is pinned in the lock at a version that satisfies it, for each supported Python version.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements-lock.txt"
PYPROJECT = ROOT / "pyproject.toml"
#: The platform the lock serves (see ``[tool.uv] environments``).
PLATFORM = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


@dataclass(frozen=True)
class Pin:
    """One line of the lock: a package at a version, for the environments its marker selects."""

    name: str
    version: Version
    marker: Marker | None

    def applies(self, environment: dict[str, str]) -> bool:
        return self.marker is None or self.marker.evaluate(environment)


def read_lock(text: str) -> list[Pin]:
    """The pins of a ``uv pip compile`` output (comments and ``# via`` lines skipped)."""
    pins = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        if specifier.operator != "==":
            raise ValueError(f"the lock pins {requirement.name} with {specifier}, not ==")
        pins.append(Pin(canonicalize_name(requirement.name), Version(specifier.version), requirement.marker))
    return pins


def python_versions(requires_python: str) -> list[str]:
    """The Python 3 minor versions ``requires-python`` admits (e.g. 3.10, 3.11, 3.12)."""
    allowed = SpecifierSet(requires_python)
    return [f"3.{minor}" for minor in range(0, 30) if allowed.contains(f"3.{minor}.0")]


def environment(python: str) -> dict[str, str]:
    """Marker variables of Linux x86-64 CPython ``python``."""
    return {**PLATFORM, "python_version": python, "python_full_version": f"{python}.0"}


def _requirements(project: dict, extras: set[str]) -> Iterator[Requirement]:
    """The project's own requirements and those of `extras`, following self-references (``name[extra]``)."""
    name = canonicalize_name(project["name"])
    optional = project.get("optional-dependencies", {})
    seen = set(extras)
    pending = [*project.get("dependencies", []), *(r for extra in sorted(extras) for r in optional[extra])]
    while pending:
        requirement = Requirement(pending.pop(0))
        if canonicalize_name(requirement.name) == name:
            for extra in requirement.extras - seen:
                seen.add(extra)
                pending.extend(optional[extra])
        else:
            yield requirement


def check(pyproject_text: str, lock_text: str) -> list[str]:
    """One sentence for each requirement of every extra that the lock lacks or pins at a version outside its
    specifier, for each supported Python version; empty when they agree."""
    project = tomllib.loads(pyproject_text)["project"]
    pins = read_lock(lock_text)
    problems = []
    for python in python_versions(project["requires-python"]):
        env = environment(python)
        for requirement in _requirements(project, set(project.get("optional-dependencies", {}))):
            if requirement.marker is not None and not requirement.marker.evaluate(env):
                continue
            name = canonicalize_name(requirement.name)
            matching = [pin for pin in pins if pin.name == name and pin.applies(env)]
            if len(matching) != 1:
                problems.append(f"Python {python}: the lock pins {requirement.name} {len(matching)} times, not once.")
            elif not requirement.specifier.contains(matching[0].version, prereleases=True):
                problems.append(
                    f"Python {python}: the lock pins {requirement.name}=={matching[0].version}, "
                    f"outside pyproject.toml's {requirement}."
                )
    return problems


def uv_command() -> list[str]:
    """The uv executable: the one installed with the test extra, else one on PATH."""
    exe = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if exe is None:
        sys.exit("uv is not installed: pip install -c requirements-lock.txt -e '.[test]' brings it.")
    return [exe]


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        problems = check(PYPROJECT.read_text(), LOCK.read_text())
        print("\n".join(problems) or "requirements-lock.txt agrees with pyproject.toml.")
        return 1 if problems else 0
    python_floor = python_versions(tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"])[0]
    command = [
        *uv_command(), "pip", "compile", "pyproject.toml",
        "--all-extras", "--universal", "--python-version", python_floor,
        "--custom-compile-command", "python -m tools.lock",
        *argv,  # e.g. --upgrade, or --upgrade-package NAME
        "-o", str(LOCK.relative_to(ROOT)),
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
