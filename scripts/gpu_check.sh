#!/usr/bin/env bash
# dare's prepared one-GPU check (< 10 minutes on one GPU): prints one table.
#   - the quickstart (recipes/quickstart.yaml) end to end with resources.device=cuda
#   - SFT and coupled-GRPO steps of a ~1B random LLaDA replica in bfloat16: tokens/s, peak memory
#   - FSDP2 (fully_shard, 1-rank NCCL group) on the device: its loss equals the plain model's
# Usage: scripts/gpu_check.sh [OUT_DIR]        (default runs/gpu_check; the table also goes to OUT_DIR/table.md)
# Env:   PYTHON (default .venv/bin/python), QUICKSTART=0 to skip the quickstart,
#        QUICKSTART_TIMEOUT seconds (default 360), CHECK_TIMEOUT seconds for the whole run (default 570)
# Record the table in docs/scaling.md ("GPU check") with the card name it prints.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${1:-runs/gpu_check}"

if [ ! -x "$PYTHON" ] && ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "gpu_check: error: no Python at $PYTHON (run 'make install' or set PYTHON=...)" >&2
  exit 2
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: error: this check needs a CUDA GPU, and torch sees none (torch.cuda.is_available() is False)." >&2
  echo "gpu_check: the CPU wiring check is: $PYTHON benchmarks/gpu_check.py --device cpu --tiny" >&2
  exit 2
fi

args=(--device cuda --out "$OUT" --quickstart-timeout "${QUICKSTART_TIMEOUT:-360}")
if [ "${QUICKSTART:-1}" != "0" ]; then
  args+=(--quickstart)
fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
timeout "${CHECK_TIMEOUT:-570}" "$PYTHON" benchmarks/gpu_check.py "${args[@]}"
