"""Chat formatting, tokenization and batch collation for masked-diffusion training and sampling.

Rows are the normalized dicts of `dare.data.loading` and the built-in tasks: `prompt` is a string
(one user turn) or a list of chat messages `{"role", "content"}` (a system turn, earlier turns);
`response` is the assistant's reply text. The recipe's `data.system_prompt` is added to the
prompts when rows are loaded (`apply_system_prompt`).

Token layout of one SFT batch (P = longest prompt in the batch, G = `gen_length`, L = P + G):

    position:        0 ........... P-1 | P ................................ L-1
    input_ids:       pad pad <prompt>   | <response> eos eos eos ... eos
    attention_mask:  0   0   1 ...  1   | 1 ...                         1
    response_mask:   False ...    False | True ...                      True

Prompts are rendered with the tokenizer's chat template (`add_generation_prompt=True`) and
**left-padded** with the pad token, so every response starts at the same index P; the sampler uses
the same layout (left-padded prompts, then `gen_length` positions to fill). The response is
followed by EOS and **right-padded with EOS** up to G: LLaDA's SFT trains on this EOS padding (it
is in the loss), which is how the model learns to stop. `response_mask` (the loss mask) is True on
all G response positions, EOS padding included, and never on a prompt position.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # `labels` value on positions outside the loss (the transformers convention)
LongPrompts = Literal["skip", "truncate", "fail"]
LONG_PROMPTS = ("skip", "truncate", "fail")
MAX_REPORTED_ROWS = 3
# no token of the tokenizers dare meets (character level, BPE) spans more characters than this,
# so a prompt with more than max_prompt_length * MAX_CHARS_PER_TOKEN characters is over the limit
MAX_CHARS_PER_TOKEN = 64

logger = logging.getLogger("dare.data")

Message = Mapping[str, str]
Prompt = str | Sequence[Message]


def prompt_messages(prompt: Prompt) -> list[dict[str, str]]:
    """The chat messages of a prompt: a string becomes one user turn; a message list is copied.

    Raises:
        ValueError: a message without string `role` and `content`.
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [chat_message(m, f"prompt message {i}") for i, m in enumerate(prompt)]


def chat_message(message: Any, where: str, shown: str | None = None) -> dict[str, str]:
    """A copy of one chat message, `{"role", "content"}` (other keys dropped).

    Raises:
        ValueError: `message` is not a dict with string `role` and `content`; names `where` and
            shows `shown` (default: its repr).
    """
    m = message
    if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
        raise ValueError(f"{where} must be a dict with string 'role' and 'content', got {shown or repr(m)}")
    return {"role": m["role"], "content": m["content"]}


def with_system_prompt(prompt: Prompt, system_prompt: str | None, placement: str = "system") -> Prompt:
    """`prompt` with the recipe's `data.system_prompt`: a system turn first ("system"), or the
    text plus a blank line before the first user turn's content ("user_prefix", d1's
    `SYSTEM_PROMPT + "\\n\\n" + question`; a string prompt stays a string). None: unchanged.

    Raises:
        ValueError: "system" on a prompt that has its own system turn (two would conflict), a
            "user_prefix" prompt without a user turn, or an unknown placement.
    """
    if system_prompt is None:
        return prompt
    if placement == "user_prefix" and isinstance(prompt, str):
        return f"{system_prompt}\n\n{prompt}"
    messages = prompt_messages(prompt)
    if placement == "system":
        if any(m["role"] == "system" for m in messages):
            raise ValueError("data.system_prompt: this prompt already has a system turn; drop one of the two")
        return [{"role": "system", "content": system_prompt}, *messages]
    if placement != "user_prefix":
        raise ValueError(f"system prompt placement must be 'system' or 'user_prefix', got {placement!r}")
    for m in messages:
        if m["role"] == "user":
            m["content"] = f"{system_prompt}\n\n{m['content']}"
            return messages
    raise ValueError("data.system_prompt (user_prefix): this prompt has no user turn to prefix")


def apply_system_prompt(
    rows: Sequence[Mapping[str, Any]], system_prompt: str | None, placement: str = "system"
) -> list[dict[str, Any]]:
    """Copies of `rows` whose `prompt` carries the system prompt (`with_system_prompt`); rows
    pre-encoded as `prompt_ids` cannot take one and raise. None: the rows as a list, unchanged."""
    if system_prompt is None:
        return list(rows)
    out = []
    for i, row in enumerate(rows):
        if "prompt" not in row:
            raise ValueError(f"row {i}: data.system_prompt needs the prompt text (the row has none)")
        try:
            out.append({**row, "prompt": with_system_prompt(row["prompt"], system_prompt, placement)})
        except ValueError as e:
            raise ValueError(f"row {i}: {e}") from None
    return out


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    """Token ids of `prompt` rendered by the tokenizer's chat template with the generation prompt
    (for the built-in tokenizer: `<|bos|><|user|>{prompt}<|eot|><|assistant|>`).

    The template text is tokenized with `add_special_tokens=False`: the template already writes
    BOS, and tokenizers that add one would otherwise double it.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat template; dare formats prompts as chats")
    text = tokenizer.apply_chat_template(prompt_messages(prompt), add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str, eos_token_id: int | None = None) -> list[int]:
    """Token ids of the response text followed by one EOS (`eos_token_id`, default the tokenizer's)."""
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; pass eos_token_id")
    return [*tokenizer(response, add_special_tokens=False)["input_ids"], eos]


def encode_sft_row(row: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    """`{"prompt_ids", "response_ids"}` of a row with `prompt` and `response` (response ids end
    with EOS). Collators accept such pre-encoded rows, so a dataset can be tokenized once."""
    return {
        "prompt_ids": encode_prompt(tokenizer, row["prompt"]),
        "response_ids": encode_response(tokenizer, row["response"]),
    }


def _prompt_ids(row: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return list(row["prompt_ids"]) if "prompt_ids" in row else encode_prompt(tokenizer, row["prompt"])


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to the longest: ids [B, P] and attention mask [B, P] (0 on padding)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        if s:
            ids[b, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            attention[b, width - len(s) :] = 1
    return ids, attention


def collate_prompts(rows: Sequence[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    """Left-padded prompts for generation (RL rollouts, evaluation).

    Returns:
        input_ids: [B, P] prompt ids, left-padded with the pad token.
        attention_mask: [B, P] 1 on prompt tokens, 0 on padding.
        prompt_lengths: [B] number of real prompt tokens.
    """
    if not rows:
        raise ValueError("collate_prompts: no rows")
    prompts = [_prompt_ids(r, tokenizer) for r in rows]
    input_ids, attention_mask = _left_pad(prompts, tokenizer.pad_token_id)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "prompt_lengths": torch.tensor([len(p) for p in prompts], dtype=torch.long),
    }


def collate_sft(
    rows: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    gen_length: int | None = None,
    truncate: bool = False,
) -> dict[str, torch.Tensor]:
    """A masked-diffusion SFT batch from rows with `prompt` and `response` (or pre-encoded
    `prompt_ids` / `response_ids`, see `encode_sft_row`); layout in the module docstring.

    Args:
        gen_length: G, the number of response positions; None uses the longest response + EOS
            in the batch. Fix it to the sampler's `gen_length` so SFT teaches the model to fill
            exactly that many positions (EOS after the answer).
        truncate: a response (with its EOS) longer than G is cut to G tokens, losing its EOS;
            when False (default) such a row raises instead.

    Returns:
        input_ids: [B, L] long, L = P + G.
        attention_mask: [B, L] long, 0 on the prompt's left padding only.
        response_mask: [B, L] bool, True on the G response positions (the loss positions).
        labels: [B, L] long, input_ids on response positions, -100 elsewhere.
        prompt_lengths: [B] real prompt tokens.
        response_lengths: [B] response tokens including the first EOS, excluding EOS padding.

    Raises:
        ValueError: no rows, or a response longer than `gen_length` with `truncate=False`.
    """
    if not rows:
        raise ValueError("collate_sft: no rows")
    prompts = [_prompt_ids(r, tokenizer) for r in rows]
    responses = [
        list(r["response_ids"]) if "response_ids" in r else encode_response(tokenizer, r["response"]) for r in rows
    ]
    G = max(len(r) for r in responses) if gen_length is None else gen_length
    if G < 1:
        raise ValueError(f"collate_sft: gen_length must be >= 1, got {gen_length}")
    for b, r in enumerate(responses):
        if len(r) > G:
            if not truncate:
                raise ValueError(
                    f"collate_sft: row {b} has a response of {len(r)} tokens (with EOS) > gen_length={G}; "
                    "raise gen_length or pass truncate=True"
                )
            responses[b] = r[:G]
    prompt_ids, prompt_attention = _left_pad(prompts, tokenizer.pad_token_id)  # [B, P]
    B, P = prompt_ids.shape
    response_ids = torch.full((B, G), tokenizer.eos_token_id, dtype=torch.long)  # EOS padding
    for b, r in enumerate(responses):
        response_ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)  # [B, P + G]
    attention_mask = torch.cat([prompt_attention, torch.ones((B, G), dtype=torch.long)], dim=1)
    response_mask = torch.zeros((B, P + G), dtype=torch.bool)
    response_mask[:, P:] = True
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_mask": response_mask,
        "labels": input_ids.masked_fill(~response_mask, IGNORE_INDEX),
        "prompt_lengths": torch.tensor([len(p) for p in prompts], dtype=torch.long),
        "response_lengths": torch.tensor([len(r) for r in responses], dtype=torch.long),
    }


def collate_preference(
    rows: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    gen_length: int | None = None,
    truncate: bool = False,
) -> dict[str, torch.Tensor]:
    """A DPO/VRPO batch from rows with `prompt`, `chosen`, `rejected`: `collate_sft` of the
    chosen and of the rejected responses with one shared G (None: the longest of both), keys
    prefixed `chosen_` / `rejected_`. Both halves share the prompt layout, so position i holds
    the same prompt token in `chosen_input_ids` and `rejected_input_ids`."""
    if not rows:
        raise ValueError("collate_preference: no rows")
    prompts = [{"prompt_ids": _prompt_ids(r, tokenizer)} for r in rows]
    chosen = [{**p, "response_ids": encode_response(tokenizer, r["chosen"])} for p, r in zip(prompts, rows)]
    rejected = [{**p, "response_ids": encode_response(tokenizer, r["rejected"])} for p, r in zip(prompts, rows)]
    if gen_length is None:
        gen_length = max(len(x["response_ids"]) for x in chosen + rejected)
    out = {f"chosen_{k}": v for k, v in collate_sft(chosen, tokenizer, gen_length, truncate).items()}
    out.update({f"rejected_{k}": v for k, v in collate_sft(rejected, tokenizer, gen_length, truncate).items()})
    return out


@dataclass
class PromptReport:
    """What `limit_prompts` did: rows seen, prompts over the limit (skipped or truncated) and rows
    whose text holds characters the tokenizer maps to its unknown token."""

    rows: int = 0
    long: int = 0
    unknown: int = 0
    long_examples: list[str] = field(default_factory=list)
    unknown_examples: list[str] = field(default_factory=list)


def _unknown_text(row: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int]) -> str | None:
    """The first text of `row` (prompt, then response / chosen / rejected) that encodes to the
    unknown token, or None (also when the tokenizer has no unknown token: byte-level BPE)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return None
    if unk in prompt_ids:
        return str(row.get("prompt"))
    for name in ("response", "chosen", "rejected"):
        text = row.get(name)
        if isinstance(text, str) and unk in tokenizer(text, add_special_tokens=False)["input_ids"]:
            return text
    return None


def _prompt_chars(prompt: Any) -> int:
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, Sequence):
        return sum(len(m.get("content", "")) for m in prompt if isinstance(m, Mapping))
    return 0


def _prompt_tail(prompt: Prompt, max_chars: int) -> Prompt:
    """The last `max_chars` characters of a string prompt (a conversation is kept whole)."""
    return prompt[-max_chars:] if isinstance(prompt, str) else prompt


def _snippet(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def limit_prompts(
    rows: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    max_prompt_length: int,
    long_prompts: LongPrompts = "skip",
    source: str = "data",
) -> tuple[list[dict[str, Any]], PromptReport]:
    """Apply `data.max_prompt_length` (in tokens, chat template included) and count unknown
    characters, before any row reaches a model.

    A prompt longer than `max_prompt_length` is, per `long_prompts`: "skip" dropped, "truncate"
    cut to its last `max_prompt_length` tokens (the end of the question and the template's
    assistant header, which generation continues from; the row then carries `prompt_ids`), or
    "fail" a ValueError naming `source`, the row and its length. Rows whose text holds characters
    the tokenizer maps to its unknown token are counted. Both counts are logged as one warning
    each on the `dare.data` logger with the first few rows.

    Raises:
        ValueError: a long prompt under "fail", an unknown `long_prompts`, or every prompt skipped.
    """
    if long_prompts not in LONG_PROMPTS:
        raise ValueError(f"long_prompts must be one of {LONG_PROMPTS}, got {long_prompts!r}")
    report = PromptReport(rows=len(rows))
    kept: list[dict[str, Any]] = []
    max_chars = max_prompt_length * MAX_CHARS_PER_TOKEN
    for i, row in enumerate(rows):
        chars = _prompt_chars(row.get("prompt"))
        # a prompt far over the limit is not tokenized whole (a 10 MB line takes a minute)
        ids = None if "prompt_ids" not in row and chars > max_chars else _prompt_ids(row, tokenizer)
        out = dict(row)
        if ids is None or len(ids) > max_prompt_length:
            size = f"{chars} characters" if ids is None else f"{len(ids)} tokens"
            if long_prompts == "fail":
                raise ValueError(
                    f"{source}: row {i}: the prompt is {size} > data.max_prompt_length={max_prompt_length} "
                    "(data.long_prompts: fail; use skip or truncate, or raise max_prompt_length)"
                )
            report.long += 1
            if len(report.long_examples) < MAX_REPORTED_ROWS:
                report.long_examples.append(f"row {i} ({size})")
            if long_prompts == "skip":
                continue
            if ids is None:  # only the end survives truncation: encode the end
                ids = encode_prompt(tokenizer, _prompt_tail(row["prompt"], max_chars))
            ids = out["prompt_ids"] = ids[-max_prompt_length:]
        unknown = _unknown_text(row, tokenizer, ids)
        if unknown is not None:
            report.unknown += 1
            if len(report.unknown_examples) < MAX_REPORTED_ROWS:
                report.unknown_examples.append(f"row {i}: {_snippet(unknown)}")
        kept.append(out)
    _log_report(report, source, max_prompt_length, long_prompts, tokenizer)
    if not kept:
        raise ValueError(
            f"{source}: every one of the {len(rows)} prompts is longer than data.max_prompt_length={max_prompt_length}"
        )
    return kept, report


def _log_report(
    report: PromptReport, source: str, max_len: int, policy: str, tokenizer: PreTrainedTokenizerBase
) -> None:
    if report.long:
        verb = "skipped" if policy == "skip" else "truncated"
        logger.warning(
            "%s: %s %d of %d prompts longer than data.max_prompt_length=%d tokens (data.long_prompts: %s); first: %s",
            source, verb, report.long, report.rows, max_len, policy, "; ".join(report.long_examples),
        )  # fmt: skip
    if report.unknown:
        logger.warning(
            "%s: %d of %d rows hold characters the tokenizer does not know (encoded as %s); first: %s",
            source, report.unknown, report.rows, tokenizer.unk_token, "; ".join(report.unknown_examples),
        )  # fmt: skip


@dataclass
class SFTCollator:
    """`collate_sft` bound to a tokenizer and `gen_length`, for `DataLoader(collate_fn=...)`."""

    tokenizer: PreTrainedTokenizerBase
    gen_length: int | None = None
    truncate: bool = False

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return collate_sft(rows, self.tokenizer, self.gen_length, self.truncate)


__all__ = [
    "IGNORE_INDEX",
    "LONG_PROMPTS",
    "PromptReport",
    "SFTCollator",
    "apply_system_prompt",
    "chat_message",
    "collate_preference",
    "collate_prompts",
    "collate_sft",
    "encode_prompt",
    "encode_response",
    "encode_sft_row",
    "limit_prompts",
    "prompt_messages",
    "with_system_prompt",
]
