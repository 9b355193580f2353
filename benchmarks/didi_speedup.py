"""DiDi-Instruct: accuracy and wall time of a few-step student vs its teacher, over seeds.

Task: "perm" (tests/algorithms/didi_utils.py): any permutation of the K prompt digits is correct,
so the teacher holds K! modes and few-step decoding of the teacher collides. Per seed: SFT a tiny
LLaDA teacher, distil it with `DiDiInstruct` in-process (the code the actor runs), then decode the
eval prompts with the teacher at gen_length steps (one token per step) and at the student's
budget, and with the student at its budget. Prints one table (accuracy, seconds to decode the eval
set) and the wall-time speed-up of the student over the many-step teacher.

    .venv/bin/python benchmarks/didi_speedup.py --seeds 0 1 2 --distill-steps 100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "algorithms"))

from didi_utils import distill, perm_rows, perm_score, sample_texts, train_teacher  # noqa: E402

from dare.sampling import SamplingConfig  # noqa: E402


def evaluate(model, tok, rows, gen_length: int, steps: int, temperature: float, seed: int) -> tuple[float, float]:
    cfg = SamplingConfig(algorithm="few_step", gen_length=gen_length, steps=steps, temperature=temperature,
                         remasking="low_confidence")  # fmt: skip
    texts, seconds = sample_texts(model, tok, rows, cfg, seed)
    return sum(perm_score(t, r["ground_truth"]) for t, r in zip(texts, rows)) / len(rows), seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--k", type=int, default=4, help="digits per prompt")
    ap.add_argument("--student-steps", type=int, default=2)
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--distill-steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--disc-lr", type=float, default=1e-3)
    ap.add_argument("--temperature", type=float, default=0.0, help="eval decoding temperature (0 = greedy)")
    ap.add_argument("--num-eval", type=int, default=500)
    a = ap.parse_args()
    torch.set_num_threads(1)
    L, S = a.k + 1, a.student_steps
    results = []
    for seed in a.seeds:
        rows = perm_rows(4000, a.k, seed)
        ev = perm_rows(a.num_eval, a.k, 10_000 + seed)
        teacher, tok = train_teacher(rows, a.sft_steps, L, seed=seed)
        t0 = time.perf_counter()
        student, _, hist = distill(teacher, tok, rows[:512], L, a.distill_steps, seed=seed, lr=a.lr,
                                   student_steps=S, disc_lr=a.disc_lr, disc_warmup_steps=10)  # fmt: skip
        distill_s = time.perf_counter() - t0
        res = {
            "seed": seed,
            "distill_s": distill_s,
            "disc_acc": statistics.mean(h["disc/accuracy"] for h in hist[-10:]),
        }
        for name, model, steps in [("teacher_full", teacher, L), ("teacher_few", teacher, S), ("student", student, S)]:
            res[name] = evaluate(model, tok, ev, L, steps, a.temperature, seed)
        results.append(res)
        print(f"seed {seed}: " + ", ".join(f"{k}={v}" for k, v in res.items()), flush=True)
    print(f"\nperm K={a.k} (gen_length {L}), eval n={a.num_eval}, T={a.temperature}, student {S} steps, "
          f"{a.distill_steps} distill steps")  # fmt: skip
    print(f"| seed | teacher @{L} acc | s | teacher @{S} acc | student @{S} acc | s | speed-up | disc acc |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        (tf, tfs), (tw, _), (st, sts) = r["teacher_full"], r["teacher_few"], r["student"]
        print(f"| {r['seed']} | {100 * tf:.1f} | {tfs:.2f} | {100 * tw:.1f} | {100 * st:.1f} | {sts:.2f} | "
              f"{tfs / sts:.1f}x | {100 * r['disc_acc']:.0f}% |")  # fmt: skip
    mean = lambda key: statistics.mean(r[key][0] for r in results)  # noqa: E731
    print(f"\nmean accuracy: teacher@{L} {100 * mean('teacher_full'):.1f}%, teacher@{S} "
          f"{100 * mean('teacher_few'):.1f}%, student@{S} {100 * mean('student'):.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
