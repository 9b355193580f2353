"""Log-likelihood of a continuation under a masked diffusion LM, for multiple-choice benchmarks.

A diffusion LM has no left-to-right factorisation, so log p(continuation | context) is replaced
by its ELBO (LLaDA, arXiv 2502.09992, Eq. 6 and `get_log_likelihood.py` in ML-GSAI/LLaDA; the
stratified Monte-Carlo estimate of LLaDA 1.5 / VRPO, arXiv 2505.19223):

    B(y | x) = E_l E_{M, |M|=l} [ (n / l) sum_{i in M} log p(y_i | x, y with M masked) ]

computed by `dare.diffusion.elbo.sequence_elbo` with `num_samples` stratified mask counts. For a
one-token continuation (a letter answer) the bound is exact: l = n = 1, no Monte-Carlo noise.

Batch layout (B rows, one (context, continuation) pair each):

    [pad ... pad | context ids | continuation ids | pad ... pad]
    attention:  0 ... 0 | 1 ...                          1 | 0 ... 0
    response:   False ...                | True ...   True | False ...

The context is left-padded (as in generation) and the continuation right-padded, so every
continuation starts at the same column.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dare.diffusion.elbo import sequence_elbo


def continuation_batch(
    contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """`input_ids` / `attention_mask` / `response_mask`, each `[B, P + C]`, in the layout above."""
    if len(contexts) != len(continuations) or not contexts:
        raise ValueError(f"need as many contexts as continuations (>= 1), got {len(contexts)} and {len(continuations)}")
    for i, c in enumerate(continuations):
        if not c:
            raise ValueError(f"continuation {i} is empty: nothing to score")
    P = max(len(c) for c in contexts)
    C = max(len(c) for c in continuations)
    B = len(contexts)
    ids = torch.full((B, P + C), pad_id, dtype=torch.long)
    attention = torch.zeros((B, P + C), dtype=torch.long)
    response = torch.zeros((B, P + C), dtype=torch.bool)
    for b, (ctx, cont) in enumerate(zip(contexts, continuations)):
        if ctx:
            ids[b, P - len(ctx) : P] = torch.tensor(list(ctx), dtype=torch.long)
            attention[b, P - len(ctx) : P] = 1
        ids[b, P : P + len(cont)] = torch.tensor(list(cont), dtype=torch.long)
        attention[b, P : P + len(cont)] = 1
        response[b, P : P + len(cont)] = True
    return {"input_ids": ids, "attention_mask": attention, "response_mask": response}


@torch.no_grad()
def continuation_elbo(
    model: nn.Module,
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    pad_id: int,
    num_samples: int,
    generator: torch.Generator,
    batch_size: int = 64,
) -> torch.Tensor:
    """ELBO of each continuation given its context, `[B]` float32 (a lower bound on the log-likelihood,
    summed over the continuation's tokens). Rows are scored `batch_size` at a time."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(contexts), batch_size):
        batch = continuation_batch(
            contexts[start : start + batch_size], continuations[start : start + batch_size], pad_id
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        out.append(sequence_elbo(model, batch, num_samples, generator).float().cpu())
    return torch.cat(out)


__all__ = ["continuation_batch", "continuation_elbo"]
