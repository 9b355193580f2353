"""SPG's bounds on a masked diffusion model small enough to enumerate: how often the per-token
EUBO (exact expectation over every mask, l ~ U{1..n}) falls below the exact log-likelihood, for
several beta; the ELBO never exceeds it. The model is tests/algorithms/enumerable_mdm.py's random
table (n positions, V tokens); the exact likelihood enumerates every decoding order.

    .venv/bin/python benchmarks/spg_bounds.py                  # n 3, V 2, 30 tables, ~10 s
    .venv/bin/python benchmarks/spg_bounds.py --n 4 --seeds 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "algorithms"))
from enumerable_mdm import TableMDM  # noqa: E402

from dare.algorithms.spg import spg_lower_bound, spg_upper_bound  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--V", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--betas", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 4.0])
    a = ap.parse_args()
    below = dict.fromkeys(a.betas, 0)
    elbo_above, total, gaps = 0, 0, {b: [] for b in a.betas}
    for seed in range(a.seeds):
        model = TableMDM(a.n, a.V, seed)
        masks, probs = model.all_masks()
        resp = torch.ones(1, a.n, dtype=torch.bool)
        for y in model.sequences():
            logp = model.token_logp(y, masks)[None]
            exact = model.exact_logp(y)
            total += 1
            elbo_above += a.n * float(spg_lower_bound(logp, masks[None], resp, probs)) > exact + 1e-12
            for b in a.betas:
                upper = a.n * float(spg_upper_bound(logp, masks[None], resp, b, probs))
                below[b] += upper < exact - 1e-12
                gaps[b].append(upper - exact)
    print(f"n={a.n} V={a.V} tables={a.seeds} sequences={total}; ELBO above log p: {elbo_above}")
    print("| beta | EUBO below log p | mean EUBO - log p |")
    print("|---|---|---|")
    for b in a.betas:
        print(f"| {b:g} | {below[b]} / {total} | {sum(gaps[b]) / total:.3f} |")


if __name__ == "__main__":
    main()
