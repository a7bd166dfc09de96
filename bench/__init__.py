"""Benchmarks: each prints its figures and, with --json, ends with one JSON line (results in RESULTS.md)."""

from __future__ import annotations

import json
from typing import Any


def report(result: dict[str, Any], as_json: bool) -> None:
    """Print `result` as one JSON line, or one `key: value` line per figure."""
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
