"""JustGRPO: GRPO on a diffusion LM run as an autoregressive policy (Ni et al., "The Flexibility
Trap: Why Arbitrary Order Limits Reasoning Potential in Diffusion Language Models",
arXiv 2601.15165; code LeapLabTHU/JustGRPO).

During RL the dLLM decodes strictly left to right, one token per step, every later position still
[MASK]. Its policy is then an AR model with an exact, normalised likelihood:

    pi_theta(o_t | q, o_{<t}) = softmax(f_theta(q, o_{<t}, [MASK]^{L-t})_t / T)[o_t]   ([MASK] excluded)
    log pi_theta(o | q)       = sum_t log pi_theta(o_t | q, o_{<t})

and the objective is plain token-level GRPO with these exact log-probs (no ELBO, no mask noise):

    r_t = pi_theta(o_t | .) / pi_old(o_t | .)
    L   = agg_t [ -min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A) ] + beta KL

(unverified: the paper's equation numbers; the objective above is the README's "standard GRPO in
AR mode" and yjyddq/DARE `verl/workers/actor/llada_dp_actor_justgrpo.py`, whose
`build_justgrpo_ar_position_pack` builds, for response position t, the prompt + o_{<t} + MASK at t
and after, and scores o_t with logits / temperature.) The rollout must decode in the same order for
the ratio to be an importance ratio of the sampling policy: LLaDA / Dream with block_length 1 and
steps = gen_length, SDAR with remasking "sequential" and one token per step (`check_fit` asks for
nothing more; the recipe sets it). Inference may decode in parallel; the paper reports that the
parallel-decoding ability is kept.

Estimator `ar` (one view per completion position t: positions >= t masked, weight 1 at t); the
learner temperature is the rollout's (DARE divides the logits by it), and as in dare's samplers the
[MASK] token gets probability 0 (DARE's learner keeps it in the softmax; dare's rollout never
samples it, so excluding it makes the ratio exactly 1 against the sampler). On SDAR the block-attention
layout gives position t its block's clean prefix and the clean earlier blocks: the same AR
conditional. Cost: one view per response token, run `position_chunk` views per forward (DARE
`justgrpo_position_chunk_size`, default 1).

Shapes: B batch, K views (= completion positions), L length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from dare.algorithms.base import register_algorithm
from dare.algorithms.grpo import GRPO, GRPOArgs
from dare.diffusion.estimators import LogpEstimator, NoisePlan, register_estimator, rl_batch_masks, view_logp
from dare.errors import RecipeError
from dare.models.spec import DiffusionSpec, model_spec


class TemperedLogits(nn.Module):
    """`model` with the logits of dare's samplers: divided by `temperature`, the mask token at
    -inf (never a valid prediction; `dare.sampling.engine.process_logits`), so the learner's
    policy is exactly the distribution the rollout sampled from."""

    def __init__(self, model: nn.Module, temperature: float, mask_token_id: int) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.mask_token_id = mask_token_id

    def forward(self, *args: Any, **kwargs: Any) -> SimpleNamespace:
        logits = self.model(*args, **kwargs).logits / self.temperature  # [N, L, V]
        # the lowest finite logit rather than -inf: probability exactly 0 after softmax, and the
        # entropy's p * log p stays 0 * finite = 0 instead of NaN
        return SimpleNamespace(logits=logits.index_fill(-1, self._mask_index(logits), torch.finfo(logits.dtype).min))

    def _mask_index(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.mask_token_id], device=logits.device)


def ar_views(completion: torch.Tensor, response: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The AR states of every row: view k masks the completion from its k-th token on and scores
    that token.

    Args:
        completion: `[B, L]` bool, the generated region (contiguous, ending at L; left padding).
        response: `[B, L]` bool, the tokens that are scored.

    Returns:
        (view_masks `[B, K, L]` bool, weights `[B, K, L]` float32 with one 1 per view (0 when the
        token is not in `response`)), K = the completion length (equal across rows).
    """
    count = completion.sum(-1)  # [B]
    if bool((count != count[0]).any()):
        raise ValueError(f"ar_views needs equal completion lengths across rows (left padding), got {count.tolist()}")
    B, L = completion.shape
    K = int(count[0])
    start = L - K  # the completion is the last K columns
    col = torch.arange(L, device=completion.device)  # [L]
    k_col = start + torch.arange(K, device=completion.device)  # [K], the scored column of view k
    masks = (col[None, :] >= k_col[:, None])[None].expand(B, K, L) & completion[:, None, :]  # [B, K, L]
    at = (col[None, :] == k_col[:, None])[None] & response[:, None, :]  # [B, K, L]
    return masks, at.float()


@register_estimator
class AREstimator(LogpEstimator):
    """Exact AR-order log-probs: log pi(o_t | q, o_{<t}, masks) at every response token."""

    name = "ar"

    @dataclass(frozen=True)
    class Args:
        # the rollout's sampling temperature; the policy is softmax(logits / T)
        temperature: float = 1.0
        # views per forward (memory vs. speed); DARE default 1
        position_chunk: int = 8

    def sample(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> NoisePlan:
        """Deterministic (the generator is unused): the plan of `ar_views`, prompt clean."""
        m = rl_batch_masks(batch)
        masks, weights = ar_views(m.completion, m.response)
        B = masks.shape[0]
        return NoisePlan(torch.zeros_like(m.valid), masks, weights, torch.ones(B, device=masks.device))

    def _per_view(self, model, batch, plan, spec, entropy):
        """`view_logp` of the tempered model, `position_chunk` views per forward."""
        spec = spec or model_spec(model)
        tempered = TemperedLogits(model, self.args.temperature, spec.mask_token_id)
        outs = []
        for s in range(0, plan.num_views, self.args.position_chunk):
            part = NoisePlan(
                plan.prompt_mask,
                *(x[:, s : s + self.args.position_chunk] for x in (plan.view_masks, plan.weights)),
                plan.t,
            )
            outs.append(view_logp(tempered, batch, part, spec, entropy=entropy))
        if entropy:
            return torch.cat([o[0] for o in outs], 1), torch.cat([o[1] for o in outs], 1)  # [B, K, L] each
        return torch.cat(outs, 1)  # [B, K, L]

    def logp(
        self, model: nn.Module, batch: Mapping[str, torch.Tensor], plan: NoisePlan, spec: DiffusionSpec | None = None
    ) -> torch.Tensor:
        return (plan.weights * self._per_view(model, batch, plan, spec, False)).sum(1)  # [B, L]

    def logp_and_entropy(
        self, model: nn.Module, batch: Mapping[str, torch.Tensor], plan: NoisePlan, spec: DiffusionSpec | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        per_view, ent = self._per_view(model, batch, plan, spec, True)  # [B, K, L] each
        # one view scores each token, so the sums pick that view's value
        return (plan.weights * per_view).sum(1), (plan.weights * ent).sum(1)


@register_algorithm
class JustGRPO(GRPO):
    """GRPO with the exact AR-order log-probs of `AREstimator`; the loss is GRPO's."""

    name = "justgrpo"
    estimator_name = "ar"
    # the rollout's decoding order (RL contract 4/6), checked to be left to right in `prepare`
    required_batch_keys = (*GRPO.required_batch_keys, "decode_step")

    @dataclass
    class Args(GRPOArgs):
        clip_eps: float = 0.2
        # DARE's JustGRPO actor uses dual clip c = 3 (`clip_ratio_c`, verl's default)
        clip_ratio_c: float | None = 3.0
        advantage: str = "grpo"
        # the prompt stays clean (GRPOArgs field, unused)
        p_mask_prompt: float = 0.0
        # views (response positions) per forward
        position_chunk: int = 8

        def validate(self, key: str, file: Any) -> None:
            super().validate(key, file)
            if self.position_chunk < 1:
                raise RecipeError(file, f"{key}.position_chunk", f"must be >= 1, got {self.position_chunk}")
            if self.p_mask_prompt != 0:
                raise RecipeError(file, f"{key}.p_mask_prompt", "JustGRPO never masks the prompt; set 0")
            if float(self.sampling.get("temperature", 0.0)) <= 0:
                raise RecipeError(
                    file, f"{key}.sampling.temperature", "must be > 0: the AR policy is softmax(logits / T)"
                )

    @classmethod
    def check_recipe(cls, recipe: Any, stage: Any, key: str, file: Any) -> None:
        """The rollout must decode left to right, one token per step (the AR policy's order)."""
        super().check_recipe(recipe, stage, key, file)
        s = stage.args.sampling
        steps, gen = s.get("steps"), recipe.data.gen_length
        if steps not in (None, gen) or not (s.get("block_length") == 1 or s.get("remasking") == "sequential"):
            raise RecipeError(
                file,
                f"{key}.sampling",
                f"JustGRPO trains the AR policy, so the rollout must decode left to right one token per step: "
                f"steps = gen_length ({gen}) and block_length 1 (llada, dream) or remasking sequential (sdar); "
                f"got {s}",
            )

    def prepare(self, model, reference, batch):
        """GRPO's, after checking that the rollout decoded left to right (token k of the
        completion at decoding step k): otherwise the AR log-probs are not the sampling policy's
        and the ratio is not an importance ratio."""
        m = rl_batch_masks(batch)
        k = m.completion.long().cumsum(-1) - 1  # [B, L], completion position
        wrong = m.response & (batch["decode_step"].to(k.device) != k)
        if bool(wrong.any()):
            row = int(wrong.any(-1).nonzero()[0])
            raise ValueError(
                f"{self.name}: the rollout did not decode left to right one token per step (row {row}: decode_step "
                f"{batch['decode_step'][row][m.response[row]].tolist()}); sample with block_length 1 / "
                "remasking sequential and steps = gen_length"
            )
        return super().prepare(model, reference, batch)

    def estimator_args(self) -> dict[str, Any]:
        return {"temperature": float(self.args.sampling["temperature"]), "position_chunk": self.args.position_chunk}


__all__ = ["AREstimator", "JustGRPO", "TemperedLogits", "ar_views"]
