"""Every RL objective against the same SFT start and a compute-matched SFT control.

For each task, seed and objective: run the quickstart recipe (`recipes/quickstart.yaml`: SFT to a
plateau on few demonstrations, then an RL stage on fresh prompts with `sft_control: true`) with
the RL stage's `algorithm` replaced by the objective (plus the few settings an objective needs on
this task, `NEEDS`), and read the SFT, RL and control accuracies from the run. The control is the
same SFT checkpoint given the RL stage's wall time of further SFT, so every objective is compared
with SFT at equal wall time. Prints one table (mean ± std over seeds, and whether the objective
beat the control on every seed).

    .venv/bin/python benchmarks/algorithms.py --tasks sort countdown --seeds 0 1 2 --out runs/algorithms

`--set` passes extra dotted overrides to every run (e.g. a smoke test of the wiring:
`--set stages.0.steps=20 stages.1.steps=2 eval.num_prompts=50 eval.benchmarks=[]`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ["d1", "coupled_grpo", "wd1", "spg", "espo", "bgpo", "ebpo", "justgrpo", "cj_grpo", "tracerl", "dtreerpo"]
# what an objective needs on the quickstart's 10-token answers (recipe overrides of the RL stage)
NEEDS = {
    "justgrpo": ["stages.1.sampling.block_length=1", "stages.1.sampling.steps=10"],  # left to right, one per step
    "spg": ["stages.1.block_length=10"],  # SPG's blocks (32 by default) must divide the answer
    # trees of 4 x 2 (8 leaves per prompt, as the others' 8 completions; 12 segments to train on)
    "dtreerpo": ["stages.1.num_generations=4", "stages.1.branch_factor=2"],
}


def dare(*args: str) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "dare.cli", *args], capture_output=True, text=True)
    return out.returncode, out.stderr[-2000:]


def run_one(task: str, seed: int, objective: str, out: Path, extra: list[str]) -> dict:
    run = out / task / objective / f"seed{seed}"
    t0 = time.perf_counter()
    rc, err = dare(
        "run", str(ROOT / "recipes/quickstart.yaml"), f"data.train=builtin:{task}", f"seed={seed}",
        f"output_dir={run}", f"stages.1.algorithm={objective}", *NEEDS.get(objective, []), *extra,
    )  # fmt: skip
    row = {"task": task, "seed": seed, "objective": objective, "rc": rc, "s": time.perf_counter() - t0}
    if rc != 0:
        row["error"] = err.strip().splitlines()[-1] if err.strip() else "no output"
        return row
    state = json.loads((run / "run_state.json").read_text())
    control = state["control"]["2"]
    row.update(sft=state["eval"]["1"]["accuracy"], rl=state["eval"]["2"]["accuracy"], control=control["accuracy"])
    return row


def mean_std(vals: list[float]) -> str:
    return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["sort", "countdown"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--objectives", nargs="+", default=OBJECTIVES)
    ap.add_argument("--out", default="runs/algorithms")
    ap.add_argument("--set", nargs="*", default=[], help="extra dotted overrides for every run")
    a = ap.parse_args()
    rows = []
    for task in a.tasks:
        for objective in a.objectives:
            for seed in a.seeds:
                rows.append(run_one(task, seed, objective, Path(a.out), a.set))
                print(json.dumps(rows[-1]), flush=True)
    print("\n| task | objective | SFT % | RL % | control % | RL > control on every seed | runs failed |")
    print("|---|---|---|---|---|---|---|")
    for task in a.tasks:
        for objective in a.objectives:
            mine = [r for r in rows if r["task"] == task and r["objective"] == objective]
            ok = [r for r in mine if r["rc"] == 0]
            failed = len(mine) - len(ok)
            if not ok:
                print(f"| {task} | {objective} | - | - | - | - | {failed}: {mine[0].get('error', '')[:120]} |")
                continue
            cols = [mean_std([100 * r[k] for r in ok]) for k in ("sft", "rl", "control")]
            wins = all(r["rl"] > r["control"] for r in ok) and not failed
            print(f"| {task} | {objective} | {' | '.join(cols)} | {'yes' if wins else 'no'} | {failed} |")


if __name__ == "__main__":
    main()
