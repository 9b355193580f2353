"""Every RL objective from the same SFT checkpoint, at equal wall time, against one SFT control.

For each task and seed: one SFT stage to a plateau on few demonstrations (the quickstart recipe's
stage 1, `recipes/quickstart.yaml` with `data.train=builtin:<task>`), then, for every objective,
that recipe's RL stage with `algorithm` replaced by the objective (plus the few settings an
objective needs on this task, `NEEDS`), started from a copy of the same SFT run. Dynamic sampling
is off: the table compares the objectives themselves.

Equal wall time: each objective's seconds per step is measured once per task (a short probe from
seed 0's checkpoint, under the same load as the table: `--jobs` runs at once), and its step count
set to `--seconds / (seconds per step)`. The control is the SFT checkpoint given one run's
training wall time of further SFT (`sft_control: true` on the first objective's run, at the SFT
stage's final lr); every objective's own training seconds are printed next to it, so the match can
be read off the table.

    .venv/bin/python benchmarks/algorithms.py --tasks sort countdown --seeds 0 1 2 --seconds 60 --jobs 2

`--set` passes extra dotted overrides to every run (e.g. a smoke test of the wiring:
`--set stages.0.steps=20 eval.num_prompts=50 --seconds 3`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dare.config import load_recipe

from runs import ROOT, clone_first_stage, dare, first_stage_done, two_se

OBJECTIVES = [
    "d1", "coupled_grpo", "wd1", "spg", "espo", "bgpo", "ebpo", "justgrpo", "cj_grpo", "mdpo", "tracerl", "dtreerpo",
]  # fmt: skip
# what an objective needs on the quickstart's 10-token answers (recipe overrides of the RL stage)
NEEDS = {
    "justgrpo": ["stages.1.sampling.block_length=1", "stages.1.sampling.steps=10"],  # left to right, one per step
    "spg": ["stages.1.block_length=10"],  # SPG's blocks (32 by default) must divide the answer
    # trees of 4 x 2 (8 leaves per prompt, as the others' 8 completions; 12 segments to train on)
    "dtreerpo": ["stages.1.num_generations=4", "stages.1.branch_factor=2"],
}
# per task: countdown's SFT plateaus at ~0% on the quickstart's 128 demonstrations (no reward for RL
# to learn from); on 4000 it reaches ~3% (measured: 1.2% on 1000), low but not zero
TASK_SETTINGS = {"countdown": ["data.num_train=4000"]}
COMMON = ["stages.1.dynamic_sampling.enabled=false", "eval.benchmarks=[]", "stages.1.save_every=0"]
PROBE_STEPS = 6


def recipe_args(task: str, seed: int, run: Path, extra: list[str]) -> list[str]:
    return [str(ROOT / "recipes/quickstart.yaml"), f"data.train=builtin:{task}", f"seed={seed}", f"output_dir={run}",
            *COMMON, *TASK_SETTINGS.get(task, []), *extra]  # fmt: skip


def sft_run(task: str, seed: int, out: Path, extra: list[str]) -> Path:
    """The shared SFT stage of (task, seed): a run whose RL stage is one step (discarded)."""
    run = out / task / "sft" / f"seed{seed}"
    if not first_stage_done(run):
        rc, err = dare("run", *recipe_args(task, seed, run, [*extra, "stages.1.steps=1", "stages.1.sft_control=false"]))
        if rc != 0:
            raise RuntimeError(f"SFT run {run} failed: {err}")
    return run


def rl_run(task: str, seed: int, objective: str, steps: int, out: Path, extra: list[str], control: bool, tag: str):
    run = out / task / objective / f"{tag}seed{seed}"
    clone_first_stage(out / task / "sft" / f"seed{seed}", run)
    over = [
        f"stages.1.algorithm={objective}",
        f"stages.1.steps={steps}",
        f"stages.1.sft_control={str(control).lower()}",
    ]
    t0 = time.perf_counter()
    rc, err = dare("run", *recipe_args(task, seed, run, [*extra, *over, *NEEDS.get(objective, [])]))
    row = {"task": task, "seed": seed, "objective": objective, "steps": steps, "rc": rc, "s": time.perf_counter() - t0}
    if rc != 0:
        row["error"] = err.strip().splitlines()[-1] if err.strip() else "no output"
        return row
    state = json.loads((run / "run_state.json").read_text())
    row.update(sft=state["eval"]["1"]["accuracy"], rl=state["eval"]["2"]["accuracy"])
    row["train_s"] = state["stage_seconds"]["2"]
    if control:
        row["control"] = state["control"]["2"]["accuracy"]
        row["control_steps"] = state["control"]["2"]["steps"]
    return row


def mean_std(vals: list[float]) -> str:
    return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["sort", "countdown"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--objectives", nargs="+", default=OBJECTIVES)
    ap.add_argument("--seconds", type=float, default=60.0, help="training wall time of every RL stage")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (each one thread)")
    ap.add_argument("--out", default="runs/algorithms")
    ap.add_argument("--set", nargs="*", default=[], help="extra dotted overrides for every run")
    ap.add_argument("--table-only", action="store_true", help="print the table of the runs logged in OUT/rows.jsonl")
    a = ap.parse_args()
    out = Path(a.out)
    n_eval = load_recipe(str(ROOT / "recipes/quickstart.yaml"), a.set).eval.num_prompts
    if a.table_only:
        logged = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if line.strip()]
        print_table(table_rows(logged), a.tasks, a.objectives, a.seconds, a.jobs, n_eval)
        return
    pool = ThreadPoolExecutor(a.jobs)

    def log(row: dict) -> dict:
        print(json.dumps(row), flush=True)
        with open(out / "rows.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    out.mkdir(parents=True, exist_ok=True)
    list(pool.map(lambda ts: sft_run(*ts, out, a.set), [(t, s) for t in a.tasks for s in a.seeds]))
    # seconds per step of each objective on each task, measured under the table's load
    probes = list(pool.map(
        lambda to: log({**rl_run(to[0], a.seeds[0], to[1], PROBE_STEPS, out, a.set, False, "probe-"), "probe": True}),
        [(t, o) for t in a.tasks for o in a.objectives],
    ))  # fmt: skip
    steps = {(p["task"], p["objective"]): max(1, round(a.seconds * PROBE_STEPS / p["train_s"])) if p["rc"] == 0 else 0
             for p in probes}  # fmt: skip
    jobs = [(t, s, o, o == a.objectives[0]) for t in a.tasks for s in a.seeds for o in a.objectives if steps[(t, o)]]
    rows = list(pool.map(lambda j: log(rl_run(j[0], j[1], j[2], steps[(j[0], j[2])], out, a.set, j[3], "")), jobs))
    print_table(table_rows(probes + rows), a.tasks, a.objectives, a.seconds, a.jobs, n_eval)


def table_rows(logged: list[dict]) -> list[dict]:
    """The table's rows from the logged ones: every run, and a failed probe as its objective's failure."""
    runs = [r for r in logged if not r.get("probe")]
    return runs + [{**r, "steps": 0} for r in logged if r.get("probe") and r["rc"] != 0]


def print_table(rows: list[dict], tasks: list[str], objectives: list[str], seconds: float, jobs: int, n: int) -> None:
    print(f"\nRL stages of {seconds:.0f} s each ({jobs} runs at once, one thread each); control: SFT for "
          f"the {objectives[0]} run's wall time; {n} eval prompts\n")  # fmt: skip
    print("| task | objective | steps | train s | SFT % | RL % | RL - control, per seed | beats control, every seed "
          "(by > 2 s.e.) | failed |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for task in tasks:
        controls = {r["seed"]: r["control"] for r in rows if r["task"] == task and "control" in r}
        if controls:
            c = [100 * v for v in controls.values()]
            print(f"| {task} | SFT control | - | - | - | {mean_std(c)} | - | - | - |")
        for objective in objectives:
            mine = sorted(
                (r for r in rows if r["task"] == task and r["objective"] == objective), key=lambda r: r["seed"]
            )
            ok = [r for r in mine if r["rc"] == 0]
            failed = len(mine) - len(ok)
            if not ok:
                err = mine[0].get("error", "")[:120] if mine else ""
                print(f"| {task} | {objective} | - | - | - | - | - | - | {failed}: {err} |")
                continue
            paired = [r for r in ok if r["seed"] in controls]
            gains = " / ".join(f"{100 * (r['rl'] - controls[r['seed']]):+.1f}" for r in paired)
            wins = bool(paired) and len(paired) == len(mine) and all(r["rl"] > controls[r["seed"]] for r in paired)
            sig = wins and all(r["rl"] - controls[r["seed"]] > two_se(r["rl"], controls[r["seed"]], n) for r in paired)
            verdict = "yes (yes)" if sig else "yes (no)" if wins else "no"
            cols = [mean_std([100 * r[k] for r in ok]) for k in ("sft", "rl")]
            secs = statistics.mean(r["train_s"] for r in ok)
            print(f"| {task} | {objective} | {ok[0]['steps']} | {secs:.0f} | {' | '.join(cols)} | {gains} | {verdict} | "
                  f"{failed} |")  # fmt: skip


if __name__ == "__main__":
    main()
