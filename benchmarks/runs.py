"""Helpers for benchmark scripts that run `dare run` in subprocesses and reuse a finished stage.

`clone_first_stage` copies a run folder's finished first stage (its checkpoint, evaluations and the
tokenizer) into a fresh folder, so `dare run` of a recipe with the same first stage resumes at
stage 2: several second stages (objectives, settings) start from one and the same checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dare(*args: str) -> tuple[int, str]:
    """Run the dare CLI; returns its exit code and the tail of its stderr."""
    out = subprocess.run([sys.executable, "-m", "dare.cli", *args], capture_output=True, text=True)
    return out.returncode, out.stderr[-2000:]


def dare_live(*args: str) -> None:
    """Run the dare CLI with its progress on stderr; raises if it fails."""
    subprocess.run([sys.executable, "-m", "dare.cli", *args], check=True, stdout=subprocess.DEVNULL)


def stage_done(run: Path, stage: int) -> bool:
    """Whether the run folder's stage `stage` (0-based) has finished."""
    state = run / "run_state.json"
    return state.is_file() and stage in json.loads(state.read_text())["completed"]


def first_stage_done(run: Path) -> bool:
    return stage_done(run, 0)


def last_mean(metrics: Path, key: str, n: int = 10) -> float:
    """Mean of `key` over the last n rows of a stage's metrics.jsonl that have it (nan if none)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    vals = [r[key] for r in rows if key in r][-n:]
    return statistics.mean(vals) if vals else float("nan")


def clone_first_stage(base: Path, run: Path, stage_dir: str = "stage-1-sft") -> None:
    """A fresh `run` folder holding only `base`'s finished first stage: its checkpoint folder
    `stage_dir`, the tokenizer, and the run state's evaluations before and after it."""
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    for name in ("tokenizer", stage_dir):
        shutil.copytree(base / name, run / name)
    s = json.loads((base / "run_state.json").read_text())
    keep = {"completed": [0], "trained": [0], "eval": {k: s["eval"][k] for k in ("0", "1") if k in s["eval"]}}
    keep["stage_seconds"] = {"1": s["stage_seconds"]["1"]}
    (run / "run_state.json").write_text(json.dumps(keep))


def two_se(p: float, q: float, n: int) -> float:
    """Two standard errors of the difference of two accuracies, each on n prompts."""
    return 2 * math.sqrt((p * (1 - p) + q * (1 - q)) / n)
