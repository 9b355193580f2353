"""Variance of the ELBO preference score: VRPO's shared noise vs independent noise (DPO), by n_t.

The preference score of a pair is s = (B_theta(y_w) - B_ref(y_w)) - (B_theta(y_l) - B_ref(y_l))
with each B an n_t-sample stratified ELBO (`dare.diffusion.elbo`). For a fixed reference (a tiny
random model) and a policy near it (its weights plus Gaussian noise of `--sigma` x each
tensor's std, the regime of preference training), the score of every pair is estimated
`--repeats` times with fresh noise; the table gives Var(s_hat) averaged over the pairs.

    .venv/bin/python benchmarks/vrpo_variance.py --family llada --sigma 0.01 0.05
"""

from __future__ import annotations

import argparse
import copy

import torch

from dare.algorithms.dpo import pair_elbo_samples, sample_pair_plans
from dare.data.formatting import collate_preference
from dare.data.tasks import builtin_tokenizer, get_task
from dare.diffusion.elbo import ElboEstimator
from dare.models import tiny
from dare.models.tokenizer import model_token_ids


def perturbed(model: torch.nn.Module, sigma: float, seed: int) -> torch.nn.Module:
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            if p.numel() > 1:
                p.add_(sigma * p.std() * torch.randn(p.shape, generator=g))
    return out


@torch.no_grad()
def score_variance(policy, reference, batch, num_samples: int, shared: bool, repeats: int, pair_noise: str) -> float:
    """Var over `repeats` draws of the n_t-sample score, mean over the pairs."""
    est = ElboEstimator.for_spec(reference.diffusion_spec(), num_samples)
    B = batch["chosen_input_ids"].shape[0]
    scores = []
    for r in range(repeats):
        gens = [torch.Generator().manual_seed(10_000 * r + i) for i in range(B)]
        ref_plans = sample_pair_plans(est, batch, gens, pair_noise)
        plans = ref_plans if shared else sample_pair_plans(est, batch, gens, pair_noise)
        ref_w, ref_l = pair_elbo_samples(reference, batch, ref_plans)
        pol_w, pol_l = pair_elbo_samples(policy, batch, plans)
        scores.append(((pol_w - ref_w) - (pol_l - ref_l)).mean(-1))  # [B]
    return float(torch.stack(scores).var(0).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="llada", choices=["llada", "dream", "sdar"])
    ap.add_argument("--sigma", type=float, nargs="+", default=[0.01, 0.05])
    ap.add_argument("--num-samples", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=32)
    ap.add_argument("--pair-noise", default="independent", choices=["independent", "shared"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = builtin_tokenizer()
    rows = get_task("pref-sort").generate("train", args.pairs, seed=0)
    gen_length = 12 if args.family == "sdar" else 10
    b = collate_preference(rows, tok, gen_length=gen_length, truncate=True)
    batch = {k: v for k, v in b.items() if k.split("_", 1)[1] in ("input_ids", "attention_mask", "response_mask")}
    reference = tiny(args.family, seed=0, **model_token_ids(tok)).eval()
    print(f"{args.family}, pref-sort, {args.pairs} pairs x {args.repeats} draws, pair_noise={args.pair_noise}")
    print("| sigma | n_t | Var(s) VRPO (shared) | Var(s) independent | ratio |")
    print("|---|---|---|---|---|")
    for sigma in args.sigma:
        policy = perturbed(reference, sigma, seed=1)
        for k in args.num_samples:
            v = score_variance(policy, reference, batch, k, True, args.repeats, args.pair_noise)
            d = score_variance(policy, reference, batch, k, False, args.repeats, args.pair_noise)
            print(f"| {sigma} | {k} | {v:.3g} | {d:.3g} | {d / v:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
