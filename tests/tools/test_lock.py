"""requirements-lock.txt agrees with pyproject.toml, and this environment was installed from it."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

from packaging.utils import canonicalize_name

from tools.lock import LOCK, PYPROJECT, check, environment, python_versions, read_lock

PYPROJECT_TEXT = """
[project]
name = "demo"
requires-python = ">=3.10,<3.12"
dependencies = ["torch==2.11.0", "numpy"]
[project.optional-dependencies]
extra = ["demo[more]"]
more = ["tomli>=2; python_version < '3.11'"]
"""


def test_the_lock_agrees_with_pyproject() -> None:
    assert check(PYPROJECT.read_text(), LOCK.read_text()) == []


def test_the_lock_covers_every_supported_python() -> None:
    assert python_versions(">=3.10,<3.13") == ["3.10", "3.11", "3.12"]
    pins = read_lock(LOCK.read_text())
    for python in python_versions(">=3.10,<3.13"):
        names = {pin.name for pin in pins if pin.applies(environment(python))}
        assert {"torch", "torchaudio", "parler-tts", "discord-py", "davey", "ray"} <= names, python


def test_torch_and_torchaudio_are_the_pair_that_loads() -> None:
    pins = {pin.name: str(pin.version) for pin in read_lock(LOCK.read_text())}
    assert (pins["torch"], pins["torchaudio"]) == ("2.11.0", "2.11.0")


def test_a_disagreement_is_found() -> None:
    agreeing = "torch==2.11.0\nnumpy==2.2.6\ntomli==2.0.1 ; python_full_version < '3.11'\n"
    assert check(PYPROJECT_TEXT, agreeing) == []
    wrong_version = agreeing.replace("torch==2.11.0", "torch==2.11.1")
    assert check(PYPROJECT_TEXT, wrong_version) == [
        f"Python {python}: the lock pins torch==2.11.1, outside pyproject.toml's torch==2.11.0."
        for python in ("3.10", "3.11")
    ]
    missing_for_310 = agreeing.replace("tomli==2.0.1 ; python_full_version < '3.11'\n", "")
    assert check(PYPROJECT_TEXT, missing_for_310) == ["Python 3.10: the lock pins tomli 0 times, not once."]


def test_this_environment_matches_the_lock() -> None:
    """What CI installed is what the lock says (a fresh install next month gets the same)."""
    env = environment(f"{sys.version_info.major}.{sys.version_info.minor}")
    env["python_full_version"] = platform.python_version()
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    wrong = {
        pin.name: installed.get(pin.name)
        for pin in read_lock(LOCK.read_text())
        if pin.applies(env) and installed.get(pin.name) != str(pin.version)
    }
    assert wrong == {}, f"installed versions that differ from requirements-lock.txt: {wrong}"
