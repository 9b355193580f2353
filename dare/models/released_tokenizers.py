"""Released tokenizers, loaded from their files as published and without remote code.

The released checkpoints name tokenizer code of their own in `tokenizer_config.json`
(`tokenizer_class` and/or `auto_map.AutoTokenizer`), which plain `AutoTokenizer` will only run
with `trust_remote_code=True` (and otherwise prompts on stdin). Each of them is a stock
tokenizer underneath, so `REMOTE_TOKENIZERS` maps the remote name to the transformers class that
reads the same files:

| release                       | names                                   | files                           | loaded as              |
|-------------------------------|-----------------------------------------|---------------------------------|------------------------|
| Dream-v0-Instruct-7B          | tokenization_dream.DreamTokenizer       | vocab.json + merges.txt (Qwen2) | Qwen2Tokenizer         |
| SDAR-1.7B/4B/8B-Chat          | tokenization_qwen2.Qwen2Tokenizer       | vocab.json + merges.txt (+json) | Qwen2Tokenizer         |
| SDAR-30B-A3B-Chat             | Qwen2Tokenizer (no auto_map)            | same                            | Qwen2Tokenizer         |
| LLaDA-8B-Instruct, LLaDA2.x   | PreTrainedTokenizerFast                 | tokenizer.json                  | PreTrainedTokenizerFast|

Any other remote class is refused with an error naming it. The chat template comes with the
files (`tokenizer_config.json` `chat_template`, or `chat_template.jinja`) and is what dare's
formatting applies (`dare.data.formatting.encode_prompt`).

`check_token_ids` then checks the model config's mask / EOS / pad ids against the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import transformers
from transformers import AutoTokenizer, PreTrainedConfig, PreTrainedTokenizerBase

from dare.models.hub import TOKENIZER_FILES, resolve_checkpoint
from dare.registry import Registry

# remote tokenizer name (an `auto_map.AutoTokenizer` entry or a `tokenizer_class`) -> the
# transformers class that reads the same released files
REMOTE_TOKENIZERS: Registry[str] = Registry("remote tokenizer class")
for _remote, _local in (
    ("tokenization_dream.DreamTokenizer", "Qwen2Tokenizer"),  # Dream: Qwen2 BPE + <|beginoftext|>, <|mask|>
    ("DreamTokenizer", "Qwen2Tokenizer"),
    ("tokenization_qwen2.Qwen2Tokenizer", "Qwen2Tokenizer"),  # SDAR ships Qwen2's own tokenizer code
    ("tokenization_qwen2_fast.Qwen2TokenizerFast", "Qwen2Tokenizer"),
):
    REMOTE_TOKENIZERS.register(_remote, _local)


def _auto_map_refs(cfg: dict) -> list[str]:
    entry = (cfg.get("auto_map") or {}).get("AutoTokenizer")
    refs = entry if isinstance(entry, list | tuple) else [entry]
    return [r for r in refs if r]


def _transformers_tokenizer(name: str | None) -> type | None:
    cls = getattr(transformers, name, None) if name else None
    return cls if isinstance(cls, type) and issubclass(cls, PreTrainedTokenizerBase) else None


def tokenizer_class_for(cfg: dict, config_file: str | Path = "tokenizer_config.json") -> type | None:
    """The transformers class to load a tokenizer with, from its `tokenizer_config.json` content
    (None: no class named, let `AutoTokenizer` read the files).

    Raises:
        ValueError: remote tokenizer code dare does not map, naming the class.
    """
    known = ", ".join(REMOTE_TOKENIZERS.names())
    for ref in _auto_map_refs(cfg):
        if ref not in REMOTE_TOKENIZERS:
            raise ValueError(
                f"{config_file}: auto_map.AutoTokenizer names remote tokenizer code {ref!r}; dare never runs "
                f"remote code (trust_remote_code) and knows no transformers equivalent of it (known: {known})"
            )
    name = cfg.get("tokenizer_class")
    if name in REMOTE_TOKENIZERS:
        return getattr(transformers, REMOTE_TOKENIZERS.get(name))
    if name is not None:
        cls = _transformers_tokenizer(name)
        if cls is None:
            raise ValueError(
                f"{config_file}: tokenizer_class {name!r} is neither a transformers tokenizer nor a known "
                f"remote tokenizer (known: {known})"
            )
        return cls
    refs = _auto_map_refs(cfg)
    return getattr(transformers, REMOTE_TOKENIZERS.get(refs[0])) if refs else None


def load_tokenizer(path_or_id: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer from a folder or Hub id, released files untouched, no remote code."""
    folder = resolve_checkpoint(path_or_id, what="tokenizer", files=TOKENIZER_FILES)
    cfg_file = folder / "tokenizer_config.json"
    cfg: dict = {}
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_file}: not valid JSON ({e})") from None
    elif not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder}: no tokenizer files (tokenizer_config.json or tokenizer.json)")
    cls = tokenizer_class_for(cfg, cfg_file)
    tokenizer = (cls or AutoTokenizer).from_pretrained(folder)
    # a saved copy must not point at remote code that is not saved with it
    tokenizer.init_kwargs.pop("auto_map", None)
    return tokenizer


def _ids(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]


def check_token_ids(
    config: PreTrainedConfig, tokenizer: PreTrainedTokenizerBase, config_file: str | Path = "config.json"
) -> None:
    """The model config's mask / EOS (EOT) / pad ids must be tokens of `tokenizer`, and the
    tokenizer's own mask and EOS tokens (when it names them) must have those ids.

    Raises:
        ValueError: naming the config field, its id, and what the tokenizer has there.
    """
    size = len(tokenizer)

    def token_of(field: str, i: int) -> str:
        token = tokenizer.convert_ids_to_tokens(i) if 0 <= i < size else None
        if token is None:
            raise ValueError(f"{config_file} {field}={i} is not a token of the tokenizer ({size} tokens)")
        return token

    mask = int(config.mask_token_id)
    mask_token = token_of("mask_token_id", mask)
    if tokenizer.mask_token is not None and tokenizer.mask_token_id != mask:
        raise ValueError(
            f"{config_file} mask_token_id={mask} but the tokenizer maps it to {mask_token!r} / the tokenizer's "
            f"mask token {tokenizer.mask_token!r} is {tokenizer.mask_token_id}"
        )
    if tokenizer.mask_token is None and mask_token not in tokenizer.get_added_vocab():
        raise ValueError(
            f"{config_file} mask_token_id={mask} maps to {mask_token!r}, an ordinary vocabulary token of the "
            "tokenizer (a mask token is an added special token)"
        )
    eos = _ids(getattr(config, "eos_token_id", None))
    for i in eos:
        token_of("eos_token_id", i)
    if eos and tokenizer.eos_token is not None and tokenizer.eos_token_id not in eos:
        raise ValueError(
            f"{config_file} eos_token_id={eos if len(eos) > 1 else eos[0]} maps to "
            f"{[tokenizer.convert_ids_to_tokens(i) for i in eos]} but the tokenizer's eos token "
            f"{tokenizer.eos_token!r} is {tokenizer.eos_token_id}"
        )
    pad = getattr(config, "pad_token_id", None)
    if pad is not None:
        token_of("pad_token_id", int(pad))


__all__ = ["REMOTE_TOKENIZERS", "check_token_ids", "load_tokenizer", "tokenizer_class_for"]
