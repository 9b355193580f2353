#!/usr/bin/env bash
# Create (or update) the project's virtual environment at .venv/ and install dare into it.
# Idempotent: re-running only installs what changed. Used by the Makefile, CI and benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.dare-installed
want=$(cat pyproject.toml constraints.txt scripts/install.sh scripts/opencompass-requirements.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python -m pip install -q -U pip
# torch first, pinned, so no resolver step can swap it for another build.
python -m pip install -q -c constraints.txt torch==2.13.0
python -m pip install -q -c constraints.txt -e ".[dev]"
# OpenCompass (dare eval, recipe eval.benchmarks) in this same environment. Its numpy<2 /
# datasets<4 pins conflict with verl's and it runs fine on the newer versions, so it goes in
# --no-deps, then its requirement list minus those pins (scripts/opencompass-requirements.txt;
# reference/dependencies.md §6). pip then prints that opencompass "requires numpy<2.0.0 /
# datasets<4.0.0": expected, not an install failure.
python -m pip install -q -c constraints.txt --no-deps opencompass==0.5.4
python -m pip install -q -c constraints.txt -r scripts/opencompass-requirements.txt
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break a +cpu torch at import time
# (reference/dependencies.md §8); dare needs none of them.
python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
echo "$want" > "$stamp"
