"""Shared helpers of the OpenCompass tests: a tiny LLaDA trained briefly on a small sort task
(mixed accuracy, ~60% greedy) saved as a dare checkpoint, and a GSM8K-format JSONL."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "algorithms"))

from sft_utils import train_sft  # noqa: E402

SORT_ARGS = {"min_len": 2, "max_len": 4}
GEN = 4
SAMPLING = {"algorithm": "llada", "gen_length": GEN, "steps": GEN, "block_length": GEN}


def sort_checkpoint(path: Path) -> Path:
    """250 SFT steps on sort (2-4 digits, 200 demonstrations), saved with its tokenizer."""
    model, tok, _, _ = train_sft(
        "llada", "sort", steps=250, gen_length=GEN, num_train=200, batch_size=32, lr=3e-3, task_args=SORT_ARGS
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def gsm8k_file(path: Path) -> Path:
    rows = [
        {"question": f"What is {a} + {b}?", "answer": f"{a} and {b} make {a + b}.\n#### {a + b}"}
        for a, b in [(1, 2), (3, 4), (10, 5), (7, 7)]
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def arc_file(path: Path, n: int = 8) -> Path:
    """ARC-format (AI2 JSONL) four-option questions about sorting: the correct sorted digits
    among three wrong orders, the correct one under a different letter each row."""
    from dare.data.tasks import get_task

    rows = []
    for r in get_task("sort", min_len=3, max_len=4).generate("eval", 4 * n, seed=5):
        right = r["response"]
        wrong = [right[::-1], right[1:] + right[0], right[-1] + right[:-1]]
        if len({right, *wrong}) < 4:
            continue
        i = len(rows)
        if i == n:
            break
        texts = wrong[: i % 4] + [right] + wrong[i % 4 :]
        choices = [{"label": L, "text": t} for L, t in zip("ABCD", texts)]
        rows.append({"question": {"stem": r["prompt"], "choices": choices}, "answerKey": "ABCD"[i % 4]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
