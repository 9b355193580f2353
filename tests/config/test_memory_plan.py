"""The pre-flight memory plan (dare.config.memory_plan, `dare run --dry-run`): exact parameter
terms on a hand-computed tiny config, FSDP2 and LoRA arithmetic, an 8B plan on the meta device,
the over-memory warning and the CLI table (the estimate itself is measured in benchmarks/)."""

from __future__ import annotations

import time

import pytest
import torch
import yaml
from replicas import RELEASES, install_replica

from dare.cli import main
from dare.config import build_recipe
from dare.config.memory_plan import GIB, meta_model, plan_recipe, trace_activations
from dare.data.tasks import builtin_tokenizer
from dare.models.llada import llada_8b

D, HEADS, LAYERS, MLP = 32, 4, 2, 64


def recipe_dict(**resources) -> dict:
    return {
        "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin",
                  "overrides": {"d_model": D, "n_heads": HEADS, "n_kv_heads": HEADS, "n_layers": LAYERS,
                                "mlp_hidden_size": MLP}},
        "data": {"train": "builtin:sort", "gen_length": 12, "max_prompt_length": 20},
        "resources": resources,
        "eval": {"sampling": {"algorithm": "llada", "steps": 12, "block_length": 12}},
        "stages": [{"algorithm": "sft", "steps": 1, "batch_size": 8},
                   {"algorithm": "d1", "steps": 1, "batch_size": 4, "num_generations": 2, "beta": 0.04,
                    "sampling": {"algorithm": "llada", "steps": 4, "block_length": 12, "cache": "prefix"}}],
    }  # fmt: skip


def hand_params() -> int:
    """LLaDA: embedding + head (untied), per block q/k/v/out (d x d), gate/up/down (d x mlp), two norms; ln_f."""
    vocab = len(builtin_tokenizer())
    block = 4 * D * D + 3 * D * MLP + 2 * D
    return 2 * vocab * D + LAYERS * block + D


def term(stage, prefix: str):
    (t,) = [t for t in stage.terms if t.name.startswith(prefix)]
    return t


def test_parameter_terms_match_a_hand_count():
    plan = plan_recipe(build_recipe(recipe_dict()))
    n = hand_params()
    assert plan.num_params == n
    sft, rl = plan.stages
    assert term(sft, "weights").nbytes == n * 4  # float32
    assert term(sft, "gradients").nbytes == n * 4
    assert term(sft, "optimizer").nbytes == 2 * n * 4  # AdamW's two moments
    assert not [t for t in sft.terms if t.name.startswith(("reference", "rollout"))]
    assert term(rl, "reference copy").nbytes == n * 4  # d1 with beta > 0 keeps a frozen copy
    # prefix cache: K and V of every layer for the rank's 4 x 2 rows of 20 + 12 tokens
    assert term(rl, "rollout KV cache").nbytes == 2 * LAYERS * 8 * 32 * D * 4


def test_bfloat16_halves_and_fsdp2_divides_by_the_workers():
    n = hand_params()
    bf16 = build_recipe({**recipe_dict(), "model": {**recipe_dict()["model"], "dtype": "bfloat16"}})
    assert term(plan_recipe(bf16).stages[0], "weights").nbytes == n * 2
    plan = plan_recipe(build_recipe(recipe_dict(num_workers=2, strategy="fsdp2")))
    sft = plan.stages[0]
    assert term(sft, "weights").nbytes == n * 4 // 2
    assert term(sft, "gradients").nbytes == n * 4 // 2
    assert term(sft, "optimizer").nbytes == 2 * (n * 4 // 2)
    assert term(plan.stages[1], "reference copy").nbytes == n * 4 // 2
    # no persistent full copy: the rollout unshards the model for its call only
    assert term(sft, "unsharded weights during a rollout").nbytes == n * 4
    assert term(sft, "unsharded weights during a rollout").phase == "rollout"


def test_lora_gives_gradients_and_moments_to_the_adapter_only():
    raw = recipe_dict()
    raw["model"]["lora"] = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    plan = plan_recipe(build_recipe(raw))
    adapter = LAYERS * 2 * (4 * D + D * 4)  # lora_A (r x d) + lora_B (d x r) on q and v of each block
    sft, rl = plan.stages
    assert term(sft, "gradients").nbytes == adapter * 4
    assert term(sft, "optimizer").nbytes == 2 * adapter * 4
    assert term(sft, "weights").nbytes == (hand_params() + adapter) * 4
    assert not [t for t in rl.terms if t.name.startswith("reference")]  # the adapter-disabled actor


def test_activations_grow_with_rows_and_checkpointing_keeps_less():
    model = meta_model(_tiny_config(), torch.float32)
    one, four = trace_activations(model, 1, 32, 6), trace_activations(model, 4, 32, 6)
    assert four.without_checkpointing == 4 * one.without_checkpointing
    # the first block also saves what all blocks share: the mask (32 x 32 bool), rotary cos and sin
    assert len(one.blocks) == LAYERS and one.blocks[0] - one.blocks[1] == 32 * 32 + 2 * 32 * (D // HEADS) * 4
    assert one.with_checkpointing < one.without_checkpointing
    # q, k, v and the attention output (each 32 x d) are among a block's saved tensors
    assert one.blocks[0] > 4 * 32 * D * 4


def _tiny_config():
    from dare.config.memory_plan import model_config

    return model_config(build_recipe(recipe_dict()))


def test_an_8b_plan_builds_on_the_meta_device_in_seconds():
    start = time.perf_counter()
    model = meta_model(llada_8b(), torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(8.0e9, rel=0.01)
    trace = trace_activations(model, 6, 456, 128)
    assert time.perf_counter() - start < 30
    assert all(p.device.type == "meta" for p in model.parameters())
    # 32 blocks; the logits of 6 x 456 tokens over the 126k vocabulary are part of the transient
    assert len(trace.blocks) == 32 and trace.transient > 6 * 456 * 126464 * 2


def test_over_memory_warning_names_the_largest_term_and_its_key():
    plan = plan_recipe(build_recipe(recipe_dict()))
    assert plan.warnings(None) == [] and plan.warnings(100 * GIB) == []
    lines = plan.warnings(1024)  # 1 KiB: every stage is over
    assert len(lines) == 2
    big = plan.stages[0].largest()
    assert big.name.startswith("activations") and big.key == "model.gradient_checkpointing"
    assert big.name in lines[0] and "shrink it with model.gradient_checkpointing" in lines[0]


def test_dry_run_prints_the_plan_and_warns(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict()))
    assert main(["run", str(path), "resources.device_memory_gb=0.000001", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "# memory plan per rank: llada preset" in out
    assert out.count("total (peak per rank)") == 2 and "rollout KV cache" in out
    assert "dare: warning: stage 1 (sft)" in err and "shrink it with" in err
    assert main(["run", str(path), "resources.device_memory_gb=0", "--dry-run"]) == 2
    assert "resources.device_memory_gb" in capsys.readouterr().err


def test_d1_recipe_plans_llada_8b_on_8_gpus_from_its_config_only(tmp_path, monkeypatch, capsys):
    """recipes/llada/d1_gsm8k.yaml against a Hub-cache replica whose config.json has the released
    8B sizes and whose weights are tiny: the plan reads the config only."""
    full = RELEASES["llada"].full_config().to_dict()
    sizes = {k: full[k] for k in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size",
                                  "vocab_size", "embedding_size")}  # fmt: skip
    install_replica("llada", tmp_path / "hub", seed=1, config_edits=sizes)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "gsm8k.jsonl"
    data.write_text('{"question": "1 + 1?", "answer": "#### 2"}\n')
    files = [f"data.train={data}", f"data.eval={data}", f"eval.benchmark_files.gsm8k={data}"]
    assert main(["run", "recipes/llada/d1_gsm8k.yaml", *files, "resources.device_memory_gb=16", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "GSAI-ML/LLaDA-8B-Instruct (8.02B parameters, bfloat16), 8 worker(s), strategy fsdp2" in out
    assert "weights (1/8 shard" in out and "gradients (LoRA adapter" in out
    assert "6 rows x 456 tokens, checkpointing on" in out  # 16 prompts x 6 / 8 workers / grad_accum 2
    assert (
        "dare: warning: stage 1 (d1)" in err
        and "unsharded weights during a rollout" in err
        and "resources.rollout" in err
    )


def test_per_sample_backward_counts_one_view_of_activations():
    """BGPO backpropagates its Monte-Carlo samples one at a time: its activations do not grow with
    mc_num; ESPO's ELBO samples share one graph: they do."""

    def activations(algorithm: str, mc_num: int) -> int:
        raw = recipe_dict()
        raw["stages"] = [{"algorithm": algorithm, "steps": 1, "batch_size": 2, "num_generations": 2, "mc_num": mc_num,
                          "sampling": {"algorithm": "llada", "steps": 4, "block_length": 12}}]  # fmt: skip
        return term(plan_recipe(build_recipe(raw)).stages[0], "activations / micro-batch (").nbytes

    assert activations("bgpo", 16) == activations("bgpo", 1) > 0
    assert activations("espo", 8) > 4 * activations("espo", 1)
