"""RL vs compute-matched SFT on the quickstart task, over several seeds.

For each seed: run `recipes/quickstart.yaml` (SFT to a plateau on 128 demonstrations, then
coupled-GRPO on fresh prompts, then — `sft_control: true` — the control: the same SFT checkpoint
given the RL stage's wall time of further SFT on the same demonstrations at the SFT stage's final
lr). Prints one table (accuracy on the 1,000 eval prompts, greedy) and the mean / spread.

    .venv/bin/python benchmarks/rl_vs_sft.py --seeds 0 1 2 --out runs/rl_vs_sft
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

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
        control = state["control"]["2"]  # the quickstart's RL stage has sft_control: true
        rows.append({
            "seed": seed, "sft": state["eval"]["1"]["accuracy"], "rl": state["eval"]["2"]["accuracy"],
            "control": control["accuracy"], "rl_s": state["stage_seconds"]["2"], "control_steps": control["steps"],
            "control_s": control["seconds"],
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
