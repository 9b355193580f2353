"""In-process RL on a toy reward for the trajectory objectives' learning tests: dare's sampler
rolls out, the algorithm's own `prepare` / `compute_loss` update a tiny model, no Ray.

The toy reward is the fraction of response tokens equal to `TARGET`: an untrained tiny model
draws it with probability ~1/V, and a policy-gradient objective that works raises it within a
few dozen steps. An algorithm that declares `records_steps` (MDPO) gets what the RL trainer gives it:
rollouts that record every step, every step's x0-prediction scored with the same toy reward
(`step_rewards`) and its `group_tensors` added to the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dare.algorithms import ALGORITHMS
from dare.config.schema import build_stage
from dare.diffusion.rl_losses import compute_advantages
from dare.models import tiny
from dare.sampling import SamplingConfig, generate
from dare.sampling.backend import RowGenerators
from dare.sampling.engine import STEP_RECORD_KEYS, prepare_prompts
from dare.sampling.generate import continue_generate
from dare.workers.critic import Critic, ValueModel

V = 48
TARGET = 10
PROMPTS = [[5, 6, 7], [8, 9], [11, 12, 13, 14]]


def target_fraction(response: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Reward `[N]`: the fraction of response tokens equal to TARGET."""
    hit = (response == TARGET) & response_mask
    return hit.sum(-1).float() / response_mask.sum(-1).clamp(min=1)


def algorithm(name: str, spec, **args):
    stage = build_stage({"kind": "rl", "algorithm": name, "steps": 1, **args}, "stages[0]", None)
    return ALGORITHMS.get(name)(stage.args, spec)


def rl_batch(rollout, advantage: str = "grpo_mean", mu: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """The actor's batch of a rollout, with the trajectory (`decode_step`, `decode_confidence`) over the full sequence
    (-1 / 0 on the prompt) and group advantages of the toy reward."""
    N, P = rollout.prompt_ids.shape
    rmask = rollout.response_mask
    scores = target_fraction(rollout.response_ids, rmask)
    full_mask = torch.cat([torch.zeros(N, P, dtype=torch.bool), rmask], 1)
    uid = np.array(rollout.prompt_index.tolist(), dtype=object)
    adv, _ = compute_advantages(advantage, scores, uid, full_mask)
    return {
        "input_ids": rollout.sequences,
        "attention_mask": torch.cat([rollout.prompt_mask, torch.ones_like(rmask)], 1).long(),
        "response_mask": full_mask,
        "decode_step": torch.cat([torch.full((N, P), -1), rollout.decode_step], 1),
        "decode_confidence": torch.cat([torch.zeros(N, P, dtype=torch.float64), rollout.confidence.nan_to_num(0.0)], 1),
        "decode_num_steps": (rollout.decode_step.max(-1).values + 1),
        "advantages": adv,
        "scores": scores,
        "noise_seed": torch.arange(N * mu).view(N, mu) + 1000 * seed,
    }


def add_step_rewards(algo, batch: dict, rollout) -> dict:
    """For an algorithm that `records_steps`: the rollout's step records, the toy reward of every
    step's x0-prediction (`step_rewards` `[N, S]`) and the algorithm's driver-side `group_tensors`."""
    cls = type(algo)
    if not cls.records_steps:
        return batch
    batch.update({k: rollout.extras[k] for k in STEP_RECORD_KEYS})
    batch["step_rewards"] = target_fraction(batch["step_prediction"], batch["step_text_mask"])  # [N, S]
    uid = np.array(rollout.prompt_index.tolist(), dtype=object)
    extra, _ = cls.group_tensors(algo.args, batch, uid)
    return {**batch, **extra}


def policy_update(algo, model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict) -> None:
    """One RL step's updates, as the actor takes them: one optimizer step per `prepare` batch."""
    model.train()
    for update in algo.prepare(model, None, batch):
        opt.zero_grad()
        loss, _ = algo.compute_loss(model, update)
        loss.backward()
        opt.step()


def train_toy(
    name: str,
    family: str = "llada",
    steps: int = 30,
    lr: float = 3e-3,
    gen_length: int = 4,
    num_generations: int = 6,
    extend: Callable[[torch.nn.Module, dict, object], dict] | None = None,
    **args,
) -> list[float]:
    """`steps` RL steps of algorithm `name` on the toy reward; the mean reward of each rollout.
    `extend(model, batch, rollout)` adds an objective's own rollout tensors to the batch. An
    algorithm that declares a critic gets one as the RL trainer builds it: `values` and `scores`
    in the batch before the policy update, then one critic update on its `critic_loss`."""
    model = tiny(family, V, seed=0)
    spec = model.diffusion_spec()
    # the rollout settings of an algorithm with its own rollout shape (the default one samples with `cfg`)
    args.setdefault(
        "sampling", {"algorithm": family, "steps": gen_length, "block_length": gen_length, "temperature": 1.0}
    )
    algo = algorithm(name, spec, num_generations=num_generations, **args)
    shape = type(algo).rollout_shape(algo.args, spec, gen_length)
    if shape is not None:
        return train_shaped(algo, shape, model, steps, lr)
    cfg = SamplingConfig(
        algorithm=family, gen_length=gen_length, steps=gen_length, block_length=gen_length,
        temperature=1.0, num_generations=num_generations, record_steps=type(algo).records_steps,
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    critic_spec = type(algo).critic_spec(algo.args)
    critic = Critic(ValueModel(tiny(family, V, seed=0)), critic_spec) if critic_spec else None
    gen = torch.Generator().manual_seed(0)
    rewards = []
    for step in range(steps):
        model.eval()
        with torch.no_grad():
            rollout = generate(model, PROMPTS, cfg, generator=gen)
        batch = add_step_rewards(algo, rl_batch(rollout, algo.args.advantage, algo.updates_per_step, step), rollout)
        if extend is not None:
            batch = extend(model, batch, rollout)
        rewards.append(float(batch["scores"].mean()))
        if critic is not None:
            batch["values"] = critic.values(batch)
        policy_update(algo, model, opt, batch)
        if critic is not None:
            critic.update(batch, algo.critic_loss)
    return rewards


def train_shaped(algo, shape, model: torch.nn.Module, steps: int, lr: float) -> list[float]:
    """`train_toy` of an algorithm with its own `RolloutShape`: the shape rolls out with dare's
    sampler continuing partial responses (`continue_generate`, one generator per row seed) and
    scores with the toy reward; the mean reward of the scored completions per step."""
    spec = model.diffusion_spec()
    config = SamplingConfig(**algo.args.rollout_sampling(shape.gen_length))
    batch_prompts = prepare_prompts(PROMPTS, spec, 1, torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def continue_fn(ids, mask, responses, seeds, first, n):
        gens = RowGenerators(seeds.tolist(), "cpu")
        return continue_generate(model, (ids, mask), responses, config, gens, first, n)

    def score_fn(prompt_index, responses, rmask):
        return target_fraction(responses, rmask).tolist(), {}

    rewards = []
    for step in range(steps):
        model.eval()
        seeds = torch.arange(len(PROMPTS)) + 1000 * step
        shaped = shape.collect(batch_prompts.input_ids, batch_prompts.attention_mask, seeds, continue_fn, score_fn)
        batch = dict(shaped.batch)
        batch["noise_seed"] = torch.arange(len(batch["input_ids"]) * algo.updates_per_step).view(
            -1, algo.updates_per_step
        )
        batch["train_progress"] = torch.full((len(batch["input_ids"]),), step / steps, dtype=torch.float64)
        rewards.append(float(shaped.scores.mean()))
        policy_update(algo, model, opt, batch)
    return rewards
