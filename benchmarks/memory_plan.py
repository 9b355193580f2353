"""The dry-run memory plan (dare.config.memory_plan) against the measured peak of real CPU steps.

For ~100M-parameter models of each family (the tiny presets scaled up: hidden 768, 8 layers, a
32,000-token vocabulary), each case runs in a fresh Python process: the plan of a one-stage
recipe is computed first (meta device), then the process's peak RSS is reset
(`/proc/self/clear_refs` = 5 resets VmHWM), its resident set recorded as the baseline, and the
model is built (float32, random), an AdamW optimizer made, and two real training steps taken with
the algorithm's own `prepare` / `loss_backward` (RL: dare's sampler rolls out first, as the
colocated actor does). Measured = VmHWM - baseline: everything the steps made resident (weights,
gradients, Adam moments, activations, rollout tensors, allocator slack). Torch's CPU allocator
keeps no statistics and tracemalloc does not see it, hence RSS.

    nice .venv/bin/python benchmarks/memory_plan.py            # all cases (a few minutes of CPU)
    nice .venv/bin/python benchmarks/memory_plan.py --case llada-sft
    MALLOC_MMAP_THRESHOLD_=131072 nice .venv/bin/python benchmarks/memory_plan.py   # RSS ~ live tensors
Results: docs/scaling.md ("Memory plan"). Target: plan within +-25% of measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "algorithms"))  # rl_toy
VOCAB = 32000
LLADA = {"d_model": 768, "n_heads": 12, "n_kv_heads": 12, "n_layers": 8, "mlp_hidden_size": 2048,
         "max_sequence_length": 1024}  # fmt: skip
QWEN = {"hidden_size": 768, "num_attention_heads": 12, "num_key_value_heads": 4, "num_hidden_layers": 8,
        "intermediate_size": 2048, "max_position_embeddings": 1024}  # fmt: skip
PROMPT, GEN = 224, 32
SFT = {"algorithm": "sft", "steps": 2, "batch_size": 4}
D1 = {"algorithm": "d1", "steps": 2, "batch_size": 2, "num_generations": 2, "beta": 0.0,
      "sampling": {"steps": 8, "block_length": 32}}  # fmt: skip
CASES = {
    "llada-sft": ("llada", LLADA, SFT, False),
    "llada-sft-ckpt": ("llada", LLADA, SFT, True),
    "llada-d1": ("llada", LLADA, D1, False),
    "dream-sft": ("dream", QWEN, SFT, False),
    "sdar-sft": ("sdar", {**QWEN, "head_dim": 64}, SFT, False),
}


def recipe_for(family: str, dims: dict, stage: dict, ckpt: bool) -> dict:
    stage = json.loads(json.dumps(stage))
    if "sampling" in stage:
        stage["sampling"]["algorithm"] = family
        if family == "sdar":
            stage["sampling"]["block_length"] = 4
    return {
        "model": {"family": family, "preset": "tiny", "tokenizer": "builtin", "overrides": dims,
                  "gradient_checkpointing": ckpt},
        "data": {"train": "builtin:sort", "gen_length": GEN, "max_prompt_length": PROMPT},
        "eval": {"enabled": False, "sampling": {"algorithm": family, **({"block_length": 4} if family == "sdar" else {})}},
        "stages": [stage],
    }  # fmt: skip


def status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def sft_batch(config, rows: int, g):
    import torch

    ids = torch.randint(0, config.vocab_size - 2, (rows, PROMPT + GEN), generator=g)
    response = torch.zeros(rows, PROMPT + GEN, dtype=torch.bool)
    response[:, PROMPT:] = True
    return {"input_ids": ids, "attention_mask": torch.ones(rows, PROMPT + GEN, dtype=torch.long),
            "response_mask": response, "noise_seed": torch.arange(rows)}  # fmt: skip


def rl_batch(model, config, stage, algo, g, step: int):
    """dare's sampler rolls out the stage's prompts (PROMPT tokens each), then the actor's batch."""
    import torch
    from rl_toy import rl_batch as toy_batch  # tests/algorithms/rl_toy.py: the actor's RL batch of a rollout

    from dare.sampling import SamplingConfig, generate

    prompts = torch.randint(0, config.vocab_size - 2, (stage.batch_size, PROMPT), generator=g).tolist()
    cfg = SamplingConfig(**{**stage.args.sampling, "gen_length": GEN, "num_generations": stage.args.num_generations})
    model.eval()
    with torch.no_grad():
        rollout = generate(model, prompts, cfg, generator=g)
    return toy_batch(rollout, stage.args.advantage, algo.updates_per_step, step)


def child(name: str) -> dict:
    import gc

    import torch

    from dare.algorithms import ALGORITHMS
    from dare.config import build_recipe
    from dare.config.memory_plan import plan_recipe
    from dare.models import FAMILIES
    from dare.workers.actor import split_batch

    torch.set_num_threads(2)
    family, dims, stage_raw, ckpt = CASES[name]
    recipe = build_recipe(recipe_for(family, dims, stage_raw, ckpt))
    fam = FAMILIES.get(family)
    config = fam.tiny_config(VOCAB, **dims)
    plan = plan_recipe(recipe, config).stages[0]
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = status("VmRSS")
    t0 = time.perf_counter()
    model = fam.lm_cls(config)
    if ckpt:
        model.gradient_checkpointing_enable()
    stage = recipe.stages[0]
    algo = ALGORITHMS.get(stage.algorithm)(stage.args, config.diffusion_spec())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    for step in range(2):
        if stage.kind == "rl":
            batch = rl_batch(model, config, stage, algo, g, step)
        else:
            batch = sft_batch(config, stage.batch_size, g)
        model.train()
        for update in algo.prepare(model, None, batch):
            for micro in split_batch(update, stage.grad_accum):
                # the actor's path: the loss whole, or in the parts the algorithm hands over (BGPO)
                algo.loss_backward(model, micro, lambda part, _share: (part / stage.grad_accum).backward())
            opt.step()
            opt.zero_grad(set_to_none=True)
    measured = status("VmHWM") - base
    return {
        "case": name, "params": sum(p.numel() for p in model.parameters()), "plan": plan.total,
        "measured": measured, "seconds": time.perf_counter() - t0,
        "terms": {t.name: t.nbytes for t in plan.terms if t.phase != "info"},
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", action="append", choices=sorted(CASES), help="run only these (repeat)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child)))
        return
    rows = []
    for name in args.case or list(CASES):
        out = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True, timeout=1800)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line[len("RESULT ") :]))
        r = rows[-1]
        print(f"{name}: plan {r['plan'] / 2**20:.0f} MiB, measured {r['measured'] / 2**20:.0f} MiB ({r['seconds']:.0f}s)",
              file=sys.stderr)  # fmt: skip
    print("| case | parameters | plan (MiB) | measured peak (MiB) | plan / measured |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['params'] / 1e6:.0f}M | {r['plan'] / 2**20:.0f} | {r['measured'] / 2**20:.0f} "
              f"| {r['plan'] / r['measured']:.2f} |")  # fmt: skip
    for r in rows:
        print(f"\n{r['case']} plan terms (MiB): " + ", ".join(f"{k}: {v / 2**20:.0f}" for k, v in r["terms"].items()))


if __name__ == "__main__":
    main()
