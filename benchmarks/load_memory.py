"""Peak memory of loading a released-layout, multi-shard checkpoint with dare.

Builds a ~1B-parameter random replica of LLaDA-8B-Instruct (its config shrunk: d_model 2048,
9 layers, full 126,464-token vocabulary; tests/replicas.py), saved in bfloat16 in the release's
shard naming (`model-0000K-of-0000N.safetensors` + index). Then, for each load dtype, a fresh
Python process imports torch + dare, records its RSS (the baseline), loads the checkpoint with
`dare.models.from_pretrained(path, dtype=...)` (the path `build_policy`, `dare generate` and the
evals take), reads every weight once (as a forward pass would, so every page is resident), and
reports its peak RSS: `VmHWM` of /proc/self/status, the kernel's high-water mark of this process
image (`ru_maxrss` is not used: Linux carries it over from the parent across fork + exec). The
number that matters is

    (peak RSS - baseline RSS) / bytes of the loaded weights        (target <= 1.15)

i.e. what loading adds on top of the bare interpreter + torch + dare. A random init followed by a
copy would show ~2x; the meta-device path transformers 5 always takes shows ~1x. The file pages
read through mmap are counted in RSS while mapped, so the ratio also shows whether shards are
read lazily (one at a time) or all held at once.

    nice .venv/bin/python benchmarks/load_memory.py              # ~1B params, 6 shards (as LLaDA-8B)
    nice .venv/bin/python benchmarks/load_memory.py --layers 2   # quicker, ~0.6B
Results: docs/loading.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from replicas import make_replica  # noqa: E402

CHILD = r"""
import json, sys, time
import torch
import dare  # noqa: F401
from dare.models import from_pretrained

def status(field):  # kB lines of /proc/self/status; VmHWM is this process image's peak RSS
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

torch.set_num_threads(1)
base = status("VmRSS")
t0 = time.perf_counter()
model = from_pretrained(sys.argv[1], dtype=sys.argv[2])
seconds = time.perf_counter() - t0
peak_load = status("VmHWM")
with torch.no_grad():  # read every weight once (a forward pass would): all pages resident
    for p in model.parameters():
        p.sum()
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"baseline": base, "peak_load": peak_load, "peak": status("VmHWM"), "weights": weights,
                  "seconds": seconds, "devices": sorted({p.device.type for p in model.parameters()}),
                  "params": sum(p.numel() for p in model.parameters()), "dtype": str(model.dtype)}))
"""


def measure(folder: Path, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), dtype], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=9, help="LLaDA blocks (9: ~0.98B parameters)")
    p.add_argument("--shards", type=int, default=6)
    p.add_argument("--dtypes", default="bfloat16,float32", help="load dtypes (the checkpoint is bfloat16)")
    p.add_argument("--workdir", default=None, help="where to write the replica (default: a temp folder)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        t0 = time.perf_counter()
        dims = dict(d_model=2048, n_heads=16, n_kv_heads=16, n_layers=args.layers, mlp_hidden_size=5632,
                    vocab_size=126464, embedding_size=126464)  # fmt: skip
        folder = make_replica("llada", tmp, dims=dims, n_shards=args.shards, dtype=torch.bfloat16)
        files = sorted(folder.glob("*.safetensors"))
        on_disk = sum(f.stat().st_size for f in files)
        print(f"replica: {folder.name} layout, {len(files)} shards, {on_disk / 2**30:.2f} GiB on disk "
              f"(written in {time.perf_counter() - t0:.0f}s)")  # fmt: skip
        rows = [(dtype, measure(folder, dtype)) for dtype in args.dtypes.split(",")]

    print()
    print("| load dtype | params | weight bytes | baseline RSS | peak RSS after load | peak RSS, weights read "
          "| peak - baseline | ratio | load s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype, r in rows:
        added = r["peak"] - r["baseline"]
        gib = {k: f"{r[k] / 2**30:.2f} GiB" for k in ("weights", "baseline", "peak_load", "peak")}
        print(
            f"| {dtype} | {r['params'] / 1e9:.2f}B | {gib['weights']} | {gib['baseline']} | {gib['peak_load']} "
            f"| {gib['peak']} | {added / 2**30:.2f} GiB | {added / r['weights']:.2f}x | {r['seconds']:.1f} |"
        )
        assert r["devices"] == ["cpu"], r["devices"]


if __name__ == "__main__":
    main()
