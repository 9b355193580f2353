"""Memory of DRAKES' relaxed sampler: peak memory vs truncate_steps and vs total steps.

Only the last `truncate_steps` reverse steps keep their activations for backward (earlier steps run
under no_grad), so the memory of one forward+backward should grow with truncate_steps and stay
flat in the total number of steps. Two measures per configuration:

- saved MiB: bytes of the distinct storages autograd saves for backward (exact, any device);
- peak MiB: on CUDA `torch.cuda.max_memory_allocated` above the model's own memory; on CPU the
  peak resident-set growth of a fresh subprocess running one forward+backward (ru_maxrss, KiB on
  Linux; includes allocator slack, so it is coarser).

    python benchmarks/drakes_memory.py                 # CPU, ~1 minute
    python benchmarks/drakes_memory.py --device cuda --d-model 1024 --gen-length 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def build(args):
    from dare.models import tiny

    model = tiny("llada", vocab_size=args.vocab, seed=0, d_model=args.d_model, n_heads=args.d_model // 32,
                 n_kv_heads=args.d_model // 32, n_layers=args.layers, mlp_hidden_size=4 * args.d_model)  # fmt: skip
    return model.to(args.device)


def one_step(model, args, steps: int, truncate: int) -> dict[str, float]:
    """One relaxed sample + linear reward + backward; returns saved MiB and seconds."""
    from dare.sampling.relaxed import RelaxedConfig, relaxed_sample

    spec = model.diffusion_spec()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, args.vocab - 2, (args.batch, 16), generator=g).to(args.device)
    w = torch.randn(args.vocab, generator=g).to(args.device)
    cfg = RelaxedConfig(steps=steps, gen_length=args.gen_length, tau=0.5, truncate_steps=truncate)
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sample = relaxed_sample(model, ids, torch.ones_like(ids), spec, cfg, g)
    (sample.probs @ w).mean().backward()
    return {"saved_mib": sum(storages.values()) / 2**20, "seconds": time.perf_counter() - t0}


def child(args) -> None:
    torch.set_num_threads(1)
    model = build(args)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = one_step(model, args, args.steps, args.truncate)
    if args.device == "cuda":
        res["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        res["peak_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps(res))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--truncate", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.steps is not None:
        return child(args)
    configs = [(32, k) for k in (1, 2, 4, 8, 16)] + [(s, 4) for s in (8, 16, 64)]
    print(f"llada d_model={args.d_model} layers={args.layers} vocab={args.vocab} gen_length={args.gen_length} "
          f"batch={args.batch} device={args.device}")  # fmt: skip
    print(f"| {'steps':>5} | {'truncate_steps':>14} | {'saved MiB':>9} | {'peak MiB':>8} | {'seconds':>7} |")
    print("|---|---|---|---|---|")
    base = [sys.executable, __file__, "--device", args.device, "--d-model", str(args.d_model), "--layers",
            str(args.layers), "--vocab", str(args.vocab), "--gen-length", str(args.gen_length), "--batch", str(args.batch)]  # fmt: skip
    for steps, truncate in configs:
        out = subprocess.run([*base, "--steps", str(steps), "--truncate", str(truncate)], capture_output=True,
                             text=True, check=True)  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {steps:>5} | {truncate:>14} | {r['saved_mib']:>9.1f} | {r['peak_mib']:>8.1f} | {r['seconds']:>7.2f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
