"""Rollout speed of dare's samplers: tokens/s and forward passes per generated token for each
algorithm x cache x parallel-decoding setting, and the speed-up of the KV caches over no cache.

    python benchmarks/rollout.py --quick --threads 1     # CPU, a few minutes (docs/benchmarks.md)
    python benchmarks/rollout.py                         # CPU, the full grid (~15 min on 2 cores)
    python benchmarks/rollout.py --gpu                   # ~1B random LLaDA / Dream, bf16, CUDA
    python benchmarks/rollout.py --compiled --threads 1  # compiled vs eager step (CUDA graphs with --gpu)

Models are randomly initialised (no download) and used as initialised. Their confidences are
low and alike across positions, so the threshold / factor rules mostly accept one token a step:
parallel-decoding NFE needs a trained checkpoint to mean anything. What transfers is the cost
of a forward pass under each cache and the cache speed-ups. EOS is suppressed
(`logits_eos_inf`) so every run generates all gen_length tokens.
"""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass, field

import torch

from dare.models import tiny
from dare.sampling import SamplingConfig, generate

# model name -> (family, tiny() overrides); vocab sizes are set per size class
MODELS = {
    "llada-tiny": ("llada", dict(vocab_size=64)),
    "dream-tiny": ("dream", dict(vocab_size=64)),
    "sdar-tiny": ("sdar", dict(vocab_size=64)),
    "llada-100m": (
        "llada",
        dict(
            vocab_size=8192,
            d_model=768,
            n_heads=12,
            n_kv_heads=12,
            n_layers=12,
            mlp_hidden_size=2048,
            max_sequence_length=4096,
        ),
    ),  # fmt: skip
    "dream-100m": (
        "dream",
        dict(
            vocab_size=8192,
            hidden_size=768,
            num_attention_heads=12,
            num_key_value_heads=4,
            num_hidden_layers=12,
            intermediate_size=2048,
            max_position_embeddings=4096,
            max_window_layers=12,
        ),
    ),  # fmt: skip
    "sdar-100m": (
        "sdar",
        dict(
            vocab_size=8192,
            hidden_size=768,
            num_attention_heads=12,
            num_key_value_heads=4,
            head_dim=64,
            num_hidden_layers=12,
            intermediate_size=2048,
            max_position_embeddings=4096,
            max_window_layers=12,
        ),
    ),  # fmt: skip
    "llada-1b": (
        "llada",
        dict(
            vocab_size=32768,
            d_model=2048,
            n_heads=16,
            n_kv_heads=16,
            n_layers=16,
            mlp_hidden_size=5632,
            max_sequence_length=4096,
        ),
    ),  # fmt: skip
    "dream-1b": (
        "dream",
        dict(
            vocab_size=32768,
            hidden_size=2048,
            num_attention_heads=16,
            num_key_value_heads=4,
            num_hidden_layers=16,
            intermediate_size=5632,
            max_position_embeddings=4096,
            max_window_layers=16,
        ),
    ),  # fmt: skip
}


@dataclass
class Run:
    model: str
    sampling: dict = field(default_factory=dict)

    @property
    def parallel(self) -> str:
        s = self.sampling
        return f"threshold {s['threshold']}" if "threshold" in s else f"factor {s['factor']}" if "factor" in s else "-"


def full_attention_grid(model: str, gen: int, block: int, steps: int, caches=("none", "prefix", "dual"),
                        parallel=({}, {"threshold": 0.9}, {"factor": 1.0})) -> list[Run]:  # fmt: skip
    """algorithm x cache x parallel rule for a LLaDA- or Dream-family model."""
    family = MODELS[model][0]
    algo = {"algorithm": "llada"} if family == "llada" else {"algorithm": "dream", "remasking": "maskgit_plus"}
    return [
        Run(model, {**algo, "gen_length": gen, "block_length": block, "steps": steps, "cache": c, **p})
        for p in parallel
        for c in caches
    ]


def plan(args: argparse.Namespace) -> list[Run]:
    gen, block = args.gen_length, 32
    if args.gpu:
        runs = []
        for m in ("llada-1b", "dream-1b"):  # 1 token a step: Fast-dLLM's baseline
            runs += full_attention_grid(m, gen, block, gen, parallel=({}, {"threshold": 0.9}))
        return runs
    runs = []
    for m in ("llada-tiny", "dream-tiny"):
        runs += full_attention_grid(m, gen, block, gen)
        runs.append(Run(m, {"algorithm": "first_hitting", "gen_length": gen}))
    runs += [
        Run("sdar-tiny", {"algorithm": "sdar", "gen_length": gen, "cache": c, **p})
        for p in ({}, {"remasking": "low_confidence_dynamic", "threshold": 0.9})
        for c in ("none", "block")
    ]
    # ~100M: 4 tokens a step keeps the no-cache baseline affordable on a CPU
    steps = gen // 4
    if args.quick:
        for m in ("llada-100m", "dream-100m"):
            runs += full_attention_grid(m, gen, block, steps, parallel=({},))
            runs += full_attention_grid(m, gen, block, steps, caches=("dual",), parallel=({"threshold": 0.9},))
    else:
        for m in ("llada-100m", "dream-100m"):
            runs += full_attention_grid(m, gen, block, steps)
        runs += [Run("sdar-100m", {"algorithm": "sdar", "gen_length": gen, "steps": gen // 2, "cache": c})
                 for c in ("none", "block")]  # fmt: skip
    return runs


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def build(name: str, device: str, dtype: torch.dtype, cache: dict) -> torch.nn.Module:
    if name not in cache:
        family, overrides = MODELS[name]
        model = tiny(family, seed=0, **overrides).eval()
        cache.clear()  # keep one model in memory at a time
        cache[name] = model.to(device=device, dtype=dtype)
    return cache[name]


# compiled vs eager: a few settings (compiling takes minutes on a CPU), one token a step
COMPILED_GRID = [
    ("llada-tiny", {"algorithm": "llada", "cache": "none"}),
    ("llada-tiny", {"algorithm": "llada", "cache": "dual"}),
    ("sdar-tiny", {"algorithm": "sdar", "cache": "block"}),
]
COMPILED_GRID_GPU = [
    ("llada-1b", {"algorithm": "llada", "cache": "none"}),
    ("llada-1b", {"algorithm": "llada", "cache": "dual"}),
    ("dream-1b", {"algorithm": "dream", "remasking": "maskgit_plus", "cache": "dual"}),
]


def compiled_vs_eager(args: argparse.Namespace, device: str, dtype: torch.dtype) -> None:
    """Rows of eager vs `compile=True` (inductor; CUDA graphs on a GPU), measured in one run: the
    compiled config is run once untimed (compilation), then both are timed best of 3."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = 64  # one compiled variant per (cache mode, block) here
    header = "| model | algorithm | cache | block | NFE | eager tok/s | compiled tok/s | eager ms/step | compiled ms/step | speed-up | compile s | same tokens |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    models: dict[str, torch.nn.Module] = {}
    gen = torch.Generator(device=device)
    grid = COMPILED_GRID_GPU if args.gpu else COMPILED_GRID
    for name, sampling in grid:
        if args.only is not None and args.only not in name:
            continue
        model = build(name, device, dtype, models)
        vocab = MODELS[name][1]["vocab_size"]
        prompts = torch.randint(0, vocab - 2, (args.batch, args.prompt_length), generator=gen.manual_seed(0),
                                device=device).tolist()  # fmt: skip
        base = {**sampling, "gen_length": args.gen_length, "steps": args.gen_length, "logits_eos_inf": True}
        if sampling["algorithm"] != "sdar":
            base["block_length"] = 32
        eager_cfg, compiled_cfg = SamplingConfig(**base), SamplingConfig(compile=True, **base)
        generate(model, prompts, eager_cfg, gen.manual_seed(0))  # warm-up
        first = generate(model, prompts, compiled_cfg, gen.manual_seed(0))  # compiles
        result = {}
        for label, cfg in (("eager", eager_cfg), ("compiled", compiled_cfg)):
            runs = [generate(model, prompts, cfg, gen.manual_seed(0)) for _ in range(3)]
            result[label] = min(runs, key=lambda r: r.wall_time)
        e, c = result["eager"], result["compiled"]
        same = torch.equal(e.response_ids, c.response_ids)
        print(
            f"| {name} | {e.config.algorithm} | {e.config.cache} | {e.config.block_length} | {e.nfe} "
            f"| {e.num_tokens / e.wall_time:.1f} | {c.num_tokens / c.wall_time:.1f} "
            f"| {1e3 * e.wall_time / e.nfe:.2f} | {1e3 * c.wall_time / c.nfe:.2f} | {e.wall_time / c.wall_time:.2f}x "
            f"| {first.wall_time:.0f} | {'yes' if same else 'NO'} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer ~100M settings (a few minutes on 2 CPU cores)")
    parser.add_argument("--gpu", action="store_true", help="~1B random LLaDA/Dream, bf16, on CUDA")
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1, help="prompts per generate call")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--only", default=None, help="run only models whose name contains this")
    parser.add_argument(
        "--compiled", action="store_true", help="compiled vs eager decode step (SamplingConfig.compile)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.gpu else "cpu"
    dtype = torch.bfloat16 if args.gpu else torch.float32
    runs = [r for r in plan(args) if args.only is None or args.only in r.model]

    if args.gpu:
        machine = torch.cuda.get_device_name()
    else:
        load = os.getloadavg()[0]  # a shared machine's other work shows up in the timings
        machine = (
            f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
            f"thread(s), load average {load:.1f} at start"
        )
    print(f"# dare rollout benchmark: {machine}; torch {torch.__version__}; {str(dtype).split('.')[-1]}; "
          f"batch {args.batch}, prompt {args.prompt_length} tokens, gen_length {args.gen_length}\n")  # fmt: skip
    if args.compiled:
        compiled_vs_eager(args, device, dtype)
        return
    header = "| model | params | algorithm | cache | parallel | block | steps | NFE | NFE/token | tokens/s | s | cache speed-up |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))

    models: dict[str, torch.nn.Module] = {}
    baseline: dict[tuple, float] = {}
    warmed: set[str] = set()
    gen = torch.Generator(device=device)
    for run in runs:
        model = build(run.model, device, dtype, models)
        vocab = MODELS[run.model][1]["vocab_size"]
        gen.manual_seed(0)
        prompts = torch.randint(0, vocab - 2, (args.batch, args.prompt_length), generator=gen, device=device)
        prompts = prompts.tolist()
        config = SamplingConfig(logits_eos_inf=True, **run.sampling)
        if run.model not in warmed:  # first calls pay one-off costs (allocator, kernels)
            warm = {**run.sampling, "gen_length": 32, "steps": 32}
            if "block_length" in warm:
                warm["block_length"] = 32
            generate(model, prompts, SamplingConfig(**warm), gen)
            warmed.add(run.model)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        # small models run in milliseconds: one untimed run, then the best of 3, to damp a shared
        # machine's noise; large ones run once
        if params < 10:
            generate(model, prompts, config, gen.manual_seed(0))
        walls = []
        for _ in range(3 if params < 10 else 1):
            r = generate(model, prompts, config, gen.manual_seed(0))
            walls.append(r.wall_time)
        wall = min(walls)
        key = (run.model, r.config.algorithm, r.config.remasking, run.parallel)
        plain = r.config.cache in ("none",)
        if plain:
            baseline[key] = wall
        speedup = "1.00x (baseline)" if plain else (f"{baseline[key] / wall:.2f}x" if key in baseline else "-")
        algo = r.config.algorithm + (f" ({r.config.remasking})" if r.config.remasking else "")
        print(
            f"| {run.model} | {params:.1f}M | {algo} | {r.config.cache} | {run.parallel} | {r.config.block_length} "
            f"| {r.config.steps} | {r.nfe} | {r.nfe_per_token * args.batch:.3f} | {r.num_tokens / wall:.1f} "
            f"| {wall:.2f} | {speedup} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
