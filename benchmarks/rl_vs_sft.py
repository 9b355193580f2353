"""A post-SFT stage vs its SFT checkpoint and the compute-matched SFT control, over several seeds.

For each seed: run the recipe (default `recipes/quickstart.yaml`: SFT to a plateau on 128
demonstrations, then coupled-GRPO on fresh prompts) whose measured stage (default: the last) has
`sft_control: true` — the control is the same SFT checkpoint given the stage's wall time of further
SFT on the same demonstrations at the SFT stage's final lr. Prints one table (accuracy on the eval
prompts) and the mean / spread, and whether the stage beats both references on every seed by more
than two standard errors (binomial, of the difference of two accuracies on n eval prompts).
The same script measures the DRAKES and preference quickstarts (`--recipe`).

    .venv/bin/python benchmarks/rl_vs_sft.py --seeds 0 1 2 --out runs/rl_vs_sft
    .venv/bin/python benchmarks/rl_vs_sft.py --recipe recipes/drakes_quickstart.yaml --out runs/drakes_seeds
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from runs import ROOT, dare_live, two_se


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default=str(ROOT / "recipes/quickstart.yaml"))
    ap.add_argument("--stage", type=int, default=None, help="the measured stage (1-based; default the last)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/rl_vs_sft")
    ap.add_argument("--set", nargs="*", default=[], help="extra dotted overrides for every run")
    a = ap.parse_args()
    from dare.config import load_recipe

    recipe = load_recipe(a.recipe, a.set)
    k = a.stage or len(recipe.stages)
    stage, start = recipe.stages[k - 1], str(k - 1)
    if not stage.sft_control:
        raise SystemExit(f"stages.{k - 1}.sft_control must be true (pass --set stages.{k - 1}.sft_control=true)")
    name, n = stage.algorithm, recipe.eval.num_prompts
    out = Path(a.out)
    rows = []
    for seed in a.seeds:
        run = out / f"seed{seed}"
        # a finished run is not repeated (dare run on its own output_dir skips completed stages)
        dare_live("run", str(a.recipe), f"seed={seed}", f"output_dir={run}", *a.set)
        state = json.loads((run / "run_state.json").read_text())
        control = state["control"][str(k)]
        rows.append({
            "seed": seed, "sft": state["eval"][start]["accuracy"], "rl": state["eval"][str(k)]["accuracy"],
            "control": control["accuracy"], "rl_s": state["stage_seconds"][str(k)], "control_steps": control["steps"],
            "control_s": control["seconds"],
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| seed | SFT % | + {name} % (stage s) | + SFT control % (steps, s) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {100 * r['sft']:.1f} | {100 * r['rl']:.1f} ({r['rl_s']:.0f}) | "
              f"{100 * r['control']:.1f} ({r['control_steps']}, {r['control_s']:.0f}) |")  # fmt: skip
    for key in ("sft", "rl", "control"):
        vals = [100 * r[key] for r in rows]
        spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
        label = name if key == "rl" else key
        print(f"{label}: mean {statistics.mean(vals):.1f} ± {spread:.1f} (std over {len(vals)} seeds)")
    for other in ("sft", "control"):
        gains = [100 * (r["rl"] - r[other]) for r in rows]
        wins = [r["rl"] - r[other] > two_se(r["rl"], r[other], n) for r in rows]
        print(f"{name} - {other}: mean {statistics.mean(gains):.1f} points, per seed {[round(g, 1) for g in gains]}; "
              f"beats it by > 2 s.e. ({n} prompts) on {sum(wins)} of {len(rows)} seeds")  # fmt: skip


if __name__ == "__main__":
    main()
