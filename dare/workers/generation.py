"""The rollout computation shared by the colocated actor and the separate rollout worker."""

from __future__ import annotations

import torch
from verl import DataProto


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
        "decode_step": rollout.decode_step.cpu(),
        # per row, because ranks differ (early stops) and verl refuses unequal meta_info on concat:
        # the forward passes and seconds of the rank's whole batch
        "nfe": torch.full((len(rollout.response_ids),), rollout.nfe, dtype=torch.long),
        "seconds": torch.full((len(rollout.response_ids),), rollout.wall_time, dtype=torch.float64),
    }
    return DataProto.from_dict(tensors=out)


__all__ = ["generate_batch"]
