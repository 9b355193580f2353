"""DRAKES's reward-vs-KL trade-off: one SFT checkpoint, the DRAKES stage at several alphas.

DRAKES (arXiv 2410.13643) reports the reward it reaches against the KL to the pretrained model
as the KL weight alpha varies. This runs a DRAKES recipe (default `recipes/drakes_quickstart.yaml`)
once for its SFT stage, then its DRAKES stage from that same checkpoint at each `--alphas` value
(2 runs at once, one thread each), and prints, per alpha: the exact-match accuracy on the eval
prompts, and the mean hard-sample reward (`reward/mean`) and KL to the SFT model (`actor/kl`,
summed over the relaxed steps' masked positions, as in the loss) over the stage's last 10 steps.

    .venv/bin/python benchmarks/drakes_alpha.py --alphas 0 0.001 0.01 0.1 1 --seed 0 --out runs/drakes_alpha
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runs import ROOT, clone_first_stage, dare, first_stage_done, last_mean


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default=str(ROOT / "recipes/drakes_quickstart.yaml"))
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.001, 0.01, 0.1, 1.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="runs/drakes_alpha")
    ap.add_argument("--set", nargs="*", default=[], help="extra dotted overrides for every run")
    a = ap.parse_args()
    out = Path(a.out)
    common = [a.recipe, f"seed={a.seed}", "stages.1.sft_control=false", "eval.benchmarks=[]", *a.set]
    base = out / "sft"
    if not first_stage_done(base):
        rc, err = dare("run", *common, f"output_dir={base}", "stages.1.steps=1")
        if rc != 0:
            raise SystemExit(f"SFT run failed: {err}")

    def one(alpha: float) -> dict:
        run = out / f"alpha{alpha:g}"
        clone_first_stage(base, run)
        rc, err = dare("run", *common, f"output_dir={run}", f"stages.1.alpha={alpha}")
        if rc != 0:
            return {"alpha": alpha, "error": err.strip().splitlines()[-1] if err.strip() else "no output"}
        state = json.loads((run / "run_state.json").read_text())
        metrics = next(run.glob("stage-2-*/metrics.jsonl"))
        row = {"alpha": alpha, "sft": state["eval"]["1"]["accuracy"], "accuracy": state["eval"]["2"]["accuracy"]}
        row.update(reward=last_mean(metrics, "reward/mean"), kl=last_mean(metrics, "actor/kl"))
        print(json.dumps(row), flush=True)
        return row

    rows = list(ThreadPoolExecutor(a.jobs).map(one, a.alphas))
    print(f"\nseed {a.seed}; SFT checkpoint accuracy {100 * rows[0].get('sft', float('nan')):.1f}%\n")
    print("| alpha | accuracy % | reward (last 10 steps) | KL (last 10 steps) |")
    print("|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['alpha']:g} | failed: {r['error'][:100]} | | |")
        else:
            kl = f"{r['kl']:.3f}" if r["alpha"] > 0 else "not computed (no reference at alpha 0)"
            print(f"| {r['alpha']:g} | {100 * r['accuracy']:.1f} | {r['reward']:.3f} | {kl} |")


if __name__ == "__main__":
    main()
