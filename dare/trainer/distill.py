"""The distillation stage trainer (DiDi-Instruct and any algorithm of kind "distill").

At the start of the stage the actor's policy is still the teacher (the previous stage's
checkpoint), so the trainer first samples and caches `num_generations` many-step teacher
responses for every training prompt (`teacher_sampling`; drawn where the teacher lives: the
colocated actor or the separate rollout workers, or with `resources.reference: separate` the
reference workers, loaded with the stage's starting policy first), scored with the task verifier for the `didi/teacher_accuracy` metric. The cache lives in
the stage folder (`teacher_samples.safetensors` + `.json`, no pickle), so a resumed stage reuses it instead of sampling from a
half-trained student. Then per step:

    prompts of the step (deterministic, `BatchStream`) -> each repeated num_generations times,
    with the cached teacher samples, one noise seed per row and the step index
    -> actor.update_actor (the algorithm rolls the student out, trains the discriminator and
       takes the student's policy-gradient step inside the actor process)
    -> metrics; training state every `save_every` steps.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from verl import DataProto

from dare.data.formatting import collate_prompts
from dare.trainer.evaluate import row_scorer
from dare.trainer.loop import StageTrainer
from dare.trainer.metrics import rank_zero_metrics
from dare.trainer.runtime import dp_call
from dare.trainer.stage import STAGE_TRAINERS, StageContext
from dare.trainer.stream import BatchStream, step_generator
from dare.workers.state_io import load_tree, save_tree

TEACHER_CACHE = "teacher_samples"  # teacher_samples.safetensors + .json (dare.workers.state_io)


class DistillTrainer(StageTrainer):
    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.args = ctx.stage.args
        self.gen_length = ctx.recipe.data.gen_length
        # row indices (the batch carries each row's cached teacher samples)
        self.stream = BatchStream(list(range(len(ctx.train_rows))), ctx.stage.batch_size, ctx.recipe.seed, ctx.index)

    def teacher_samples(self, chunk: int = 256) -> tuple[torch.Tensor, float]:
        """`[R, G, gen_length]` teacher responses for the R training prompts, and their accuracy."""
        ctx, G = self.ctx, self.args.num_generations
        if (ctx.dir / f"{TEACHER_CACHE}.json").is_file():  # written last: the cache is complete
            saved = load_tree(ctx.dir, TEACHER_CACHE)  # safetensors + JSON: a tampered cache runs no code
            return saved["responses"], saved["accuracy"]
        if ctx.start_step:
            raise FileNotFoundError(
                f"{ctx.dir / TEACHER_CACHE}.json: missing; the teacher samples of a resumed stage must be cached"
            )
        sampling = {**self.args.teacher_sampling, "gen_length": self.gen_length, "num_generations": G}
        sampler = ctx.sampler
        if ctx.reference is not None:  # the teacher lives in the reference workers: it samples there
            ctx.actor.push_reference()  # the stage's starting policy (`init_stage`, which loads it too, comes later)
            sampler = ctx.reference
        rows, out, scores = ctx.train_rows, [], []
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            p = collate_prompts(part, ctx.tokenizer)
            seed = int(torch.randint(0, 2**31, (1,), generator=step_generator(ctx.recipe.seed, ctx.index, start, 4)))
            data = DataProto.from_dict(
                tensors={"input_ids": p["input_ids"], "attention_mask": p["attention_mask"]},
                meta_info={"sampling": sampling, "seed": seed},
            )
            res = dp_call(sampler.generate, data, sampler.world_size)
            responses = res.batch["responses"].view(len(part), G, self.gen_length)
            out.append(responses)
            for row, group, masks in zip(part, responses, res.batch["response_mask"].view(len(part), G, -1)):
                score = row_scorer(row)
                scores += [score(ctx.tokenizer.decode(r[m.bool()].tolist(), skip_special_tokens=True))
                           for r, m in zip(group, masks)]  # fmt: skip
        cache = {"responses": torch.cat(out), "accuracy": sum(scores) / max(1, len(scores)), "sampling": sampling}
        Path(ctx.dir).mkdir(parents=True, exist_ok=True)
        save_tree(cache, ctx.dir, TEACHER_CACHE)  # the JSON, written last, marks a complete cache
        return cache["responses"], cache["accuracy"]

    def batch(self, step: int, cache: torch.Tensor) -> DataProto:
        ctx, G = self.ctx, self.args.num_generations
        idx = self.stream.rows_at(step)
        p = collate_prompts([ctx.train_rows[i] for i in idx], ctx.tokenizer)
        n = len(idx) * G
        seeds = torch.randint(0, 2**62, (n,), generator=step_generator(ctx.recipe.seed, ctx.index, step, 3))
        tensors = {
            "input_ids": p["input_ids"].repeat_interleave(G, 0),  # prompt-major groups
            "attention_mask": p["attention_mask"].repeat_interleave(G, 0),
            "teacher_response": cache[idx].reshape(n, self.gen_length),
            "noise_seed": seeds,
            "step": torch.full((n,), step, dtype=torch.long),
        }
        return DataProto.from_dict(tensors=tensors)

    def setup(self) -> None:
        t0 = time.perf_counter()
        self.cache, self.teacher_acc = self.teacher_samples()
        print(f"dare: {self.ctx.dir.name}: {self.cache.shape[0]}x{self.cache.shape[1]} teacher samples cached "
              f"(accuracy {100 * self.teacher_acc:.1f}%, {time.perf_counter() - t0:.0f}s)", flush=True)  # fmt: skip

    def step(self, step: int) -> dict[str, float]:
        out = self.ctx.actor.update_actor(self.batch(step, self.cache))
        metrics = rank_zero_metrics(out.meta_info["metrics"])
        metrics["didi/teacher_accuracy"] = self.teacher_acc
        return metrics


STAGE_TRAINERS.register("distill", DistillTrainer)

__all__ = ["TEACHER_CACHE", "DistillTrainer"]
