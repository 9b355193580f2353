"""Per-rank memory of the FSDP2 actor against the replicated one, on CPU with gloo workers.

For 1 (replicated), 2 and 4 (fsdp2) Ray actor workers on a random LLaDA of a few million
parameters, each rank reports (`ActorWorker.memory_report`) the bytes it holds of parameters,
gradients and Adam state (the sum of its local shard sizes), whether any module of the worker
holds a parameter in full, and its resident memory, at four points: after init, after one SFT
update, after a colocated rollout (`generate`: the model is unsharded for that call only) and
after saving a checkpoint (gathered to rank 0 only). Printed: one row per (workers, point) with
the ratio of the per-rank state bytes to the replicated case (1/N expected). RSS columns are
rank 0's, plus the largest peak of the other ranks.

    python benchmarks/fsdp_memory.py                    # 2-core CPU: ~3 minutes
    python benchmarks/fsdp_memory.py --workers 1 2 --d-model 256

Resident memory (RSS) includes each Ray worker's runtime (Python, torch, Ray, gloo: ~0.5 GiB),
measured before the model is built and subtracted in the "RSS - runtime" column. glibc's malloc
is told to return freed tensors to the OS at once (MALLOC_MMAP_THRESHOLD_, inherited by the local
Ray workers), so RSS tracks the live tensors; the shard-size columns are the exact measure.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import ray
import torch
from verl import DataProto

from dare.config import ResourcesSpec
from dare.config.schema import build_stage, stage_to_dict
from dare.data.formatting import collate_prompts, collate_sft
from dare.data.tasks import builtin_tokenizer, get_task
from dare.trainer.runtime import release, worker_group
from dare.workers.actor import ActorWorker

MiB = 2**20


def model_spec(args) -> dict:
    overrides = {"d_model": args.d_model, "n_heads": args.d_model // 64, "n_kv_heads": args.d_model // 64,
                 "n_layers": args.layers, "mlp_hidden_size": 4 * args.d_model}  # fmt: skip
    return {"family": "llada", "preset": "tiny", "tokenizer": "builtin", "dtype": "float32", "overrides": overrides}


def batches(tok, batch_size: int):
    rows = get_task("sort").generate("train", batch_size, seed=0)
    b = collate_sft(rows, tok, gen_length=16)
    keys = ("input_ids", "attention_mask", "response_mask")
    seeds = torch.arange(batch_size, dtype=torch.long)
    train = DataProto.from_dict(tensors={**{k: b[k] for k in keys}, "noise_seed": seeds})
    prompts = collate_prompts(get_task("sort").generate("eval", batch_size, seed=1), tok)
    sampling = {"gen_length": 16, "steps": 16, "block_length": 16, "threshold": 0.3}
    rollout = DataProto.from_dict(
        tensors={"input_ids": prompts["input_ids"], "attention_mask": prompts["attention_mask"]},
        meta_info={"sampling": sampling, "seed": 0},
    )
    return train, rollout


def measure(n: int, args, tmp: Path, tok_dir: Path, train: DataProto, rollout: DataProto) -> list[dict]:
    """The memory points of an n-worker actor: rank 0's report (ranks hold equal shards) and the
    largest peak RSS of the other ranks (rank 0 alone gathers a checkpoint)."""
    strategy = "replicate" if n == 1 else "fsdp2"
    stage = build_stage(
        {"kind": "sft", "algorithm": "sft", "steps": 4, "batch_size": args.batch, "lr": 1e-4}, "s", None
    )
    wg = worker_group(ActorWorker, ResourcesSpec(num_workers=n, num_threads=1), name=f"mem{n}", strategy=strategy)
    rows = []
    try:
        rows.append(("runtime", wg.memory_report()))
        wg.init_model(model_spec(args), str(tok_dir), 0, None, None)
        wg.init_stage(stage_to_dict(stage), stage.args, 4)
        rows.append(("init", wg.memory_report()))
        wg.update_actor(train)
        rows.append(("after update", wg.memory_report()))
        wg.generate(rollout)
        rows.append(("after rollout", wg.memory_report()))
        wg.save_state(str(tmp / f"ckpt{n}"), None, True)
        rows.append(("after save", wg.memory_report()))
    finally:
        release(wg)
    others = lambda reps: max((r["peak_rss_mb"] for r in reps[1:]), default=float("nan"))  # noqa: E731
    return [{"workers": n, "strategy": strategy, "point": point, **reps[0], "peak_rss_others": others(reps)}
            for point, reps in rows]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    tok = builtin_tokenizer()
    train, rollout = batches(tok, args.batch)
    # freed tensors go back to the OS (no dynamic mmap threshold), so RSS follows live tensors
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 16))
    ray.init(address="local", num_cpus=max(args.workers) * 2, include_dashboard=False, logging_level="ERROR")
    results = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tok.save_pretrained(tmp / "tok")
        for n in sorted(args.workers):
            results += measure(n, args, tmp, tmp / "tok", train, rollout)
    ray.shutdown()
    base = {r["point"]: r for r in results if r["workers"] == 1}
    runtime = {r["workers"]: r["rss_mb"] for r in results if r["point"] == "runtime"}
    results = [r for r in results if r["point"] != "runtime"]
    model_mib = results[0]["model_bytes"] / MiB
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}; model {model_mib:.1f} MiB fp32")
    print("| workers | strategy | point | params MiB | grads MiB | Adam MiB | state / replicated | full params held"
          " | RSS MiB | RSS - runtime MiB | peak RSS MiB | peak RSS other ranks |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        state = r["param_bytes"] + r["grad_bytes"] + r["optim_bytes"]
        ref = base.get(r["point"])
        ratio = state / (ref["param_bytes"] + ref["grad_bytes"] + ref["optim_bytes"]) if ref else float("nan")
        print(f"| {r['workers']} | {r['strategy']} | {r['point']} | {r['param_bytes'] / MiB:.2f} | "
              f"{r['grad_bytes'] / MiB:.2f} | {r['optim_bytes'] / MiB:.2f} | {ratio:.3f} | {r['full_params']} | "
              f"{r['rss_mb']:.0f} | {r['rss_mb'] - runtime[r['workers']]:.0f} | {r['peak_rss_mb']:.0f} | {r['peak_rss_others']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
