"""SFT then coupled-GRPO on a tiny MoE of each family through `dare run`: training runs and the
router metrics (aux / z loss, expert load) reach metrics.jsonl in both stages, with a nonzero
aux-loss weight on the SFT stage and the family default on the RL stage."""

import json
import subprocess
import sys

import pytest
import yaml

DARE = [sys.executable, "-m", "dare.cli"]
SAMPLING = {"llada2_moe": {"algorithm": "llada2", "steps": 4, "block_length": 4},
            "sdar_moe": {"algorithm": "sdar", "steps": 4, "block_length": 4}}  # fmt: skip
ROUTER_KEYS = ("router/aux_loss", "router/z_loss", "router/max_load", "router/load_cv")


def recipe(family: str) -> dict:
    sampling = SAMPLING[family]
    return {
        "model": {"family": family, "preset": "tiny", "tokenizer": "builtin"},
        "data": {"train": "builtin:sort", "task_args": {"min_len": 3, "max_len": 4}, "num_train": 32,
                 "num_rl_prompts": 16, "num_eval": 8, "gen_length": 8},
        "eval": {"num_prompts": 8, "batch_size": 8, "sampling": sampling, "before_first_stage": False},
        "resources": {"num_threads": 1},
        "stages": [
            {"name": "sft", "kind": "sft", "algorithm": "sft", "steps": 3, "batch_size": 8, "lr": 1e-3,
             "log_every": 1, "router_aux_loss_coef": 0.01, "router_z_loss_coef": 0.001},
            {"name": "rl", "kind": "rl", "algorithm": "coupled_grpo", "steps": 2, "batch_size": 2, "lr": 1e-4,
             "num_generations": 4, "log_every": 1, "sampling": {**sampling, "temperature": 1.0}},
        ],
    }  # fmt: skip


@pytest.mark.parametrize("family", ["llada2_moe", "sdar_moe"])
def test_moe_sft_then_coupled_grpo_logs_router_metrics(tmp_path, family):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(family)))
    out = tmp_path / "run"
    proc = subprocess.run([*DARE, "run", str(path), f"output_dir={out}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage, steps, loss_key in (("stage-1-sft", 3, "actor/sft_loss"), ("stage-2-rl", 2, "reward/mean")):
        rows = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, steps + 1)), stage
        for row in rows:
            assert loss_key in row and all(k in row for k in ROUTER_KEYS), (stage, sorted(row))
            assert row["router/aux_loss"] > 0 and row["router/z_loss"] > 0
            # 1 = balanced; E = every token-slot on one expert (8 experts in both tiny presets)
            assert 1.0 <= row["router/max_load"] <= 8.0 and row["router/load_cv"] >= 0
        assert (out / stage / "checkpoint" / "model.safetensors").is_file()
    assert "stage-2-rl" in (out / "report.md").read_text()
