"""In-process DiDi-Instruct for tests and benchmarks: toy tasks with several answers per prompt, a
tiny SFT teacher, and the distillation loop the actor runs (the same `DiDiInstruct.prepare` /
`compute_loss`, no Ray).

Tasks (`TASKS[name] = (rows(n, k, seed, split), score)`):
- "mirror": the built-in task (`dare/data/tasks/mirror.py`): the answer copies the K prompt digits
  in order or reversed (two modes per prompt, demonstrations 50/50). The teacher's per-position
  marginals mix the two modes, so its few-step decoding breaks; a student only has to commit to one.
- "perm": the prompt lists K distinct digits and ANY permutation of them is correct (K! modes);
  kept here as the negative case of docs/didi.md (a 2-step student would need a new deterministic
  rule, and neither DiDi-Instruct nor REINFORCE with the true reward finds it at this scale).
- "sort_either": the built-in sort task with `direction: either` (ascending or descending), the
  quickstart's task with two modes; a tiny teacher's greedy accuracy falls from ~90% at 10 steps
  to 51-68% at 4 (docs/didi.md).
The built-in single-answer tasks cannot show a few-step gap: a tiny SFT model decodes them as well
in one step as in gen_length steps (sort: 94% greedy at 1-2 steps vs 92% at 10 steps, measured).
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager

import torch
from sft_utils import sft_loop  # noqa: I001  (tests/algorithms is on sys.path)

from dare.algorithms import ALGORITHMS
from dare.data.formatting import collate_prompts
from dare.data.tasks import builtin_tokenizer, get_task
from dare.models import tiny
from dare.models.tokenizer import model_token_ids
from dare.sampling import SamplingConfig, generate
from dare.trainer.stream import BatchStream, step_generator


def perm_rows(n: int, k: int = 4, seed: int = 0, split: str = "train") -> list[dict]:
    """`n` "perm" rows (no held-out split: `split` only changes the stream)."""
    rng = random.Random(f"perm:{split}:{seed}")
    rows = []
    for _ in range(n):
        digits = rng.sample("0123456789", k)
        answer = digits[:]
        rng.shuffle(answer)
        rows.append({"prompt": "perm " + "".join(digits), "response": "".join(answer),
                     "ground_truth": "".join(sorted(digits))})  # fmt: skip
    return rows


def perm_score(text: str, ground_truth: str) -> float:
    text = text.strip()
    return float(len(text) == len(ground_truth) and "".join(sorted(text)) == ground_truth)


def mirror_rows(n: int, k: int = 4, seed: int = 0, split: str = "train") -> list[dict]:
    """`n` rows of the built-in "mirror" task with K = `k` digits (train and eval are disjoint)."""
    return get_task("mirror", num_digits=k).generate(split, n, seed)


_MIRROR, _SORT_EITHER = get_task("mirror"), get_task("sort", direction="either")


def mirror_score(text: str, ground_truth: str) -> float:
    return _MIRROR.score(text, ground_truth)


def sort_either_rows(n: int, k: int = 8, seed: int = 0, split: str = "train") -> list[dict]:
    """`n` rows of the built-in sort task with `direction: either` (3 to `k` digits; ascending and
    descending both correct, demonstrations 50/50; gen_length 10 as in the quickstart)."""
    return get_task("sort", direction="either", max_len=k).generate(split, n, seed)


def sort_either_score(text: str, ground_truth: str) -> float:
    return _SORT_EITHER.score(text, ground_truth)


TASKS = {"perm": (perm_rows, perm_score), "mirror": (mirror_rows, mirror_score),
         "sort_either": (sort_either_rows, sort_either_score)}  # fmt: skip


def train_teacher(rows: list[dict], steps: int, gen_length: int, seed: int = 0, lr: float = 1e-3, batch_size: int = 64):
    """A tiny LLaDA SFT'd on `rows` (the SFT algorithm the actor runs)."""
    torch.manual_seed(seed)
    tok = builtin_tokenizer()
    model = tiny("llada", seed=seed, **model_token_ids(tok))
    sft_loop(model, tok, rows, steps, gen_length, seed, lr, batch_size)
    return model.eval(), tok


def sample_texts(model, tok, rows, sampling: SamplingConfig, seed: int = 0, batch: int = 200):
    """Decoded responses for `rows` (num_generations per row, prompt-major) and the seconds spent."""
    texts, seconds = [], 0.0
    for start in range(0, len(rows), batch):
        p = collate_prompts(rows[start : start + batch], tok)
        t0 = time.perf_counter()
        with torch.no_grad():
            r = generate(model, (p["input_ids"], p["attention_mask"]), sampling, torch.Generator().manual_seed(seed))
        seconds += time.perf_counter() - t0
        texts += [
            tok.decode(ids[m].tolist(), skip_special_tokens=True) for ids, m in zip(r.response_ids, r.response_mask)
        ]
    return texts, seconds


def accuracy(model, tok, rows, sampling: SamplingConfig, seed: int = 0, score=perm_score) -> float:
    texts, _ = sample_texts(model, tok, rows, sampling, seed)
    return sum(score(t, r["ground_truth"]) for t, r in zip(texts, rows)) / len(rows)


def teacher_cache(teacher, tok, rows, gen_length: int, G: int, seed: int = 0) -> torch.Tensor:
    """G many-step teacher samples per row: `[R, G, gen_length]` (what the distill trainer caches)."""
    cfg = SamplingConfig(algorithm="llada", gen_length=gen_length, temperature=1.0, num_generations=G)
    out = []
    for start in range(0, len(rows), 200):
        p = collate_prompts(rows[start : start + 200], tok)
        with torch.no_grad():
            r = generate(
                teacher, (p["input_ids"], p["attention_mask"]), cfg, torch.Generator().manual_seed(seed + start)
            )
        out.append(r.response_ids.view(-1, G, gen_length))
    return torch.cat(out)


def distill(teacher, tok, rows, gen_length: int, steps: int, batch_size: int = 16, lr: float = 1e-4, seed: int = 0,
            cache: torch.Tensor | None = None, **args):  # fmt: skip
    """Run DiDi-Instruct like the actor does (prepare -> compute_loss -> AdamW step) for `steps`.
    Returns (student, algorithm, per-step metrics)."""
    import copy

    cls = ALGORITHMS.get("didi_instruct")
    a = cls.Args(**args)
    G = a.num_generations
    student = copy.deepcopy(teacher).train()
    frozen = copy.deepcopy(teacher).eval().requires_grad_(False)

    @contextmanager
    def reference():
        yield frozen

    algo = cls(a, teacher.diffusion_spec())
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    cache = teacher_cache(teacher, tok, rows, gen_length, G, seed) if cache is None else cache
    stream = BatchStream(list(range(len(rows))), batch_size, seed, 1)
    history = []
    for step in range(steps):
        idx = stream.rows_at(step)
        p = collate_prompts([rows[i] for i in idx], tok)
        seeds = torch.randint(0, 2**62, (batch_size * G,), generator=step_generator(seed, 1, step, 3))
        batch = {
            "input_ids": p["input_ids"].repeat_interleave(G, 0),
            "attention_mask": p["attention_mask"].repeat_interleave(G, 0),
            "teacher_response": cache[idx].reshape(-1, gen_length),
            "noise_seed": seeds,
            "step": torch.full((batch_size * G,), step),
        }
        student.eval()
        (update,) = algo.prepare(student, reference, batch)
        student.train()
        loss, metrics = algo.compute_loss(student, update)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        history.append(metrics)
    return student.eval(), algo, history
