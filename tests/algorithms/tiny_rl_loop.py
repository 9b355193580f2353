"""A few RL steps of a registered algorithm on a tiny model, in-process (no Ray): the RL stage's
data flow (generate -> score -> group advantages -> `prepare` -> `compute_loss` per update),
with a toy reward so a learning test runs in seconds.

The reward is the fraction of the response's positions (out of gen_length) holding `TARGET`: a
random tiny model emits it with probability ~1/V, so a rise of the sampled reward means the
objective moved the policy toward the rewarded token.
"""

from __future__ import annotations

import torch
from rl_toy import policy_update

from dare.algorithms import ALGORITHMS
from dare.config.schema import build_stage
from dare.diffusion.rl_losses import compute_advantages
from dare.models import tiny
from dare.sampling.config import SamplingConfig
from dare.sampling.generate import generate

V = 16
TARGET = 3
PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12], [4, 13]]


def rl_batch(rollout, target: int = TARGET) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The RL batch of `dare.trainer.rl` (prompt + response, response_mask on the response part)
    and the rollout's rewards `[N]`."""
    N, P = rollout.prompt_ids.shape
    resp = rollout.response_mask
    scores = ((rollout.response_ids == target) & resp).float().sum(-1) / resp.shape[1]  # [N]
    batch = {
        "input_ids": rollout.sequences,
        "attention_mask": torch.cat([rollout.prompt_mask.long(), torch.ones_like(rollout.response_ids)], 1),
        "response_mask": torch.cat([torch.zeros(N, P, dtype=torch.bool), resp], 1),
        # the RL contract's trajectory key: -1 on the prompt and after the response
        "decode_step": torch.cat([torch.full((N, P), -1), rollout.decode_step], 1),
    }
    return batch, scores


def train(
    name: str, family: str, rollout: dict, *, steps: int, lr: float, G: int = 8, seed: int = 0, **args
) -> tuple[float, float]:
    """Train `steps` RL steps; returns the mean reward of 128 fixed-seed samples before and after."""
    torch.manual_seed(seed)
    model = tiny(family, V, seed=seed)
    spec = model.diffusion_spec()
    stage = build_stage(
        {"kind": "rl", "algorithm": name, "steps": steps, "num_generations": G, **args}, "stages[0]", None
    )
    algo = ALGORITHMS.get(name)(stage.args, spec)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train_cfg = SamplingConfig(**{**rollout, "num_generations": G, "temperature": 1.0})
    eval_cfg = SamplingConfig(**{**rollout, "num_generations": 32, "temperature": 1.0})
    g = torch.Generator().manual_seed(seed)

    def evaluate() -> float:
        with torch.no_grad():
            out = generate(model.eval(), PROMPTS, eval_cfg, torch.Generator().manual_seed(1234))
        return float(rl_batch(out)[1].mean())

    before = evaluate()
    for _ in range(steps):
        with torch.no_grad():
            out = generate(model.eval(), PROMPTS, train_cfg, g)
        batch, scores = rl_batch(out)
        batch["advantages"], _ = compute_advantages(
            stage.args.advantage, scores, out.prompt_index, batch["response_mask"]
        )
        batch["noise_seed"] = torch.randint(0, 2**62, (len(scores), stage.args.mu), generator=g)
        policy_update(algo, model, opt, batch)
    return before, evaluate()
