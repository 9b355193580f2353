"""The built-in evaluation run after every stage: exact-match accuracy of sampled answers on the
eval split (OpenCompass benchmarks are added to this by `evals/`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase
from verl import DataProto

from dare.data.formatting import collate_prompts
from dare.data.tasks import extract_answer, get_task
from dare.trainer.runtime import dp_call


def row_scorer(row: dict[str, Any]) -> Callable[[str], float]:
    """Exact-match scorer of one row: its built-in task's verifier, else string equality with
    the ground truth (or the demonstration)."""
    if row.get("task"):
        task = get_task(row["task"])
        return lambda text: task.score(text, row["ground_truth"])
    target = str(row.get("ground_truth", row.get("response", ""))).strip()
    return lambda text: float(extract_answer(text) == target)


def evaluate_accuracy(
    generate_fn,
    world_size: int,
    rows: Sequence[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    sampling: dict[str, Any],
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """Generate an answer for each row's prompt and score it. Returns accuracy, its standard
    error, timing and a few examples."""
    t0 = time.perf_counter()
    scores, examples, nfe = [], [], 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompts = collate_prompts(chunk, tokenizer)
        data = DataProto.from_dict(
            tensors={"input_ids": prompts["input_ids"], "attention_mask": prompts["attention_mask"]},
            meta_info={"sampling": sampling, "seed": seed + start},
        )
        out = dp_call(generate_fn, data, world_size)
        responses = out.batch["responses"]
        nfe += int(out.meta_info.get("nfe", 0))
        for row, ids, mask in zip(chunk, responses, out.batch["response_mask"]):
            text = tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
            s = row_scorer(row)(text)
            scores.append(s)
            if len(examples) < 5:
                examples.append({"prompt": row["prompt"], "response": text, "score": s})
    n = len(scores)
    acc = sum(scores) / max(1, n)
    stderr = (acc * (1 - acc) / max(1, n)) ** 0.5
    return {
        "accuracy": acc,
        "stderr": stderr,
        "num_prompts": n,
        "seconds": time.perf_counter() - t0,
        "sampling": sampling,
        "examples": examples,
    }


__all__ = ["evaluate_accuracy", "row_scorer"]
