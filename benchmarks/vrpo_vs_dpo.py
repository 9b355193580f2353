"""VRPO vs DPO at equal budget: does VRPO's antithetic sampling change the preference result?

VRPO (LLaDA 1.5, arXiv 2505.19223) and dare's `dpo` differ only in the noise of the ELBO estimates:
VRPO scores the policy and the reference on the same timesteps and masks, DPO on independent ones
(docs/preference.md). With the same n_t, pairs, steps, lr and beta, any difference in accuracy is
the variance reduction's. For each seed this runs the preference recipe (default
`recipes/preference_quickstart.yaml`: SFT, the VRPO stage and its compute-matched SFT control),
then the same stage with `algorithm: dpo` from a copy of the same SFT checkpoint, and prints per
seed: the accuracies, VRPO - DPO against two standard errors, and how far each policy moved from
the reference (the preference score s = margin / beta in nats, mean over the stage's last 10 steps).

    .venv/bin/python benchmarks/vrpo_vs_dpo.py --seeds 0 1 2 --out runs/vrpo_vs_dpo
    .venv/bin/python benchmarks/vrpo_vs_dpo.py --set stages.1.beta=0.1 stages.1.steps=25 --out runs/vrpo_vs_dpo_b01
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runs import ROOT, clone_first_stage, dare, last_mean, stage_done, two_se


def run_or_fail(*args: str) -> None:
    rc, err = dare("run", *args)
    if rc != 0:
        raise SystemExit(f"dare run {' '.join(args)} failed:\n{err}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default=str(ROOT / "recipes/preference_quickstart.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="runs/vrpo_vs_dpo")
    ap.add_argument("--set", nargs="*", default=[], help="extra dotted overrides for every run")
    a = ap.parse_args()
    from dare.config import load_recipe

    recipe = load_recipe(a.recipe, a.set)
    k = len(recipe.stages)  # the preference stage: the last
    stage, n = recipe.stages[k - 1], recipe.eval.num_prompts
    if stage.kind != "preference" or stage.algorithm != "vrpo":
        raise SystemExit(f"stages.{k - 1} must be a vrpo preference stage, got {stage.kind} / {stage.algorithm}")
    out, common = Path(a.out), [a.recipe, "eval.benchmarks=[]", *a.set]

    def vrpo(seed: int) -> None:  # SFT, the VRPO stage and its control
        run = out / f"seed{seed}" / "vrpo"
        if not stage_done(run, k - 1):
            run_or_fail(*common, f"seed={seed}", f"output_dir={run}", f"stages.{k - 1}.sft_control=true")

    def dpo(seed: int) -> None:  # the same stage with independent policy / reference noise
        base, run = out / f"seed{seed}" / "vrpo", out / f"seed{seed}" / "dpo"
        if not stage_done(run, k - 1):
            clone_first_stage(base, run, stage_dir=f"stage-1-{recipe.stages[0].name}")
            run_or_fail(*common, f"seed={seed}", f"output_dir={run}", f"stages.{k - 1}.algorithm=dpo",
                        f"stages.{k - 1}.sft_control=false")  # fmt: skip

    with ThreadPoolExecutor(a.jobs) as ex:
        list(ex.map(vrpo, a.seeds))
        list(ex.map(dpo, a.seeds))

    rows = []
    for seed in a.seeds:
        runs = {alg: out / f"seed{seed}" / alg for alg in ("vrpo", "dpo")}
        states = {alg: json.loads((r / "run_state.json").read_text()) for alg, r in runs.items()}
        control = states["vrpo"]["control"][str(k)]
        row = {"seed": seed, "sft": states["vrpo"]["eval"][str(k - 1)]["accuracy"], "control": control["accuracy"],
               "vrpo_s": states["vrpo"]["stage_seconds"][str(k)], "control_steps": control["steps"],
               "control_s": control["seconds"]}  # fmt: skip
        for alg, r in runs.items():
            metrics = next(r.glob(f"stage-{k}-*/metrics.jsonl"))
            row[alg] = states[alg]["eval"][str(k)]["accuracy"]
            row[f"s_{alg}"] = last_mean(metrics, "actor/reward_margin") / stage.args.beta
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\n{stage.steps} steps, beta {stage.args.beta:g}, n_t {stage.args.num_samples}, {n} eval prompts")
    print("| seed | SFT % | VRPO % (stage s) | DPO at equal budget % | SFT control % (steps, s) "
          "| VRPO - DPO (2 s.e.) | s VRPO / DPO (nats) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        d, se2 = 100 * (r["vrpo"] - r["dpo"]), 100 * two_se(r["vrpo"], r["dpo"], n)
        print(f"| {r['seed']} | {100 * r['sft']:.1f} | {100 * r['vrpo']:.1f} ({r['vrpo_s']:.0f}) | {100 * r['dpo']:.1f} | "
              f"{100 * r['control']:.1f} ({r['control_steps']}, {r['control_s']:.0f}) | {d:+.1f} ({se2:.1f}) | "
              f"{r['s_vrpo']:.1f} / {r['s_dpo']:.1f} |")  # fmt: skip
    for key in ("sft", "vrpo", "dpo", "control"):
        vals = [100 * r[key] for r in rows]
        spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(f"{key}: mean {statistics.mean(vals):.1f} ± {spread:.1f} (std over {len(vals)} seeds)")
    for other in ("dpo", "sft", "control"):
        wins = sum(r["vrpo"] - r[other] > two_se(r["vrpo"], r[other], n) for r in rows)
        print(f"vrpo beats {other} by > 2 s.e. on {wins} of {len(rows)} seeds")


if __name__ == "__main__":
    main()
