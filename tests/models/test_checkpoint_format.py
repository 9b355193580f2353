"""Weight compatibility with the released checkpoints: key names, config field names, loading a
safetensors folder written with the released names (listings: shared/reference/models.md)."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import dare  # noqa: F401  (registers the families with transformers)
from dare.models import from_pretrained, load_config, tiny


def released_keys(family: str, n_layers: int) -> set[str]:
    """The key set of the released checkpoints' model.safetensors.index.json, for n_layers."""
    keys = set()
    if family == "llada":
        keys |= {"model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight"}
        for i in range(n_layers):
            for m in ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out"):
                keys.add(f"model.transformer.blocks.{i}.{m}.weight")
        return keys
    keys |= {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(n_layers):
        p = f"model.layers.{i}"
        keys |= {f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"}
        keys |= {f"{p}.mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")}
        keys |= {f"{p}.self_attn.{m}.weight" for m in ("q_proj", "k_proj", "v_proj", "o_proj")}
        if family == "dream":  # Qwen2: q/k/v biases
            keys |= {f"{p}.self_attn.{m}.bias" for m in ("q_proj", "k_proj", "v_proj")}
        if family == "sdar":  # Qwen3: per-head QK norm
            keys |= {f"{p}.self_attn.q_norm.weight", f"{p}.self_attn.k_norm.weight"}
    return keys


# config.json as the released checkpoints write it (sizes shrunk), including auto_map and
# fields dare does not use, so loading must tolerate them.
RELEASED_CONFIGS = {
    "llada": {
        "architectures": ["LLaDAModelLM"],
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModel": "modeling_llada.LLaDAModelLM",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
        },
        "model_type": "llada",
        "d_model": 32,
        "n_heads": 4,
        "n_kv_heads": 4,
        "n_layers": 2,
        "mlp_hidden_size": 48,
        "mlp_ratio": 4,
        "vocab_size": 40,
        "embedding_size": 40,
        "max_sequence_length": 64,
        "rope": True,
        "rope_theta": 500000.0,
        "rope_full_precision": True,
        "layer_norm_type": "rms",
        "rms_norm_eps": 1e-05,
        "layer_norm_with_affine": True,
        "bias_for_layer_norm": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "activation_type": "silu",
        "block_type": "llama",
        "weight_tying": False,
        "alibi": False,
        "scale_logits": False,
        "input_emb_norm": False,
        "attention_layer_norm": False,
        "block_group_size": 1,
        "multi_query_attention": None,
        "use_cache": False,
        "mask_token_id": 39,
        "eos_token_id": 37,
        "pad_token_id": 37,
        "attention_dropout": 0.0,
        "residual_dropout": 0.0,
        "embedding_dropout": 0.0,
        "init_fn": "mitchell",
        "init_device": "meta",
        "flash_attention": False,
        "precision": "amp_bf16",
        "clip_qkv": None,
    },  # fmt: skip
    "dream": {
        "architectures": ["DreamModel"],
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "model_type": "Dream",
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": 2,
        "vocab_size": 40,
        "mask_token_id": 39,
        "bos_token_id": 37,
        "eos_token_id": 37,
        "pad_token_id": 37,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": False,
        "torch_dtype": "bfloat16",
    },  # fmt: skip
    "sdar": {
        "architectures": ["SDARForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_sdar.SDARConfig",
            "AutoModel": "modeling_sdar.SDARModel",
            "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
        },
        "model_type": "sdar",
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "attention_bias": False,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000,
        "max_position_embeddings": 32768,
        "vocab_size": 40,
        "tie_word_embeddings": False,
        "block_size": 4,
        "mask_token_id": 39,
        "bos_token_id": 37,
        "eos_token_id": 37,
        "pad_token_id": 37,
        "hidden_act": "silu",
        "attn_implementation": "flex_attention",
        "fuse_cross_entropy": True,
        "ep_size": 1,
        "use_deepep": False,
        "micro_forward": False,
        "skip_checkpoint": False,
        "debug": False,
    },  # fmt: skip
}


def _shape(family: str, key: str, cfg: dict) -> tuple[int, ...]:
    """Shapes from the released layout, derived from config fields (no model class involved)."""
    if family == "llada":
        d, V, f = cfg["d_model"], cfg["embedding_size"], cfg["mlp_hidden_size"]
        hd = d // cfg["n_heads"]
        table = {"wte": (V, d), "ln_f": (d,), "attn_norm": (d,), "ff_norm": (d,), "q_proj": (d, d),
                 "k_proj": (cfg["n_kv_heads"] * hd, d), "v_proj": (cfg["n_kv_heads"] * hd, d), "attn_out": (d, d),
                 "ff_proj": (f, d), "up_proj": (f, d)}  # fmt: skip
        name = key.split(".")[-2]
        if name == "ff_out":
            return (V, d) if key == "model.transformer.ff_out.weight" else (d, f)
        return table[name]
    d, V, f = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim", d // cfg["num_attention_heads"])
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    name, kind = key.split(".")[-2], key.split(".")[-1]
    table = {"embed_tokens": (V, d), "lm_head": (V, d), "norm": (d,), "input_layernorm": (d,),
             "post_attention_layernorm": (d,), "q_proj": (H * hd, d), "k_proj": (Hkv * hd, d),
             "v_proj": (Hkv * hd, d), "o_proj": (d, H * hd), "gate_proj": (f, d), "up_proj": (f, d),
             "down_proj": (d, f), "q_norm": (hd,), "k_norm": (hd,)}  # fmt: skip
    shape = table[name]
    return shape[:1] if kind == "bias" else shape


def write_released_checkpoint(tmp_path, family: str, drop: str | None = None, extra: str | None = None):
    cfg = dict(RELEASED_CONFIGS[family])
    folder = tmp_path / family
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    n_layers = cfg.get("n_layers", cfg.get("num_hidden_layers"))
    g = torch.Generator().manual_seed(1)
    state = {
        k: torch.randn(_shape(family, k, cfg), generator=g) * 0.05 for k in sorted(released_keys(family, n_layers))
    }
    if drop:
        state.pop(drop)
    if extra:
        state[extra] = torch.zeros(3)
    save_file(state, str(folder / "model.safetensors"))
    return folder, state


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_state_dict_keys_match_release(family):
    model = tiny(family)
    assert set(model.state_dict()) == released_keys(family, 2)


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_config_round_trip_keeps_released_field_names(tmp_path, family):
    model = tiny(family)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    expected = {
        "llada": {"model_type", "d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size",
                  "embedding_size", "rope_theta", "weight_tying", "mask_token_id"},
        "dream": {"model_type", "hidden_size", "num_hidden_layers", "num_key_value_heads", "rope_theta",
                  "mask_token_id"},
        "sdar": {"model_type", "hidden_size", "head_dim", "block_size", "mask_token_id", "rope_theta"},
    }[family]  # fmt: skip
    for field in expected:
        assert field in saved
    assert saved["model_type"] == {"llada": "llada", "dream": "Dream", "sdar": "sdar"}[family]
    config = AutoConfig.from_pretrained(tmp_path)
    drop = {"_name_or_path"}
    assert {k: v for k, v in config.to_dict().items() if k not in drop} == {
        k: v for k, v in model.config.to_dict().items() if k not in drop
    }
    assert config.diffusion_spec() == model.diffusion_spec()


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_released_checkpoint_loads_without_remote_code(tmp_path, family):
    folder, state = write_released_checkpoint(tmp_path, family)
    model = from_pretrained(folder)  # raises on any missing / unexpected key
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    # plain transformers, no trust_remote_code (auto_map is present in config.json)
    auto_cls = AutoModelForCausalLM if family == "sdar" else AutoModel
    hf = auto_cls.from_pretrained(folder, dtype=torch.float32)
    assert type(hf) is type(model)
    x = torch.randint(0, 36, (2, 9))
    torch.testing.assert_close(hf(x).logits, model(x).logits, rtol=0, atol=0)


def test_llada_config_properties_match_released_sizes():
    from dare.models.dream import dream_7b
    from dare.models.llada import llada_8b
    from dare.models.sdar import sdar_1_7b

    c = llada_8b()
    assert (c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.head_dim) == (4096, 32, 12288, 128)
    assert c.diffusion_spec().mask_token_id == 126336
    assert dream_7b().diffusion_spec().mask_token_id == 151666
    assert dream_7b().diffusion_spec().shift_logits
    spec = sdar_1_7b().diffusion_spec()
    assert (spec.mask_token_id, spec.attention, spec.block_size) == (151669, "block", 4)


# --- clear errors ---------------------------------------------------------------------------


def test_unknown_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"config.json: unknown model_type 'gpt2'"):
        load_config(tmp_path)


def test_missing_mask_token_id_is_refused(tmp_path):
    cfg = dict(RELEASED_CONFIGS["sdar"])
    cfg["mask_token_id"] = None
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="mask_token_id is missing"):
        load_config(tmp_path)


def test_missing_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json: missing"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "drop,extra,pattern",
    [
        ("model.transformer.blocks.1.q_proj.weight", None, r"missing_keys: \['model.transformer.blocks.1.q_proj"),
        (None, "model.transformer.blocks.7.q_proj.weight", r"unexpected_keys: \['model.transformer.blocks.7"),
    ],
)
def test_mismatched_weights_are_refused(tmp_path, drop, extra, pattern):
    folder, _ = write_released_checkpoint(tmp_path, "llada", drop=drop, extra=extra)
    with pytest.raises(ValueError, match=r"model.safetensors\): weights do not match config.json") as e:
        from_pretrained(folder)
    assert e.match(pattern)


def test_wrong_shape_is_refused(tmp_path):
    folder, state = write_released_checkpoint(tmp_path, "dream")
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(5, 5)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="up_proj"):
        from_pretrained(folder)


def test_unsupported_architecture_value_is_refused(tmp_path):
    cfg = dict(RELEASED_CONFIGS["llada"], alibi=True)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="alibi"):
        from_pretrained(tmp_path)
