"""SFT learns every built-in task: exact match of the untrained and the SFT-trained tiny LLaDA on
each built-in task, over several seeds (the suite keeps only the sort case,
`tests/algorithms/test_sft_task_learning.py`; the slower tasks live here).

    .venv/bin/python benchmarks/sft_tasks.py --seeds 0 1 2          # ~25 min on the 2-core CPU machine

Prints one table: task, training steps, accuracy before and after per seed, and the mean.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "algorithms"))

from sft_utils import accuracy, train_sft  # noqa: E402
from test_sft_task_learning import CASES  # noqa: E402

from dare.sampling import SamplingConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--tasks", nargs="*", default=[c[0] for c in CASES])
    a = ap.parse_args()
    print("| task | SFT steps | before % | after % per seed | mean after % | s per seed |")
    print("|---|---|---|---|---|---|")
    for task, gen_length, steps, lr, knobs, _, _ in CASES:
        if task not in a.tasks:
            continue
        cfg = SamplingConfig(algorithm="llada", gen_length=gen_length, steps=gen_length, block_length=gen_length)
        before, after, secs = [], [], []
        for seed in a.seeds:
            t0 = time.perf_counter()
            untrained, tok, t, _ = train_sft("llada", task, 0, gen_length, task_args=knobs, seed=seed)
            before.append(100 * accuracy(untrained, tok, t, cfg))
            model, tok, t, _ = train_sft("llada", task, steps, gen_length, lr=lr, task_args=knobs, seed=seed)
            after.append(100 * accuracy(model, tok, t, cfg))
            secs.append(time.perf_counter() - t0)
        print(f"| {task} | {steps} | {statistics.mean(before):.1f} | {' / '.join(f'{x:.1f}' for x in after)} | "
              f"{statistics.mean(after):.1f} | {statistics.mean(secs):.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
