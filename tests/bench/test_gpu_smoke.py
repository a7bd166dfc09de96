"""`python -m bench.gpu_smoke --device cpu --json`: every check of the first GPU run that needs no CUDA passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ["setup", "versions", "host_sync", "graphs", "generate", "staggered", "codec", "bf16", "steps", "close"]


@pytest.mark.timeout(600)
def test_gpu_smoke_on_cpu_passes_every_check() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "bench.gpu_smoke", "--device", "cpu", "--json"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-3000:]
    result = json.loads(lines[-1])
    assert [json.loads(line) for line in lines[:-1]] == [{name: result[name]} for name in CHECKS]  # one line each
    assert result["failed"] == [], json.dumps({name: result[name] for name in result["failed"]}, indent=1)
    assert result["ok"] and done.returncode == 0
    assert result["host_sync"]["syncing_ops"] == []
    assert result["graphs"]["replays"] > 0 and result["graphs"]["mismatched_answers"] == []
    assert result["generate"] == {**result["generate"], "greedy_equal": True, "sampled_equal": True}
    assert result["codec"]["snr_db_min"] >= 60
    assert result["bf16"]["dtype"] == "torch.bfloat16" and result["bf16"]["cosine_vs_math"] >= 0.999
    assert set(result["steps"]["step_ms"]) == {"1", "8", "32"}
    assert result["close"]["ended_with"] == "TTSError"


def test_the_host_sync_check_sees_what_makes_the_host_wait() -> None:
    import torch

    from bench.gpu_smoke import BOOLEAN_INDEXING, OpRecorder

    x = torch.arange(6.0)
    with torch.inference_mode(), OpRecorder() as quiet:
        x.masked_fill(x > 2, 0.0)[torch.tensor([0, 2])] + 1
    with torch.inference_mode(), OpRecorder() as waits:
        x[x > 2].sum().item()
        torch.nonzero(x)
    with OpRecorder() as outside:  # outside inference mode `.item()` dispatches to `_local_scalar_dense`
        bool(x.sum() > 0)
    assert quiet.syncs == [] and quiet.ops
    assert waits.syncs == sorted(["aten::item", "aten::nonzero", BOOLEAN_INDEXING])
    assert outside.syncs == ["aten::_local_scalar_dense"]
