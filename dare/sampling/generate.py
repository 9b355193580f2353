"""`generate`: the one entry point of the sampling layer."""

from __future__ import annotations

import math
import time

import torch

from dare.models.spec import DiffusionSpec, model_spec
from dare.sampling.config import SamplingConfig
from dare.sampling.engine import DecodeResult, DecodeState, PromptBatch, PromptsLike, prepare_prompts
from dare.sampling.rollout import Rollout


def _finalize(
    result: DecodeResult, batch: PromptBatch, spec: DiffusionSpec, config: SamplingConfig, wall_time: float
) -> Rollout:
    """Cut every response after its first end id and assemble the `Rollout`."""
    response = result.response
    L = response.shape[1]
    is_end = torch.isin(response, torch.tensor(config.end_token_ids(spec), device=response.device))
    first = torch.where(is_end.any(-1), is_end.long().argmax(-1), torch.full_like(response[:, 0], L))  # [N]
    pos = torch.arange(L, device=response.device)
    response_mask = pos[None] <= first[:, None]  # [N, L], includes the end token itself
    after = ~response_mask
    if bool((response.masked_fill(after, spec.eos_token_id) == spec.mask_token_id).any()):
        raise RuntimeError(f"{config.algorithm}: mask tokens left in a response (a sampler bug)")
    response = response.masked_fill(after, spec.eos_token_id)
    decode_step = result.decode_step.masked_fill(after, -1)
    confidence = result.confidence.masked_fill(after, math.nan)
    # per-token extras are cut like the response; per-step records (`[N, S, L]`) are kept whole
    extras = {
        k: (v.masked_fill(after, math.nan) if v.is_floating_point() and v.shape == after.shape else v)
        for k, v in result.extras.items()
    }
    return Rollout(
        sequences=torch.cat([batch.input_ids, response], dim=1),
        attention_mask=torch.cat([batch.attention_mask, response_mask], dim=1),
        prompt_ids=batch.input_ids,
        prompt_mask=batch.attention_mask,
        response_ids=response,
        response_mask=response_mask,
        decode_step=decode_step,
        confidence=confidence,
        prompt_index=batch.prompt_index,
        nfe=result.nfe,
        wall_time=wall_time,
        config=config,
        extras=extras,
    )


def generate(
    model: torch.nn.Module,
    prompts: PromptsLike,
    config: SamplingConfig,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Generate `config.num_generations` responses per prompt with the algorithm `config.algorithm`.

    Args:
        model: a dare model (anything with `diffusion_spec()` and the dare forward signature).
        prompts: a list of token-id lists (left-padded here), or an (input_ids `[B, P]`,
            attention_mask `[B, P]`) pair padded on either side.
        config: the sampling settings; checked against the model before any forward pass.
        generator: every random draw uses it (float64 noise). Put it on the model's device to
            avoid host-to-device copies; None uses torch's global RNG.

    Returns:
        A `Rollout` with `len(prompts) * num_generations` rows, prompt-major.

    Raises:
        ValueError: the config does not fit the model (attention kind, block size), the model has
            no mask token id, or the prompts are malformed.
    """
    spec = model_spec(model)
    config = config.for_model(spec)
    vocab = model.get_input_embeddings().num_embeddings if hasattr(model, "get_input_embeddings") else None
    if vocab is not None and not 0 <= spec.mask_token_id < vocab:
        raise ValueError(f"mask_token_id={spec.mask_token_id} is outside the model's vocabulary of {vocab}")
    device = next(model.parameters()).device
    batch = prepare_prompts(prompts, spec, config.num_generations, device)
    sampler = config.sampler_class()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        result = sampler.run(model, spec, batch, config, generator)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return _finalize(result, batch, spec, config, time.perf_counter() - t0)


def check_resumable(config: SamplingConfig) -> None:
    """Raise ValueError unless `config` (resolved) can continue a partial response for a given
    number of its schedule's steps: the block engine's sampler, no KV cache (a resumed decode has
    no cache of the steps it did not run) and a fixed step count per block (no threshold / factor
    parallel decoding, whose blocks end after a data-dependent number of steps), and a policy that
    commits for good (not RCR, which re-ranks decoded tokens by their draw-time confidences)."""
    sampler = config.sampler_class()
    if not sampler.resumable():
        raise ValueError(f"algorithm={config.algorithm!r} has its own decoding loop and cannot resume a partial state")
    if config.cache != "none":
        raise ValueError(f"cache={config.cache!r}: resuming a partial state needs cache='none'")
    if config.parallel:
        raise ValueError("threshold / factor: resuming needs a fixed number of steps per block (no parallel decoding)")
    if sampler.policy(config, None).remasks:
        raise ValueError(
            f"remasking={config.remasking!r}: it ranks decoded tokens by the confidence they were drawn with, "
            "which a partial response does not carry, so it cannot resume one"
        )


def continue_generate(
    model: torch.nn.Module,
    prompts: tuple[torch.Tensor, torch.Tensor],
    responses: torch.Tensor,
    config: SamplingConfig,
    generator: torch.Generator | None,
    first_step: int,
    num_steps: int,
) -> torch.Tensor:
    """Continue partly decoded responses for `num_steps` steps of `config`'s schedule, from step
    `first_step` (0-based, counted over all blocks), one row per prompt.

    Args:
        prompts: (input_ids `[N, P]`, attention_mask `[N, P]`) as in `generate`.
        responses: `[N, gen_length]` the responses after step `first_step - 1` of the same schedule
            (all [MASK] for `first_step` 0); [MASK] where not decoded yet.
        generator: as in `generate` (per-row `RowGenerators` restart at every block the range enters).

    Returns:
        `[N, gen_length]` the responses after step `first_step + num_steps - 1`: still [MASK] where
        the schedule decodes later, the first eos id after a row's finished response.
    """
    spec = model_spec(model)
    config = config.for_model(spec)
    check_resumable(config)
    if not (first_step >= 0 and num_steps >= 1 and first_step + num_steps <= config.steps):
        raise ValueError(
            f"steps [{first_step}, {first_step + num_steps}) are outside the schedule's {config.steps} steps"
        )
    if responses.dim() != 2 or responses.shape != (prompts[0].shape[0], config.gen_length):
        raise ValueError(
            f"responses {tuple(responses.shape)}: need [{prompts[0].shape[0]}, gen_length={config.gen_length}]"
        )
    device = next(model.parameters()).device
    batch = prepare_prompts(prompts, spec, 1, device)
    state = DecodeState(batch, config.gen_length, spec, config.end_token_ids(spec))
    state.response.copy_(responses.to(device))
    state.update_finished()  # a response already complete stays as it is
    with torch.no_grad():
        config.sampler_class().resume(model, state, config, generator, (first_step, first_step + num_steps))
    return state.response.clone()


__all__ = ["check_resumable", "continue_generate", "generate"]
