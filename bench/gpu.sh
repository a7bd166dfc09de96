#!/usr/bin/env bash
# Every GPU figure of the speech server (issue 9) in one run, under 8 minutes on one H100 or H200:
# bench.tts_serve on the Parler-TTS Mini architecture at 1, 8 and 32 streams (bf16, SDPA, CUDA graphs), then
# bench.tts_stream (the one-at-a-time engine against parler-tts' streamer). Installs nothing beyond the project.
# Results: one file per benchmark under $OUT (default bench/gpu-results); the last line of each is its JSON.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-}
if [[ -z "$python" ]]; then
  if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet -e .
  fi
  python=.venv/bin/python
fi
"$python" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())'

out=${OUT:-bench/gpu-results}
mkdir -p "$out"
timeout 300 "$python" -m bench.tts_serve --device cuda --arch mini --streams 1,8,32 --seconds 2 --json \
  | tee "$out/tts_serve.txt"
timeout 150 "$python" -m bench.tts_stream --arch mini --seconds 2,5 --json | tee "$out/tts_stream.txt"
