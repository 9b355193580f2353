"""Building and loading models of any registered family: `tiny` presets, `load_config` and
`from_pretrained` for a local folder or a Hub id.

The families register themselves (`dare.models.family.register_family`, at the end of each family
file), with transformers' Auto classes too, so after `import dare` a local folder of a released
checkpoint also loads with plain transformers and **no** `trust_remote_code`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedConfig, PreTrainedModel

from dare.models.dtypes import resolve_dtype
from dare.models.family import FAMILIES, family_for_model_type, family_of, known_model_types
from dare.models.hub import CONFIG_FILES, resolve_checkpoint


def tiny(family: str, vocab_size: int = 64, *, seed: int = 0, **overrides) -> PreTrainedModel:
    """A tiny randomly initialised model of `family` ("llada" | "dream" | "sdar").

    Token ids default to the end of the vocabulary (mask = V-1, eos = pad = V-2); pass
    `mask_token_id=...` etc. (e.g. from `dare.models.tokenizer`) to override.
    """
    fam = FAMILIES.get(family)
    config = fam.tiny_config(vocab_size, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fam.lm_cls(config)


def load_config(path: str | Path) -> PreTrainedConfig:
    """Read `path/config.json` (a folder or a Hub id, see `dare.models.hub`) and build the family
    config, with errors that name the file."""
    path = resolve_checkpoint(path, files=CONFIG_FILES)  # a Hub id: no weights fetched to read its config
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a checkpoint folder (expected a directory with config.json)")
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: missing; a dare/Hugging Face checkpoint folder needs config.json")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: not valid JSON ({e})") from None
    model_type = raw.get("model_type")
    fam = family_for_model_type(model_type)
    if fam is None:
        raise ValueError(f"{cfg_file}: unknown model_type {model_type!r}; dare supports {known_model_types()}")
    raw = {k: v for k, v in raw.items() if k not in ("model_type", "auto_map", "transformers_version")}
    try:
        config = fam.config_cls(**raw)
    except Exception as e:  # strict-dataclass type / validation errors
        raise ValueError(f"{cfg_file}: invalid {fam.config_cls.__name__}: {e}") from None
    if getattr(config, "mask_token_id", None) is None:
        raise ValueError(
            f"{cfg_file}: mask_token_id is missing; dare needs the id of the [MASK] token the checkpoint "
            f"was trained with (the released {fam.name} checkpoints use {fam.config_cls().mask_token_id})"
        )
    config.diffusion_spec()  # validates ids (mask != eos/pad, ...)
    return config


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _stored_dtype(weights: Path) -> torch.dtype | None:
    """The floating dtype of the first tensor of a safetensors file (its JSON header), or None."""
    if weights.suffix != ".safetensors":
        return None
    with weights.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 2 <= size <= 100_000_000:
            return None
        header = json.loads(f.read(size))
    kinds = [v.get("dtype") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    return _SAFETENSORS_DTYPES.get(kinds[0]) if kinds else None


def _check_shard_index(path: Path) -> None:
    """Every shard `model.safetensors.index.json` names is there (a partial download otherwise
    fails deep inside transformers)."""
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        return
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (json.JSONDecodeError, KeyError, AttributeError) as e:
        raise ValueError(f"{index}: not a safetensors index (needs a weight_map of key -> shard file): {e}") from None
    missing = sorted(s for s in shards if not (path / s).is_file())
    if missing:
        raise FileNotFoundError(f"{index}: names shard files that are missing: {missing}")


def from_pretrained(
    path: str | Path, *, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None
) -> PreTrainedModel:
    """Load a checkpoint of any dare family: a local folder (config.json + safetensors, one file or
    shards with `model.safetensors.index.json`) or a Hub id `ORG/NAME[@REVISION]`.

    The model is built on the meta device and each tensor is read from the (memory-mapped)
    safetensors files straight into `dtype` (default float32), so no random init is ever
    materialised and peak memory stays near the size of the weights (docs/loading.md).

    Refuses an unknown `model_type`, a missing mask token id, and weights that do not match the
    config (missing or unexpected keys, wrong shapes), naming the file and the keys.
    """
    path = resolve_checkpoint(path)
    config = load_config(path)
    fam = family_of(config)
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("pytorch_model*.bin"))
    if not weights:
        raise FileNotFoundError(f"{path}: no *.safetensors (or pytorch_model*.bin) weight files")
    _check_shard_index(path)
    dtype = resolve_dtype(dtype)
    stored = _stored_dtype(weights[0])
    # transformers 5 always builds the model on the meta device and takes each tensor from the
    # mmapped shards: in the stored dtype no byte is copied. Converting while loading, it keeps
    # every shard mapped until the end (peak = new weights + the whole checkpoint), so a dtype
    # change is done after, parameter by parameter: each shard's pages go once its tensors are
    # converted (peak = new weights + about one shard; docs/loading.md).
    load_dtype = stored if stored is not None else dtype
    try:
        model, info = fam.lm_cls.from_pretrained(
            path, config=config, dtype=load_dtype, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except RuntimeError as e:  # size mismatches
        raise ValueError(f"{path}: weights do not match config.json: {e}") from None
    problems = {
        k: sorted(v) for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    if problems:
        names = ", ".join(w.name for w in weights)
        detail = "; ".join(f"{k}: {v[:8]}{' ...' if len(v) > 8 else ''}" for k, v in problems.items())
        raise ValueError(f"{path} ({names}): weights do not match config.json: {detail}")
    if load_dtype != dtype:
        model.to(dtype)  # in place (param.data swapped), so tied weights stay tied
    if device is not None:
        model = model.to(device)
    return model.eval()


__all__ = ["from_pretrained", "load_config", "tiny"]
