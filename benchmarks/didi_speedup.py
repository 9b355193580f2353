"""DiDi-Instruct: accuracy and wall time of a few-step student vs its teacher, over seeds.

Task (tests/algorithms/didi_utils.py): "sort_either" (default; the quickstart's task — sort 3-8
digits, gen_length 10 — with ascending and descending both correct, so decoding several tokens per
step can mix the two orders; student at 4 steps, teacher 1000 SFT steps), "mirror" (the answer
copies the K prompt digits in order or reversed; student at 2 of 5 steps, teacher 300 SFT steps) or
"perm" (any permutation of the K digits, K! modes; the negative case).
Per seed: SFT a tiny LLaDA teacher, cache many-step teacher samples, distil with `DiDiInstruct`
in-process (the code the actor runs), then decode the eval prompts with the teacher at every budget
from the student's up to gen_length steps (one token per step) and with the student at its budget,
both greedy (T=0, low-confidence) and ancestral (T=1, random order: the distribution that is
distilled). Prints one table: accuracy, seconds to decode the eval set, the fewest teacher steps
that reach the student's accuracy ("> L" if none does) and the wall-time speed-up at equal accuracy
(the teacher at those steps, or at L, over the student; load-sensitive on a shared machine, the
step ratio is the stable number). The defaults are `DiDiInstruct.Args`'s; tables in docs/didi.md.

    .venv/bin/python benchmarks/didi_speedup.py --seeds 0 1 2                 # sort_either
    .venv/bin/python benchmarks/didi_speedup.py --task mirror --seeds 0 1 2
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

from didi_utils import TASKS, distill, sample_texts, teacher_cache, train_teacher  # noqa: E402

from dare.sampling import SamplingConfig  # noqa: E402

MODES = {"greedy": (0.0, "low_confidence"), "T=1": (1.0, "random")}


def evaluate(model, tok, rows, score, gen_length: int, steps: int, mode: str, seed: int) -> tuple[float, float]:
    temperature, remasking = MODES[mode]
    cfg = SamplingConfig(algorithm="few_step", gen_length=gen_length, steps=steps, temperature=temperature,
                         remasking=remasking)  # fmt: skip
    texts, seconds = sample_texts(model, tok, rows, cfg, seed)
    return sum(score(t, r["ground_truth"]) for t, r in zip(texts, rows)) / len(rows), seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=sorted(TASKS), default="sort_either")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--k", type=int, default=None, help="digits per prompt (mirror/perm 4; sort_either: at most 8)")
    ap.add_argument("--gen-length", type=int, default=None, help="default: k + 1 (mirror/perm), 10 (sort_either)")
    ap.add_argument("--intermediate-weight", type=float, default=0.0)
    ap.add_argument("--disc-views", type=int, default=2)
    ap.add_argument("--student-steps", type=int, default=None, help="default: 4 (sort_either), 2 (mirror/perm)")
    ap.add_argument("--sft-steps", type=int, default=None, help="default: 1000 (sort_either), 300 (mirror/perm)")
    ap.add_argument(
        "--disc-surprise",
        choices=["frozen", "trained"],
        default="frozen",
        help="the views' surprise term: the frozen teacher's (default) or the trainable backbone's",
    )
    ap.add_argument("--distill-steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--disc-lr", type=float, default=1e-3)
    ap.add_argument("--disc-updates", type=int, default=2)
    ap.add_argument("--noise-max", type=float, default=0.0)
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--num-eval", type=int, default=300)
    a = ap.parse_args()
    torch.set_num_threads(1)
    make_rows, score = TASKS[a.task]
    a.k = a.k or (8 if a.task == "sort_either" else 4)
    L = a.gen_length or (10 if a.task == "sort_either" else a.k + 1)
    a.student_steps = a.student_steps or (4 if a.task == "sort_either" else 2)
    a.sft_steps = a.sft_steps or (1000 if a.task == "sort_either" else 300)
    S, G = a.student_steps, a.num_generations
    results = []
    for seed in a.seeds:
        rows = make_rows(4000, a.k, seed, "train")
        ev = make_rows(a.num_eval, a.k, 10_000 + seed, "eval")
        teacher, tok = train_teacher(rows, a.sft_steps, L, seed=seed)
        t0 = time.perf_counter()
        cache = teacher_cache(teacher, tok, rows[:512], L, G, seed)
        student, _, hist = distill(teacher, tok, rows[:512], L, a.distill_steps, seed=seed, lr=a.lr, cache=cache,
                                   num_generations=G, student_steps=S, disc_lr=a.disc_lr, disc_warmup_steps=20,
                                   disc_updates=a.disc_updates, noise_max=a.noise_max,
                                   intermediate_weight=a.intermediate_weight, disc_views=a.disc_views,
                                   disc_frozen_surprise=a.disc_surprise == "frozen")  # fmt: skip
        res = {"seed": seed, "distill_s": time.perf_counter() - t0,
               "disc_acc": statistics.mean(h["disc/accuracy"] for h in hist[-10:])}  # fmt: skip
        for mode in MODES:
            for steps in range(S, L + 1):  # the teacher at every budget from the student's up to one token per step
                res[mode, "teacher", steps] = evaluate(teacher, tok, ev, score, L, steps, mode, seed)
            res[mode, "student"] = evaluate(student, tok, ev, score, L, S, mode, seed)
        results.append(res)
        print(f"seed {seed}: " + ", ".join(f"{k}={v}" for k, v in res.items()), flush=True)
    print(f"\n{a.task} K={a.k} (gen_length {L}), eval n={a.num_eval}, student {S} steps, {a.distill_steps} distill "
          f"steps of 16 prompts x {G} samples, discriminator surprise: {a.disc_surprise}")  # fmt: skip
    print(f"| seed | decode | teacher @{L} acc | s | teacher @{S} acc | student @{S} acc | s | teacher steps to match "
          "| speed-up at equal accuracy | disc acc |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for mode in MODES:
            (tf, tfs), (tw, _), (st, sts) = r[mode, "teacher", L], r[mode, "teacher", S], r[mode, "student"]
            match = next((k for k in range(S, L + 1) if r[mode, "teacher", k][0] >= st), None)
            # the teacher's fewest steps reaching the student's accuracy; if none does, its full budget
            # (the student is then both faster and more accurate: "> ")
            ms = r[mode, "teacher", match if match else L][1]
            print(f"| {r['seed']} | {mode} | {100 * tf:.1f} | {tfs:.2f} | {100 * tw:.1f} | {100 * st:.1f} | {sts:.2f} | "
                  f"{match if match else f'> {L}'} | {'' if match else '> '}{ms / sts:.1f}x | "
                  f"{100 * r['disc_acc']:.0f}% |")  # fmt: skip
    for mode in MODES:
        mean = lambda *key, mode=mode: statistics.mean(r[(mode, *key)][0] for r in results)  # noqa: E731
        lo_hi = lambda *key, mode=mode: [100 * r[(mode, *key)][0] for r in results]  # noqa: E731
        gains = [100 * (r[mode, "student"][0] - r[mode, "teacher", S][0]) for r in results]
        gaps = [100 * (r[mode, "student"][0] - r[mode, "teacher", L][0]) for r in results]
        print(f"mean {mode}: teacher@{L} {100 * mean('teacher', L):.1f}% ({min(lo_hi('teacher', L)):.1f}-"
              f"{max(lo_hi('teacher', L)):.1f}), teacher@{S} {100 * mean('teacher', S):.1f}%, student@{S} "
              f"{100 * mean('student'):.1f}% ({min(lo_hi('student')):.1f}-{max(lo_hi('student')):.1f}); student - "
              f"teacher@{S}: min {min(gains):+.1f}; student - teacher@{L}: min {min(gaps):+.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
