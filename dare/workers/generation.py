"""The rollout computation shared by the colocated actor and the separate rollout worker."""

from __future__ import annotations

import torch
from verl import DataProto

from dare.sampling.rollout import Rollout

# per-response-token tensors of the decoding trajectory (`[N, L]`, L = gen_length) that
# `generate_batch` returns and the RL trainer keeps in the training batch (aligned with
# input_ids there, prompt columns filled with `TRAJECTORY_FILL`), for objectives that replay it
# (TraceRL, CJ-GRPO, MDPO):
#   decode_step        long, the decoding iteration (0-based, per row) that unmasked the token
#   decode_block       long, the semi-autoregressive block the token belongs to (position // block_length)
#   decode_confidence  float64, the model's probability of the token when it was unmasked
# each -1 (confidence 0) outside the response mask; plus `decode_num_steps` `[N]` long, the
# iterations that decoded the row's response (max decode_step + 1).
TRAJECTORY_FILL = {"decode_step": -1, "decode_block": -1, "decode_confidence": 0.0}


def trajectory_tensors(rollout: Rollout) -> dict[str, torch.Tensor]:
    """The decoding trajectory of a rollout (see `TRAJECTORY_FILL`), on the rollout's device."""
    resp = rollout.response_mask  # [N, L]
    L = resp.shape[1]
    block = torch.arange(L, device=resp.device) // rollout.config.block_length  # [L]
    return {
        "decode_step": rollout.decode_step,
        "decode_block": torch.where(resp, block[None], -1),  # [N, L]
        "decode_confidence": torch.where(resp, rollout.confidence, 0.0),
        "decode_num_steps": rollout.decode_step.amax(-1) + 1,  # [N]
    }


def generate_batch(model: torch.nn.Module, data: DataProto, device: str, rank: int) -> DataProto:
    """Sample responses for the left-padded prompts in `data` (`input_ids`, `attention_mask`)
    with `data.meta_info["sampling"]` (SamplingConfig fields) and a generator seeded from
    `meta_info["seed"]` and the rank."""
    from dare.sampling import SamplingConfig, generate

    config = SamplingConfig(**data.meta_info.get("sampling", {}))
    gen = torch.Generator(device).manual_seed(int(data.meta_info.get("seed", 0)) * 1000 + rank)
    ids = data.batch["input_ids"].to(device)
    mask = data.batch["attention_mask"].to(device)
    model.eval()
    with torch.no_grad():
        rollout = generate(model, (ids, mask), config, generator=gen)
    out = {
        "responses": rollout.response_ids.cpu(),
        "response_mask": rollout.response_mask.long().cpu(),
        **{k: v.cpu() for k, v in trajectory_tensors(rollout).items()},
        # per row, because ranks differ (early stops) and verl refuses unequal meta_info on concat:
        # the forward passes and seconds of the rank's whole batch
        "nfe": torch.full((len(rollout.response_ids),), rollout.nfe, dtype=torch.long),
        "seconds": torch.full((len(rollout.response_ids),), rollout.wall_time, dtype=torch.float64),
    }
    return DataProto.from_dict(tensors=out)


__all__ = ["TRAJECTORY_FILL", "generate_batch", "trajectory_tensors"]
