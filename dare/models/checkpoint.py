"""Saving and loading the checkpoints dare reads and writes (building one from a recipe's `model`
block is `dare.workers.builder`).

Checkpoint folders are Hugging Face folders: `config.json` + `model.safetensors` (+ tokenizer
files); wherever a checkpoint or tokenizer is named, a Hub id `ORG/NAME[@REVISION]` works too
(`dare.models.hub`), and released tokenizers load without remote code
(`dare.models.released_tokenizers`). A LoRA checkpoint is a PEFT adapter folder (`adapter_config.json` +
`adapter_model.safetensors`) whose `base_model_name_or_path` points at its base checkpoint folder;
`load_policy` resolves it and `dare export --merge-lora` merges it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dare.models import from_pretrained, load_config
from dare.models.dtypes import DTYPES, resolve_dtype
from dare.models.family import family_of
from dare.models.hub import CONFIG_FILES, HubResolutionError, parse_hub_id, resolve_checkpoint
from dare.models.released_tokenizers import check_token_ids
from dare.models.released_tokenizers import load_tokenizer as load_released_tokenizer


def quiet_progress_bars() -> None:
    """No per-file "Loading weights" / "Writing model shards" bars from transformers in worker
    logs (a run saves a checkpoint every few steps; the console keeps dare's own progress)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_policy(path: str | Path, dtype: torch.dtype | str = torch.float32, merge: bool = True) -> PreTrainedModel:
    """Load a dare checkpoint (folder or Hub id): a full model, or a LoRA adapter on its base
    (merged when `merge`, else a trainable `PeftModel`)."""
    path = resolve_checkpoint(path)
    dtype = resolve_dtype(dtype)
    if not is_adapter_dir(path):
        return from_pretrained(path, dtype=dtype)
    model = PeftModel.from_pretrained(from_pretrained(_adapter_base(path), dtype=dtype), path, is_trainable=not merge)
    return model.merge_and_unload() if merge else model


def _adapter_base(path: Path, files: list[str] | None = None) -> Path:
    """The base checkpoint folder an adapter folder's `base_model_name_or_path` names."""
    base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    try:
        base_dir = resolve_checkpoint(base, files=files) if base else None
    except HubResolutionError as e:
        raise FileNotFoundError(f"{path / 'adapter_config.json'}: base_model_name_or_path: {e}") from None
    if base_dir is None or not (base_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{path / 'adapter_config.json'}: base_model_name_or_path={base!r} is not a checkpoint folder"
        )
    return base_dir


def meta_model(path: str | Path, dtype: torch.dtype | str = torch.float32) -> PreTrainedModel:
    """The module tree of the checkpoint at `path` (its config.json only, no weights read), on the
    meta device (no memory), in `dtype`, in eval mode like `from_pretrained`'s."""
    config = load_config(path)
    with torch.device("meta"):
        model = family_of(config).lm_cls(config)
    return model.to(resolve_dtype(dtype)).eval()


def load_policy_skeleton(path: str | Path, dtype: torch.dtype | str = torch.float32) -> PreTrainedModel:
    """The module tree `load_policy(path, dtype, merge=False)` returns (a LoRA adapter wrapped on its
    base, trainable), on the meta device: built from the config files only, no weight is read. A
    sharded run builds this on every rank but 0 and receives rank 0's loaded weights into its shards."""
    path = resolve_checkpoint(path, files=CONFIG_FILES)
    if not is_adapter_dir(path):
        return meta_model(path, dtype)
    config = LoraConfig.from_pretrained(str(path))
    config.inference_mode = False  # `is_trainable=True`: the adapter trains
    base = meta_model(_adapter_base(path, files=CONFIG_FILES), dtype)
    base.name_or_path = config.base_model_name_or_path  # as if loaded from there (peft warns otherwise)
    with torch.device("meta"):  # peft's adapter layers too
        return get_peft_model(base, config)


def checkpoint_dtype(path: str | Path) -> str:
    """The dtype a checkpoint was saved in (a name in `DTYPES`): its config.json's `dtype`
    (transformers 5) or `torch_dtype`, else its first stored weight tensor's, else float32. A LoRA
    adapter answers for its base checkpoint. Evaluating a bf16 checkpoint in it, not silently in fp32.

    Raises:
        ValueError: the config names a dtype dare does not load (names the file and the key).
    """
    from dare.models.auto import _stored_dtype

    path = resolve_checkpoint(path)
    if is_adapter_dir(path):
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        path = resolve_checkpoint(base) if base else path
    cfg = path / "config.json"
    raw = json.loads(cfg.read_text()) if cfg.is_file() else {}
    for key in ("dtype", "torch_dtype"):
        name = raw.get(key)
        if name is None:
            continue
        name = str(name).removeprefix("torch.")
        if name not in DTYPES:
            raise ValueError(f"{cfg}: {key} {raw[key]!r} is not a dtype dare loads ({', '.join(DTYPES)}); pass --dtype")
        return name
    weights = sorted(path.glob("*.safetensors"))
    stored = _stored_dtype(weights[0]) if weights else None
    return next((n for n, d in DTYPES.items() if d == stored), "float32")


def check_vocab(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}"
        )


def check_model_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, source: str = "") -> None:
    """The tokenizer fits the model: no token id past the embedding, and the config's mask / EOS /
    pad ids are the tokenizer's (`check_token_ids`)."""
    check_vocab(model, tokenizer)
    check_token_ids(model.config, tokenizer, f"{source}/config.json" if source else "config.json")


def load_model_and_tokenizer(
    model: str | Path, tokenizer: str | Path | None = None, dtype: torch.dtype | str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of a checkpoint (folder or Hub id; a LoRA adapter is merged) and its
    tokenizer (default: the checkpoint's own), checked against each other. Used by
    `dare generate` and the OpenCompass model."""
    policy = load_policy(model, dtype=resolve_dtype(dtype))
    tok = load_released_tokenizer(tokenizer or model)
    check_model_tokenizer(policy, tok, str(model))
    return policy, tok


def save_policy(model: torch.nn.Module, path: str | Path, base_dir: str | Path | None = None) -> None:
    """Write a checkpoint folder (safetensors). A `PeftModel` writes its adapter, pointing at
    `base_dir` (which must hold the base weights)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        if base_dir is None:
            raise ValueError("saving a LoRA adapter needs the base checkpoint folder (base_dir)")
        base = Path(base_dir)
        if not base.is_dir() and parse_hub_id(str(base_dir)):
            base = resolve_checkpoint(base_dir)  # a Hub id: its snapshot, so the adapter reloads offline
        model.peft_config["default"].base_model_name_or_path = str(base.resolve())
        model.save_pretrained(path)
    else:
        model.save_pretrained(path, safe_serialization=True)


def export_checkpoint(source: str | Path, out: str | Path, merge_lora: bool = False) -> Path:
    """Write a plain HF folder (config + safetensors + tokenizer) from a stage directory or a
    checkpoint folder. An adapter checkpoint needs `merge_lora=True` (the result then loads with
    `transformers.AutoModel` after `import dare`, no peft needed)."""
    source, out = resolve_checkpoint(source), Path(out)
    ckpt = source / "checkpoint" if (source / "checkpoint").is_dir() else source
    if not ((ckpt / "config.json").is_file() or is_adapter_dir(ckpt)):
        raise FileNotFoundError(f"{source}: no checkpoint (expected config.json or adapter_config.json)")
    if is_adapter_dir(ckpt) and not merge_lora:
        raise ValueError(f"{ckpt} is a LoRA adapter; pass --merge-lora to write a plain model folder")
    model = load_policy(ckpt, merge=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if (ckpt / "tokenizer_config.json").is_file() or (ckpt / "tokenizer.json").is_file():
        load_released_tokenizer(ckpt).save_pretrained(out)
    return out


__all__ = [
    "DTYPES",
    "check_model_tokenizer",
    "checkpoint_dtype",
    "check_vocab",
    "export_checkpoint",
    "is_adapter_dir",
    "load_model_and_tokenizer",
    "load_policy",
    "load_policy_skeleton",
    "meta_model",
    "quiet_progress_bars",
    "save_policy",
]
