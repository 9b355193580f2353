"""The RL stage end to end through `dare run`: d1 runs and logs its metrics; coupled-GRPO raises
LLaDA's greedy eval accuracy over its SFT checkpoint. Dream's and SDAR's end-to-end runs (SFT ->
coupled-GRPO on a short sort task, minutes each) are benchmarks/rl_families.py; their updates
learn in process in tests/algorithms/test_grpo_algorithm.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DARE = [sys.executable, "-m", "dare.cli"]

SAMPLING = {
    "llada": {"algorithm": "llada", "steps": 10, "block_length": 10},
    "dream": {"algorithm": "dream", "steps": 10, "remasking": "maskgit_plus"},
    "sdar": {"algorithm": "sdar", "steps": 12, "block_length": 4},
}


def recipe(family: str, sft_steps: int, rl_steps: int, algorithm: str, num_eval: int, **rl) -> dict:
    return {
        "model": {"family": family, "preset": "tiny", "tokenizer": "builtin"},
        "data": {"train": "builtin:sort", "num_train": 256, "num_rl_prompts": 4000, "num_eval": num_eval,
                 "gen_length": 12 if family == "sdar" else 10},
        "eval": {"num_prompts": num_eval, "batch_size": 500, "sampling": SAMPLING[family]},
        "resources": {"num_threads": 1},
        "stages": [
            {"name": "sft", "kind": "sft", "algorithm": "sft", "steps": sft_steps, "batch_size": 64, "lr": 1e-3,
             "lr_schedule": "cosine", "min_lr_ratio": 0.1, "log_every": 100},
            {"name": "rl", "kind": "rl", "algorithm": algorithm, "steps": rl_steps, "batch_size": 16, "lr": 5e-5,
             "num_generations": 8, "log_every": 10, "sampling": {**SAMPLING[family], "temperature": 0.8}, **rl},
        ],
    }  # fmt: skip


def run(tmp_path: Path, r: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text("# test recipe\n" + yaml.safe_dump(r))
    out = tmp_path / "run"
    proc = subprocess.run([*DARE, "run", str(path), f"output_dir={out}"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


METRIC_KEYS = ("reward/mean", "actor/pg_clipfrac", "actor/adv_abs_mean", "actor/entropy", "reward/zero_std_groups",
               "rollout/response_length", "perf/rollout_s", "perf/update_s", "perf/step_s", "actor/grad_norm")  # fmt: skip


@pytest.mark.slow
def test_d1_stage_runs_and_reports_its_metrics(tmp_path):
    out = run(tmp_path, recipe("llada", 60, 4, "d1", 32, mu=2, beta=0.04, sft_control=True))
    rows = [json.loads(line) for line in (out / "stage-2-rl" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for key in (*METRIC_KEYS, "actor/kl"):
        assert key in rows[-1], key
    assert (out / "stage-2-rl" / "checkpoint" / "model.safetensors").is_file()
    report = (out / "report.md").read_text()
    assert "stage-2-rl" in report and "d1" in report
    # the compute-matched control: SFT from the RL stage's start for the RL stage's wall time
    results = json.loads((out / "eval" / "results.json").read_text())
    control = results["control"]["2"]
    assert control["steps"] >= 1 and control["num_prompts"] == 32 and control["lr"] == 1e-3 * 0.1
    state = json.loads((out / "run_state.json").read_text())
    assert control["seconds"] >= state["stage_seconds"]["2"]
    assert "control: stage-2-rl's start + SFT for its wall time" in report


@pytest.mark.slow
def test_coupled_grpo_improves_llada_over_its_sft_checkpoint(tmp_path):
    # measured (2-core CPU, seed 0): SFT 28.4% -> coupled-GRPO 45.0% greedy exact match on 500
    # held-out prompts (s.e. ~2.1), RL in ~70 s
    out = run(tmp_path, recipe("llada", 200, 80, "coupled_grpo", 500))
    results = json.loads((out / "eval" / "results.json").read_text())
    sft, rl = results["1"]["accuracy"], results["2"]["accuracy"]
    assert rl > sft + 0.08, (sft, rl)
