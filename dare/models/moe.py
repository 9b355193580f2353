"""Mixture-of-experts pieces the MoE families (`llada2_moe`, `sdar_moe`) share, written once.

- **Routers** (`ROUTERS`, by name): a router is the released `mlp.gate` (`weight` `[E, d]`, an
  `nn.Linear` without bias) that scores N tokens over E experts and picks k per token:
  `softmax_topk` (Qwen3-MoE / SDAR-MoE: softmax over all experts, top-k, optionally renormalised)
  and `sigmoid_group_topk` (Bailing / LLaDA2: sigmoid scores, a persistent `expert_bias` buffer
  added for selection only, group-limited top-k, weights = the unbiased scores renormalised and
  scaled by `routed_scaling_factor`).
- **Experts** (`SwiGLUExperts`): `experts.{e}.{gate,up,down}_proj`, as both releases name them,
  and a deterministic dispatch: token-slots are grouped by expert with a stable sort, experts run
  in index order, and their weighted outputs are summed in fp32. Top-k ties go to the lower expert
  index (`stable_topk`), so routing is a function of the input alone.
- **The block** (`SparseMoeBlock`): gate -> experts (+ `shared_experts`, unweighted, where the
  family has them). It returns its `Routing`; the decoder layer hands it to the forward call's
  `AttentionContext.routing` (`feed_forward`), and the LM turns the records of all layers into
  `output.aux_loss` (load balancing), `output.z_loss` and `output.router_stats` (`MoEOutputs`):
  one channel every objective can read.

Shapes: N tokens (batch x query flattened), d hidden size, E experts, k experts per token, L MoE layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from dare.models.layers import AttentionContext
from dare.models.modeling import DiffusionModelOutput
from dare.models.qwen_layers import QwenMLP
from dare.registry import Registry


@dataclass
class Routing:
    """One MoE layer's routing of N tokens."""

    logits: torch.Tensor  # [N, E] router logits
    probs: torch.Tensor  # [N, E] router probabilities (rows sum to 1), what the aux loss reads
    topk_idx: torch.Tensor  # [N, k] chosen experts (expert choice: [N, 0], see below)
    topk_weight: torch.Tensor  # [N, k] fp32 combine weights
    # expert choice (EC-DLM): each expert's C chosen tokens `[E, C]` and their fp32 weights `[E, C]`
    expert_tokens: torch.Tensor | None = None
    expert_weight: torch.Tensor | None = None

    def expert_counts(self) -> torch.Tensor:
        """Token-slots per expert `[E]` (float)."""
        num_experts = self.probs.shape[-1]
        if self.expert_tokens is not None:
            return torch.full((num_experts,), float(self.expert_tokens.shape[1]), device=self.probs.device)
        if self.topk_idx.is_meta:  # no values (the dry-run memory plan's trace): a balanced load
            return torch.full((num_experts,), self.topk_idx.numel() / num_experts, device=self.probs.device)
        return torch.bincount(self.topk_idx.reshape(-1), minlength=num_experts).float()


def stable_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k along the last dim with ties broken towards the lower index (torch.topk leaves tie
    order to the kernel). Returns values and indices, best first."""
    values, idx = torch.sort(scores, dim=-1, descending=True, stable=True)
    return values[..., :k], idx[..., :k]


class Router(nn.Linear):
    """Base router: `weight` `[E, d]` is the released `mlp.gate.weight`. Subclasses implement
    `forward(x [N, d]) -> Routing`. `fp32`: logits in fp32 whatever the model dtype (LLaDA2's
    `router_dtype`); otherwise in the input dtype (Qwen3-MoE's gate Linear)."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, *, fp32: bool) -> None:
        super().__init__(hidden_size, num_experts, bias=False)
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"router: num_experts_per_tok={top_k} must be in [1, num_experts={num_experts}]")
        self.top_k, self.fp32 = top_k, fp32

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.float32 if self.fp32 else x.dtype
        return F.linear(x.to(dtype), self.weight.to(dtype))  # [N, E]

    def forward(self, x: torch.Tensor) -> Routing:
        raise NotImplementedError


ROUTERS: Registry[type[Router]] = Registry("MoE router")


@ROUTERS.register("softmax_topk")
class SoftmaxTopKRouter(Router):
    """Qwen3-MoE: softmax (fp32) over all experts, top-k, renormalised when `norm_topk_prob`."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, *, norm_topk_prob: bool, fp32: bool = False):
        super().__init__(hidden_size, num_experts, top_k, fp32=fp32)
        self.norm_topk_prob = norm_topk_prob

    def forward(self, x: torch.Tensor) -> Routing:
        logits = self.router_logits(x)
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)
        weight, idx = stable_topk(probs, self.top_k)
        if self.norm_topk_prob:
            weight = weight / weight.sum(-1, keepdim=True)
        return Routing(logits, probs, idx, weight)


@ROUTERS.register("sigmoid_group_topk")
class GroupLimitedSigmoidRouter(Router):
    """Bailing / LLaDA2 (DeepSeek-V3 style): s = sigmoid(logits) in fp32; experts are chosen on
    s + expert_bias within the `topk_group` best of `n_group` groups (group score = sum of its two
    best biased scores); the weights are the chosen unbiased s, renormalised (k > 1) and scaled by
    `routed_scaling_factor`. The aux loss reads s normalised over experts."""

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        *,
        n_group: int,
        topk_group: int,
        routed_scaling_factor: float,
        fp32: bool = True,
    ) -> None:
        super().__init__(hidden_size, num_experts, top_k, fp32=fp32)
        if num_experts % n_group or num_experts // n_group < 2 or not 1 <= topk_group <= n_group:
            raise ValueError(
                f"router: num_experts={num_experts} must split into n_group={n_group} groups of >= 2 experts, "
                f"and topk_group={topk_group} must be in [1, n_group]"
            )
        if top_k > topk_group * (num_experts // n_group):
            raise ValueError(
                f"router: num_experts_per_tok={top_k} exceeds the experts of topk_group={topk_group} groups"
            )
        self.n_group, self.topk_group, self.scale = n_group, topk_group, routed_scaling_factor
        # load balancing without a loss: a per-expert bias on the selection scores (persistent,
        # in the released state dict as `gate.expert_bias`)
        self.register_buffer("expert_bias", torch.zeros(num_experts))

    def forward(self, x: torch.Tensor) -> Routing:
        logits = self.router_logits(x).float()
        scores = torch.sigmoid(logits)  # [N, E]
        select = scores + self.expert_bias
        n = select.shape[0]
        group_scores = select.view(n, self.n_group, -1).topk(2, dim=-1).values.sum(-1)  # [N, G]
        _, groups = stable_topk(group_scores, self.topk_group)
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, groups, True)
        keep = keep.repeat_interleave(select.shape[1] // self.n_group, dim=1)  # [N, E]
        _, idx = stable_topk(select.masked_fill(~keep, float("-inf")), self.top_k)
        weight = scores.gather(1, idx)
        if self.top_k > 1:
            weight = weight / (weight.sum(-1, keepdim=True) + 1e-20)
        probs = scores / scores.sum(-1, keepdim=True)
        return Routing(logits, probs, idx, weight * self.scale)


@ROUTERS.register("expert_choice")
class ExpertChoiceRouter(Router):
    """Expert-choice routing (Zhou et al. 2022; EC-DLM for diffusion LMs, where every position of
    a sequence is denoised in parallel, so tokens can compete for experts): s = softmax(logits)
    over experts (fp32); each expert takes its C = ceil(N k / E) highest-scoring tokens of the
    forward call (ties to the lower token index), weighted by s. Same expert compute as top-k token
    choice, perfectly balanced; a token may get 0 to E experts. A training-time option
    (`moe_routing: expert_choice` in the config; no release is trained with it)."""

    def forward(self, x: torch.Tensor) -> Routing:
        logits = self.router_logits(x).float()
        probs = F.softmax(logits, dim=-1)
        n, num_experts = probs.shape
        capacity = min(n, -(-n * self.top_k // num_experts))
        weight, tokens = stable_topk(probs.t(), capacity)  # [E, C]
        empty = torch.zeros(n, 0, dtype=torch.long, device=x.device)
        return Routing(logits, probs, empty, empty.float(), expert_tokens=tokens, expert_weight=weight)


MOE_ROUTING = ("token_choice", "expert_choice")


def check_moe_routing(config: Any) -> None:
    if getattr(config, "moe_routing", "token_choice") not in MOE_ROUTING:
        raise ValueError(
            f"{type(config).__name__}: moe_routing must be one of {MOE_ROUTING}, got {config.moe_routing!r}"
        )


def family_router(config: Any, token_choice: Router) -> Router:
    """The family's released router, or the expert-choice one when `config.moe_routing` asks."""
    if getattr(config, "moe_routing", "token_choice") == "expert_choice":
        return ExpertChoiceRouter(config.hidden_size, config.num_experts, config.num_experts_per_tok, fp32=True)
    return token_choice


def expert_counts(flat: torch.Tensor, num_experts: int) -> list[int]:
    """Token-slots per expert (one host sync per layer). Meta tensors carry no values (the dry-run
    memory plan traces a model on the meta device): there the load is taken as balanced."""
    if flat.is_meta:
        base, extra = divmod(flat.numel(), num_experts)
        return [base + (e < extra) for e in range(num_experts)]
    return torch.bincount(flat, minlength=num_experts).tolist()


class SwiGLUExperts(nn.ModuleList):
    """E SwiGLU experts (`{e}.gate_proj` / `up_proj` / `down_proj`) and the dispatch."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__(QwenMLP(hidden_size, intermediate_size) for _ in range(num_experts))

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """`x` `[N, d]` -> `sum_j w[n, j] * expert_{idx[n, j]}(x[n])` `[N, d]` in fp32."""
        if routing.expert_tokens is not None:
            return self.expert_choice(x, routing)
        n, k = routing.topk_idx.shape
        flat = routing.topk_idx.reshape(-1)  # [N*k]
        order = torch.argsort(flat, stable=True)  # token-slots grouped by expert, tokens ascending
        counts = expert_counts(flat, len(self))
        tokens, weights = order // k, routing.topk_weight.reshape(-1)[order].float()
        out = torch.zeros(n, x.shape[-1], dtype=torch.float32, device=x.device)
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue
            rows = tokens[start : start + count]
            # each token appears once per expert, so index_add_ adds one value per row (deterministic)
            out.index_add_(0, rows, self[e](x[rows]).float() * weights[start : start + count, None])
            start += count
        return out

    def expert_choice(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Expert e adds `w[e, c] * expert_e(x[tokens[e, c]])` to each of its C tokens (fp32)."""
        out = torch.zeros(x.shape[0], x.shape[-1], dtype=torch.float32, device=x.device)
        for e, (rows, w) in enumerate(zip(routing.expert_tokens, routing.expert_weight)):
            out.index_add_(0, rows, self[e](x[rows]).float() * w[:, None])  # rows are distinct
        return out


class SparseMoeBlock(nn.Module):
    """`gate` (a `Router`) -> `experts` (+ `shared_experts`, a SwiGLU added unweighted)."""

    def __init__(self, router: Router, experts: SwiGLUExperts, shared_experts: nn.Module | None = None) -> None:
        super().__init__()
        self.gate = router
        self.experts = experts
        if shared_experts is not None:
            self.shared_experts = shared_experts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        """`[B, Q, d]` -> (`[B, Q, d]`, the layer's `Routing` of its B*Q tokens)."""
        flat = x.reshape(-1, x.shape[-1])
        routing = self.gate(flat)
        y = self.experts(flat, routing).to(x.dtype).view_as(x)
        if hasattr(self, "shared_experts"):
            y = y + self.shared_experts(x)
        return y, routing


def feed_forward(mlp: nn.Module, h: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
    """A decoder layer's feed-forward: an MoE block reports its routing to the forward call."""
    if isinstance(mlp, SparseMoeBlock):
        y, routing = mlp(h)
        ctx.routing.append(routing)
        return y
    return mlp(h)


def load_balancing_loss(routings: tuple[Routing, ...] | list[Routing]) -> torch.Tensor:
    """Switch-Transformer load-balancing loss over all MoE layers' tokens (as Qwen3-MoE's
    `load_balancing_loss_func`: the layers' tokens concatenated): `E * sum_e f_e * P_e`, with
    `f_e` the fraction of tokens that chose expert e (summed over the k slots) and `P_e` the mean
    router probability of e. A uniform router gives k (k experts per token)."""
    probs = torch.cat([r.probs for r in routings])  # [L*N, E]
    num_experts = probs.shape[-1]
    if any(r.expert_tokens is not None for r in routings):  # expert choice: slots per expert / tokens
        f = torch.stack([r.expert_counts() for r in routings]).sum(0) / probs.shape[0]
    else:
        chosen = torch.cat([r.topk_idx for r in routings])  # [L*N, k]
        f = F.one_hot(chosen, num_experts).float().sum(1).mean(0)  # [E]
    return num_experts * (f * probs.float().mean(0)).sum()


def router_z_loss(routings: tuple[Routing, ...] | list[Routing]) -> torch.Tensor:
    """ST-MoE router z-loss: mean over all layers' tokens of logsumexp(logits)^2. Neither released
    MoE family trains with it; it is reported so a recipe can weight it."""
    logits = torch.cat([r.logits.float() for r in routings])
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


def router_stats(routings: tuple[Routing, ...] | list[Routing]) -> dict[str, torch.Tensor]:
    """Detached statistics: `expert_load` `[L, E]` (each layer's share of token-slots per expert,
    rows sum to 1) and `max_load` `[L]` (the busiest expert's share times E: 1 = balanced).
    No capacity limit, so no token is ever dropped."""
    load = torch.stack([r.expert_counts() for r in routings])
    load = load / load.sum(-1, keepdim=True)
    return {"expert_load": load, "max_load": load.amax(-1) * load.shape[-1]}


@dataclass
class MoELMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus what the MoE layers report (None without MoE layers):
    `aux_loss` (load balancing, unweighted), `z_loss`, `router_stats` (see `router_stats`)."""

    aux_loss: torch.Tensor | None = None
    z_loss: torch.Tensor | None = None
    router_stats: dict | None = None


class MoEOutputs:
    """Mixin for an MoE family's LM (before `DiffusionLM` in the bases): its forward returns
    `MoELMOutput` with the routing of this call turned into losses and statistics."""

    def lm_output(self, out: DiffusionModelOutput, logits: torch.Tensor) -> MoELMOutput:
        routing = out.routing or ()
        output = MoELMOutput(
            logits=logits, past_key_values=out.past_key_values, hidden_states=out.hidden_states,
            aux_loss=load_balancing_loss(routing) if routing else None,
            z_loss=router_z_loss(routing) if routing else None,
            router_stats=router_stats(routing) if routing else None,
        )  # fmt: skip
        if routing and _COLLECTORS and torch.is_grad_enabled():
            _COLLECTORS[-1].add(output)
        return output


# --------------------------------------------------------------------------- the training channel


@dataclass
class RouterLosses:
    """What the MoE forwards made with gradients inside `collect_router_losses` reported, one
    entry per forward call (an objective may run several: ELBO samples, chosen / rejected)."""

    aux: list[torch.Tensor] = field(default_factory=list)
    z: list[torch.Tensor] = field(default_factory=list)
    load: list[torch.Tensor] = field(default_factory=list)  # [L, E] expert shares per forward

    def add(self, out: MoELMOutput) -> None:
        self.aux.append(out.aux_loss)
        self.z.append(out.z_loss)
        self.load.append(out.router_stats["expert_load"])

    def apply(
        self, loss: torch.Tensor, metrics: dict[str, Any], aux_coef: float, z_coef: float
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """`loss + aux_coef * mean(aux) + z_coef * mean(z)` over the recorded forwards, and the
        router metrics added to `metrics`. Nothing recorded (a dense model): both unchanged. A
        zero coefficient adds no term, so it trains exactly as without the channel."""
        if not self.aux:
            return loss, metrics
        aux, z = torch.stack(self.aux).mean(), torch.stack(self.z).mean()
        if aux_coef > 0:
            loss = loss + aux_coef * aux.to(loss.dtype)
        if z_coef > 0:
            loss = loss + z_coef * z.to(loss.dtype)
        load = torch.cat(self.load).float()  # [forwards * L, E], rows sum to 1
        # coefficient of variation of the expert shares per layer: 0 = perfectly balanced
        cv = load.std(-1, unbiased=False) / load.mean(-1)
        return loss, {
            **metrics,
            "router/aux_loss": float(aux.detach()),
            "router/z_loss": float(z.detach()),
            # the busiest expert's share of token-slots times E (1 = balanced), mean over layers
            "router/max_load": float(load.amax(-1).mean() * load.shape[-1]),
            "router/load_cv": float(cv.mean()),
        }


_COLLECTORS: list[RouterLosses] = []  # innermost last; an actor process trains one model at a time


@contextmanager
def collect_router_losses() -> Iterator[RouterLosses]:
    """Gather the aux / z losses and expert loads of every MoE forward made with gradients
    inside the block (forwards under `no_grad`, e.g. the reference's, are not training terms)."""
    collector = RouterLosses()
    _COLLECTORS.append(collector)
    try:
        yield collector
    finally:
        _COLLECTORS.remove(collector)


def with_router_losses(
    compute: Callable[[], tuple[torch.Tensor, dict[str, Any]]], aux_coef: float, z_coef: float
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Run an objective's `compute_loss` and add the model's router terms to it: the one channel
    through which every objective (SFT, RL estimators, ELBO, DRAKES, DiDi) trains the router
    without knowing it is an MoE."""
    with collect_router_losses() as router:
        loss, metrics = compute()
    return router.apply(loss, metrics, aux_coef, z_coef)


def backward_with_router_losses(
    run: Callable[[Callable[[torch.Tensor, float], None]], tuple[torch.Tensor, dict[str, Any]]],
    backward: Callable[[torch.Tensor], None],
    aux_coef: float,
    z_coef: float,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """`with_router_losses` for an objective that backpropagates its loss in parts
    (`Algorithm.loss_backward`, run as `run(part_backward)`): each part gets the router terms of
    the forwards made since the previous part, their coefficients times the part's share, then
    `backward(part)`. Returns the loss (the parts with their router terms, summed, detached) and
    the metrics, router metrics averaged by share. One part of share 1 is `with_router_losses`."""
    parts: list[torch.Tensor] = []
    router_metrics: dict[str, float] = {}
    with collect_router_losses() as router:

        def part_backward(part: torch.Tensor, share: float) -> None:
            part, m = router.apply(part, {}, aux_coef * share, z_coef * share)
            router.aux, router.z, router.load = [], [], []  # the next part's forwards start afresh
            for k, v in m.items():
                router_metrics[k] = router_metrics.get(k, 0.0) + share * v
            parts.append(part.detach())
            backward(part)

        _, metrics = run(part_backward)
    if not parts:
        raise RuntimeError("loss_backward returned without backpropagating any part of its loss")
    loss = parts[0] if len(parts) == 1 else torch.stack(parts).sum()
    return loss, {**metrics, **router_metrics}


def router_loss_coefs(stage: dict[str, Any], config: Any) -> tuple[float, float]:
    """A stage's (aux, z) router-loss weights: the stage's `router_aux_loss_coef`, else the family
    config's (SDAR-MoE / Qwen3-MoE ship 0.001; LLaDA2 has none: it balances with its expert bias),
    else 0; `router_z_loss_coef` defaults to 0 (neither release trains with a z-loss)."""
    aux = stage.get("router_aux_loss_coef")
    if aux is None:
        aux = getattr(config, "router_aux_loss_coef", None) or 0.0
    return float(aux), float(stage.get("router_z_loss_coef") or 0.0)


__all__ = [
    "MOE_ROUTING",
    "ROUTERS",
    "ExpertChoiceRouter",
    "GroupLimitedSigmoidRouter",
    "MoELMOutput",
    "MoEOutputs",
    "Router",
    "Routing",
    "SoftmaxTopKRouter",
    "SparseMoeBlock",
    "RouterLosses",
    "SwiGLUExperts",
    "backward_with_router_losses",
    "check_moe_routing",
    "collect_router_losses",
    "family_router",
    "feed_forward",
    "load_balancing_loss",
    "router_loss_coefs",
    "router_stats",
    "router_z_loss",
    "stable_topk",
    "with_router_losses",
]
