"""Small replicas of the released checkpoints, in their released layouts, for offline tests and
rehearsals of real-scale recipes.

A replica is a folder laid out like the release on the Hub: `config.json` as the release writes
it (`model_type`, `architectures`, `auto_map` naming the remote code, `torch_dtype`) with the
dims shrunk; random weights saved under the release's shard naming
(`model-0000K-of-0000N.safetensors` + `model.safetensors.index.json`, or one `model.safetensors`
where the release has one); the tokenizer files of the release (same file set, the same
`tokenizer_class` / `auto_map` remote names, the real special-token strings) over a tiny
byte-level BPE vocabulary, so special ids are small and the config's mask / EOS / pad ids are the
replica tokenizer's ids; and a chat template with the release's structure (built here, not
copied). Nothing is downloaded.

    make_replica("llada", tmp_path)                       # GSAI-ML/LLaDA-8B-Instruct layout
    make_replica("sdar", tmp_path, size="4b")             # JetLM/SDAR-4B-Chat layout
    install_replica("dream", hub_cache)                   # into a huggingface_hub cache folder,
                                                          # so "Dream-org/Dream-v0-Instruct-7B" resolves
    make_replica("llada", tmp, dims=dict(d_model=2048, n_layers=16, ...), n_shards=6)   # ~1B

`RELEASES` names every layout; a rehearsal of a real recipe installs the replica of its
`model.path` in a temporary `HF_HUB_CACHE` with `HF_HUB_OFFLINE=1` and runs the recipe unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from dare.models import FAMILIES
from dare.models.dream import dream_7b
from dare.models.llada import llada_8b
from dare.models.llada2_moe import llada2_mini
from dare.models.sdar import sdar_1_7b, sdar_4b, sdar_8b
from dare.models.sdar_moe import sdar_30b_a3b

# ------------------------------------------------------------------------------- tokenizers

# Qwen2's added tokens in release order (Dream and SDAR share them); False = not "special"
QWEN_ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
]  # fmt: skip
DREAM_ADDED = QWEN_ADDED + [("<|beginoftext|>", True), ("<|mask|>", True)]
SDAR_ADDED = QWEN_ADDED + [
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
    ("<|MASK|>", False),  # the release marks its mask token non-special in added_tokens_decoder
]  # fmt: skip
# LLaDA: a reserved block (a few of its 250 reserved tokens kept), the mask among them, then
# the role / header tokens of its chat template
LLADA_ADDED = [(t, True) for t in (
    "<|startoftext|>", "<|endoftext|>", "[CLS]", "[gMASK]", "<|reserved_token_0|>", "<|reserved_token_1|>",
    "<|mdm_mask|>", "<|reserved_token_253|>", "<role>", "</role>", "<|arithmetic_start|>", "<|arithmetic_end|>",
    "<|number_start|>", "<|number_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
)]  # fmt: skip
QWEN_EXTRA_SPECIAL = [t for t, _ in QWEN_ADDED[1:14]]  # additional_special_tokens of Dream / SDAR

# A few merges so words become multi-byte tokens (the merge order is what BPE applies).
MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("Ġ", "t"), ("h", "e"),
          ("Ġt", "he"), ("i", "n"), ("Ġ", "a")]  # fmt: skip


def byte_level_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """256 byte symbols (GPT-2 / Qwen2 byte-to-unicode alphabet) + the merged tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges = list(dict.fromkeys(MERGES))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return vocab, merges


def _added_decoder(added: list[tuple[str, bool]], first_id: int) -> dict[str, dict]:
    return {
        str(first_id + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": special}
        for i, (t, special) in enumerate(added)
    }  # fmt: skip


def _tokenizer_json(vocab: dict[str, int], merges: list[tuple[str, str]], added: list[tuple[str, bool]]) -> str:
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in added])
    return tk.to_str()


def _special_map(**tokens: str | list[str]) -> str:
    def entry(t):
        return t if isinstance(t, list) else {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                               "single_word": False}  # fmt: skip

    return json.dumps({k: entry(v) for k, v in tokens.items()}, indent=2)


# Chat templates with the releases' structure (roles, markers, generation prompt).
def llada_chat_template() -> str:
    """BOS, then `<|start_header_id|>ROLE<|end_header_id|>\\n\\nCONTENT<|eot_id|>` per turn; the
    assistant header is always appended (the release ignores add_generation_prompt)."""
    turn = "'<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>'"
    return (
        "{% for m in messages %}{% set c = " + turn + " %}{% if loop.index0 == 0 %}{% set c = bos_token + c %}"
        "{% endif %}{{ c }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    )


def qwen_chat_template(default_system: str | None) -> str:
    """`<|im_start|>ROLE\\nCONTENT<|im_end|>\\n` per turn; Dream (Qwen2.5) adds a default system
    turn, SDAR (Qwen3) does not; `<|im_start|>assistant\\n` as the generation prompt."""
    system = (
        "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
        "'<|im_end|>\\n' }}{%- set rest = messages[1:] %}"
    )
    if default_system is not None:
        system += (
            "{%- else %}{{- '<|im_start|>system\\n" + default_system + "<|im_end|>\\n' }}{%- set rest = messages %}"
        )
    else:
        system += "{%- else %}{%- set rest = messages %}"
    return (
        system + "{%- endif %}{%- for m in rest %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
        "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )


@dataclass(frozen=True)
class TokenizerFiles:
    """A replica tokenizer's files and the ids a config needs."""

    files: dict[str, str]
    ids: dict[str, int | None]  # mask_token_id, eos_token_id, pad_token_id, bos_token_id
    size: int  # number of tokens


def llada_tokenizer_files() -> TokenizerFiles:
    vocab, merges = byte_level_vocab()
    first = len(vocab)
    ids = {t: first + i for i, (t, _) in enumerate(LLADA_ADDED)}
    extra = ["<role>", "</role>", "<|arithmetic_start|>", "<|arithmetic_end|>", "<|number_start|>", "<|number_end|>"]
    config = {
        "add_bos_token": False, "add_eos_token": False, "added_tokens_decoder": _added_decoder(LLADA_ADDED, first),
        "additional_special_tokens": extra, "bos_token": "<|startoftext|>", "chat_template": llada_chat_template(),
        "clean_up_tokenization_spaces": False, "cls_token": "[CLS]", "eos_token": "<|endoftext|>",
        "fast_tokenizer": True, "gmask_token": "[gMASK]", "merges_file": None,
        "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast", "trust_remote_code": True,
        "vocab_file": None,
    }  # fmt: skip
    files = {
        "tokenizer.json": _tokenizer_json(vocab, merges, LLADA_ADDED),
        "tokenizer_config.json": json.dumps(config, indent=2),
        "special_tokens_map.json": _special_map(
            additional_special_tokens=extra, bos_token="<|startoftext|>", cls_token="[CLS]",
            eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        ),
    }  # fmt: skip
    return TokenizerFiles(
        files,
        {"mask_token_id": ids["<|mdm_mask|>"], "eos_token_id": ids["<|endoftext|>"],
         "pad_token_id": ids["<|endoftext|>"], "bos_token_id": None},
        first + len(LLADA_ADDED),
    )  # fmt: skip


def _qwen_common(added: list[tuple[str, bool]]) -> tuple[dict, list, int, dict[str, int]]:
    vocab, merges = byte_level_vocab()
    first = len(vocab)
    return vocab, merges, first, {t: first + i for i, (t, _) in enumerate(added)}


def _vocab_merges_files(vocab: dict[str, int], merges: list[tuple[str, str]]) -> dict[str, str]:
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
    }


def dream_tokenizer_files() -> TokenizerFiles:
    vocab, merges, first, ids = _qwen_common(DREAM_ADDED)
    config = {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": _added_decoder(DREAM_ADDED, first),
        "additional_special_tokens": ["<|beginoftext|>", "<|mask|>"],
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "bos_token": "<|beginoftext|>", "chat_template": qwen_chat_template("You are a helpful assistant."),
        "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>", "errors": "replace",
        "mask_token": "<|mask|>", "model_max_length": 131072, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "DreamTokenizer", "unk_token": None,
    }  # fmt: skip
    files = {
        **_vocab_merges_files(vocab, merges),
        "tokenizer_config.json": json.dumps(config, indent=2),
        "added_tokens.json": json.dumps({t: ids[t] for t, _ in DREAM_ADDED}, indent=2),
        "special_tokens_map.json": _special_map(
            additional_special_tokens=["<|beginoftext|>", "<|mask|>"], bos_token="<|beginoftext|>",
            eos_token="<|endoftext|>", mask_token="<|mask|>", pad_token="<|endoftext|>",
        ),
    }  # fmt: skip
    eos = ids["<|endoftext|>"]
    ids_out = {"mask_token_id": ids["<|mask|>"], "eos_token_id": eos, "pad_token_id": eos, "bos_token_id": eos}
    return TokenizerFiles(files, ids_out, first + len(DREAM_ADDED))


def sdar_tokenizer_files(with_auto_map: bool = True) -> TokenizerFiles:
    """SDAR-1.7B/4B/8B-Chat (auto_map to their copy of Qwen2's tokenizer code); SDAR-30B-A3B-Chat
    has no auto_map (`with_auto_map=False`)."""
    vocab, merges, first, ids = _qwen_common(SDAR_ADDED)
    template = qwen_chat_template(None)
    config = {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": _added_decoder(SDAR_ADDED, first),
        "additional_special_tokens": [*QWEN_EXTRA_SPECIAL, "<|MASK|>"], "bos_token": None,
        "chat_template": template, "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>",
        "mask_token": "<|MASK|>", "errors": "replace", "model_max_length": 131072, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }  # fmt: skip
    if with_auto_map:
        config["auto_map"] = {"AutoTokenizer": ["tokenization_qwen2.Qwen2Tokenizer", None]}
    # the release's added_tokens.json / special_tokens_map.json spell the mask "<MASK>" (same id)
    added_json = {("<MASK>" if t == "<|MASK|>" else t): ids[t] for t, _ in SDAR_ADDED}
    files = {
        **_vocab_merges_files(vocab, merges),
        "tokenizer.json": _tokenizer_json(vocab, merges, SDAR_ADDED),
        "tokenizer_config.json": json.dumps(config, indent=2),
        "chat_template.jinja": template,
        "added_tokens.json": json.dumps(added_json, indent=2),
        "special_tokens_map.json": _special_map(
            additional_special_tokens=[*QWEN_EXTRA_SPECIAL, "<MASK>"], eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
        ),
    }  # fmt: skip
    eos = ids["<|endoftext|>"]
    ids_out = {"mask_token_id": ids["<|MASK|>"], "eos_token_id": eos, "pad_token_id": None, "bos_token_id": eos}
    return TokenizerFiles(files, ids_out, first + len(SDAR_ADDED))


def llada2_tokenizer_files() -> TokenizerFiles:
    """LLaDA2.0/2.1-mini: tokenizer.json only (no added_tokens_decoder), a mask token named in
    tokenizer_config.json, role-tag chat template."""
    vocab, merges = byte_level_vocab()
    added = [(t, True) for t in ("<|startoftext|>", "<|endoftext|>", "[CLS]", "[gMASK]", "<|mask|>", "<role>",
                                 "</role>", "<|role_end|>")]  # fmt: skip
    first = len(vocab)
    ids = {t: first + i for i, (t, _) in enumerate(added)}
    template = (
        "{{- '<role>SYSTEM</role>' }}{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n' }}"
        "{%- endif %}{{- 'detailed thinking off<|role_end|>' }}{%- for m in messages %}{%- if m.role == 'user' %}"
        "{{- '<role>HUMAN</role>' + m.content + '<|role_end|>' }}{%- elif m.role == 'assistant' %}"
        "{{- '<role>ASSISTANT</role>' + m.content + '<|role_end|>' }}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<role>ASSISTANT</role>' }}{%- endif %}"
    )
    config = {
        "add_bos_token": False, "add_eos_token": False, "bos_token": "<|startoftext|>", "chat_template": template,
        "clean_up_tokenization_spaces": False, "cls_token": "[CLS]", "eos_token": "<|endoftext|>",
        "mask_token": "<|mask|>", "fast_tokenizer": True, "gmask_token": "[gMASK]", "merges_file": None,
        "model_max_length": 32768, "pad_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast",
        "trust_remote_code": True, "vocab_file": None,
    }  # fmt: skip
    files = {
        "tokenizer.json": _tokenizer_json(vocab, merges, added),
        "tokenizer_config.json": json.dumps(config, indent=2),
        "special_tokens_map.json": json.dumps({"bos_token": "<|startoftext|>", "cls_token": "[CLS]",
                                               "eos_token": "<|endoftext|>", "gmask_token": "[gMASK]",
                                               "pad_token": "<|endoftext|>", "mask_token": "<|mask|>"}),
    }  # fmt: skip
    eos = ids["<|endoftext|>"]
    return TokenizerFiles(files, {"mask_token_id": ids["<|mask|>"], "eos_token_id": eos, "pad_token_id": eos,
                                  "bos_token_id": None}, first + len(added))  # fmt: skip


# every released tokenizer layout, by release name (tokenizer-only tests write these files)
TOKENIZER_LAYOUTS: dict[str, Callable[[], TokenizerFiles]] = {
    "LLaDA-8B-Instruct": lambda: llada_tokenizer_files(),
    "Dream-v0-Instruct-7B": lambda: dream_tokenizer_files(),
    "SDAR-1.7B/4B/8B-Chat": lambda: sdar_tokenizer_files(),
    "SDAR-30B-A3B-Chat": lambda: sdar_tokenizer_files(with_auto_map=False),
    "LLaDA2.0/2.1-mini": lambda: llada2_tokenizer_files(),
}


def write_tokenizer(files: TokenizerFiles, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.files.items():
        (folder / name).write_text(text)
    return folder


# ------------------------------------------------------------------------------- releases


@dataclass(frozen=True)
class Release:
    """One released checkpoint's layout."""

    name: str  # folder name of the release
    repo_id: str  # Hub id
    family: str  # dare family
    full_config: Callable  # dare's config at the release's sizes
    n_shards: int  # safetensors files of the release (1: a single model.safetensors)
    tokenizer: Callable[[], TokenizerFiles]
    architectures: list[str]
    auto_map: dict[str, str]
    tiny_dims: dict = field(default_factory=dict)  # the shrunk dims replicas use by default
    extra_config: dict = field(default_factory=dict)  # released config fields dare does not model
    # the shard file of each key where the release names shards by content (SDAR-30B-A3B: one
    # file per layer); None = `model-0000K-of-0000N` filled in key order (n_shards files)
    shard_of: Callable[[str], str] | None = None


_LLADA_AUTO = {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
               "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"}  # fmt: skip
_SDAR_AUTO = {"AutoConfig": "configuration_sdar.SDARConfig", "AutoModel": "modeling_sdar.SDARModel",
              "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"}  # fmt: skip
_LLADA2_AUTO = {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
                "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"}  # fmt: skip
# layer 0 dense, layer 1 MoE: 8 experts in 4 groups (2 kept), top-2, one shared expert
_LLADA2_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, rotary_dim=8, num_experts=8, num_experts_per_tok=2,
                    moe_intermediate_size=32, n_group=4, topk_group=2)  # fmt: skip
_QWEN_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)  # fmt: skip


def _sdar_moe_shard(key: str) -> str:
    """SDAR-30B-A3B-Chat's shards: `layer-{i}-ep-0-of-1.safetensors` per decoder layer (expert
    parallel degree 1), everything else in `others.safetensors`."""
    parts = key.split(".")
    return f"layer-{parts[2]}-ep-0-of-1.safetensors" if parts[:2] == ["model", "layers"] else "others.safetensors"


def _sdar(name: str, size_config: Callable, n_shards: int) -> Release:
    return Release(
        name=f"SDAR-{name}-Chat", repo_id=f"JetLM/SDAR-{name}-Chat", family="sdar", full_config=size_config,
        n_shards=n_shards, tokenizer=sdar_tokenizer_files, architectures=["SDARForCausalLM"], auto_map=_SDAR_AUTO,
        tiny_dims={**_QWEN_TINY, "head_dim": 16}, extra_config={"fuse_cross_entropy": True, "ep_size": 1},
    )  # fmt: skip


RELEASES: dict[str, Release] = {
    "llada": Release(
        name="LLaDA-8B-Instruct", repo_id="GSAI-ML/LLaDA-8B-Instruct", family="llada", full_config=llada_8b,
        n_shards=6, tokenizer=llada_tokenizer_files, architectures=["LLaDAModelLM"], auto_map=_LLADA_AUTO,
        tiny_dims=dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128),
        extra_config={"init_device": "meta", "precision": "amp_bf16"},
    ),
    "dream": Release(
        name="Dream-v0-Instruct-7B", repo_id="Dream-org/Dream-v0-Instruct-7B", family="dream", full_config=dream_7b,
        n_shards=4, tokenizer=dream_tokenizer_files, architectures=["DreamModel"],
        auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        tiny_dims=_QWEN_TINY,
    ),
    # DiffuCoder (Apple, arXiv 2506.20639) is a Dream-architecture model with Dream's tokenizer
    # code (DreamModel, tokenization_dream). Its released files are not in the DARE repository
    # dare reads layouts from: the replica assumes Dream-v0-Instruct-7B's layout (Qwen2.5-7B sizes,
    # Dream's tokenizer files and chat template), which its model card's loading code implies.
    "diffucoder": Release(
        name="DiffuCoder-7B-Instruct", repo_id="apple/DiffuCoder-7B-Instruct", family="dream", full_config=dream_7b,
        n_shards=4, tokenizer=dream_tokenizer_files, architectures=["DreamModel"],
        auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        tiny_dims=_QWEN_TINY,
    ),
    # LLaDA2.0-mini and LLaDA2.1-mini ship the same config.json, key set and 7 shards (2.1 stores
    # expert_bias in fp32; a replica stores every tensor in its one dtype)
    **{
        f"llada{v}-mini": Release(
            name=f"LLaDA{v}-mini", repo_id=f"inclusionAI/LLaDA{v}-mini", family="llada2_moe",
            full_config=llada2_mini, n_shards=7, tokenizer=llada2_tokenizer_files,
            architectures=["LLaDA2MoeModelLM"], auto_map=_LLADA2_AUTO, tiny_dims=_LLADA2_TINY,
        )
        for v in ("2.0", "2.1")
    },
    "sdar-30b-a3b": Release(
        name="SDAR-30B-A3B-Chat", repo_id="JetLM/SDAR-30B-A3B-Chat", family="sdar_moe", full_config=sdar_30b_a3b,
        n_shards=49, tokenizer=lambda: sdar_tokenizer_files(with_auto_map=False), architectures=["SDARMoeForCausalLM"],
        auto_map={"AutoConfig": "configuration_sdar_moe.SDARMoeConfig", "AutoModel": "modeling_sdar_moe.SDARMoeModel",
                  "AutoModelForCausalLM": "modeling_sdar_moe.SDARMoeForCausalLM"},
        tiny_dims={**_QWEN_TINY, "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2,
                   "moe_intermediate_size": 32},
        shard_of=_sdar_moe_shard,
    ),
    "sdar-1.7b": _sdar("1.7B", sdar_1_7b, 1),
    "sdar-4b": _sdar("4B", sdar_4b, 2),
    "sdar-8b": _sdar("8B", sdar_8b, 4),
}  # fmt: skip


def release(family: str, size: str | None = None) -> Release:
    """`RELEASES` entry of `family` ("llada" | "dream" | "sdar"; SDAR's `size` "1.7b" | "4b" | "8b")."""
    key = family if family != "sdar" else f"sdar-{(size or '1.7b').lower()}"
    if key not in RELEASES:
        raise KeyError(f"no release layout {key!r}; known: {sorted(RELEASES)}")
    return RELEASES[key]


def replica_config(rel: Release, tok: TokenizerFiles, dims: dict | None = None):
    """The dare config of a replica: the release's config with `dims` (default: tiny) and the
    replica tokenizer's ids; vocab padded to a multiple of 64 like the releases'."""
    fam = FAMILIES.get(rel.family)
    raw = rel.full_config().to_dict()
    vocab = -(-tok.size // 64) * 64
    sizes = {"vocab_size": vocab, "embedding_size": vocab} if rel.family == "llada" else {"vocab_size": vocab}
    raw.update(**sizes, **tok.ids)
    raw.update(rel.tiny_dims if dims is None else dims)  # explicit dims (a vocab_size too) win
    raw = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version", "architectures")}
    return fam.config_cls(**raw)


def _random_state(config, family: str, dtype: torch.dtype, seed: int):
    """(name, tensor) in the model's key order, drawn one tensor at a time (a ~1B replica never
    holds more than one shard's tensors)."""
    with torch.device("meta"):
        meta = FAMILIES.get(family).lm_cls(config)
    g = torch.Generator().manual_seed(seed)
    for name, t in meta.state_dict().items():
        if t.dim() == 1:  # norm weights at 1, biases at 0: a replica's activations stay tame
            value = torch.zeros(t.shape) if name.endswith(".bias") else torch.ones(t.shape)
        else:
            value = torch.randn(t.shape, generator=g) * 0.02
        yield name, value.to(dtype)


def _save_shards(config, family: str, folder: Path, n_shards: int, dtype: torch.dtype, seed: int) -> int:
    with torch.device("meta"):
        meta = FAMILIES.get(family).lm_cls(config)
    sizes = {k: v.numel() * torch.empty((), dtype=dtype).element_size() for k, v in meta.state_dict().items()}
    total = sum(sizes.values())
    budget = total / n_shards
    weight_map, shard, shard_bytes, index = {}, {}, 0, 1
    names = [f"model-{i:05d}-of-{n_shards:05d}.safetensors" for i in range(1, n_shards + 1)]
    if n_shards == 1:
        names = ["model.safetensors"]

    def flush():
        save_file(shard, str(folder / names[index - 1]), metadata={"format": "pt"})

    for name, value in _random_state(config, family, dtype, seed):
        if shard and shard_bytes + sizes[name] > budget * 1.001 and index < n_shards:
            flush()
            shard, shard_bytes, index = {}, 0, index + 1
        shard[name] = value
        shard_bytes += sizes[name]
        weight_map[name] = names[index - 1]
    flush()
    if index < n_shards:  # fewer tensors than shards: the remaining files are empty, as named
        for i in range(index, n_shards):
            save_file({}, str(folder / names[i]), metadata={"format": "pt"})
    if n_shards > 1:
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    return total


def _save_named_shards(config, family: str, folder: Path, shard_of: Callable[[str], str], dtype, seed: int) -> int:
    """Save each tensor into the shard file `shard_of(key)` names, plus the index."""
    shards: dict[str, dict[str, torch.Tensor]] = {}
    for name, value in _random_state(config, family, dtype, seed):
        shards.setdefault(shard_of(name), {})[name] = value
    for file, tensors in shards.items():
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for tensors in shards.values() for t in tensors.values())
    weight_map = {k: file for file, tensors in shards.items() for k in tensors}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    return total


def make_replica(
    family: str,
    root: str | Path,
    *,
    size: str | None = None,
    dims: dict | None = None,
    n_shards: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    config_edits: dict | None = None,
    tokenizer: TokenizerFiles | None = None,
) -> Path:
    """Write a replica of a release into `root/<release name>` and return that folder.

    Args:
        family: "llada" | "dream" | "sdar" (or a `RELEASES` key such as "sdar-4b", "llada2.0-mini").
        size: SDAR's size, "1.7b" (default) | "4b" | "8b".
        dims: config fields replacing the release's sizes (default: the layout's tiny dims).
        n_shards: safetensors files (default: as many as the release has).
        dtype: dtype of the saved weights (the releases ship bfloat16).
        config_edits: fields written into config.json over the replica's (e.g. a wrong mask id).
        tokenizer: replica tokenizer files (default: the release's layout).
    """
    rel = RELEASES[family] if family in RELEASES else release(family, size)
    tok = tokenizer or rel.tokenizer()
    config = replica_config(rel, tok, dims)
    folder = Path(root) / rel.name
    folder.mkdir(parents=True, exist_ok=True)
    if rel.shard_of is not None and n_shards is None:
        _save_named_shards(config, rel.family, folder, rel.shard_of, dtype, seed)
    else:
        _save_shards(config, rel.family, folder, n_shards or rel.n_shards, dtype, seed)
    saved = {k: v for k, v in config.to_dict().items() if k not in ("transformers_version", "dtype")}
    saved.update(architectures=rel.architectures, auto_map=rel.auto_map, torch_dtype=str(dtype).split(".")[-1],
                 **rel.extra_config, **(config_edits or {}))  # fmt: skip
    (folder / "config.json").write_text(json.dumps(saved, indent=2))
    generation = {k: tok.ids[k] for k in ("eos_token_id", "pad_token_id", "bos_token_id") if tok.ids[k] is not None}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    for name, text in tok.files.items():
        (folder / name).write_text(text)
    return folder


def place_in_hub_cache(folder: str | Path, cache_dir: str | Path, repo_id: str, revision: str = "main") -> Path:
    """Copy a folder into a huggingface_hub cache as `repo_id`'s snapshot at `revision`
    (`models--ORG--NAME/snapshots/<commit>/...` and `refs/<revision>`); returns the snapshot."""
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    repo_dir = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    return snapshot


def install_replica(family: str, cache_dir: str | Path, *, size: str | None = None, **kwargs) -> Path:
    """`make_replica` straight into a Hub cache under the release's id; returns the snapshot."""
    rel = RELEASES[family] if family in RELEASES else release(family, size)
    staging = Path(cache_dir) / ".replicas"
    folder = make_replica(family, staging, size=size, **kwargs)
    snapshot = place_in_hub_cache(folder, cache_dir, rel.repo_id)
    shutil.rmtree(staging)
    return snapshot


__all__ = [
    "RELEASES",
    "TOKENIZER_LAYOUTS",
    "Release",
    "TokenizerFiles",
    "install_replica",
    "make_replica",
    "place_in_hub_cache",
    "release",
    "replica_config",
    "write_tokenizer",
]
