"""The MoE families (`llada2_moe`: LLaDA2.0/2.1-mini; `sdar_moe`: SDAR-30B-A3B-Chat) against
their releases, and the routing they share (dare/models/moe.py).

The released files (config.json, model.safetensors.index.json, configuration/modeling code) are
read from a folder named by DARE_RELEASED_MODELS (`<release>/<file>`) or from the read-only mirror
of yjyddq/DARE (`models/<release>/<file>`); a test that needs them skips, saying so, where neither
is present. Nothing released is committed: files go to a temporary folder for the test.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from replicas import llada2_tokenizer_files, make_replica, sdar_tokenizer_files
from torch import nn
from transformers import AutoModelForCausalLM

from dare.diffusion import sft_loss
from dare.models import from_pretrained, load_config, tiny
from dare.models.llada2_moe import LLaDA2MoeConfig, LLaDA2MoeModelLM, llada2_mini, llada2_tiny
from dare.models.lora import apply_lora, linear_module_names
from dare.models.moe import GroupLimitedSigmoidRouter, SoftmaxTopKRouter, load_balancing_loss, stable_topk
from dare.models.sdar_moe import SDARMoeForCausalLM, sdar_30b_a3b
from dare.sampling import SamplingConfig, generate

MIRROR = Path("/work/.mirror/yjyddq+DARE/repo")
LLADA2 = ("LLaDA2.0-mini", "LLaDA2.1-mini")
SDAR_MOE = "SDAR-30B-A3B-Chat"


def released_text(release: str, name: str) -> str | None:
    """A released file's text, or None where no copy is reachable."""
    folder = os.environ.get("DARE_RELEASED_MODELS")
    if folder and (Path(folder) / release / name).is_file():
        return (Path(folder) / release / name).read_text()
    if MIRROR.is_dir():
        out = subprocess.run(
            ["git", "-C", str(MIRROR), "show", f"HEAD:models/{release}/{name}"], capture_output=True, text=True
        )
        if out.returncode == 0:
            return out.stdout
    return None


def need(release: str, name: str) -> str:
    text = released_text(release, name)
    if text is None:
        pytest.skip(f"released {release}/{name} not available (set DARE_RELEASED_MODELS or provide the DARE mirror)")
    return text


def meta_state(lm_cls, config) -> dict[str, torch.Tensor]:
    """The state dict of a release-size model on the meta device (Linear's own random init is
    skipped: ~15k expert projections make it the slow part)."""
    reset = nn.Linear.reset_parameters
    nn.Linear.reset_parameters = lambda self: None
    try:
        with torch.device("meta"):
            return lm_cls(config).state_dict()
    finally:
        nn.Linear.reset_parameters = reset


# --------------------------------------------------------------------- (a) keys and shapes


@pytest.mark.parametrize(
    "lm_cls, preset, releases",
    [(LLaDA2MoeModelLM, llada2_mini, LLADA2), (SDARMoeForCausalLM, sdar_30b_a3b, (SDAR_MOE,))],
    ids=["llada2", "sdar_moe"],
)
def test_release_size_keys_and_bytes_equal_the_released_index(lm_cls, preset, releases):
    """Every key of the release-size model is in the released index and vice versa, and the
    parameter bytes at bf16 equal the index's total_size (so every shape is right in sum);
    LLaDA2.1 stores its expert_bias in fp32 (2 more bytes per entry) where 2.0 stores bf16."""
    indexes = {r: json.loads(need(r, "model.safetensors.index.json")) for r in releases}
    state = meta_state(lm_cls, preset())
    for release, index in indexes.items():
        keys = set(index["weight_map"])
        assert set(state) == keys, (release, sorted(set(state) ^ keys)[:10])
        extra = 2 * sum(t.numel() for k, t in state.items() if k.endswith("expert_bias")) if release == LLADA2[1] else 0
        assert 2 * sum(t.numel() for t in state.values()) + extra == index["metadata"]["total_size"], release
    if lm_cls is LLaDA2MoeModelLM:  # the fused projection and the per-layer MoE parts
        assert state["model.layers.1.attention.query_key_value.weight"].shape == (3072, 2048)
        assert state["model.layers.0.mlp.gate_proj.weight"].shape == (5120, 2048)
        assert state["model.layers.1.mlp.gate.weight"].shape == (256, 2048)
        assert state["model.layers.1.mlp.experts.255.down_proj.weight"].shape == (2048, 512)
        assert state["model.layers.1.mlp.shared_experts.up_proj.weight"].shape == (512, 2048)
    else:
        assert state["model.layers.47.mlp.gate.weight"].shape == (128, 2048)
        assert state["model.layers.0.self_attn.q_proj.weight"].shape == (4096, 2048)


# --------------------------------------------------------------------- (b) configs


@pytest.mark.parametrize("release", [*LLADA2, SDAR_MOE])
def test_released_config_parses_with_its_spec(tmp_path, release):
    raw = need(release, "config.json")
    (tmp_path / "config.json").write_text(raw)
    config = load_config(tmp_path)
    released = json.loads(raw)
    for key in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "num_hidden_layers", "head_dim"):
        assert getattr(config, key) == released[key], key
    spec = config.diffusion_spec()
    assert spec.attention == "block" and not spec.shift_logits
    if release == SDAR_MOE:
        assert config.model_type == "sdar_moe" and config.norm_topk_prob is True
        assert (spec.mask_token_id, spec.block_size, spec.eos_token_ids, spec.pad_token_id) == (
            151669,
            4,
            (151643,),
            151643,
        )
    else:
        assert config.model_type == "llada2_moe" and config.rope_dims == 64 and config.first_k_dense_replace == 1
        assert (config.n_group, config.topk_group, config.routed_scaling_factor) == (8, 4, 2.5)
        assert (spec.mask_token_id, spec.block_size, spec.eos_token_ids, spec.pad_token_id) == (
            156895,
            32,
            (156892,),
            156892,
        )


def test_a_config_the_released_forward_would_not_compute_is_refused():
    """Checked when the config is built (huggingface_hub strict validators wrap the ValueError)."""
    with pytest.raises(StrictDataclassClassValidationError, match="score_function"):
        LLaDA2MoeConfig(**{**_tiny_llada2_fields(), "score_function": "softmax"})
    with pytest.raises(StrictDataclassClassValidationError, match="rotary_dim=6 disagrees"):
        LLaDA2MoeConfig(**{**_tiny_llada2_fields(), "rotary_dim": 6})
    with pytest.raises(ValueError, match="n_group=3"):
        tiny("llada2_moe", n_group=3)


def _tiny_llada2_fields() -> dict:
    return {k: v for k, v in llada2_tiny().to_dict().items() if k not in ("model_type", "transformers_version")}


# --------------------------------------------------------------------- (c) released code


def _default_rope(config, device=None, seq_len=None):
    """transformers 4.x's "default" RoPE init (dropped from ROPE_INIT_FUNCTIONS in 5.x), which the
    released files look up: inv_freq over head_dim * partial_rotary_factor dims, no scaling."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(head_dim * getattr(config, "partial_rotary_factor", 1.0))
    return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2).float() / dim)), 1.0


def _torch_rms_norm(x, weight, bias=None, eps=1e-6):
    """Stands in for flash_attn's triton rms_norm_fn (the SDAR-MoE file imports it unconditionally)."""
    h = x.float()
    return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def released_modules(tmp_path: Path, release: str, monkeypatch) -> tuple[types.ModuleType, types.ModuleType]:
    """Import a release's configuration and modeling files from a temporary package, shimmed just
    enough for this transformers: no flash_attn import, the 4.x default RoPE init."""
    stem = "llada2_moe" if release in LLADA2 else "sdar_moe"
    pkg = "released_" + release.replace(".", "_").replace("-", "_")
    folder = tmp_path / pkg
    folder.mkdir()
    flash = "from flash_attn.ops.triton.layer_norm import rms_norm_fn as flash_rms_norm"
    for name in (f"configuration_{stem}.py", f"modeling_{stem}.py"):
        (folder / name).write_text(need(release, name).replace(flash, "flash_rms_norm = None"))
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if "default" not in ROPE_INIT_FUNCTIONS:
        monkeypatch.setitem(ROPE_INIT_FUNCTIONS, "default", _default_rope)
    package = types.ModuleType(pkg)
    package.__path__ = [str(folder)]
    monkeypatch.setitem(sys.modules, pkg, package)
    modules = []
    for name in (f"configuration_{stem}", f"modeling_{stem}"):
        spec = importlib.util.spec_from_file_location(f"{pkg}.{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, f"{pkg}.{name}", module)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - any import failure of third-party code is a skip
            pytest.skip(f"released {release}/{name}.py does not import on this transformers: {e!r}")
        modules.append(module)
    if hasattr(modules[1], "flash_rms_norm"):
        modules[1].flash_rms_norm = _torch_rms_norm
    return modules[0], modules[1]


def _released_twin(config_module, modeling_module, ours, lm_name: str):
    """The released model on `ours`'s config, with random weights (std 0.3: routing spreads),
    random expert biases, and `ours` loaded with its state dict (strict: every key)."""
    fields = {k: v for k, v in ours.config.to_dict().items() if k not in ("model_type", "transformers_version")}
    config = getattr(config_module, next(n for n in dir(config_module) if n.endswith("MoeConfig")))(**fields)
    config._attn_implementation = "sdpa"
    released = getattr(modeling_module, lm_name)(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in released.named_parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * 0.3 if p.dim() > 1 else 1 + 0.2 * torch.randn(p.shape, generator=g)
            )
        for name, b in released.named_buffers():
            if name.endswith("expert_bias"):
                b.copy_(0.05 * torch.randn(b.shape, generator=g))
    ours.load_state_dict(released.state_dict(), strict=True)
    return released


def _block_mask(L: int, block: int, batch: int) -> torch.Tensor:
    blocks = torch.arange(L) // block
    return (blocks[None, :] <= blocks[:, None])[None, None].expand(batch, 1, L, L)


@pytest.mark.parametrize("release", LLADA2)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_llada2_logits_equal_the_released_code(tmp_path, monkeypatch, release, training):
    """Same tiny weights, same block-causal mask (additive 0/-inf, as the released 2.0 generate
    builds it): dare's logits equal the released model's (its eval `moe_infer` path and its
    training path)."""
    cfg_mod, mod = released_modules(tmp_path, release, monkeypatch)
    ours = tiny("llada2_moe")
    released = _released_twin(cfg_mod, mod, ours, "LLaDA2MoeModelLM")
    ours.train(training), released.train(training)
    ids = torch.randint(0, 62, (2, 12), generator=torch.Generator().manual_seed(1))
    additive = torch.zeros(2, 1, 12, 12).masked_fill(~_block_mask(12, 4, 2), float("-inf"))
    with torch.no_grad():
        want = released(ids, attention_mask=additive, position_ids=torch.arange(12).expand(2, 12)).logits
        got = ours(ids)
    torch.testing.assert_close(got.logits, want, rtol=1e-5, atol=1e-5)
    assert got.router_stats["expert_load"].shape == (1, 8)  # layer 0 is dense


def test_sdar_moe_logits_and_aux_loss_equal_the_released_code(tmp_path, monkeypatch):
    """Same tiny weights and bool block mask: dare's logits equal the released SDAR-MoE's, and
    dare's aux loss equals the released `load_balancing_loss_func` on its router logits."""
    cfg_mod, mod = released_modules(tmp_path, SDAR_MOE, monkeypatch)
    ours = tiny("sdar_moe").eval()
    released = _released_twin(cfg_mod, mod, ours, "SDARMoeForCausalLM").eval()
    ids = torch.randint(0, 62, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = _block_mask(12, 4, 2)
    with torch.no_grad():
        want = released(ids, attention_mask=mask, position_ids=torch.arange(12).expand(2, 12)).logits
        router_logits = released.model(ids, attention_mask=mask, output_router_logits=True).router_logits
        got = ours(ids)
    torch.testing.assert_close(got.logits, want, rtol=1e-5, atol=1e-5)
    want_aux = mod.load_balancing_loss_func(router_logits, 4, 2)
    torch.testing.assert_close(got.aux_loss, want_aux, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------- (d) routing


def test_softmax_router_breaks_ties_towards_the_lower_expert_and_its_aux_loss_is_the_switch_loss():
    """Experts 1 and 2 tie for the second slot of token a (logits [2, 1, 1, 0]); token b ties
    everywhere (logits 0). Lower indices win, whatever the batch order. Aux loss by hand: both
    tokens pick {0, 1}, so f = (1, 1, 0, 0); P_0 + P_1 = (e/(e+1) + 1/2) / 2 (token a's softmax
    gives experts 0 and 1 e^2/(e+1)^2 + e/(e+1)^2, token b's 1/4 each); E * sum_e f_e P_e =
    2e/(e+1) + 1."""
    router = SoftmaxTopKRouter(2, 4, 2, norm_topk_prob=True)
    with torch.no_grad():
        router.weight.copy_(torch.tensor([[2.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for rows in ([0, 1], [1, 0]):
        routing = router(x[rows])
        assert routing.topk_idx[rows.index(0)].tolist() == [0, 1]
        assert routing.topk_idx[rows.index(1)].tolist() == [0, 1]
    routing = router(x)
    e = math.e
    torch.testing.assert_close(routing.topk_weight[0], torch.tensor([e / (e + 1), 1 / (e + 1)]))
    torch.testing.assert_close(load_balancing_loss([routing]), torch.tensor(2 * e / (e + 1) + 1))
    values, idx = stable_topk(torch.tensor([[0.5, 0.75, 0.75, 0.75]]), 2)
    assert idx.tolist() == [[1, 2]] and values.tolist() == [[0.75, 0.75]]


def test_sigmoid_group_router_selects_by_biased_group_and_weights_by_unbiased_scores():
    """Logits [0, 0, 1, -1]: both groups score 1.0 (sum of their two sigmoid scores), the tie
    goes to group 0, whose experts weigh 0.5 / 1.0 * 2.5 each. A bias of 0.1 on expert 2 moves the
    choice to group 1, weighted by the unbiased scores sigmoid(1), sigmoid(-1) (summing to 1)."""
    router = GroupLimitedSigmoidRouter(1, 4, 2, n_group=2, topk_group=1, routed_scaling_factor=2.5)
    with torch.no_grad():
        router.weight.copy_(torch.tensor([[0.0], [0.0], [1.0], [-1.0]]))
    x = torch.ones(1, 1)
    routing = router(x)
    assert routing.topk_idx.tolist() == [[0, 1]]
    torch.testing.assert_close(routing.topk_weight, torch.tensor([[1.25, 1.25]]))
    router.expert_bias[2] = 0.1
    routing = router(x)
    assert routing.topk_idx.tolist() == [[2, 3]]
    s = torch.sigmoid(torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(routing.topk_weight, (2.5 * s / s.sum())[None])


@pytest.mark.parametrize("family", ["llada2_moe", "sdar_moe"])
def test_moe_forward_is_deterministic_and_the_aux_loss_trains_the_router(family):
    model = tiny(family).train()
    ids = torch.randint(0, 62, (3, 8), generator=torch.Generator().manual_seed(2))
    first, second = model(ids), model(ids)
    assert torch.equal(first.logits, second.logits)
    assert torch.equal(first.router_stats["expert_load"], second.router_stats["expert_load"])
    load = first.router_stats["expert_load"]
    torch.testing.assert_close(load.sum(-1), torch.ones(load.shape[0]))
    (first.aux_loss + first.z_loss).backward()
    gate = next(m for m in model.modules() if hasattr(m, "top_k")).weight
    assert gate.grad is not None and gate.grad.abs().sum() > 0
    # with activation checkpointing (transformers' default, non-reentrant) the aux loss still
    # reaches the router through the routing records
    gate.grad = None
    model.gradient_checkpointing_enable()
    checkpointed = model(ids)
    torch.testing.assert_close(checkpointed.aux_loss, first.aux_loss)
    checkpointed.aux_loss.backward()
    assert gate.grad is not None and gate.grad.abs().sum() > 0


# --------------------------------------------------------------------- (e) block attention


@pytest.mark.parametrize("family", ["llada2_moe", "sdar_moe"])
def test_a_later_block_never_changes_an_earlier_blocks_logits(family):
    model = tiny(family).eval()
    block = model.diffusion_spec().block_size
    ids = torch.randint(0, 62, (2, 3 * block), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[:, 2 * block :] = torch.randint(0, 62, (2, block), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, : 2 * block], b[:, : 2 * block], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 2 * block :], b[:, 2 * block :])


# --------------------------------------------------------------------- (f) samplers


@pytest.mark.parametrize("family", ["llada2_moe", "sdar_moe"])
def test_sdar_block_sampler_with_the_kv_cache_equals_recompute_on_moe(family):
    model = tiny(family, seed=1).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)  # spread confidences, as the sampling tests do
    prompts = [[5, 9, 11], [7, 3, 21, 40, 8, 2, 33], [17]]
    kw = dict(algorithm="sdar", gen_length=8, steps=4, block_length=4, temperature=0.0)
    cached = generate(model, prompts, SamplingConfig(**kw), torch.Generator().manual_seed(3))
    plain = generate(model, prompts, SamplingConfig(cache="none", **kw), torch.Generator().manual_seed(3))
    assert cached.config.cache == "block"
    assert torch.equal(cached.response_ids, plain.response_ids)
    assert (cached.response_ids != model.diffusion_spec().mask_token_id).all()


# --------------------------------------------------------------------- training pieces


@pytest.mark.parametrize("family", ["llada2_moe", "sdar_moe"])
def test_sft_loss_trains_experts_router_and_shared_experts(family):
    """The SFT objective runs on an MoE model with no family branch (its `[x_t ; x_0]` block mask
    path); the loss reaches the routed experts through the combine weights and the router."""
    model = tiny(family, seed=0).train()
    ids = torch.randint(0, 60, (2, 16), generator=torch.Generator().manual_seed(5))
    loss_mask = torch.zeros(2, 16, dtype=torch.bool)
    loss_mask[:, 6:] = True
    loss, _ = sft_loss(model, ids, loss_mask, torch.ones(2, 16, dtype=torch.long), model.diffusion_spec(),
                       torch.Generator().manual_seed(0))  # fmt: skip
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["model.layers.1.mlp.gate.weight"].abs().sum() > 0
    assert sum(float(g.abs().sum()) for n, g in grads.items() if ".experts." in n and g is not None) > 0


@pytest.mark.parametrize("family", ["llada2_moe", "sdar_moe"])
def test_lora_defaults_to_attention_and_shared_experts_routed_experts_opt_in(family):
    model = tiny(family)
    default = linear_module_names(model)
    assert default and not any(".experts." in n or n.endswith("mlp.gate") for n in default)
    assert any("attention" in n or "self_attn" in n for n in default)
    if family == "llada2_moe":
        assert "model.layers.1.mlp.shared_experts.up_proj" in default
    routed = linear_module_names(model, routed_experts=True)
    assert {n for n in routed if ".experts." in n} == {
        f"model.layers.{i}.mlp.experts.{e}.{p}_proj"
        for i in range(model.config.num_hidden_layers) if model.config.is_moe_layer(i)
        for e in range(model.config.num_experts) for p in ("gate", "up", "down")
    }  # fmt: skip
    wrapped = apply_lora(model, r=2, alpha=4)
    assert not any("lora_A" in n and ".experts." in n for n, _ in wrapped.named_parameters())


@pytest.mark.parametrize("release", ["llada2.0-mini", "llada2.1-mini", "sdar-30b-a3b"])
def test_a_replica_in_the_released_layout_loads_every_key_with_dare_and_transformers(tmp_path, release):
    """A tiny checkpoint in the released layout (LLaDA2: 7 shards; SDAR-30B-A3B: one shard per
    layer plus `others`; index, config.json with the released auto_map, the tokenizer files) loads
    in dare (every key matched, or it raises) and with `AutoModelForCausalLM` without remote code;
    the spec takes the tokenizer's ids."""
    folder = make_replica(release, tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = {f for f in index["weight_map"].values()}
    if release == "sdar-30b-a3b":
        assert files == {"layer-0-ep-0-of-1.safetensors", "layer-1-ep-0-of-1.safetensors", "others.safetensors"}
        ids, block, lm_cls = sdar_tokenizer_files(with_auto_map=False).ids, 4, SDARMoeForCausalLM
    else:
        assert len(files) == 7
        ids, block, lm_cls = llada2_tokenizer_files().ids, 32, LLaDA2MoeModelLM
    model = from_pretrained(folder)
    spec = model.diffusion_spec()
    assert (spec.mask_token_id, spec.eos_token_id, spec.block_size) == (
        ids["mask_token_id"],
        ids["eos_token_id"],
        block,
    )
    auto = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert type(auto) is lm_cls
    x = torch.randint(0, 60, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(auto(x).logits.float(), model(x).logits.float())


# --------------------------------------------------------------------- LLaDA2 decoding


class _DareAsReleased:
    """What the released `generate` reads from `self`, backed by a dare model: `forward` (the
    release's additive 4-D block mask turned into dare's bool mask: 2.0 builds 0 / -inf, the
    mirror's 2.1 0 / 1, which dllm's port reads as visible / hidden) and an argmax draw at T = 0
    (2.1's; 2.0's code draws from softmax(logits) even at T = 0) with the mask token excluded, as
    dare's samplers do."""

    def __init__(self, model, visible, released_cls):
        self.model, self.visible, self.device, self.released_cls = model, visible, torch.device("cpu"), released_cls

    def __getattr__(self, name):  # the release's static helpers (`_get_num_transfer_tokens`)
        return getattr(self.released_cls, name)

    def forward(self, x, attention_mask=None, position_ids=None, **_):
        return self.model(x, attention_mask=self.visible(attention_mask).expand(x.shape[0], -1, -1, -1),
                          position_ids=position_ids)  # fmt: skip

    def _sample_with_temperature_topk_topp(self, logits, temperature=0.0, **_):
        logits = logits.double()
        logits[..., self.model.diffusion_spec().mask_token_id] = float("-inf")
        probs = torch.softmax(logits, -1)
        token = probs.argmax(-1)
        return token, probs.gather(-1, token[..., None])[..., 0]


@pytest.mark.parametrize("release", LLADA2)
def test_llada2_sampler_reproduces_the_released_generate(tmp_path, monkeypatch, release):
    """Threshold block decoding with the release's schedule and EOS handling: the "llada2" sampler
    (batched, block KV cache) gives the tokens of the released `generate` run prompt by prompt on
    the same network (2.1 with editing off: editing_threshold 1, max_post_steps 0)."""
    _, mod = released_modules(tmp_path, release, monkeypatch)
    model = tiny("llada2_moe", seed=1).eval()
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head.mul_(20.0)  # spread confidences over (0, 1)
        spec = model.diffusion_spec()
        head[spec.eos_token_id] = 1.01 * head[9]  # EOS wins where token 9 would: responses end early
    visible = (lambda m: m == 0) if release == LLADA2[0] else (lambda m: m > 0.5)
    harness = _DareAsReleased(model, visible, mod.LLaDA2MoeModelLM)
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 60, (n,), generator=g).tolist() for n in (4, 8, 4)]
    kw = dict(block_length=4, gen_length=16, threshold=0.6, eos_id=spec.eos_token_id, mask_id=spec.mask_token_id)
    if release == LLADA2[1]:
        kw |= dict(editing_threshold=1.0, max_post_steps=0, num_to_transfer=1)
    else:
        kw |= dict(steps=4)  # per block: one token per step at least, as steps=gen_length below
    want = [harness.released_cls.generate(harness, torch.tensor([p]), **kw)[0].tolist() for p in prompts]
    rollout = generate(model, prompts, SamplingConfig(algorithm="llada2", gen_length=16, threshold=0.6))
    assert rollout.config.block_length == 4 and rollout.config.cache == "block"
    got = [row[mask].tolist() for row, mask in zip(rollout.response_ids, rollout.response_mask)]
    assert got == want
    assert sum(spec.eos_token_id in w for w in want) >= 2 and min(len(w) for w in want) < 8  # EOS cuts
    parallel = (rollout.decode_step[rollout.decode_step >= 0].bincount() > 1).any()
    assert parallel  # the threshold committed several tokens in one step somewhere


@pytest.mark.parametrize("family", ["llada2_moe", "sdar_moe"])
def test_fsdp_units_are_whole_decoder_layers_with_their_experts(family):
    """FSDP2 shards each `_no_split_modules` block as one unit: every layer, and with it its router,
    routed and shared experts (never an expert on its own)."""
    from dare.workers.sharding import decoder_blocks

    model = tiny(family)
    blocks = decoder_blocks(model)
    assert blocks == list(model.model.layers)
    moe_params = {id(p) for n, p in model.named_parameters() if ".mlp." in n}
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    assert moe_params <= in_blocks


def test_llada2_sampler_with_editing_reproduces_the_released_2_1_generate(tmp_path, monkeypatch):
    """LLaDA2.1's token editing and post steps: the "llada2" sampler with editing_threshold /
    max_post_steps gives the tokens of the released 2.1 `generate`, and the edits change them."""
    _, mod = released_modules(tmp_path, LLADA2[1], monkeypatch)
    model = tiny("llada2_moe", seed=1).eval()
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head.mul_(20.0)
        spec = model.diffusion_spec()
        head[spec.eos_token_id] = 1.01 * head[9]
    harness = _DareAsReleased(model, lambda m: m > 0.5, mod.LLaDA2MoeModelLM)
    g = torch.Generator().manual_seed(11)
    prompts = [torch.randint(0, 60, (n,), generator=g).tolist() for n in (4, 8, 4, 8)]
    kw = dict(block_length=4, gen_length=16, threshold=0.6, eos_id=spec.eos_token_id, mask_id=spec.mask_token_id,
              editing_threshold=0.5, max_post_steps=2, num_to_transfer=1)  # fmt: skip
    want = [harness.released_cls.generate(harness, torch.tensor([p]), **kw)[0].tolist() for p in prompts]
    cfg = dict(algorithm="llada2", gen_length=16, threshold=0.6)
    edited = generate(model, prompts, SamplingConfig(editing_threshold=0.5, max_post_steps=2, **cfg))
    plain = generate(model, prompts, SamplingConfig(**cfg))
    got = [row[mask].tolist() for row, mask in zip(edited.response_ids, edited.response_mask)]
    assert got == want
    assert not torch.equal(edited.response_ids, plain.response_ids)  # the edits did something
    with pytest.raises(ValueError, match="editing_threshold"):
        SamplingConfig(algorithm="sdar", editing_threshold=0.5)
