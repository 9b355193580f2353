"""A per-rank memory plan of a recipe, before anything runs (`dare run --dry-run`).

For every stage: the bytes one actor rank holds for weights, gradients, optimizer state, the
frozen reference, activations of one micro-batch (with and without gradient checkpointing) and
the rollout's KV cache and logits. Nothing is loaded: the model is built on the meta device from
its config (config.json or the preset), so an 8B plan takes a second on a laptop.

Activations are not a formula: a meta-device forward of the real model (LoRA and all) at the
micro-batch's shape records every tensor autograd saves for backward (`saved_tensors_hooks`,
one count per storage, parameters excluded). Attention is counted as a fused kernel saves it
(q, k, v, output, log-sum-exp; CPU flash and GPU flash / efficient SDPA), not the O(L^2) math path.

The peak of a rank is modelled as
    persistent (weights, optimizer, reference, FSDP2's gathered blocks)
    + max(update phase: gradients + activations, rollout phase: KV cache + sampler logits).
Measured against real CPU steps in `benchmarks/memory_plan.py` (docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

GIB = 1024**3
# fraction of a response a masked-diffusion loss scores per forward (t ~ U(0, 1): half on average)
MASKED_FRACTION = 0.5


@dataclass(frozen=True)
class Term:
    """One line of a stage's plan."""

    name: str
    nbytes: int
    phase: str  # "persistent" | "update" | "rollout" | "info" (shown, not summed)
    key: str  # the recipe key that shrinks it


@dataclass
class StagePlan:
    name: str
    kind: str
    algorithm: str
    terms: list[Term] = field(default_factory=list)
    note: str = ""

    def phase_bytes(self, phase: str) -> int:
        return sum(t.nbytes for t in self.terms if t.phase == phase)

    @property
    def total(self) -> int:
        """Peak per rank: persistent terms plus the larger of the update and rollout phases."""
        return self.phase_bytes("persistent") + max(self.phase_bytes("update"), self.phase_bytes("rollout"))

    def largest(self) -> Term:
        return max((t for t in self.terms if t.phase != "info"), key=lambda t: t.nbytes)


@dataclass
class MemoryPlan:
    model: str
    num_params: int
    strategy: str
    num_workers: int
    dtype: str
    stages: list[StagePlan]

    def table(self) -> str:
        """The plan as text: one table per stage, bytes in GiB."""
        head = (
            f"# memory plan per rank: {self.model} ({_count(self.num_params)} parameters, {self.dtype}), "
            f"{self.num_workers} worker(s), strategy {self.strategy}"
        )
        lines = [head]
        for i, st in enumerate(self.stages):
            lines.append(f"# stage {i + 1} {st.name} ({st.kind}: {st.algorithm}){' - ' + st.note if st.note else ''}")
            lines.append(f"#   {'term':<64} {'GiB':>9}  shrink with")
            for t in st.terms:
                mark = " (not counted)" if t.phase == "info" else ""
                lines.append(f"#   {t.name + mark:<64} {t.nbytes / GIB:>9.3f}  {t.key}")
            lines.append(f"#   {'total (peak per rank)':<64} {st.total / GIB:>9.3f}")
        return "\n".join(lines)

    def warnings(self, device_bytes: int | None) -> list[str]:
        """One line per stage whose total exceeds `device_bytes`, naming its largest term and the key."""
        if not device_bytes:
            return []
        out = []
        for i, st in enumerate(self.stages):
            if st.total > device_bytes:
                big = st.largest()
                line = (
                    f"stage {i + 1} ({st.name}) needs ~{st.total / GIB:.1f} GiB per rank, over the device's "
                    f"{device_bytes / GIB:.1f} GiB; the largest term is {big.name} ({big.nbytes / GIB:.1f} GiB)"
                )
                if big.key == "-":  # nothing in the recipe shrinks it: name the largest term that can shrink
                    big = max((t for t in st.terms if t.phase != "info" and t.key != "-"), key=lambda t: t.nbytes)
                    line += f", which no recipe key shrinks; the next is {big.name} ({big.nbytes / GIB:.1f} GiB)"
                out.append(f"{line}: shrink it with {big.key}")
        return out


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


# ---------------------------------------------------------------------------------------------
# the model on the meta device
# ---------------------------------------------------------------------------------------------


def model_config(recipe: Any) -> Any:
    """The recipe's model config: config.json of model.path (no weights), or the preset with
    model.overrides and the built-in tokenizer's vocabulary."""
    from dare.models import FAMILIES, load_config

    m = recipe.model
    if m.path is not None:
        return load_config(m.path)
    ids: dict[str, Any] = {}
    if m.tokenizer in (None, "builtin"):
        from dare.data.tasks import builtin_tokenizer
        from dare.models.tokenizer import model_token_ids

        ids = model_token_ids(builtin_tokenizer())
    overrides = {**ids, **m.overrides}
    return FAMILIES.get(m.family).tiny_config(overrides.pop("vocab_size", 64), **overrides)


def meta_model(config: Any, dtype: torch.dtype, lora: Any = None) -> nn.Module:
    """The family's model on the meta device (no memory), with the recipe's LoRA adapter."""
    from dare.models import family_of
    from dare.models.lora import apply_lora

    with torch.device("meta"):
        model = family_of(config).lm_cls(config).to(dtype)
    if lora is not None:
        with torch.device("meta"):
            model = apply_lora(
                model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules
            )
    return model


def _blocks(model: nn.Module) -> nn.ModuleList:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.decoder()[0]


class _FusedAttention(torch.autograd.Function):
    """Stand-in for SDPA on meta tensors: saves what a fused kernel saves (q, k, v, out, lse, mask)."""

    @staticmethod
    def forward(ctx, q, k, v, mask):  # noqa: ANN001
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(*(t for t in (q, k, v, out, lse, mask) if t is not None))
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        raise RuntimeError("the memory plan's attention stand-in has no backward")


class _FusedAttentionMode(torch.overrides.TorchFunctionMode):
    """Routes F.scaled_dot_product_attention to `_FusedAttention` inside the traced forward."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            q, k, v = args[:3]
            return _FusedAttention.apply(q, k, v, kwargs.get("attn_mask", args[3] if len(args) > 3 else None))
        return func(*args, **kwargs)


@dataclass(frozen=True)
class ActivationTrace:
    """Bytes autograd saves in one training forward of a micro-batch."""

    blocks: list[int]  # saved inside each decoder block
    outside: int  # saved outside the blocks (embedding, final norm, head, loss)
    block_input: int  # one block's input (what checkpointing keeps per block)
    transient: int  # logits and their fp32 rows, alive at the loss (not saved)

    @property
    def without_checkpointing(self) -> int:
        return sum(self.blocks) + self.outside + self.transient

    @property
    def with_checkpointing(self) -> int:
        # every block's input kept; one block recomputed at a time in backward
        return len(self.blocks) * self.block_input + max(self.blocks, default=0) + self.outside + self.transient


def trace_activations(model: nn.Module, rows: int, seq_len: int, scored: int) -> ActivationTrace:
    """Run `model` (on meta) on `rows` x `seq_len` tokens with a loss over `scored` positions per
    row (log-softmax in fp32, as dare's losses do) and sum the bytes saved for backward."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}
    per_block: list[int] = []
    current: list[int | None] = [None]

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        if key not in params and key not in saved:
            saved[key] = t.untyped_storage().nbytes()
            if current[0] is not None:
                per_block[current[0]] += saved[key]
        return t

    blocks = _blocks(model)
    handles = []
    for i, block in enumerate(blocks):
        per_block.append(0)
        handles.append(block.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i)))
        handles.append(block.register_forward_hook(lambda m, a, o: current.__setitem__(0, None)))
    dtype = next(p for p in model.parameters()).dtype
    dev = torch.device("meta")
    ids = torch.zeros(rows, seq_len, dtype=torch.long, device=dev)
    mask = torch.ones(rows, 1, seq_len, seq_len, dtype=torch.bool, device=dev)  # padded batches carry one
    pos = torch.zeros(rows, seq_len, dtype=torch.long, device=dev)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _FusedAttentionMode():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            lp = torch.log_softmax(logits[:, seq_len - scored :].float(), dim=-1)
            lp[..., 0].sum()
    finally:
        for h in handles:
            h.remove()
    hidden = model.config.hidden_size
    vocab = logits.shape[-1]
    elt = torch.empty((), dtype=dtype).element_size()
    return ActivationTrace(
        blocks=per_block,
        outside=sum(saved.values()) - sum(per_block),
        block_input=rows * seq_len * hidden * elt,
        transient=rows * seq_len * vocab * elt + rows * scored * vocab * 4,
    )


# ---------------------------------------------------------------------------------------------
# per-stage terms
# ---------------------------------------------------------------------------------------------


def _flag(recipe: Any, *names: str) -> bool:
    """A boolean recipe option that may live in `resources` or `model` (keys added over time)."""
    return any(bool(getattr(obj, n, False)) for obj in (recipe.resources, recipe.model) for n in names)


def _views_per_row(stage: Any) -> int:
    """Forward rows per training row: the log-prob estimator's views (coupled GRPO: the mask, its
    complement and the full mask), the Monte-Carlo samples of ELBO estimators; 1 otherwise, and 1
    for an algorithm that backpropagates its samples one at a time (`backward_per_sample`: BGPO)."""
    from dare.algorithms import ALGORITHMS

    algo = ALGORITHMS.get(stage.algorithm)
    if algo.backward_per_sample:
        return 1
    if getattr(algo, "estimator_name", None) == "coupled":
        return 3
    for name in ("mc_num", "num_samples", "num_t"):
        value = getattr(stage.args, name, None)
        if isinstance(value, int) and value >= 1:
            return value
    return 1


def _rows_per_prompt(args: Any, which: str) -> int:
    """Sequences per prompt the stage trains on (`which` "train") or samples at once ("rollout"):
    the Args' `train_rows_per_prompt()` / `rollout_rows_per_prompt()` when it declares them (a
    tree rollout), else num_generations (1 without)."""
    declared = getattr(args, f"{which}_rows_per_prompt", None)
    return declared() if callable(declared) else getattr(args, "num_generations", 1)


def _rows_per_micro_batch(stage: Any, workers: int) -> int:
    rows = stage.batch_size * _rows_per_prompt(stage.args, "train")
    if stage.kind == "preference":
        rows *= 2  # chosen and rejected
    return max(1, -(-rows // (workers * stage.grad_accum))) * _views_per_row(stage)


def _rollout_terms(recipe: Any, stage: Any, config: Any, spec: Any, workers: int, elt: int, skey: str) -> list[Term]:
    """KV cache and the sampler's logits for the stage's rollout rows on one rank."""
    from dare.config.schema import stage_sampling_fields
    from dare.sampling import SamplingConfig

    fields = stage_sampling_fields(stage.args)
    if not fields:
        return []
    data = recipe.data
    sampling = {**getattr(stage.args, fields[0]), "gen_length": data.gen_length, "num_generations": 1}
    cfg = SamplingConfig(**sampling).for_model(spec)
    rows = max(1, -(-stage.batch_size * _rows_per_prompt(stage.args, "rollout") // workers))
    seq = data.max_prompt_length + data.gen_length
    layers = config.num_hidden_layers
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = 0 if cfg.cache == "none" else 2 * layers * rows * seq * kv_heads * head_dim * elt
    # the first forward scores the whole sequence: logits in the model dtype + fp32 probabilities
    logits = rows * seq * config.vocab_size * (elt + 4)
    key = f"{skey}.batch_size"
    return [
        Term(f"rollout KV cache ({rows} rows x {seq} tokens, cache {cfg.cache})", kv, "rollout", key),
        Term(f"rollout logits ({rows} x {seq} x {config.vocab_size}, + fp32 probs)", logits, "rollout",
             key),
    ]  # fmt: skip


@dataclass(frozen=True)
class _Layout:
    """How one rank holds the stage's model."""

    shard: int  # ranks a parameter is split over (1: replicated)
    elt: int  # bytes per element of the compute dtype
    store: int  # bytes per element of the stored (sharded) parameters
    lora: bool
    ckpt: bool
    offload: bool

    @property
    def per(self) -> str:
        return f"1/{self.shard} shard" if self.shard > 1 else "full"

    @property
    def shard_key(self) -> str:
        return "resources.num_workers" if self.shard > 1 else "resources.strategy=fsdp2"


def _layout(recipe: Any) -> _Layout:
    from dare.models.dtypes import DTYPES

    res = recipe.resources
    sharded = res.resolved_strategy() == "fsdp2" and res.num_workers > 1
    compute = DTYPES[recipe.model.dtype]
    elt = torch.empty((), dtype=compute).element_size()
    mixed = _flag(recipe, "mixed_precision") and compute != torch.float32
    return _Layout(
        shard=res.num_workers if sharded else 1,
        elt=elt,
        store=4 if mixed else elt,  # FSDP2 mixed precision: fp32 sharded parameters (the master copy)
        lora=recipe.model.lora is not None,
        ckpt=_flag(recipe, "gradient_checkpointing", "activation_checkpointing"),
        offload=_flag(recipe, "cpu_offload", "optimizer_offload", "offload_optimizer"),
    )


def _parameter_terms(model: nn.Module, lay: _Layout, needs_reference: bool) -> list[Term]:
    """Weights, gradients, AdamW moments, the frozen reference and FSDP2's extra copies."""
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    grads = n_train * lay.store // lay.shard
    small_key = lay.shard_key if lay.lora else "model.lora"
    what = "LoRA adapter" if lay.lora else "all parameters"
    opt = "optimizer (AdamW exp_avg + exp_avg_sq" + (", on the host)" if lay.offload else ")")
    terms = [
        Term(f"weights ({lay.per}, {n_all / 1e6:.1f}M x {lay.store} B)", n_all * lay.store // lay.shard,
             "persistent", lay.shard_key),
        Term(f"gradients ({what}, {n_train / 1e6:.1f}M)", grads, "update", small_key),
        Term(opt, 0 if lay.offload else 2 * grads, "persistent", small_key),
    ]  # fmt: skip
    if needs_reference and not lay.lora:  # with LoRA the reference is the adapter-disabled actor
        terms.append(Term(f"reference copy ({lay.per})", n_all * lay.elt // lay.shard, "persistent", "model.lora"))
    if lay.shard > 1:
        block = max(sum(p.numel() for p in b.parameters()) for b in _blocks(model)) * lay.elt
        terms.append(Term("FSDP2 all-gathered blocks (current + prefetch)", 2 * block, "persistent", "-"))
        # a colocated rollout unshards the whole model for the generate call (dare.workers.sharding.unsharded)
        terms.append(Term("unsharded weights during a rollout (full)", n_all * lay.elt, "rollout", "resources.rollout"))
    return terms


def _activation_terms(recipe: Any, index: int, model: nn.Module, spec: Any, lay: _Layout) -> list[Term]:
    """One micro-batch's activations, with checkpointing as the recipe sets it and the other way (info)."""
    stage = recipe.stages[index]
    rows = _rows_per_micro_batch(stage, recipe.resources.num_workers)
    seq = recipe.data.max_prompt_length + recipe.data.gen_length
    if spec.attention == "block":  # block diffusion trains on [x_t ; x_0]: twice the tokens per row
        seq *= 2
    trace = trace_activations(model, rows, seq, max(1, int(recipe.data.gen_length * MASKED_FRACTION)))
    used, other = (trace.with_checkpointing, trace.without_checkpointing)[:: 1 if lay.ckpt else -1]
    state = ("on", "off") if lay.ckpt else ("off", "on")
    key = f"stages[{index}].grad_accum" if lay.ckpt else "model.gradient_checkpointing"
    return [
        Term(f"activations / micro-batch ({rows} rows x {seq} tokens, checkpointing {state[0]})", used, "update", key),
        Term(f"activations / micro-batch, checkpointing {state[1]}", other, "info", "-"),
    ]


def plan_stage(recipe: Any, index: int, model: nn.Module, config: Any, spec: Any) -> StagePlan:
    """The terms of stage `index` on one actor rank."""
    from dare.algorithms import ALGORITHMS

    stage = recipe.stages[index]
    lay = _layout(recipe)
    args = stage.args
    if getattr(args, "gen_length", 0) is None:  # filled by the stage trainer from data.gen_length
        args = dataclasses.replace(args, gen_length=recipe.data.gen_length)
    algo = ALGORITHMS.get(stage.algorithm)(args, spec)
    st = StagePlan(stage.name or stage.algorithm, stage.kind, stage.algorithm)
    # a reference in its own worker group (resources.reference: separate) is not on the actor's ranks
    on_actor = algo.needs_reference and getattr(recipe.resources, "reference", "colocated") != "separate"
    st.terms = _parameter_terms(model, lay, on_actor) + _activation_terms(recipe, index, model, spec, lay)
    if algo.trainer is not None:
        st.note = f"runs its own trainer ({algo.trainer}): activations as one training forward, not its own loop"
    if recipe.resources.rollout == "colocated":
        st.terms += _rollout_terms(
            recipe, stage, config, spec, recipe.resources.num_workers, lay.elt, f"stages[{index}]"
        )
    elif stage.kind == "rl":
        st.note = "rollouts run in the separate rollout worker (not on this rank)"
    return st


def plan_recipe(recipe: Any, config: Any = None) -> MemoryPlan:
    """The memory plan of a validated recipe (model config only; no weights are read). `config`
    replaces the recipe's model config (benchmarks: a preset with a released-size vocabulary)."""
    from dare.models.dtypes import DTYPES

    config = config if config is not None else model_config(recipe)
    model = meta_model(config, DTYPES[recipe.model.dtype], recipe.model.lora)
    spec = config.diffusion_spec()
    stages = [plan_stage(recipe, i, model, config, spec) for i in range(len(recipe.stages))]
    name = recipe.model.path or f"{recipe.model.family} preset"
    n_all = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    return MemoryPlan(
        model=name, num_params=n_all, strategy=recipe.resources.resolved_strategy(),
        num_workers=recipe.resources.num_workers, dtype=recipe.model.dtype, stages=stages,
    )  # fmt: skip


def device_memory_bytes(recipe: Any) -> int | None:
    """resources.device_memory_gb, else the first CUDA device's memory when the recipe runs on
    CUDA and one is visible, else None (no check)."""
    gb = getattr(recipe.resources, "device_memory_gb", None)
    if gb:
        return int(gb * GIB)
    if recipe.resources.device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    return None


__all__ = [
    "ActivationTrace",
    "MemoryPlan",
    "StagePlan",
    "Term",
    "device_memory_bytes",
    "meta_model",
    "model_config",
    "plan_recipe",
    "trace_activations",
]
