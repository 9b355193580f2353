"""Reward models as differentiable rewards, and a small trainer for one on a built-in task.

`reward_model` (registered): any transformers sequence-classification checkpoint whose input
vocabulary is the policy's. The response probabilities are embedded softly, `probs @ E`
(E = the classifier's input embedding matrix), after the prompt's embeddings, and the score is
`logits[:, label]` (optionally through a sigmoid). Inputs are left-padded, so the classifier's
last position is the end of every row (transformers pools the last position when it gets
`inputs_embeds`).

`train_reward_model` trains a tiny Llama classifier on a built-in task's labelled samples: each
problem's correct answer (label 1) and corrupted answers (label = the task's own verifier on the
corruption, almost always 0), laid out exactly as the policy's responses are (prompt, then the
answer right-padded with EOS to `gen_length`). Command line:

    python -m dare.rewards.differentiable.reward_model --task sort --out runs/rm_sort --gen-length 10
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dare.rewards.base import register_reward
from dare.rewards.differentiable import KIND


class RewardModelReward:
    """r = f(prompt, probs) = classifier(inputs_embeds=[E[prompt] ; probs @ E]).logits[:, label]."""

    def __init__(self, model: nn.Module, label: int = 0, sigmoid: bool = False, include_prompt: bool = True) -> None:
        self.model = model.eval().requires_grad_(False)
        self.label, self.sigmoid, self.include_prompt = label, sigmoid, include_prompt
        n = model.config.num_labels
        if not 0 <= label < n:
            raise ValueError(f"reward_model: label {label} is not an output of the classifier (num_labels={n})")

    def __call__(
        self, token_probs: torch.Tensor, prompt_ids: torch.Tensor | None = None, prompt_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        E = self.model.get_input_embeddings().weight  # [V_rm, d]
        B, L, V = token_probs.shape
        if E.shape[0] != V:
            raise ValueError(
                f"reward_model: the classifier's vocabulary ({E.shape[0]} embeddings) differs from the policy's "
                f"({V}); a differentiable reward model must share the policy's tokenizer"
            )
        dev = E.device
        embeds = token_probs.to(dev, E.dtype) @ E  # [B, L, V] @ [V, d] -> [B, L, d]
        mask = torch.ones(B, L, dtype=torch.long, device=dev)
        if self.include_prompt and prompt_ids is not None:
            embeds = torch.cat([E[prompt_ids.to(dev)], embeds], dim=1)  # [B, P+L, d]
            pm = prompt_mask if prompt_mask is not None else torch.ones_like(prompt_ids)
            mask = torch.cat([pm.to(dev).long(), mask], dim=1)
        logits = self.model(inputs_embeds=embeds, attention_mask=mask).logits[:, self.label].float()  # [B]
        out = logits.sigmoid() if self.sigmoid else logits
        return out.to(token_probs.device)


@register_reward("reward_model", kind=KIND)
def reward_model(
    path: str, label: int = 0, sigmoid: bool = False, include_prompt: bool = True, device: str | None = None
) -> RewardModelReward:
    """A sequence-classification checkpoint folder (`AutoModelForSequenceClassification`)."""
    from transformers import AutoModelForSequenceClassification

    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"reward_model: {path} is not a checkpoint folder (no config.json)")
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    if device is not None:
        model = model.to(device)
    return RewardModelReward(model, label=label, sigmoid=sigmoid, include_prompt=include_prompt)


# ---------------------------------------------------------------------------------------------
# Training a reward model on a built-in task
# ---------------------------------------------------------------------------------------------


def _corrupt(answer: str, symbols: str, rng: random.Random) -> str:
    """A nearby wrong answer: change, drop, insert or swap one character."""
    chars = list(answer)
    op = rng.choice(("change", "drop", "insert", "swap"))
    i = rng.randrange(len(chars)) if chars else 0
    if op == "change" and chars:
        chars[i] = rng.choice([c for c in symbols if c != chars[i]])
    elif op == "drop" and len(chars) > 1:
        del chars[i]
    elif op == "swap" and len(chars) > 1:
        j = rng.randrange(len(chars))
        chars[i], chars[j] = chars[j], chars[i]
    else:
        chars.insert(i, rng.choice(symbols))
    return "".join(chars)


def labelled_samples(task_name: str, n: int, seed: int = 0, negatives: int = 1, **task_args: Any) -> list[dict]:
    """`n` problems of the task's train split, each with its correct answer and `negatives`
    corruptions; rows {prompt, response, label} with label = the task's verifier score."""
    from dare.data.tasks import get_task

    task = get_task(task_name, **task_args)
    rng = random.Random(seed)
    alphabet = "".join(c for c in "0123456789" if c in task.symbols) or task.symbols
    rows = []
    for row in task.generate("train", n, seed=seed):
        rows.append({"prompt": row["prompt"], "response": row["response"], "label": 1.0})
        for _ in range(negatives):
            wrong = _corrupt(row["response"], alphabet, rng)
            rows.append({"prompt": row["prompt"], "response": wrong, "label": task.score(wrong, row["ground_truth"])})
    return rows


def tiny_classifier(vocab_size: int, pad_token_id: int, seed: int = 0, **overrides: Any) -> nn.Module:
    """A ~0.2M-parameter Llama sequence classifier (one score)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    fields = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, num_labels=1, pad_token_id=pad_token_id,
    )  # fmt: skip
    fields.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForSequenceClassification(LlamaConfig(**fields))


def train_reward_model(
    task: str,
    out_dir: str | Path,
    gen_length: int,
    num_samples: int = 2000,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    task_args: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train a tiny classifier (binary cross-entropy on logit 0) on `labelled_samples` of a
    built-in task and save it (with the built-in tokenizer) to `out_dir`. Returns the held-out
    accuracy (samples from the task's eval split) and the final training loss."""
    from dare.data.formatting import collate_sft
    from dare.data.tasks import builtin_tokenizer

    tok = builtin_tokenizer()
    train = labelled_samples(task, num_samples, seed, **(task_args or {}))
    held = labelled_samples(task, 200, seed + 1, **(task_args or {}))
    model = tiny_classifier(len(tok), tok.pad_token_id, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)

    def batch(rows):
        b = collate_sft(rows, tok, gen_length=gen_length, truncate=True)  # prompt left-padded, answer + EOS
        return b["input_ids"], b["attention_mask"], torch.tensor([r["label"] for r in rows])

    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        idx = torch.randint(0, len(train), (batch_size,), generator=g).tolist()
        ids, mask, y = batch([train[i] for i in idx])
        # inputs_embeds, as the differentiable reward will call it (last position pooled)
        logits = model(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask).logits[:, 0]
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        ids, mask, y = batch(held)
        pred = model(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask).logits[:, 0] > 0
        acc = float((pred.float() == y).float().mean())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"heldout_accuracy": acc, "train_loss": float(loss)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train a differentiable reward model on a built-in dare task.")
    p.add_argument("--task", required=True, help="built-in task (sort, addition, countdown, sudoku)")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.add_argument("--gen-length", type=int, required=True, help="response positions (the recipe's data.gen_length)")
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    res = train_reward_model(a.task, a.out, a.gen_length, a.num_samples, a.steps, seed=a.seed)
    print(f"reward model saved to {a.out}: held-out accuracy {res['heldout_accuracy']:.3f}")


if __name__ == "__main__":
    main()


__all__ = ["RewardModelReward", "labelled_samples", "reward_model", "tiny_classifier", "train_reward_model"]
