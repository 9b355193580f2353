"""RL vs compute-matched SFT on the quickstart task, over several seeds.

For each seed: run `recipes/quickstart.yaml` (SFT to a plateau on 256 demonstrations, then
coupled-GRPO on fresh prompts), then the control: the same SFT checkpoint given the RL stage's
measured wall time of further SFT on the same demonstrations (steps = RL seconds x the SFT stage's
steps/s). Prints one table (accuracy on the 1,000 eval prompts, greedy) and the mean / spread.

    .venv/bin/python benchmarks/rl_vs_sft.py --seeds 0 1 2 --out runs/rl_vs_sft
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def dare(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "dare.cli", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/rl_vs_sft")
    ap.add_argument("--set", nargs="*", default=[], help="extra dotted overrides for the quickstart run")
    a = ap.parse_args()
    out = Path(a.out)
    rows = []
    for seed in a.seeds:
        run = out / f"seed{seed}"
        # a finished run is not repeated (dare run on its own output_dir skips completed stages)
        dare("run", str(ROOT / "recipes/quickstart.yaml"), f"seed={seed}", f"output_dir={run}", *a.set)
        state = json.loads((run / "run_state.json").read_text())
        sft_s, rl_s = state["stage_seconds"]["1"], state["stage_seconds"]["2"]
        sft_rate = 1000 / sft_s  # the quickstart's SFT stage has 1000 steps
        control_steps = max(1, round(rl_s * sft_rate))
        quick = yaml.safe_load((ROOT / "recipes/quickstart.yaml").read_text())
        control = {
            "model": {"path": str((run / "stage-1-sft" / "checkpoint").resolve())},
            "data": quick["data"],
            "eval": {**quick["eval"], "before_first_stage": False, "benchmarks": []},
            "resources": quick["resources"],
            "seed": seed,
            "stages": [{"name": "sft-more", "kind": "sft", "algorithm": "sft", "steps": control_steps,
                        "batch_size": 64, "lr": 1.0e-4, "log_every": 500}],
        }  # fmt: skip
        cfile = out / f"control{seed}.yaml"
        cfile.write_text("# control: further SFT for the RL stage's wall time\n" + yaml.safe_dump(control))
        crun = out / f"control{seed}"
        dare("run", str(cfile), f"output_dir={crun}")
        cstate = json.loads((crun / "run_state.json").read_text())
        rows.append({
            "seed": seed, "sft": state["eval"]["1"]["accuracy"], "rl": state["eval"]["2"]["accuracy"],
            "control": cstate["eval"]["1"]["accuracy"], "rl_s": rl_s, "control_steps": control_steps,
            "control_s": cstate["stage_seconds"]["1"],
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print("\n| seed | SFT % | + coupled-GRPO % (RL s) | + SFT control % (steps, s) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {100 * r['sft']:.1f} | {100 * r['rl']:.1f} ({r['rl_s']:.0f}) | "
              f"{100 * r['control']:.1f} ({r['control_steps']}, {r['control_s']:.0f}) |")  # fmt: skip
    for key in ("sft", "rl", "control"):
        vals = [100 * r[key] for r in rows]
        spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(f"{key}: mean {statistics.mean(vals):.1f} ± {spread:.1f} (std over {len(vals)} seeds)")
    for other in ("sft", "control"):
        gains = [100 * (r["rl"] - r[other]) for r in rows]
        print(f"RL - {other}: mean {statistics.mean(gains):.1f} points, per seed {[round(g, 1) for g in gains]}")


if __name__ == "__main__":
    main()
