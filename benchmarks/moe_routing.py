"""Expert-choice (EC-DLM) vs token-choice routing on the MoE quickstart's SFT task: the tiny
`llada2_moe` (8 experts, top-2, one shared expert, block 4) trained with dare's SFT on sort
(3-8 digits, 128 demonstrations as in recipes/moe_quickstart.yaml) with each routing, then
greedy exact match with LLaDA2's threshold block decoding on held-out prompts.

    .venv/bin/python benchmarks/moe_routing.py --steps 300 --seeds 0 1

Prints one table row per routing: final SFT loss, accuracy per seed, mean, seconds per seed.
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

from dare.sampling import SamplingConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--num-eval", type=int, default=200)
    a = ap.parse_args()
    cfg = SamplingConfig(algorithm="llada2", gen_length=12, steps=12, block_length=4)
    print("| routing | SFT steps | final loss (mean) | accuracy % per seed | mean % | s per seed |")
    print("|---|---|---|---|---|---|")
    for routing in ("token_choice", "expert_choice"):
        accs, losses, secs = [], [], []
        for seed in a.seeds:
            t0 = time.perf_counter()
            model, tok, task, curve = train_sft("llada2_moe", "sort", a.steps, 12, seed=seed, num_train=128,
                                                moe_routing=routing)  # fmt: skip
            accs.append(100 * accuracy(model, tok, task, cfg, n=a.num_eval, seed=seed))
            losses.append(statistics.mean(curve[-10:]))
            secs.append(time.perf_counter() - t0)
        print(f"| {routing} | {a.steps} | {statistics.mean(losses):.3f} | {' / '.join(f'{x:.1f}' for x in accs)} "
              f"| {statistics.mean(accs):.1f} | {statistics.mean(secs):.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
