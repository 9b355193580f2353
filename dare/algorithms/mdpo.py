"""MDPO: Masked Diffusion Policy Optimization, every denoising step an action with its own reward.

Paper: "MDPO: Overcoming the Training-Inference Divide of Masked Diffusion Language Models"
(He et al.), arXiv 2508.13148; official code autonomousvision/mdpo @e6ae439
(`src/open_r1/mdpo/mdpo_trainer.py`: `_generate_and_score_completions`, `split_into_micro_batches`,
`compute_loss`; `recipes/LLaDA-Instruct/mdpo/config_demo.yaml`). Equation numbers of the paper are
unverified here (its text was not available); the math below is the official code's, also read
in the third-party yjyddq/DARE `verl/trainer/ppo/mdpo_algos.py`.

**Per-step rewards.** The rollout keeps, at each denoising step t, the state x_t (response with
masks) and the model's full prediction x0_t of every masked token (with its confidence c_t);
the reward r_t scores the text of x0_t. The step advantage (`mdpo_step_advantages`) is the
reward change plus one plus the mean future reward, z-scored per step over the prompt's group:

    a_t = (r_t - r_{t-1}) + 1 + mean_{s > t} r_s        (r_{-1} = 0; the last step's mean is r_T)
    A_t = (a_t - mean_g a_t) / (std_g a_t + 1e-4)        (unbiased std over the G generations)

so a step is credited for what it changed: A_t depends only on r_{t-1} and the rewards after it.
Training uses the `sample_train_steps` steps with the largest sum over the batch of |A_t|
(`select_train_steps`; 16 of 128 in the official recipe).

**Loss** of one step t (`mdpo_step_loss`), over the tokens masked in x_t, with the log-prob of
the step's own prediction x0_t under logits / temperature and lambda_t = L / #masked(x_t):

    l_i = -min(r_i A_t, clip(r_i, 1 - eps, 1 + eps) A_t) lambda_t + beta (ref_i - logp_i)^2 / 2
    L_t = sum_i l_i c_{t,i} 1[i masked] / (sum_i 1[i masked] + 1e-4)

(the confidence c_{t,i} of the prediction weights its token; eps 0.2, beta 0, temperature 0.1,
lr 1e-5, 4 generations: config_demo.yaml). Dream's one-position loss shift in the official code is
the logits alignment dare's `aligned_logits` already applies.

Wiring (the registered `mdpo` algorithm, kind "rl"): it declares `records_steps`, so the RL
trainer has the rollout record every step (`sampling.record_steps`: `step_state`,
`step_prediction`, `step_confidence` `[B, S, L]`, S = sampling.steps counted over all blocks, the
recorded steps first in decoding order and the rest padded with the final response;
`dare.sampling.engine.StepRecorder`) and scores every step's x0-prediction text with the stage's
rewards (`step_rewards` `[B, S]`); `group_tensors` computes the step advantages and the selected
steps on the driver (they need whole groups and the whole batch); the loss is the mean over the
selected steps of `mdpo_step_loss`, each step backpropagated on its own (one step's activations
alive at a time).

Families: LLaDA, Dream (full attention) and SDAR (block attention). A step predicts only the
block it decodes: its x0-prediction fills that block's masks and leaves a later block's masks as
they are (no prediction, no confidence), so the loss counts the positions masked in x_t and filled
in x0_t, and a step's reward scores the text up to its block. The replay (`mdpo_step_log_prob`) is
the attention kind's view forward of the state, the logits the sampler drew that step from.

Shapes: B rows, S recorded steps, L response length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dare.algorithms.base import Algorithm, Backward, register_algorithm
from dare.algorithms.cj_grpo import response_start
from dare.algorithms.rollout import RolloutSpec
from dare.diffusion.estimators import VIEW_FORWARDS, ViewInputs
from dare.diffusion.rl_losses import masked_mean
from dare.diffusion.trajectory import tempered_log_probs
from dare.errors import check_fields
from dare.models.spec import DiffusionSpec, ReferenceFn


def raw_step_advantages(step_rewards: torch.Tensor) -> torch.Tensor:
    """a_t = (r_t - r_{t-1}) + 1 + mean_{s > t} r_s (r_{-1} = 0; the last step adds r_T itself).
    `[B, S]` -> `[B, S]`."""
    r = step_rewards.float()
    B, S = r.shape
    diff = torch.cat([r[:, :1], r[:, 1:] - r[:, :-1]], -1) + 1.0  # [B, S]
    count = torch.arange(S - 1, 0, -1, device=r.device, dtype=r.dtype)  # future steps after t < S-1
    future = r[:, 1:].flip(-1).cumsum(-1).flip(-1) / count  # [B, S-1] mean of r_{t+1..}
    return diff + torch.cat([future, r[:, -1:]], -1)


def mdpo_step_advantages(
    step_rewards: torch.Tensor, uid: Sequence[Any] | np.ndarray | torch.Tensor, eps: float = 1e-4
) -> torch.Tensor:
    """MDPO's step advantages: `raw_step_advantages` z-scored per step over each prompt group
    (unbiased std + eps, as the official trainer; a group of one gets 0). `[B, S]` -> `[B, S]`.

    Args:
        step_rewards: `[B, S]` reward of each row's step-t prediction.
        uid: `[B]` group ids (rows answering the same prompt).
    """
    a = raw_step_advantages(step_rewards)  # [B, S]
    ids = uid.tolist() if isinstance(uid, torch.Tensor) else list(uid)
    _, inverse = np.unique(np.asarray(ids, dtype=str), return_inverse=True)
    g = torch.as_tensor(inverse.reshape(-1), device=a.device)  # [B]
    n = int(g.max()) + 1
    count = torch.zeros(n, device=a.device).index_add(0, g, torch.ones_like(a[:, 0]))[:, None]  # [G, 1]
    mean = torch.zeros(n, a.shape[1], device=a.device).index_add(0, g, a) / count  # [G, S]
    var = torch.zeros_like(mean).index_add(0, g, (a - mean[g]) ** 2) / (count - 1).clamp(min=1)
    adv = (a - mean[g]) / (var.sqrt()[g] + eps)
    return torch.where(count[g] > 1, adv, 0.0)


def select_train_steps(advantages: torch.Tensor, k: int) -> torch.Tensor:
    """The k steps with the largest sum over the batch of |A_t| (all when k >= S), largest
    first as the official trainer iterates them. `[B, S]` -> `[k]` long."""
    importance = advantages.abs().sum(0)  # [S]
    return importance.topk(min(k, importance.numel())).indices


def mdpo_step_log_prob(
    model: torch.nn.Module,
    spec: DiffusionSpec,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    state: torch.Tensor,
    prediction: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """log p_theta(x0_t | x_t) per response token at logits / temperature: prompt `[B, P]`,
    state and prediction `[B, L]` -> `[B, L]` (the official trainer scores every position; the
    loss keeps the ones the step predicted).

    The state goes through its attention kind's view forward (`VIEW_FORWARDS`) with the state
    itself as the context: full attention reads the state as it is; block attention (SDAR) gives a
    token of block k the prompt, the state's blocks before k and its own block's state, which is
    the sampler's forward of that step (SDAR never changes a committed block, and a decoding block
    of several model blocks sees its earlier ones as they stand in the state)."""
    x = torch.cat([prompt_ids, state], 1)  # [B, P+L]
    valid = torch.cat([prompt_mask.bool(), torch.ones_like(state, dtype=torch.bool)], 1)
    views = ViewInputs(x, x, valid, prompt_mask.long().sum(-1))
    logits = VIEW_FORWARDS.get(spec.attention)(model, views, spec)[:, prompt_ids.shape[1] :]  # [B, L, V]
    lp = tempered_log_probs(logits, spec, temperature)  # [B, L, V]
    return lp.gather(-1, prediction[..., None])[..., 0]


def mdpo_step_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    masked: torch.Tensor,
    confidence: torch.Tensor,
    gen_length: int,
    clip_eps: float = 0.2,
    beta: float = 0.0,
    ref_log_prob: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one denoising step (module docstring).

    Args:
        old_log_prob, log_prob: `[B, L]` log-probs of the step's predictions (old / current).
        advantages: `[B]` or `[B, 1]` the step's advantage A_t per row.
        masked: `[B, L]` bool, the positions masked in the step's state x_t.
        confidence: `[B, L]` the recorded confidence of each prediction.
        gen_length: L, the completion length of lambda_t = L / #masked.
        beta, ref_log_prob: weight of the squared log-ratio to the reference (official k2).

    Returns:
        (scalar loss, metrics `actor/pg_loss`, `actor/pg_clipfrac`, `actor/lambda_t_mean`).
    """
    if beta > 0 and ref_log_prob is None:
        raise ValueError(f"beta={beta} > 0 needs ref_log_prob")
    m = masked.to(log_prob.dtype)
    adv = advantages.reshape(-1, 1).to(log_prob.dtype)  # [B, 1]
    lam = gen_length / (m.sum(-1, keepdim=True) + 1e-4)  # [B, 1]
    ratio = torch.exp(log_prob - old_log_prob)  # [B, L]
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps)
    per_token = -torch.minimum(ratio * adv, clipped * adv) * lam  # [B, L]
    if beta > 0:
        per_token = per_token + beta * (ref_log_prob - log_prob) ** 2 / 2
    loss = (per_token * m * confidence.to(log_prob.dtype)).sum() / (m.sum() + 1e-4)
    metrics = {
        "actor/pg_loss": loss.detach().item(),
        "actor/pg_clipfrac": masked_mean((clipped * adv < ratio * adv).float(), masked).item(),
        "actor/lambda_t_mean": float(lam.mean()),
    }
    return loss, metrics


@dataclass
class MDPOArgs(RolloutSpec):
    # official recipes/LLaDA-Instruct/mdpo/config_demo.yaml: 4 generations, temperature 0.1
    num_generations: int = 4
    sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.1})
    # the steps trained per rollout: the k with the largest sum over the batch of |A_t|
    sample_train_steps: int = 16
    clip_eps: float = 0.2
    # weight of the squared log-ratio to the reference (official k2); 0 = no reference forward
    beta: float = 0.0

    def validate(self, key: str, file: Any) -> None:
        super().validate(key, file)
        checks = {
            "sample_train_steps": (self.sample_train_steps >= 1, ">= 1"),
            "clip_eps": (0 < self.clip_eps < 1, "in (0, 1)"),
            "beta": (self.beta >= 0, ">= 0"),
        }
        check_fields(self, checks, key, file)


def _rows(batch: dict[str, torch.Tensor], key: str, j: int) -> torch.Tensor:
    """Each row's record of its j-th selected step: `batch[key]` `[B, S, ...]` -> `[B, ...]`."""
    t = batch["train_steps"][:, j]  # [B]
    return batch[key][torch.arange(t.shape[0], device=t.device), t]


@register_algorithm
class MDPO(Algorithm):
    name = "mdpo"
    kind = "rl"
    records_steps = True
    backward_per_sample = True  # one selected step's graph alive at a time
    required_batch_keys = (
        "input_ids", "attention_mask", "response_mask", "step_state", "step_prediction", "step_confidence",
        "step_advantages", "train_steps",
    )  # fmt: skip
    Args = MDPOArgs

    @property
    def updates_per_step(self) -> int:
        return self.args.mu

    @property
    def needs_reference(self) -> bool:
        return self.args.beta > 0

    @property
    def temperature(self) -> float:
        """The rollout's sampling temperature, at which the official trainer scores its predictions."""
        return float(self.args.sampling.get("temperature", 0.0))

    @classmethod
    def group_tensors(
        cls, args: MDPOArgs, batch: dict[str, torch.Tensor], uid: Any
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The step advantages `[B, S]` (z-scored over each group) and the steps to train `[B, k]`
        (the same k for every row: chosen over the whole batch, as the official trainer does)."""
        rewards = batch["step_rewards"]  # [B, S]
        adv = mdpo_step_advantages(rewards, uid)
        steps = select_train_steps(adv, args.sample_train_steps)  # [k]
        metrics = {
            "mdpo/step_reward_first": float(rewards[:, 0].mean()),
            "mdpo/step_reward_last": float(rewards[:, -1].mean()),
            "mdpo/train_step_mean": float(steps.float().mean()),
        }
        return {"step_advantages": adv, "train_steps": steps[None].expand(rewards.shape[0], -1).clone()}, metrics

    def step_log_prob(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], j: int) -> torch.Tensor:
        """log p(x0_t | x_t) `[B, L]` of each row's j-th selected step."""
        P = response_start(batch["response_mask"])
        ids, mask = batch["input_ids"][:, :P], batch["attention_mask"][:, :P]
        state, pred = _rows(batch, "step_state", j), _rows(batch, "step_prediction", j)
        return mdpo_step_log_prob(model, self.spec, ids, mask, state, pred, self.temperature)

    def prepare(
        self, model: torch.nn.Module, reference: ReferenceFn | None, batch: dict[str, torch.Tensor]
    ) -> list[dict[str, torch.Tensor]]:
        """mu updates on the same steps; the old (mu > 1) and reference log-probs `[B, k, L]` first."""
        k = batch["train_steps"].shape[1]

        def log_prob(m: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
            return torch.stack([self.step_log_prob(m, b, j) for j in range(k)], 1)  # [B, k, L]

        return self.replayed_updates(model, reference, batch, log_prob)

    def step_loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], j: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """`mdpo_step_loss` of the j-th selected step; masked = positions masked in the state that the
        step predicted (a later block's masks have no prediction)."""
        lp = self.step_log_prob(model, batch, j)  # [B, L]
        state, pred = _rows(batch, "step_state", j), _rows(batch, "step_prediction", j)
        mask_id = self.spec.mask_token_id
        masked = (state == mask_id) & (pred != mask_id)
        old = batch["old_log_prob"][:, j] if "old_log_prob" in batch else lp.detach()
        ref = batch["ref_log_prob"][:, j] if "ref_log_prob" in batch else None
        return mdpo_step_loss(
            old, lp, _rows(batch, "step_advantages", j), masked, _rows(batch, "step_confidence", j),
            gen_length=state.shape[1], clip_eps=self.args.clip_eps, beta=self.args.beta, ref_log_prob=ref,
        )  # fmt: skip

    def compute_loss(self, model, batch):
        """The mean over the selected steps of their step losses (the official trainer's step
        micro-batches under gradient accumulation)."""
        k = batch["train_steps"].shape[1]
        total, sums = 0.0, {}
        for j in range(k):
            loss, metrics = self.step_loss(model, batch, j)
            total = total + loss / k
            for name, v in metrics.items():
                sums[name] = sums.get(name, 0.0) + v / k
        return total, sums

    def loss_backward(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], backward: Backward
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """`compute_loss` with each step's loss backpropagated as soon as it is computed."""
        k = batch["train_steps"].shape[1]
        total, sums = 0.0, {}
        for j in range(k):
            loss, metrics = self.step_loss(model, batch, j)
            backward(loss / k, 1.0 / k)
            total = total + loss.detach() / k
            for name, v in metrics.items():
                sums[name] = sums.get(name, 0.0) + v / k
        return torch.as_tensor(total), sums


__all__ = [
    "MDPO",
    "MDPOArgs",
    "mdpo_step_advantages",
    "mdpo_step_log_prob",
    "mdpo_step_loss",
    "raw_step_advantages",
    "select_train_steps",
]
