"""The prepared one-GPU check (scripts/gpu_check.sh runs it): one table of what dare does on a device.

Rows:
  quickstart     `dare run recipes/quickstart.yaml resources.device=cuda` end to end (with --quickstart)
  sft            SFT steps of a ~1B random LLaDA replica (tests/replicas.py, bfloat16): tokens/s, peak
  coupled_grpo   a rollout with dare's sampler, then coupled-GRPO updates on it: tokens/s of both, peak
  fsdp2          the same SFT step on the FSDP2-sharded model (fully_shard, a 1-rank process group on
                 the device: NCCL on CUDA, gloo on CPU); its loss must equal the plain model's
Each row also shows the dry-run memory plan's estimate of that step where it applies.

    .venv/bin/python benchmarks/gpu_check.py --device cuda --quickstart    # the real check (< 10 min)
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny           # wiring only, seconds
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "algorithms"))  # rl_toy

# ~1B parameters: LLaDA-8B's vocabulary and head size, fewer and narrower blocks (as benchmarks/load_memory.py)
ONE_B = {"d_model": 2048, "n_heads": 16, "n_kv_heads": 16, "n_layers": 9, "mlp_hidden_size": 5632}
TINY = {"d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 128}


@dataclass
class Row:
    check: str
    status: str
    seconds: float
    tokens_per_s: str = "-"
    peak_gib: str = "-"
    detail: str = ""


def peak_reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> str:
    if device == "cuda":
        torch.cuda.synchronize()
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f}"
    for line in open("/proc/self/status"):  # the CPU allocator keeps no statistics: the process's peak RSS
        if line.startswith("VmHWM:"):
            return f"{int(line.split()[1]) / 2**20:.2f} (RSS)"
    return "-"


def build_model(tiny: bool, device: str, dtype: torch.dtype, root: Path):
    """A random replica of LLaDA-8B-Instruct's layout with `dims`, written and loaded as a checkpoint."""
    from replicas import make_replica

    from dare.models.checkpoint import load_policy

    folder = make_replica("llada", root, dims=TINY if tiny else ONE_B, n_shards=2, dtype=dtype)
    return load_policy(folder, dtype=dtype).to(device), folder


def sft_batch(model, rows: int, prompt: int, gen: int, device: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(0, min(vocab, model.config.mask_token_id) - 1, (rows, prompt + gen), generator=g)
    response = torch.zeros(rows, prompt + gen, dtype=torch.bool)
    response[:, prompt:] = True
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "response_mask": response,
             "noise_seed": torch.arange(rows) + seed}  # fmt: skip
    return {k: v.to(device) for k, v in batch.items()}


def sft_steps(model, batch: dict, steps: int) -> tuple[float, float]:
    """(seconds, last loss) of `steps` SFT optimizer steps."""
    from dare.algorithms import ALGORITHMS

    algo = ALGORITHMS.get("sft")(ALGORITHMS.get("sft").Args(), model.diffusion_spec())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = algo.compute_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if batch["input_ids"].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, loss.item()


def planned_sft_gib(model, rows: int, seq: int, gen: int) -> float:
    """The dry-run plan's peak for these SFT steps: weights, gradients and AdamW's two moments in the
    model dtype, plus one micro-batch's activations (dare.config.memory_plan on the meta device)."""
    from dare.config.memory_plan import meta_model, trace_activations

    meta = meta_model(model.config, next(model.parameters()).dtype)
    n = sum(p.numel() for p in meta.parameters())
    elt = next(meta.parameters()).element_size()
    acts = trace_activations(meta, rows, seq, max(1, gen // 2)).without_checkpointing
    return (4 * n * elt + acts) / 2**30


def check_sft(model, args, device: str) -> Row:
    batch = sft_batch(model, args.rows, args.prompt, args.gen, device, 0)
    sft_steps(model, batch, 1)  # warm-up (kernels, Adam state)
    peak_reset(device)
    seconds, loss = sft_steps(model, batch, args.steps)
    tokens = args.steps * batch["input_ids"].numel()
    plan = planned_sft_gib(model, args.rows, args.prompt + args.gen, args.gen)
    return Row("sft", "ok", seconds, f"{tokens / seconds:.0f}", peak_gib(device),
               f"{args.steps} steps of {args.rows} x {args.prompt + args.gen} tokens, loss {loss:.3f}, "
               f"memory plan {plan:.2f} GiB")  # fmt: skip


def check_coupled_grpo(model, args, device: str) -> Row:
    from rl_toy import algorithm, rl_batch  # tests/algorithms/rl_toy.py: the actor's RL batch of a rollout

    from dare.sampling import SamplingConfig, generate

    G = 4
    prompts = sft_batch(model, max(1, args.rows // G), args.prompt, 0, "cpu", 1)["input_ids"].tolist()
    cfg = SamplingConfig(algorithm="llada", gen_length=args.gen, steps=args.gen // 2, block_length=args.gen,
                         temperature=1.0, num_generations=G)  # fmt: skip
    algo = algorithm("coupled_grpo", model.diffusion_spec(), num_generations=G)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    peak_reset(device)
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        rollout = generate(model, prompts, cfg, generator=torch.Generator(device=device).manual_seed(0))
    gen_seconds = time.perf_counter() - start
    on_cpu = {f.name: getattr(rollout, f.name).cpu() for f in dataclasses.fields(rollout)
              if isinstance(getattr(rollout, f.name), torch.Tensor)}  # fmt: skip
    batch = rl_batch(dataclasses.replace(rollout, **on_cpu), algo.args.advantage)  # the actor's batch
    batch = {k: v.to(device) for k, v in batch.items()}
    model.train()
    t0 = time.perf_counter()
    for update in algo.prepare(model, None, batch):
        loss, _ = algo.compute_loss(model, update)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    upd_seconds = time.perf_counter() - t0
    rows = batch["input_ids"].shape[0]
    detail = (f"rollout {rollout.num_tokens} tokens in {gen_seconds:.1f}s ({rollout.num_tokens / gen_seconds:.0f}/s), "
              f"update {rows} x {batch['input_ids'].shape[1]} tokens in {upd_seconds:.1f}s")  # fmt: skip
    tps = f"{rollout.num_tokens / gen_seconds:.0f} gen / {batch['input_ids'].numel() / upd_seconds:.0f} train"
    return Row("coupled_grpo", "ok", gen_seconds + upd_seconds, tps, peak_gib(device), detail)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_fsdp2(model, args, device: str) -> Row:
    """One SFT step on `fully_shard(model)` in a 1-rank group; the loss must match the plain model's."""
    import torch.distributed as dist

    from dare.workers import sharding

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
    try:
        batch = sft_batch(model, args.rows, args.prompt, args.gen, device, 7)
        _, plain_loss = sft_steps(copy.deepcopy(model), batch, 1)
        sharded = sharding.shard_model(copy.deepcopy(model))
        peak_reset(device)
        seconds, loss = sft_steps(sharded, batch, 1)
    finally:
        dist.destroy_process_group()
    ok = abs(loss - plain_loss) <= 1e-3 * max(1.0, abs(plain_loss))
    tokens = batch["input_ids"].numel()
    return Row("fsdp2", "ok" if ok else "MISMATCH", seconds, f"{tokens / seconds:.0f}", peak_gib(device),
               f"1-rank fully_shard, loss {loss:.4f} vs plain {plain_loss:.4f}")  # fmt: skip


def check_quickstart(device: str, out: Path, timeout: int) -> Row:
    run = out / "quickstart"
    cmd = [sys.executable, "-m", "dare.cli", "run", str(ROOT / "recipes" / "quickstart.yaml"),
           f"resources.device={device}", f"output_dir={run}", "--overwrite"]  # fmt: skip
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return Row("quickstart", "TIMEOUT", time.perf_counter() - start, detail=f"over {timeout}s")
    seconds = time.perf_counter() - start
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
        return Row("quickstart", f"FAILED rc={proc.returncode}", seconds, detail=tail)
    results = json.loads((run / "eval" / "results.json").read_text())
    scores = [f"stage {k}: sort {v['benchmarks']['sort']['score']:.1f}" for k, v in sorted(results.items())
              if "sort" in v.get("benchmarks", {})]  # fmt: skip
    return Row("quickstart", "ok", seconds, detail="; ".join(scores) or str(run / "report.md"))


def table(rows: list[Row], device: str) -> str:
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    lines = [f"device: {name}; torch {torch.__version__}", "",
             "| check | status | seconds | tokens/s | peak GiB | detail |", "|---|---|---|---|---|---|"]  # fmt: skip
    lines += [
        f"| {r.check} | {r.status} | {r.seconds:.1f} | {r.tokens_per_s} | {r.peak_gib} | {r.detail} |" for r in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="dare's one-GPU check: one table")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="a tiny replica and short sequences (wiring check)")
    p.add_argument("--quickstart", action="store_true", help="also run recipes/quickstart.yaml on the device")
    p.add_argument("--quickstart-timeout", type=int, default=360)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--out", default=None, help="folder for the replica, the quickstart run and table.md")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: --device cuda but torch sees no CUDA device (torch.cuda.is_available() is False)",
              file=sys.stderr)  # fmt: skip
        return 2
    args.rows, args.prompt, args.gen = (4, 8, 8) if args.tiny else (8, 448, 64)
    args.steps = args.steps or (1 if args.tiny else 3)
    dtype = torch.float32 if args.tiny and args.device == "cpu" else torch.bfloat16
    out = Path(args.out or tempfile.mkdtemp(prefix="dare-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    if args.quickstart:
        rows.append(check_quickstart(args.device, out, args.quickstart_timeout))
    start = time.perf_counter()
    model, folder = build_model(args.tiny, args.device, dtype, out / "replica")
    n = sum(q.numel() for q in model.parameters())
    rows.append(Row("load replica", "ok", time.perf_counter() - start, detail=f"{n / 1e6:.0f}M parameters, {dtype}"))
    for check in (check_sft, check_coupled_grpo, check_fsdp2):
        start = time.perf_counter()
        try:
            rows.append(check(copy.deepcopy(model) if check is not check_fsdp2 else model, args, args.device))
        except Exception as e:  # one failing check still leaves the others' rows in the table
            rows.append(Row(check.__name__[6:], "FAILED", time.perf_counter() - start,
                            detail=f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"))  # fmt: skip
        if args.device == "cuda":
            torch.cuda.empty_cache()
    text = table(rows, args.device)
    print(text)
    (out / "table.md").write_text(text + "\n")
    return 0 if all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
