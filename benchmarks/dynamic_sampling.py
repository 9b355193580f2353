"""Dynamic sampling (DAPO) vs the plain quickstart RL stage at equal wall time, over several seeds.

For each seed:
  1. `base`: `recipes/quickstart.yaml` as is (SFT, then coupled-GRPO for its steps); its RL stage
     takes T_base seconds.
  2. `dyn`: the same recipe with `stages.1.dynamic_sampling: {enabled: true, max_rounds: R}` and the
     same number of RL steps (accuracy at equal steps; a step rolls out more prompts, so it is slower).
  3. `dyn_wall`: the dynamic run again with the RL steps cut to steps / c, where c is the dynamic
     step's cost in base steps, so its RL stage takes about T_base (accuracy at equal wall time).
     Skipped when the dynamic run was not slower.
The cost ratio c is measured within each run, not from the two runs' seconds: on a shared machine
the load changes between runs (measured here: the same update took 4.45 s a step in one run and
0.59 s in the next). Both runs train on the same batch shape every step, so the update time is the
unit: c = (1 + rollout_s / update_s of the dynamic run) / (1 + rollout_s / update_s of the base
run), each ratio summed over its own run's steps (`perf/rollout_s`, `perf/update_s`).
The SFT stage is identical in every run of a seed (same seed, same recipe up to the RL stage).
With `--ratio-seeds K` only the first K seeds run step 2; later seeds cut their RL steps with the
mean cost ratio of those (a step's extra cost is the extra rollout rounds, a
property of the method and the task more than of the seed), which saves one run per seed.
Prints one table (accuracy on the eval prompts, greedy, RL-stage seconds) and the mean / spread.

    .venv/bin/python benchmarks/dynamic_sampling.py --seeds 0 1 2 --out runs/dynamic_sampling
    # a smoke run of the wiring (minutes on a laptop):
    .venv/bin/python benchmarks/dynamic_sampling.py --seeds 0 --out /tmp/ds \\
        --set stages.0.steps=20 stages.1.steps=2 data.num_eval=50 eval.num_prompts=50 eval.benchmarks=[]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from runs import ROOT, dare_live

RECIPE = ROOT / "recipes/quickstart.yaml"


def run(out: Path, seed: int, overrides: list[str]) -> dict[str, float]:
    """One quickstart run (a finished one is not repeated, whatever the overrides it was started
    with): RL-stage accuracy, seconds and steps."""
    done = out / "run_state.json"
    if not (done.is_file() and "2" in json.loads(done.read_text()).get("eval", {})):
        dare_live("run", str(RECIPE), f"seed={seed}", f"output_dir={out}", "stages.1.sft_control=false", *overrides)
    state = json.loads(done.read_text())
    metrics = [json.loads(line) for line in (out / "stage-2-rl" / "metrics.jsonl").read_text().splitlines()]
    rollout_s = sum(m.get("perf/rollout_s", 0.0) for m in metrics)
    update_s = sum(m.get("perf/update_s", 0.0) for m in metrics)
    kept = [m["dynamic/groups_kept"] for m in metrics if "dynamic/groups_kept" in m]
    rounds = [m["dynamic/rounds"] for m in metrics if "dynamic/rounds" in m]
    return {
        "sft": state["eval"]["1"]["accuracy"],
        "rl": state["eval"]["2"]["accuracy"],
        "rl_s": state["stage_seconds"]["2"],
        "step_cost": 1.0 + rollout_s / update_s,  # a step's time in units of its update's
        "steps": max((m.get("step", 0) for m in metrics), default=0),
        "kept": statistics.mean(kept) if kept else float("nan"),
        "rounds": statistics.mean(rounds) if rounds else float("nan"),
    }


def rl_steps(overrides: list[str]) -> int:
    """The RL stage's steps after the overrides (the quickstart's unless `stages.1.steps=` is given)."""
    from dare.config import load_recipe

    return load_recipe(RECIPE, overrides).stages[1].steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/dynamic_sampling")
    ap.add_argument("--max-rounds", type=int, default=4, help="dynamic_sampling.max_rounds")
    ap.add_argument("--set", nargs="*", default=[], help="extra dotted overrides for every run")
    ap.add_argument(
        "--cost-ratio", type=float, default=None, help="base / dynamic step cost for every seed (no step 2)"
    )
    ap.add_argument(
        "--ratio-seeds", type=int, default=None, help="run the equal-steps dynamic run for these first seeds only"
    )
    a = ap.parse_args()
    out = Path(a.out)
    dyn = ["stages.1.dynamic_sampling.enabled=true", f"stages.1.dynamic_sampling.max_rounds={a.max_rounds}"]
    steps = rl_steps(a.set)
    rows = []
    ratios = []  # base step cost / dynamic step cost, per seed that ran both
    for i, seed in enumerate(a.seeds):
        base = run(out / f"seed{seed}" / "base", seed, a.set)
        if a.cost_ratio is not None:
            same_steps, ratio = None, a.cost_ratio
        elif a.ratio_seeds is None or i < a.ratio_seeds:
            same_steps = run(out / f"seed{seed}" / "dyn", seed, [*a.set, *dyn])
            ratios.append(base["step_cost"] / same_steps["step_cost"])  # load-independent, see above
            ratio = ratios[-1]
        else:
            same_steps, ratio = None, statistics.mean(ratios)
        wall_steps = max(1, int(steps * ratio))
        equal_wall = (
            run(out / f"seed{seed}" / "dyn_wall", seed, [*a.set, *dyn, f"stages.1.steps={wall_steps}"])
            if wall_steps < steps or same_steps is None
            else same_steps
        )
        rows.append({"seed": seed, "base": base, "dyn": same_steps, "dyn_wall": equal_wall, "wall_steps": wall_steps})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| seed | SFT % | RL % ({steps} steps, s) | + dynamic % (equal steps, s, kept/rounds) "
          "| + dynamic % (equal wall time: steps, s, kept/rounds) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for r in rows:
        b, d, w = r["base"], r["dyn"], r["dyn_wall"]
        same = f"{100 * d['rl']:.1f} ({d['rl_s']:.0f}, {d['kept']:.1f}/{d['rounds']:.1f})" if d else "not run"
        print(f"| {r['seed']} | {100 * b['sft']:.1f} | {100 * b['rl']:.1f} ({b['rl_s']:.0f}) | {same} | "
              f"{100 * w['rl']:.1f} ({r['wall_steps']}, {w['rl_s']:.0f}, {w['kept']:.1f}/{w['rounds']:.1f}) |")  # fmt: skip
    for key in ("base", "dyn", "dyn_wall"):
        vals = [100 * r[key]["rl"] for r in rows if r[key]]
        if not vals:
            continue
        spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(f"{key}: mean {statistics.mean(vals):.1f} ± {spread:.1f} (std over {len(vals)} seeds)")
    print(f"dynamic step cost / base step cost (update-time units, seeds {a.seeds[: len(ratios)]}): "
          f"{[round(1 / x, 2) for x in ratios]}")  # fmt: skip
    gains = [100 * (r["dyn_wall"]["rl"] - r["base"]["rl"]) for r in rows]
    print(f"dynamic - base at equal wall time: mean {statistics.mean(gains):.1f} points, per seed "
          f"{[round(g, 1) for g in gains]}")  # fmt: skip


if __name__ == "__main__":
    main()
