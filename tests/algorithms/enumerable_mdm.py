"""A masked diffusion "model" small enough to enumerate: a random table of per-position
predictive distributions p(x^i | z) for every partially masked sequence z of length n over a
vocabulary of V tokens (MASK = V). Its exact likelihood is that of the model's own generative
process, any-order decoding one token at a time in a uniformly random order (the continuous-time
reverse process of a masked diffusion model, first-hitting form):

    p(x) = (1/n!) sum_sigma prod_k p(x^sigma(k) | x with sigma(>=k) masked)

Used by the SPG / ESPO tests to check bounds and estimators against exact values."""

from __future__ import annotations

import itertools
import math

import torch


class TableMDM:
    def __init__(self, n: int, V: int, seed: int, scale: float = 2.0) -> None:
        self.n, self.V, self.mask = n, V, V
        g = torch.Generator().manual_seed(seed)
        states = (V + 1) ** n
        self.logits = scale * torch.randn(states, n, V, generator=g, dtype=torch.float64)  # [S, n, V]

    def _index(self, z: torch.Tensor) -> torch.Tensor:  # [N, n] -> [N]
        base = (self.V + 1) ** torch.arange(self.n)
        return (z * base).sum(-1)

    def log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """log p(. | z) at every position, `[N, n]` -> `[N, n, V]` float64."""
        return torch.log_softmax(self.logits[self._index(z)], dim=-1)

    def token_logp(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """log p(x^i | x with `masks` masked) for every view and position: x `[n]`,
        masks `[K, n]` bool -> `[K, n]`."""
        z = torch.where(masks, self.mask, x[None])  # [K, n]
        return self.log_probs(z).gather(-1, x[None, :, None].expand(masks.shape[0], -1, 1)).squeeze(-1)

    def exact_logp(self, x: torch.Tensor) -> float:
        """log p(x) by enumerating every decoding order."""
        terms = []
        for order in itertools.permutations(range(self.n)):
            masked = torch.ones(self.n, dtype=torch.bool)
            total = 0.0
            for i in order:
                total += float(self.token_logp(x, masked[None])[0, i])
                masked[i] = False
            terms.append(total)
        return float(torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0)) - math.log(math.factorial(self.n))

    def sequences(self) -> torch.Tensor:
        """Every sequence, `[V^n, n]`."""
        return torch.tensor(list(itertools.product(range(self.V), repeat=self.n)))

    def all_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every non-empty mask with its probability under the ELBO's forward process (mask
        count l ~ U{1..n}, then a uniform subset of size l): `[2^n - 1, n]` bool, `[2^n - 1]`."""
        masks = torch.tensor(list(itertools.product([False, True], repeat=self.n)))[1:]  # [M, n]
        counts = masks.sum(-1)
        probs = torch.tensor([1.0 / self.n / math.comb(self.n, int(k)) for k in counts], dtype=torch.float64)
        return masks, probs
