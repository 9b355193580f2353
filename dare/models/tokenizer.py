"""Small tokenizers for the built-in tasks: character- or word-level vocabularies wrapped as a
`PreTrainedTokenizerFast` with the special tokens a diffusion LM needs (mask, eos, pad, bos) and a
chat template, saved and loaded like any Hugging Face tokenizer.

Special-token ids come first and are fixed, so tiny models and tokenizers agree by construction:
`<|pad|>`=0, `<|eos|>`=1, `<|mdm_mask|>`=2, `<|bos|>`=3, `<|unk|>`=4, then the role tokens.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, MASK, BOS, UNK = "<|pad|>", "<|eos|>", "<|mdm_mask|>", "<|bos|>", "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|eot|>")
SPECIAL_TOKENS = (PAD, EOS, MASK, BOS, UNK, *ROLE_TOKENS)

# <|bos|><|user|>content<|eot|><|assistant|>  (the generation prompt ends with <|assistant|>)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}"
    "{% if not (loop.last and message['role'] == 'assistant' and not add_generation_prompt) %}<|eot|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(symbols: Iterable[str], level: str = "char") -> PreTrainedTokenizerFast:
    """A tokenizer over `symbols` (characters for `level="char"`, whitespace-separated words for
    `level="word"`), plus the special tokens above."""
    if level not in ("char", "word"):
        raise ValueError(f"level must be 'char' or 'word', got {level!r}")
    symbols = list(dict.fromkeys(s for s in symbols if s not in SPECIAL_TOKENS))
    if level == "char" and any(len(s) != 1 for s in symbols):
        raise ValueError(f"char-level symbols must be single characters, got {[s for s in symbols if len(s) != 1]}")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for s in symbols:
        vocab[s] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    if level == "char":
        tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
        tk.decoder = decoders.Fuse()
    else:
        tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tk.decoder = decoders.WordPiece(prefix="\x00", cleanup=False)  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token=PAD,
        eos_token=EOS,
        mask_token=MASK,
        bos_token=BOS,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def model_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """The ids a model config needs from this tokenizer (pass as `**overrides` to `dare.models.tiny`)."""
    eot = tokenizer.convert_tokens_to_ids("<|eot|>")
    return dict(
        vocab_size=len(tokenizer),
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=[tokenizer.eos_token_id, eot] if eot is not None else tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tokenizer", "model_token_ids"]
