"""SGLang rollout backend for block-diffusion families (`rollout_backend: sglang`).

SGLang serves SDAR, SDAR-MoE and LLaDA2-MoE with its dLLM runtime (`sglang.srt.dllm`): block-level
KV caches and CUDA graphs. Its algorithm "LowConfidence" decodes a block of `block_size` masks
step by step: every masked position proposes its argmax token with confidence = softmax
probability of that token; the positions whose confidence is strictly above `threshold` are
unmasked, or, when none is, the single most confident one. (Versions that ship
`sglang.srt.dllm.algorithm.sampling` can draw the proposals at a temperature; their confidence is
the probability under the tempered distribution before top-k/top-p filtering.)

That is dare's SDAR rule `low_confidence_dynamic` with one token per step as the floor
(steps per block = block_length), and `low_confidence_static` with one token per step is the same
rule at threshold 1 (no probability is strictly above 1). `sglang_low_confidence_step` is that rule
as a pure function; tests check it against dare's `SDARPolicy` on hand-built logits.

What the mapping cannot honour is refused before SGLang starts (`check_sampling`): another
algorithm than "sdar", more than one token per step as the floor, "sequential", guidance, EOS
suppression, top-k/top-p (SGLang reads confidences before filtering, dare after), and a temperature
above 0 on an SGLang that decodes greedily only. SGLang's trajectory is not reported, so
`decode_step` is -1 and objectives that replay it refuse this backend.

SGLang pins its own torch: install it in its own environment (`pip install -e '.[sglang]'`; see
docs/rollout_backends.md). It is imported only when the backend starts.
"""

from __future__ import annotations

import importlib.util
import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dare.models.spec import model_spec
from dare.sampling.backend import (
    ROLLOUT_BACKENDS,
    ModelSource,
    NamedTensors,
    RolloutBackend,
    as_sampling,
    check_seeds,
    row_seed,
)
from dare.sampling.config import SamplingConfig
from dare.sampling.engine import DecodeResult, PromptsLike, prepare_prompts
from dare.sampling.rollout import Rollout

# dare model_type -> the architecture SGLang's dLLM runtime serves it as
SERVED_ARCHITECTURES = {
    "sdar": "SDARForCausalLM",
    "sdar_moe": "SDARMoeForCausalLM",
    "llada2_moe": "LLaDA2MoeModelLM",
}
ALGORITHM = "LowConfidence"
INSTALL_HINT = (
    "the sglang rollout backend needs SGLang, which pins its own torch: install it in a separate "
    "environment (pip install -e '.[sglang]', docs/rollout_backends.md) or use rollout_backend: dare"
)


def sglang_low_confidence_step(
    block: torch.Tensor, logits: torch.Tensor, mask_id: int, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of SGLang's LowConfidence rule, greedy. block `[N, B]` ids, logits `[N, B, V]` ->
    (new block `[N, B]`, unmasked now bool `[N, B]`). A row without masks is left as is."""
    masked = block == mask_id
    probs = logits.double().softmax(-1)
    conf, proposal = probs.max(-1)  # the argmax token and its probability
    conf = torch.where(masked, conf, -math.inf)
    above = conf > threshold
    top1 = torch.zeros_like(above)
    top1[torch.arange(len(block)), conf.argmax(-1)] = True  # first index among ties, as torch.argmax
    transfer = torch.where(above.any(-1, keepdim=True), above, top1) & masked
    return torch.where(transfer, proposal, block), transfer


def sampling_supported() -> bool:
    """Does the installed SGLang draw dLLM proposals at a temperature (else it decodes greedily)?"""
    try:
        return importlib.util.find_spec("sglang.srt.dllm.algorithm.sampling") is not None
    except ModuleNotFoundError:
        return False


def check_sampling(config: SamplingConfig, temperature_supported: bool) -> dict[str, Any]:
    """SGLang's dLLM algorithm config for `config` (resolved: block_length and steps set), or a
    ValueError naming the setting SGLang cannot honour."""

    def refuse(field: str, why: str) -> None:
        raise ValueError(f"{field}: the sglang rollout backend {why}")

    if config.algorithm != "sdar":
        refuse("algorithm", f"runs block-diffusion decoding (algorithm 'sdar'), not {config.algorithm!r}")
    if config.remasking == "sequential":
        refuse("remasking", "has no left-to-right order; use low_confidence_dynamic or low_confidence_static")
    if config.steps != config.gen_length:
        refuse(
            "steps",
            f"unmasks at least one token per step, so steps must equal gen_length={config.gen_length} "
            f"(one token per step as the floor), got {config.steps}",
        )
    if config.cfg_scale != 0:
        refuse("cfg_scale", "has no classifier-free guidance")
    if config.logits_eos_inf or config.confidence_eos_eot_inf:
        refuse("logits_eos_inf/confidence_eos_eot_inf", "cannot suppress end tokens")
    if config.top_k != 0 or config.top_p != 1.0:
        refuse("top_k/top_p", "reads confidences before top-k/top-p filtering (dare after); leave them off")
    if config.temperature > 0 and not temperature_supported:
        refuse("temperature", f"(the installed SGLang) decodes greedily only; got temperature={config.temperature}")
    threshold = config.threshold if config.remasking == "low_confidence_dynamic" else 1.0
    return {"threshold": float(threshold), "block_size": int(config.block_length)}


def served_architecture(model: torch.nn.Module) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SERVED_ARCHITECTURES:
        raise ValueError(
            f"the sglang rollout backend serves model types {sorted(SERVED_ARCHITECTURES)} "
            f"(SDAR, SDAR-MoE, LLaDA2-MoE), not {model_type!r}; use rollout_backend: dare"
        )
    if hasattr(model, "peft_config"):
        raise ValueError("the sglang rollout backend loads full weights; a LoRA policy needs rollout_backend: dare")
    return SERVED_ARCHITECTURES[model_type]


def import_sglang() -> Any:
    try:
        import sglang
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    return sglang


@ROLLOUT_BACKENDS.register("sglang")
class SGLangBackend(RolloutBackend):
    """An in-process SGLang `Engine` serving a copy of the policy (exported to a temporary folder)."""

    name = "sglang"
    records_trajectory = False
    records_steps = False

    @classmethod
    def check_stage(cls, sampling: SamplingConfig, required_batch_keys: Sequence[str], model_type: str | None) -> None:
        super().check_stage(sampling, required_batch_keys, model_type)
        if model_type is not None and model_type not in SERVED_ARCHITECTURES:
            raise ValueError(
                f"serves model types {sorted(SERVED_ARCHITECTURES)} (SDAR, SDAR-MoE, LLaDA2-MoE), not {model_type!r}"
            )
        # the workers' SGLang may sample at a temperature; whether it does is checked when it starts
        check_sampling(sampling, temperature_supported=True)

    def __init__(self, model: torch.nn.Module, device: str, **engine_kwargs: Any) -> None:
        super().__init__()
        self.architecture = served_architecture(model)
        if not str(device).startswith("cuda"):
            raise ValueError(f"the sglang rollout backend runs on a CUDA device, got device={device!r}")
        self.spec = model_spec(model)
        self.temperature_supported = sampling_supported()
        self.engine_kwargs = engine_kwargs
        self._dir = tempfile.TemporaryDirectory(prefix="dare-sglang-")
        self.model_path = export_for_sglang(model, Path(self._dir.name) / "model", self.architecture)
        self.engine = None
        self.algorithm_config: dict[str, Any] | None = None

    @classmethod
    def from_model(cls, model: ModelSource, device: str, **options: Any) -> SGLangBackend:
        return cls(model if isinstance(model, torch.nn.Module) else model(), device, **options)

    def _start(self, algorithm_config: dict[str, Any]) -> None:
        """Start (or restart, when the algorithm config changed) the engine."""
        if self.engine is not None and algorithm_config == self.algorithm_config:
            return
        import yaml

        sglang = import_sglang()
        if self.engine is not None:
            self.engine.shutdown()
        config_path = Path(self._dir.name) / "dllm.yaml"
        config_path.write_text(yaml.safe_dump(algorithm_config))
        self.engine = sglang.Engine(
            model_path=str(self.model_path),
            dllm_algorithm=ALGORITHM,
            dllm_algorithm_config=str(config_path),
            skip_tokenizer_init=True,
            **self.engine_kwargs,
        )
        self.algorithm_config = algorithm_config

    def generate(
        self, prompts: PromptsLike, sampling: SamplingConfig | Mapping[str, Any], seeds: Sequence[int]
    ) -> Rollout:
        from dare.sampling.generate import _finalize

        self._check_live()
        config = as_sampling(sampling).for_model(self.spec)
        self._start(check_sampling(config, self.temperature_supported))
        batch = prepare_prompts(prompts, self.spec, config.num_generations, torch.device("cpu"))
        seeds = check_seeds(seeds, int(batch.prompt_index.max()) + 1)
        requests = [row[m].tolist() for row, m in zip(batch.input_ids, batch.attention_mask)]
        params = [self._params(config, row_seed(seeds[i], g)) for g, i in _generation_index(batch.prompt_index)]
        t0 = time.perf_counter()
        outputs = self.engine.generate(input_ids=requests, sampling_params=params)
        wall = time.perf_counter() - t0
        L = config.gen_length
        response = torch.full((len(requests), L), self.spec.eos_token_id, dtype=torch.long)
        for n, out in enumerate(outputs):
            ids = list(out["output_ids"])[:L]
            response[n, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        result = DecodeResult(
            response=response,
            decode_step=torch.full_like(response, -1),  # SGLang does not report its trajectory
            confidence=torch.full(response.shape, math.nan, dtype=torch.float64),
            nfe=0,
            extras={},
        )
        rollout = _finalize(result, batch, self.spec, config, wall)
        rollout.policy_version = self.policy_version
        return rollout

    def _params(self, config: SamplingConfig, seed: int) -> dict[str, Any]:
        params = {
            "max_new_tokens": config.gen_length,
            "temperature": config.temperature,
            "stop_token_ids": list(config.end_token_ids(self.spec)),
        }
        if config.temperature > 0:
            params["sampling_seed"] = int(seed) % (2**31)
        return params

    def update_weights(self, named_tensors: NamedTensors, version: int) -> None:
        items = named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors
        if self.engine is not None:  # a not-yet-started engine loads the exported weights instead
            self.engine.update_weights_from_tensor(named_tensors=list(items), flush_cache=True)
        self.policy_version = int(version)

    def release(self) -> None:
        if self.engine is not None:
            self.engine.release_memory_occupation()
        super().release()

    def resume(self) -> None:
        if self.engine is not None:
            self.engine.resume_memory_occupation()
        super().resume()


def _generation_index(prompt_index: torch.Tensor) -> list[tuple[int, int]]:
    """(generation g, prompt i) of every row of a prompt-major batch."""
    out, seen = [], {}
    for i in prompt_index.tolist():
        seen[i] = seen.get(i, -1) + 1
        out.append((seen[i], i))
    return out


def export_for_sglang(model: torch.nn.Module, out: Path, architecture: str) -> Path:
    """The policy in the released layout (config.json naming SGLang's architecture, safetensors)."""
    model.save_pretrained(out, safe_serialization=True)
    config = out / "config.json"
    raw = json.loads(config.read_text())
    raw["architectures"] = [architecture]
    config.write_text(json.dumps(raw, indent=2))
    return out


__all__ = [
    "SERVED_ARCHITECTURES",
    "SGLangBackend",
    "check_sampling",
    "export_for_sglang",
    "sampling_supported",
    "sglang_low_confidence_step",
]
