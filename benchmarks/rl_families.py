"""Coupled-GRPO end to end through `dare run` on Dream and SDAR (tiny presets): SFT on a short sort
task (3-5 digits, 8 response positions), then coupled-GRPO, per family and seed; prints the SFT and
RL greedy accuracy (200 held-out prompts, s.e. ~3 points) and the mean reward of the first / last
10 RL steps' rollouts. (LLaDA's end-to-end learning run is tests/trainer/test_rl_stage.py; every
family's update learns in process in tests/algorithms/test_grpo_algorithm.py.)

    .venv/bin/python benchmarks/rl_families.py --seeds 0 1 2 --out runs/rl_families

Several minutes per (family, seed) on a 2-core CPU. Settings: lr 5e-5 (at 3e-4 both families
collapsed within a few steps), 40 RL steps of 16 prompts x 8 generations at T=1; Dream 200 SFT
steps, SDAR 100 SFT steps and mu=2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "trainer"))

from test_rl_stage import SAMPLING, recipe, run  # noqa: E402  (the suite's recipe and runner)

FAMILIES = {"dream": (200, {}), "sdar": (100, {"mu": 2})}


def short_sort_recipe(family: str, sft_steps: int, rl_steps: int, seed: int, **rl) -> dict:
    """Sort 3-5 digits (8 response positions): small enough for Dream / SDAR to learn in minutes."""
    r = recipe(family, sft_steps, rl_steps, "coupled_grpo", 200, **rl)
    r["seed"] = seed
    r["data"].update(task_args={"min_len": 3, "max_len": 5}, gen_length=8, num_rl_prompts=1000)
    sampling = {**SAMPLING[family], "steps": 8, **({"block_length": 4} if family == "sdar" else {})}
    r["eval"]["sampling"] = sampling
    r["stages"][1]["sampling"] = {**sampling, "temperature": 1.0}
    return r


def one(out: Path, family: str, seed: int, rl_steps: int) -> dict[str, float]:
    sft_steps, extra = FAMILIES[family]
    folder = out / f"{family}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    run_dir = run(folder, short_sort_recipe(family, sft_steps, rl_steps, seed, **extra))
    rows = [json.loads(line) for line in (run_dir / "stage-2-rl" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward/mean"] for r in rows]
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    return {"sft": 100 * results["1"]["accuracy"], "rl": 100 * results["2"]["accuracy"],
            "reward_first": statistics.mean(rewards[:10]), "reward_last": statistics.mean(rewards[-10:])}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--rl-steps", type=int, default=40)
    ap.add_argument("--out", default="runs/rl_families")
    a = ap.parse_args()
    print("| family | seed | SFT % | coupled-GRPO % | reward first 10 -> last 10 steps |")
    print("|---|---|---|---|---|")
    by_family: dict[str, list[dict[str, float]]] = {}
    for family in a.families:
        for seed in a.seeds:
            r = one(Path(a.out), family, seed, a.rl_steps)
            by_family.setdefault(family, []).append(r)
            print(f"| {family} | {seed} | {r['sft']:.1f} | {r['rl']:.1f} | "
                  f"{r['reward_first']:.3f} -> {r['reward_last']:.3f} |", flush=True)  # fmt: skip
    for family, rows in by_family.items():
        gains = [r["rl"] - r["sft"] for r in rows]
        spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
        print(f"{family}: RL - SFT {statistics.mean(gains):+.1f} ± {spread:.1f} points over {len(gains)} seed(s)")


if __name__ == "__main__":
    main()
