"""End to end through the `dare` command: a run killed with SIGKILL and resumed ends with the same
weights and metrics as an uninterrupted run; a LoRA stage exports to a merged plain HF folder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

DARE = [sys.executable, "-m", "dare.cli"]

RECIPE = {
    "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
    "data": {"train": "builtin:sort", "num_train": 256, "num_eval": 64, "gen_length": 10},
    "eval": {"enabled": False, "sampling": {"algorithm": "llada", "steps": 10, "block_length": 10}},
    "resources": {"num_threads": 1},
    "stages": [
        {"name": "sft", "kind": "sft", "algorithm": "sft", "steps": 120, "batch_size": 16, "lr": 1e-3,
         "lr_schedule": "cosine", "warmup_steps": 5, "save_every": 10, "keep_last": 2, "log_every": 50},
    ],
}  # fmt: skip


def write_recipe(tmp_path: Path, **changes) -> Path:
    recipe = json.loads(json.dumps(RECIPE))
    recipe.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def dare(*args, timeout=300):
    out = subprocess.run([*DARE, *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "stage-1-sft" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["actor/sft_loss"] for line in lines]


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_final_weights(tmp_path):
    recipe = write_recipe(tmp_path)
    full, killed = tmp_path / "full", tmp_path / "killed"
    dare("run", str(recipe), f"output_dir={full}")

    proc = subprocess.Popen([*DARE, "run", str(recipe), f"output_dir={killed}"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    while not (killed / "stage-1-sft" / "state" / "step_20" / "trainer_state.json").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # driver and everything in its session, no clean-up
    proc.wait()
    assert not (killed / "stage-1-sft" / "checkpoint").exists(), "killed too late: the stage had finished"
    done = len((killed / "stage-1-sft" / "metrics.jsonl").read_text().splitlines())
    assert 20 <= done < 120

    dare("run", "--resume", str(killed))
    a = load_file(full / "stage-1-sft" / "checkpoint" / "model.safetensors")
    b = load_file(killed / "stage-1-sft" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert losses(full) == losses(killed)  # the metrics file reads like an uninterrupted run's
    assert len(losses(full)) == 120


@pytest.mark.slow
def test_lora_stage_exports_merged_model(tmp_path):
    recipe = write_recipe(tmp_path)
    raw = yaml.safe_load(recipe.read_text())
    raw["model"]["lora"] = {"r": 4, "alpha": 8}
    raw["stages"][0].update(steps=20, save_every=0)
    recipe.write_text(yaml.safe_dump(raw))
    run = tmp_path / "lora"
    dare("run", str(recipe), f"output_dir={run}")
    ckpt = run / "stage-1-sft" / "checkpoint"
    assert (ckpt / "adapter_config.json").is_file() and (ckpt / "adapter_model.safetensors").is_file()
    assert (run / "base" / "model.safetensors").is_file()

    out = tmp_path / "merged"
    failed = subprocess.run([*DARE, "export", str(run / "stage-1-sft"), str(out)], capture_output=True, text=True)
    assert failed.returncode == 2 and "--merge-lora" in failed.stderr
    dare("export", str(run / "stage-1-sft"), str(out), "--merge-lora")

    from transformers import AutoModel

    import dare as _  # noqa: F401  (registers the families)
    from dare.models.checkpoint import load_policy

    merged = AutoModel.from_pretrained(out, dtype=torch.float32).eval()
    adapter = load_policy(ckpt, merge=False).eval()
    x = torch.randint(5, 40, (2, 12))
    torch.testing.assert_close(merged(x).logits, adapter(x).logits, atol=1e-5, rtol=1e-5)
    base = load_policy(run / "base").eval()
    assert (merged(x).logits - base(x).logits).abs().max() > 1e-4  # the adapter was trained
    out_gen = dare("generate", "--model", str(out), "--prompt", "sort 321", "--gen-length", "10", "--steps", "10")
    assert "tokens/s" in out_gen.stdout


@pytest.mark.slow
def test_separate_rollout_samples_like_the_colocated_one(tmp_path):
    """With temperature-0 decoding, a separate rollout worker synced from the actor produces the
    same answers as the actor's own (colocated) rollout."""
    recipe = write_recipe(
        tmp_path,
        eval={"enabled": True, "num_prompts": 64, "before_first_stage": False,
              "sampling": {"algorithm": "llada", "steps": 10, "block_length": 10}},
    )  # fmt: skip
    raw = yaml.safe_load(recipe.read_text())
    raw["stages"][0].update(steps=40, save_every=0)
    recipe.write_text(yaml.safe_dump(raw))
    results = {}
    for mode in ("colocated", "separate"):
        run = tmp_path / mode
        dare("run", str(recipe), f"output_dir={run}", f"resources.rollout={mode}")
        results[mode] = json.loads((run / "eval" / "results.json").read_text())["1"]
    assert results["separate"]["examples"] == results["colocated"]["examples"]
    assert results["separate"]["accuracy"] == results["colocated"]["accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "family,sampling",
    [
        ("dream", {"algorithm": "dream", "steps": 10, "remasking": "maskgit_plus"}),
        ("sdar", {"algorithm": "sdar", "steps": 10, "block_length": 4}),
    ],
)
def test_dream_and_sdar_sft_runs_and_loss_falls(tmp_path, family, sampling):
    recipe = write_recipe(
        tmp_path,
        model={"family": family, "preset": "tiny", "tokenizer": "builtin"},
        data={"train": "builtin:sort", "num_train": 256, "num_eval": 32, "gen_length": 12},
        eval={"enabled": True, "num_prompts": 32, "before_first_stage": False, "sampling": sampling},
    )
    raw = yaml.safe_load(recipe.read_text())
    raw["stages"][0].update(steps=60, save_every=0)
    recipe.write_text(yaml.safe_dump(raw))
    run = tmp_path / family
    dare("run", str(recipe), f"output_dir={run}", "logging.tensorboard=true")
    assert list((run / "stage-1-sft" / "tensorboard").glob("events.out.tfevents.*"))
    loss = losses(run)
    assert sum(loss[-10:]) / 10 < 0.6 * sum(loss[:5]) / 5
    res = json.loads((run / "eval" / "results.json").read_text())["1"]
    assert res["num_prompts"] == 32 and 0.0 <= res["accuracy"] <= 1.0
    assert (run / "report.md").read_text().count("stage-1-sft") == 1
