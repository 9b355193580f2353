"""MDPO's Running Confidence Remasking (`remasking: rcr`) against low_confidence: greedy exact match of
a tiny LLaDA SFT-trained on a built-in task (the runs of benchmarks/sft_tasks.py), decoded with each
strategy at one token per step and at half the steps, over several seeds.

    .venv/bin/python benchmarks/rcr.py --seeds 0 1 2 --tasks sort sudoku    # ~5 min on the 2-core CPU machine

Prints one table: task, steps, block length, accuracy per strategy per seed, and the means.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "algorithms"))

from sft_utils import accuracy, train_sft  # noqa: E402
from test_sft_task_learning import CASES  # noqa: E402

from dare.sampling import SamplingConfig  # noqa: E402

STRATEGIES = ("low_confidence", "rcr")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--tasks", nargs="*", default=["sort", "sudoku"])
    a = ap.parse_args()
    print("| task | steps / gen | block | low_confidence % per seed | rcr % per seed | mean low_conf | mean rcr |")
    print("|---|---|---|---|---|---|---|")
    for task, gen_length, sft_steps, lr, knobs, _, _ in CASES:
        if task not in a.tasks:
            continue
        models = [train_sft("llada", task, sft_steps, gen_length, lr=lr, task_args=knobs, seed=s) for s in a.seeds]
        half = gen_length // 2
        for steps, block in ((gen_length, gen_length), (half, gen_length), (half, half)):
            acc = {name: [] for name in STRATEGIES}
            for model, tok, t, _ in models:
                for name in STRATEGIES:
                    cfg = SamplingConfig(gen_length=gen_length, steps=steps, block_length=block, remasking=name)
                    acc[name].append(100 * accuracy(model, tok, t, cfg))
            cells = [" / ".join(f"{x:.1f}" for x in acc[n]) for n in STRATEGIES]
            means = [f"{statistics.mean(acc[n]):.1f}" for n in STRATEGIES]
            print(
                f"| {task} | {steps} / {gen_length} | {block} | {' | '.join(cells)} | {' | '.join(means)} |", flush=True
            )


if __name__ == "__main__":
    main()
