"""The rollout computation shared by the colocated actor and the separate rollout worker."""

from __future__ import annotations

import torch
from verl import DataProto

from dare.sampling.backend import ModelSource, RolloutBackend, build_backend
from dare.sampling.engine import STEP_RECORD_KEYS
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
# with `sampling.record_steps` (an objective declared `Algorithm.records_steps`), the rollout's per-step
# records go with the batch too, response-aligned `[N, S, L]` (`dare.sampling.engine.STEP_RECORD_KEYS`)


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


class RolloutBackends:
    """A worker's rollout backends by name (`meta_info["rollout_backend"]`, default "dare"), each built
    on first use around the worker's policy `model` (a module, or a callable returning the current one)."""

    def __init__(self, model: ModelSource, device: str) -> None:
        self.model = model
        self.device = device
        self.built: dict[str, RolloutBackend] = {}

    def get(self, data: DataProto, version: int | None = None) -> RolloutBackend:
        """The backend `data` asks for; with `version`, synced from the worker's model when it lags."""
        name = data.meta_info.get("rollout_backend", "dare")
        if name not in self.built:  # built from the current weights
            self.built[name] = build_backend(name, self.model, self.device)
            self.built[name].policy_version = self.built[name].policy_version if version is None else version
        backend = self.built[name]
        if version is not None and backend.policy_version != version:
            backend.sync_from(self.current_model(), version)
        return backend

    def current_model(self) -> torch.nn.Module:
        return self.model if isinstance(self.model, torch.nn.Module) else self.model()

    def sync(self, version: int) -> None:
        """Bring every built backend to the worker's current model at `version`."""
        for backend in self.built.values():
            backend.sync_from(self.current_model(), version)

    def release(self) -> None:
        for backend in self.built.values():
            backend.release()

    def resume(self) -> None:
        for backend in self.built.values():
            backend.resume()


def row_seeds(data: DataProto, rank: int) -> torch.Tensor:
    """One seed per prompt row: `batch["rollout_seed"]` `[N]` when the caller sent them (the RL
    trainer does, so a row's tokens do not depend on how many workers share the batch), else
    derived from `meta_info["seed"]`, the rank and the row's place in the rank's chunk."""
    if "rollout_seed" in data.batch.keys():
        return data.batch["rollout_seed"].long()
    base = (int(data.meta_info.get("seed", 0)) * 1000 + rank) << 20
    return base + torch.arange(len(data.batch["input_ids"]))


def generate_batch(backend: RolloutBackend, data: DataProto, rank: int) -> DataProto:
    """Sample responses with `backend` for the left-padded prompts in `data` (`input_ids`,
    `attention_mask`) with `data.meta_info["sampling"]` (SamplingConfig fields) and the rows' seeds
    (`row_seeds`)."""
    from dare.sampling import SamplingConfig

    config = SamplingConfig(**data.meta_info.get("sampling", {}))
    if "partial_response" in data.batch.keys():
        return continue_batch(backend, data, config, rank)
    rollout = backend.generate(
        (data.batch["input_ids"], data.batch["attention_mask"]), config, row_seeds(data, rank).tolist()
    )
    n = len(rollout.response_ids)
    out = {
        "responses": rollout.response_ids.cpu(),
        "response_mask": rollout.response_mask.long().cpu(),
        **{k: v.cpu() for k, v in trajectory_tensors(rollout).items()},
        **{k: rollout.extras[k].cpu() for k in STEP_RECORD_KEYS if k in rollout.extras},
        # per row, because ranks differ (early stops) and verl refuses unequal meta_info on concat:
        # the forward passes and seconds of the rank's whole batch
        "nfe": torch.full((n,), rollout.nfe, dtype=torch.long),
        "seconds": torch.full((n,), rollout.wall_time, dtype=torch.float64),
        "policy_version": torch.full((n,), -1 if rollout.policy_version is None else rollout.policy_version),
    }
    return DataProto.from_dict(tensors=out)


def continue_batch(backend: RolloutBackend, data: DataProto, config, rank: int) -> DataProto:
    """`generate_batch` of a resumed decode (tree rollouts): continue each row's `partial_response`
    `[N, L]` for the schedule's steps `meta_info["step_range"]` (first, stop); one seed per row.
    Returns `responses` `[N, L]` (still [MASK] where later steps decode) and `policy_version`."""
    first, stop = data.meta_info["step_range"]
    prompts = (data.batch["input_ids"], data.batch["attention_mask"])
    seeds = row_seeds(data, rank).tolist()
    responses = backend.continue_generate(prompts, data.batch["partial_response"], config, seeds, first, stop - first)
    version = -1 if backend.policy_version is None else backend.policy_version
    return DataProto.from_dict(
        tensors={"responses": responses.cpu(), "policy_version": torch.full((len(responses),), version)}
    )


__all__ = ["TRAJECTORY_FILL", "continue_batch", "RolloutBackends", "generate_batch", "row_seeds", "trajectory_tensors"]
