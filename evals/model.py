"""`DareModel`: an OpenCompass model backed by a dare checkpoint (LLaDA / Dream / SDAR families).

Registered in OpenCompass's `MODELS` registry; a config names it as `dare.evals.model.DareModel`
(OpenCompass runs every task in a subprocess, which imports it from that dotted path).

- `generate`: dare's own sampler (`dare.sampling.generate`) with the recipe's decoding settings
  (`sampling`: algorithm, steps, gen_length, block_length, cache, threshold, temperature, ...)
  on prompts rendered with the checkpoint's chat template.
- `get_ppl` / `get_loglikelihood`: the masked-diffusion ELBO of the option text
  (`evals/likelihood.py`), `elbo_samples` Monte-Carlo samples with stratified mask counts. PPL is
  the per-token negative ELBO (lower is better, what OpenCompass's `PPLInferencer` ranks by).

It does not use OpenCompass's Hugging Face wrappers (they call tokenizer methods removed in
transformers 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from opencompass.models.base import BaseModel
from opencompass.registry import MODELS
from opencompass.utils import get_logger

from dare.data.formatting import encode_prompt
from dare.evals.likelihood import continuation_elbo
from dare.evals.prompts import generation_messages, split_continuation
from dare.evals.runner import sampling_config
from dare.sampling import SamplingConfig, generate


def load_dare_checkpoint(path: str, tokenizer_path: str | None = None, dtype: str = "float32", device: str = "cpu"):
    """(model in eval mode, tokenizer) of a dare checkpoint folder or Hub id (a LoRA adapter is
    merged; a released tokenizer loads without remote code, its ids checked against the config)."""
    from dare.models.checkpoint import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(path, tokenizer_path, dtype)
    return model.to(device).eval(), tokenizer


@MODELS.register_module()
class DareModel(BaseModel):
    """OpenCompass wrapper of a dare checkpoint.

    Args:
        path: checkpoint folder (config.json + safetensors, or a LoRA adapter folder) or Hub id.
        tokenizer_path: tokenizer folder or Hub id (default: `path`).
        sampling: `SamplingConfig` fields; `gen_length` unset = the benchmark's `max_out_len`.
        elbo_samples: Monte-Carlo samples of the ELBO per option (multiple-choice benchmarks).
        seed: seeds the sampler's and the ELBO's `torch.Generator`.
        chat_template: render prompts with the tokenizer's chat template (False: raw text).
        elbo_batch_size: rows per ELBO forward pass.
    """

    def __init__(
        self,
        path: str,
        tokenizer_path: str | None = None,
        sampling: dict[str, Any] | None = None,
        elbo_samples: int = 8,
        seed: int = 0,
        chat_template: bool = True,
        device: str | None = None,
        dtype: str = "float32",
        num_threads: int | None = None,
        elbo_batch_size: int = 64,
        max_seq_len: int = 4096,
        meta_template: dict | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(path=path, max_seq_len=max_seq_len, meta_template=meta_template)
        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer = load_dare_checkpoint(path, tokenizer_path, dtype, self.device)
        # in the task's log: the dtype the weights really are in (a bf16 checkpoint is not run in fp32)
        loaded = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        get_logger().info(f"dare: {path} loaded in {loaded} on {self.device}")
        self.sampling = dict(sampling or {})
        sampling_config(self.sampling)  # fail at load time, not mid-benchmark
        self.elbo_samples = int(elbo_samples)
        self.seed = int(seed)
        self.chat_template = chat_template
        self.elbo_batch_size = elbo_batch_size
        self._calls = 0  # each batch gets its own generator seed: seed + call index

    # ------------------------------------------------------------------ helpers

    def _generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device).manual_seed(self.seed + self._calls)
        self._calls += 1
        return g

    def _encode_messages(self, messages: list[dict[str, str]]) -> list[int]:
        if self.chat_template:
            return encode_prompt(self.tokenizer, messages)
        return list(self.tokenizer("\n".join(m["content"] for m in messages)).input_ids)

    def _text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def sampling_config(self, max_out_len: int | None = None) -> SamplingConfig:
        """The decoding settings used for a benchmark (its `max_out_len` fills an unset gen_length)."""
        return sampling_config(self.sampling, max_out_len)

    def complete(self, prompt_ids: list[list[int]], max_out_len: int | None = None) -> list[str]:
        """Sample one completion per tokenized prompt with dare's sampler; the decoded response
        (special tokens skipped)."""
        rollout = generate(self.model, prompt_ids, self.sampling_config(max_out_len), self._generator())
        return [
            self.tokenizer.decode(ids[mask].tolist(), skip_special_tokens=True)
            for ids, mask in zip(rollout.response_ids, rollout.response_mask)
        ]

    # ------------------------------------------------------------------ OpenCompass API

    def generate_from_template(self, templates: list[Any], max_out_len: int, **kwargs: Any) -> list[str]:
        return self.complete([self._encode_messages(generation_messages(t)) for t in templates], max_out_len)

    def generate(self, inputs: list[str], max_out_len: int, **kwargs: Any) -> list[str]:
        return self.generate_from_template(list(inputs), max_out_len)

    def _pairs(self, templates: Sequence[Any], mask_length: Sequence[int] | None) -> tuple[list, list]:
        contexts, continuations = [], []
        for i, t in enumerate(templates):
            context, text = split_continuation(t)
            if context is None:  # plain string: the first mask_length tokens are context
                ids = list(self.tokenizer(text).input_ids)
                cut = int(mask_length[i]) if mask_length is not None else 0
                contexts.append(ids[:cut])
                continuations.append(ids[cut:])
            else:
                contexts.append(self._encode_messages(context) if context else [])
                continuations.append(self._text_ids(text))
        return contexts, continuations

    def elbo(self, templates: Sequence[Any], mask_length: Sequence[int] | None = None) -> tuple[torch.Tensor, list]:
        """(ELBO `[B]`, continuation token counts) of OpenCompass scoring prompts."""
        contexts, continuations = self._pairs(templates, mask_length)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        elbo = continuation_elbo(
            self.model, contexts, continuations, pad, self.elbo_samples, self._generator(), self.elbo_batch_size
        )
        return elbo, [len(c) for c in continuations]

    def get_ppl_from_template(self, templates: list[Any], mask_length: list[int] | None = None) -> Any:
        import numpy as np

        elbo, lengths = self.elbo(templates, mask_length)
        return np.array([-float(e) / n for e, n in zip(elbo, lengths)])

    def get_ppl(self, inputs: list[str], mask_length: list[int] | None = None) -> Any:
        return self.get_ppl_from_template(list(inputs), mask_length)

    def get_loglikelihood(self, inputs: list[str], conts: list[str], **kwargs: Any) -> list[float]:
        """ELBO of each `conts[i]`, the tail of `inputs[i]` (OpenCompass's LLInferencer)."""
        contexts, continuations = [], []
        for text, cont in zip(inputs, conts):
            head = text[: len(text) - len(cont)] if cont and text.endswith(cont) else text
            contexts.append(self._encode_messages([{"role": "user", "content": head}]))
            continuations.append(self._text_ids(cont))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        elbo = continuation_elbo(
            self.model, contexts, continuations, pad, self.elbo_samples, self._generator(), self.elbo_batch_size
        )
        return [float(e) for e in elbo]

    def get_token_len(self, prompt: str) -> int:
        return len(self.tokenizer(prompt).input_ids)

    def encode(self, prompt: str) -> torch.Tensor:
        return torch.tensor(self.tokenizer(prompt).input_ids)

    def decode(self, tokens: torch.Tensor) -> str:
        return self.tokenizer.decode(tokens.tolist(), skip_special_tokens=True)


__all__ = ["DareModel", "load_dare_checkpoint"]
