#!/usr/bin/env bash
# The speech server's first GPU run, in one call of under 8 minutes on an offline H100 or H200 (issues 9 and 18).
#
#   bench/gpu.sh prepare   here, with a package registry: saves the wheels the GPU machine lacks into .whl/
#                          (git-ignored, at most 60 MiB), installs them under Python 3.12 as a check and runs
#                          python -m bench.gpu_deps (the run's imports with nothing else installed).
#   bench/gpu.sh run       there (carry .whl): installs them with --no-index --no-deps into a private folder put
#                          first on PYTHONPATH, then, with the machine's own python3 and torch, each step with its
#                          own time limit and whatever the one before did: python -m bench.gpu_smoke,
#                          bench.tts_serve on the Mini architecture at 1, 8 and 32 streams (and 64 if time is
#                          left), bench.tts_stream. Output: one file per step under $OUT (else bench/gpu-results),
#                          the last line of each its JSON; steps.txt says how each step ended.
#   bench/gpu.sh pins      prints the wheels' name==version, as `prepare` takes them from requirements-lock.txt.
#
# With the device tool: `bench/gpu.sh prepare` here, then one call `run(command="bench/gpu.sh run",
# carry=[".whl"], timeout_s=560)`; the reply's files are $OUT's.
#
# The machine has Python 3.12 with torch 2.11.0+cu130, torchaudio 2.11.0, transformers 5.x and huggingface_hub 1.x
# (bench/gpu-machine-packages.txt); the wheels bring the versions the project runs, read from requirements-lock.txt.
set -uo pipefail
cd "$(dirname "$0")/.."

# The wheels, by name: `pins` (python -m bench.gpu_pins) gives each the version requirements-lock.txt pins for
# Python 3.12 on Linux x86-64, so refreshing the lock (python -m tools.lock) moves them too, and a name the lock
# lacks stops `prepare`. Only accelerate is pinned here: it is not in the lock (the project does not use it), but
# transformers imports whatever accelerate is installed, so this pins one of transformers 4.46's time instead of
# the machine's. discord-py[voice] (davey, pynacl) is not imported by the run; it lets the test suite import there.
WHEELS=(
  transformers tokenizers huggingface-hub accelerate==1.1.1
  docstring-parser ffmpy flatten-dict importlib-resources julius soundfile cffi
  discord-py davey pynacl
)
# Published as source only (pure Python): built into wheels here.
SOURCES=(parler-tts descript-audio-codec-unofficial descript-audiotools-unofficial argbind randomname)
LIMIT_MIB=60
WHL=.whl
# `prepare` runs pip and the import check with the project's environment (PYTHON, else .venv, else python3).
[[ -z "${PYTHON:-}" && -x .venv/bin/python ]] && PYTHON=.venv/bin/python

# pins NAME...: `name==version` for each, from requirements-lock.txt (one line each; exits 1 naming what it lacks).
pins() {
  ${PYTHON:-python3} -m bench.gpu_pins --lock requirements-lock.txt "$@"
}

prepare() {
  local pip=(${PYTHON:-python3} -m pip) platforms=() n wheels sources
  wheels=$(pins "${WHEELS[@]}") && sources=$(pins "${SOURCES[@]}") || return 1
  for n in 28 27 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
  platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  rm -rf "$WHL" && mkdir -p "$WHL" || return 1
  "${pip[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d "$WHL" $wheels || return 1
  "${pip[@]}" wheel -q --no-deps -w "$WHL" $sources || return 1
  ls -l "$WHL"
  local bytes
  bytes=$(cat "$WHL"/*.whl | wc -c)
  printf "wheels: %d files, %s MiB (limit %d MiB)\n" "$(ls "$WHL"/*.whl | wc -l)" \
    "$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')" "$LIMIT_MIB"
  if (( bytes > LIMIT_MIB * 1048576 )); then
    echo "the wheels exceed $LIMIT_MIB MiB" >&2
    return 1
  fi

  # The install that `run` does, under Python 3.12 (any 3.12 here; PYTHON312 names one).
  local py312=${PYTHON312:-} candidate site
  for candidate in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    [[ -z "$py312" ]] && "$candidate" -V >/dev/null 2>&1 && py312=$candidate
  done
  if [[ -n "$py312" ]]; then
    site=$(mktemp -d)
    "$py312" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$WHL"/*.whl \
      && "$py312" -m compileall -q "$site" >/dev/null \
      && echo "installed and compiled under $("$py312" -V)" || { rm -rf "$site"; return 1; }
    rm -rf "$site"
  else
    echo "no Python 3.12 here: the install under 3.12 was not checked"
  fi
  # The run's imports with only the machine's packages and the wheels (needs the project's environment).
  ${PYTHON:-python3} -m bench.gpu_deps "$WHL"
}

run() {
  local out=${OUT:-bench/gpu-results} site=${GPU_SITE:-/tmp/gpu-site}
  mkdir -p "$out"
  local log="$out/steps.txt" start=$SECONDS deadline=$((SECONDS + 450))
  { date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; python3 -V; } \
    >"$log" 2>&1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$WHL"/*.whl \
    >>"$log" 2>&1 || echo "wheel install failed" >>"$log"
  rm -rf "$site/tests"  # the codec's wheel ships a top-level `tests` package, which would shadow the project's
  export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  echo "installed in $((SECONDS - start)) s" >>"$log"

  # step NAME LIMIT RESERVE COMMAND...: at most LIMIT seconds, leaving RESERVE for the steps after it.
  step() {
    local name=$1 limit=$2 reserve=$3 began=$SECONDS rc
    shift 3
    local left=$((deadline - SECONDS - reserve))
    (( limit > left )) && limit=$left
    if (( limit < 30 )); then
      echo "$name: skipped, $limit s left" >>"$log"
      return
    fi
    timeout -k 10 "$limit" "$@" >"$out/$name.txt" 2>&1
    rc=$?
    echo "$name: exit $rc after $((SECONDS - began)) s (limit $limit s)$( ((rc == 124)) && echo ', timed out')" >>"$log"
  }
  step gpu_smoke 240 240 python3 -m bench.gpu_smoke --json
  step tts_serve 200 100 python3 -m bench.tts_serve --device cuda --arch mini --streams 1,8,32 --seconds 2 --json
  if (( deadline - SECONDS >= 250 )); then
    step tts_serve_64 150 100 python3 -m bench.tts_serve --device cuda --arch mini --streams 64 --seconds 2 --json
  fi
  step tts_stream 150 0 python3 -m bench.tts_stream --arch mini --seconds 2,5 --json
  echo "done in $((SECONDS - start)) s" >>"$log"
  cat "$log"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  pins) pins "${WHEELS[@]}" "${SOURCES[@]}" ;;
  *) echo "usage: bench/gpu.sh prepare|run|pins" >&2; exit 2 ;;
esac
