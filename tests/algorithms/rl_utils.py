"""In-process RL for learning tests of RL objectives: the rollout, advantage and update path the
RL trainer and actor run (`generate`, `compute_advantages`, `Algorithm.prepare` /
`compute_loss`), without Ray.

The task needs no data: random prompts, and the reward of a response is the fraction of its
tokens in a fixed target set (a third of the vocabulary), so a random tiny model starts near 1/3
and any objective that follows its advantages raises it within a few dozen updates."""

from __future__ import annotations

import numpy as np
import torch

from dare.algorithms import ALGORITHMS
from dare.config.schema import build_stage
from dare.diffusion.rl_losses import compute_advantages
from dare.models import tiny
from dare.sampling import SamplingConfig, generate

V = 48
TARGET = torch.arange(5, 5 + (V - 5) // 3)  # ids 5..18, never mask / eos / pad (V-1, V-2)


def reward(response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Fraction of each response's tokens in TARGET, `[N]`."""
    hit = torch.isin(response_ids, TARGET) & response_mask
    return hit.sum(-1).float() / response_mask.sum(-1).clamp(min=1).float()


ADV = torch.tensor([1.0, -1.0, 0.5, -0.5])


def toy_batch(P: int = 4, L: int = 5, mu: int = 2) -> dict[str, torch.Tensor]:
    """An RL batch of 4 rows (prompt P, response L, advantages ADV), as `prepare` receives it."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V - 3, (4, P + L), generator=g)
    resp = torch.zeros(4, P + L, dtype=torch.bool)
    resp[:, P:] = True
    return {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "response_mask": resp,
        "advantages": ADV[:, None] * resp, "noise_seed": torch.arange(4 * mu).view(4, mu),
    }  # fmt: skip


def make_algorithm(name: str, model, **args):
    stage = build_stage({"algorithm": name, "steps": 1, **args}, "stages[0]", None)
    return ALGORITHMS.get(name)(stage.args, model.diffusion_spec())


def rl_learning_run(
    name: str, family: str = "llada", steps: int = 12, prompts: int = 4, gen_length: int = 4, lr: float = 3e-3,
    seed: int = 0, **args,
) -> list[float]:  # fmt: skip
    """`steps` RL updates of a tiny random `family` model with algorithm `name`; the mean
    reward of each step's rollouts."""
    model = tiny(family, V, seed=seed)
    algo = make_algorithm(name, model, **args)
    G = algo.args.num_generations
    block = gen_length if model.diffusion_spec().attention == "full" else None
    cfg = SamplingConfig(
        algorithm="sdar" if block is None else "llada", gen_length=gen_length, steps=gen_length,
        temperature=1.0, num_generations=G, **({"block_length": block} if block else {}),
    )  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    rewards = []
    for _ in range(steps):
        prompt_ids = torch.randint(5, V - 3, (prompts, 3), generator=g)
        model.eval()
        with torch.no_grad():
            r = generate(model, (prompt_ids, torch.ones_like(prompt_ids)), cfg, g)
        N, P = r.prompt_ids.shape
        batch = {
            "input_ids": torch.cat([r.prompt_ids, r.response_ids], 1),
            "attention_mask": torch.cat([r.prompt_mask.long(), torch.ones_like(r.response_ids)], 1),
            "response_mask": torch.cat([torch.zeros(N, P, dtype=torch.bool), r.response_mask.bool()], 1),
        }
        scores = reward(r.response_ids, r.response_mask.bool())
        rewards.append(float(scores.mean()))
        uid = np.array([i // G for i in range(N)], dtype=object)
        batch["advantages"], _ = compute_advantages(algo.args.advantage, scores, uid, batch["response_mask"])
        batch["noise_seed"] = torch.randint(0, 2**62, (N, algo.args.mu), generator=g)
        model.train()
        for update in algo.prepare(model, None, batch):
            loss, _ = algo.compute_loss(model, update)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    return rewards
