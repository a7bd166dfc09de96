"""The versions of the wheels `bench/gpu.sh prepare` saves, taken from the dependency lock.

    python -m bench.gpu_pins --lock requirements-lock.txt transformers tokenizers accelerate==1.1.1 ...

Prints one `name==version` line per argument, in order: a bare name gets the version the lock
(requirements-lock.txt, see tools/lock.py) pins for the GPU machine (Python 3.12 on Linux x86-64, where the lock's
environment markers choose between lines); `name==version` is kept as written, for a package the lock deliberately
lacks. Exits 1 with one sentence per problem (a name the lock lacks, an explicit pin the lock also holds), so a
refreshed lock moves the GPU run's versions with it and never drifts from them silently.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tools.lock import LOCK, environment, read_lock

#: The GPU machine's Python (bench/gpu.sh `run` uses its python3).
PYTHON = "3.12"


def pins(names: list[str], lock_text: str, python: str = PYTHON) -> list[str]:
    """`name==version` for each of `names`: from the lock's line for `python` on Linux x86-64, or as written when
    given with `==`. Raises ValueError with one sentence per name that cannot be resolved that way."""
    env = environment(python)
    locked: dict[str, list[str]] = {}
    for pin in read_lock(lock_text):
        if pin.applies(env):
            locked.setdefault(pin.name, []).append(str(pin.version))
    resolved, problems = [], []
    for name in names:
        requirement = Requirement(name)
        key = canonicalize_name(requirement.name)
        versions = locked.get(key, [])
        if requirement.specifier:
            if versions:
                problems.append(f"{name} is pinned by hand but the lock holds {key}=={versions[0]}: list it by name.")
            elif [spec.operator for spec in requirement.specifier] != ["=="]:
                problems.append(f"{name} is neither a bare name nor one exact version (name==version).")
            else:
                resolved.append(name)
        elif len(versions) == 1:
            resolved.append(f"{key}=={versions[0]}")
        elif versions:
            problems.append(f"the lock pins {key} {len(versions)} times for Python {python}, not once.")
        else:
            problems.append(f"the lock has no {key} for Python {python}: pin it in gpu.sh with the reason.")
    if problems:
        raise ValueError(" ".join(problems))
    return resolved


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_pins", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=LOCK, help="the lock file (default: requirements-lock.txt)")
    parser.add_argument("names", nargs="+", help="package names, or name==version for one the lock lacks")
    args = parser.parse_args(argv)
    try:
        print("\n".join(pins(args.names, args.lock.read_text())))
    except ValueError as error:
        print(f"{args.lock}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
