"""In-process SFT for learning tests: the same algorithm code the actor runs, without Ray."""

from __future__ import annotations

import torch

from dare.algorithms import ALGORITHMS
from dare.data.formatting import collate_prompts, collate_sft
from dare.data.tasks import builtin_tokenizer, get_task
from dare.models import tiny
from dare.models.tokenizer import model_token_ids
from dare.sampling import SamplingConfig, generate
from dare.trainer.stream import BatchStream
from dare.workers.actor import lr_lambda


def sft_loop(model, tok, rows: list[dict], steps: int, gen_length: int, seed: int = 0, lr: float = 1e-3,
             batch_size: int = 64) -> list[float]:  # fmt: skip
    """`steps` SFT updates of `model` on `rows` (AdamW, cosine to 0.1 lr, clip 1.0); the losses."""
    algo_cls = ALGORITHMS.get("sft")
    algo = algo_cls(algo_cls.Args(), model.diffusion_spec())
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda("cosine", 0, steps, 0.1))
    stream = BatchStream(rows, batch_size, seed, 0)
    losses = []
    model.train()
    for step in range(steps):
        b = collate_sft(stream.rows_at(step), tok, gen_length=gen_length, truncate=True)
        batch = {k: b[k] for k in ("input_ids", "attention_mask", "response_mask")}
        batch["noise_seed"] = stream.noise_seeds(step)
        loss, _ = algo.compute_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


def train_sft(family: str, task_name: str, steps: int, gen_length: int, seed: int = 0, lr: float = 1e-3,
              batch_size: int = 64, num_train: int = 2000, task_args: dict | None = None, **model_overrides):  # fmt: skip
    torch.manual_seed(seed)
    tok = builtin_tokenizer()
    task = get_task(task_name, **(task_args or {}))
    rows = task.generate("train", num_train, seed=seed)
    model = tiny(family, seed=seed, **{**model_token_ids(tok), **model_overrides})
    losses = sft_loop(model, tok, rows, steps, gen_length, seed, lr, batch_size)
    return model.eval(), tok, task, losses


def accuracy(model, tok, task, sampling: SamplingConfig, n: int = 200, seed: int = 0) -> float:
    rows = task.generate("eval", n, seed=seed)
    scores = []
    for start in range(0, n, 100):
        chunk = rows[start : start + 100]
        p = collate_prompts(chunk, tok)
        with torch.no_grad():
            r = generate(model, (p["input_ids"], p["attention_mask"]), sampling, torch.Generator().manual_seed(seed))
        for row, ids, mask in zip(chunk, r.response_ids, r.response_mask):
            scores.append(task.score(tok.decode(ids[mask].tolist(), skip_special_tokens=True), row["ground_truth"]))
    return sum(scores) / len(scores)
