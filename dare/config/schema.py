"""The recipe schema. Typed dataclasses are the only place defaults live.

A recipe is:

    model:      what to train (a family preset initialised at random, or a local checkpoint)
    data:       train / eval data (built-in task or files)
    resources:  workers, Ray address, rollout placement
    seed, output_dir
    eval:       the evaluation run after every stage
    stages:     an ordered list; each has a `kind`, an `algorithm` registered for that kind, the
                shared optimisation fields below, and the algorithm's own arguments (flat, next to them)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dare.config.loader import RecipeError, build, convert, did_you_mean, to_dict

BUILTIN_PREFIX = "builtin:"


@dataclass
class LoraSpec:
    """LoRA through peft; the reference policy is the model with the adapter disabled."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    # "all-linear" = every linear layer but the LM head, or a list of module-name suffixes
    target_modules: str | list[str] = "all-linear"

    def validate(self, key: str, file: Any) -> None:
        if self.r < 1:
            raise RecipeError(file, f"{key}.r", f"must be >= 1, got {self.r}")
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            raise RecipeError(
                file, f"{key}.target_modules", f"must be 'all-linear' or a list, got {self.target_modules!r}"
            )


@dataclass
class ModelSpec:
    # a family preset initialised at random ...
    family: Literal["llada", "dream", "sdar"] | None = None
    preset: Literal["tiny"] | None = None
    # ... or a local checkpoint folder (config.json + safetensors)
    path: str | None = None
    # "builtin" = the built-in tasks' character tokenizer; else a tokenizer folder (default: path)
    tokenizer: str | None = None
    dtype: Literal["float32", "bfloat16"] = "float32"
    # config fields of the preset to change (e.g. n_layers: 4)
    overrides: dict[str, Any] = field(default_factory=dict)
    lora: LoraSpec | None = None
    gradient_checkpointing: bool = False

    def validate(self, key: str, file: Any) -> None:
        if (self.path is None) == (self.preset is None):
            raise RecipeError(file, key, "set exactly one of model.path (a checkpoint folder) or model.preset")
        if self.preset is not None and self.family is None:
            raise RecipeError(file, f"{key}.family", "is required with model.preset")
        if self.path is not None:
            p = Path(self.path)
            if not (p / "config.json").is_file():
                raise RecipeError(file, f"{key}.path", f"{p} is not a checkpoint folder (no config.json)")
            if self.overrides:
                raise RecipeError(file, f"{key}.overrides", "only applies to a preset, not to model.path")
        if self.tokenizer not in (None, "builtin") and not Path(self.tokenizer).is_dir():
            raise RecipeError(file, f"{key}.tokenizer", f"{self.tokenizer} is not a tokenizer folder")


@dataclass
class DataSpec:
    # builtin:<task> (countdown, sudoku, addition, sort, mirror) or a JSONL / parquet file / HF dataset folder
    train: str = "builtin:sort"
    # default: the eval split of the same built-in task
    eval: str | None = None
    # built-in tasks: demonstrations for SFT / preference stages ...
    num_train: int = 2000
    # ... and prompts for RL and distill stages, drawn from the train split after the
    # demonstrations (fresh prompts the SFT stage never saw)
    num_rl_prompts: int = 2000
    num_eval: int = 1000
    # difficulty knobs of the built-in task (e.g. digits: 3)
    task_args: dict[str, Any] = field(default_factory=dict)
    # data files: map dare's row fields to your columns, e.g. {prompt: question, ground_truth: answer}
    columns: dict[str, str] = field(default_factory=dict)
    # malformed rows in data files: skip them (counted, reported) or fail on the first
    on_error: Literal["skip", "fail"] = "fail"
    # response length in tokens (SFT pads answers with EOS up to it; generation length)
    gen_length: int = 16
    max_prompt_length: int = 64
    # an instruction added to every training and evaluation prompt (SFT, RL, preference, eval
    # rows; not the OpenCompass benchmarks, which use their own prompts): as a system turn, or
    # (user_prefix) written before the first user turn's text with a blank line, as d1 does
    system_prompt: str | None = None
    system_prompt_placement: Literal["system", "user_prefix"] = "system"

    def validate(self, key: str, file: Any) -> None:
        for name in ("train", "eval"):
            value = getattr(self, name)
            if value is None or value.startswith(BUILTIN_PREFIX):
                continue
            if not Path(value).exists():
                raise RecipeError(file, f"{key}.{name}", f"data file {value} does not exist")
        if self.eval is None and not self.train.startswith(BUILTIN_PREFIX):
            raise RecipeError(file, f"{key}.eval", "is required when data.train is a file")
        for name in ("num_train", "num_eval", "gen_length", "max_prompt_length"):
            if getattr(self, name) < 1:
                raise RecipeError(file, f"{key}.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.system_prompt is not None and not self.system_prompt.strip():
            raise RecipeError(file, f"{key}.system_prompt", "is empty; leave it out (null) for no system prompt")


@dataclass
class ResourcesSpec:
    # data-parallel actor workers (FSDP2 on GPUs, gloo DP on CPU)
    num_workers: int = 1
    # an existing Ray cluster ("auto" or ray://host:port); null = start Ray locally
    ray_address: str | None = None
    # rollout shares the actor's weights (colocated) or runs in its own worker, synced after updates
    rollout: Literal["colocated", "separate"] = "colocated"
    # torch threads per worker (null = cores / workers)
    num_threads: int | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    # how the actor's data-parallel ranks hold the weights: "replicate" (full copy per rank,
    # gradients all-reduced), "fsdp2" (torch fully_shard: parameters, gradients and optimizer
    # state sharded across ranks), "auto" (fsdp2 with several CUDA workers, else replicate)
    strategy: Literal["auto", "replicate", "fsdp2"] = "auto"

    def resolved_strategy(self) -> str:
        if self.strategy != "auto":
            return self.strategy
        return "fsdp2" if self.device == "cuda" and self.num_workers > 1 else "replicate"

    def validate(self, key: str, file: Any) -> None:
        if self.num_workers < 1:
            raise RecipeError(file, f"{key}.num_workers", f"must be >= 1, got {self.num_workers}")


@dataclass
class EvalSpec:
    enabled: bool = True
    # prompts from the eval split (>= 1000 for a ~1.5-point standard error)
    num_prompts: int = 1000
    batch_size: int = 256
    # dare.sampling.SamplingConfig fields (algorithm, steps, block_length, cache, threshold, ...)
    sampling: dict[str, Any] = field(default_factory=dict)
    # OpenCompass benchmarks run on each stage's checkpoint (evals/, docs/evaluation.md): built-in
    # tasks (sort, addition, countdown, sudoku) and local files (gsm8k, math500, humaneval, mbpp,
    # arc_c, mmlu, hellaswag); generation uses `sampling` with gen_length = data.gen_length
    benchmarks: list[str] = field(default_factory=list)
    # the local file of each file benchmark, e.g. {gsm8k: data/gsm8k_test.jsonl}
    benchmark_files: dict[str, str] = field(default_factory=dict)
    # examples per benchmark (null: data.num_eval for a built-in task, every row of a file)
    limit: int | None = None
    # Monte-Carlo samples of the ELBO per option (multiple-choice benchmarks)
    elbo_samples: int = 8
    # stop an OpenCompass run after this many seconds (null: no limit)
    benchmark_timeout: float | None = None
    # evaluate the starting model too (a "stage 0" row in the report; built-in check only)
    before_first_stage: bool = True

    def validate(self, key: str, file: Any) -> None:
        """Benchmark names and files are checked here, before anything starts."""
        if self.limit is not None and self.limit < 1:
            raise RecipeError(file, f"{key}.limit", f"must be >= 1 or null, got {self.limit}")
        if self.elbo_samples < 1:
            raise RecipeError(file, f"{key}.elbo_samples", f"must be >= 1, got {self.elbo_samples}")
        from dare.evals.benchmarks import check_benchmarks

        try:
            check_benchmarks(
                self.benchmarks, self.benchmark_files, f"{key}.benchmarks", key + ".benchmark_files.{name}"
            )
        except (KeyError, ValueError, FileNotFoundError) as e:
            raise RecipeError(file, "", str(e).strip("'\"")) from None  # the message names the key


@dataclass
class LoggingSpec:
    # metrics.jsonl and the console are always written; these add TensorBoard / W&B
    tensorboard: bool = False
    wandb_project: str | None = None


@dataclass
class StageSpec:
    """Fields shared by every stage kind; the algorithm's own arguments end up in `args`."""

    kind: Literal["sft", "rl", "preference", "distill"]
    algorithm: str
    steps: int
    name: str | None = None
    batch_size: int = 32
    lr: float = 1e-4
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    # the schedule decays to min_lr_ratio * lr
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    # micro-batches per optimizer step (batch_size is split into grad_accum parts per worker)
    grad_accum: int = 1
    # save the training state every N steps (0 = only at the end of the stage)
    save_every: int = 0
    keep_last: int = 2
    log_every: int = 10
    # after this stage, also give its starting checkpoint the same wall time of further SFT (the
    # last SFT stage's settings at its final lr, constant) and evaluate it: the compute-matched
    # control a stage's gain is judged against, reported as a row of its own
    sft_control: bool = False
    # the algorithm's arguments (validated against its Args dataclass)
    args: Any = None

    def validate(self, key: str, file: Any) -> None:
        for name in ("steps", "batch_size", "grad_accum", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise RecipeError(file, f"{key}.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise RecipeError(file, f"{key}.lr", f"must be > 0, got {self.lr}")
        if self.batch_size % self.grad_accum:
            raise RecipeError(
                file, f"{key}.grad_accum", f"must divide batch_size={self.batch_size}, got {self.grad_accum}"
            )
        if len(self.adam_betas) != 2:
            raise RecipeError(file, f"{key}.adam_betas", f"must be two numbers, got {self.adam_betas}")


@dataclass
class Recipe:
    model: ModelSpec
    stages: list[StageSpec]
    data: DataSpec = field(default_factory=DataSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    logging: LoggingSpec = field(default_factory=LoggingSpec)
    seed: int = 0
    output_dir: str = "runs/default"
    # where the recipe came from (not a recipe key)
    source: str | None = field(default=None, init=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = to_dict(self)
        out["stages"] = [stage_to_dict(s) for s in self.stages]
        return out


def stage_to_dict(stage: StageSpec) -> dict[str, Any]:
    d = {f.name: getattr(stage, f.name) for f in dataclasses.fields(stage) if f.name != "args"}
    d.update(to_dict(stage.args) if stage.args is not None else {})
    return to_dict(d)


_STAGE_FIELDS = [f.name for f in dataclasses.fields(StageSpec) if f.name != "args"]


def build_stage(raw: Any, key: str, file: Any) -> StageSpec:
    """Split a stage mapping into the shared fields and the algorithm's arguments."""
    from dare.algorithms import ALGORITHMS  # algorithms register themselves on import

    if not isinstance(raw, dict):
        raise RecipeError(file, key, f"a stage must be a mapping, got {raw!r}")
    for required in ("kind", "algorithm"):
        if required not in raw:
            raise RecipeError(file, f"{key}.{required}", "is required")
    name = raw["algorithm"]
    if name not in ALGORITHMS:
        raise RecipeError(file, f"{key}.algorithm", ALGORITHMS.unknown_message(str(name)))
    algo = ALGORITHMS.get(name)
    arg_fields = {f.name for f in dataclasses.fields(algo.Args)}
    common = {k: v for k, v in raw.items() if k in _STAGE_FIELDS}
    extra = {k: v for k, v in raw.items() if k not in _STAGE_FIELDS}
    for k in extra:
        if k not in arg_fields:
            known = sorted(set(_STAGE_FIELDS) | arg_fields)
            raise RecipeError(
                file,
                f"{key}.{k}",
                f"unknown key for algorithm {name!r}{did_you_mean(k, known)}; known: {', '.join(known)}",
            )
    stage = build(StageSpec, common, key, file)
    if stage.kind != algo.kind:
        raise RecipeError(file, f"{key}.kind", f"algorithm {name!r} is a {algo.kind!r} algorithm, not {stage.kind!r}")
    stage.args = build(algo.Args, extra, key, file)
    return stage


def build_recipe(data: dict[str, Any], file: Any = None) -> Recipe:
    """Validate a raw recipe mapping (already overridden) into a `Recipe`."""
    data = dict(data)
    stages_raw = data.pop("stages", None)
    if not isinstance(stages_raw, list) or not stages_raw:
        raise RecipeError(file, "stages", "must be a non-empty list of stages")
    known = [f.name for f in dataclasses.fields(Recipe) if f.init]
    for k in data:
        if k not in known:
            raise RecipeError(file, k, f"unknown key{did_you_mean(k, known)}; known: {', '.join(known)}")
    if "model" not in data:
        raise RecipeError(file, "model", "is required")
    stages = [build_stage(s, f"stages[{i}]", file) for i, s in enumerate(stages_raw)]
    recipe = build(Recipe, {**data, "stages": []}, "", file)
    recipe.stages = stages
    recipe.source = str(file) if file else None
    _check_combinations(recipe, file)
    return recipe


def _check_combinations(recipe: Recipe, file: Any) -> None:
    """Choices that are valid alone but not together (checked without loading a model)."""
    from dare.algorithms import ALGORITHMS
    from dare.models import FAMILIES, load_config

    if recipe.model.path is not None:
        spec = load_config(recipe.model.path).diffusion_spec()
    else:
        spec = FAMILIES.get(recipe.model.family).tiny_config(64, **recipe.model.overrides).diffusion_spec()
    attention = spec.attention
    sharded = recipe.resources.resolved_strategy() == "fsdp2"
    for i, stage in enumerate(recipe.stages):
        algo = ALGORITHMS.get(stage.algorithm)
        algo.check_recipe(recipe, stage, f"stages[{i}]", file)
        if stage.sft_control and not any(s.kind == "sft" for s in recipe.stages[:i]):
            raise RecipeError(
                file, f"stages[{i}].sft_control", "needs an earlier sft stage (its settings train the control)"
            )
        if stage.sft_control and not recipe.eval.enabled:
            raise RecipeError(file, f"stages[{i}].sft_control", "needs eval.enabled (the control is only evaluated)")
        if sharded and not algo.supports_sharding:
            raise RecipeError(
                file,
                "resources.strategy",
                f"stages[{i}] ({stage.algorithm!r}) does not run on an FSDP2-sharded actor; use strategy: replicate",
            )
        if attention not in algo.attention:
            raise RecipeError(
                file,
                f"stages[{i}].algorithm",
                f"{stage.algorithm!r} needs {' or '.join(algo.attention)} attention, but the model "
                f"({recipe.model.family or recipe.model.path}) uses {attention!r} attention",
            )
    from dare.sampling import SamplingConfig

    try:
        SamplingConfig(**{"gen_length": recipe.data.gen_length, **recipe.eval.sampling}).for_model(spec)
    except (TypeError, ValueError) as e:
        raise RecipeError(file, "eval.sampling", str(e)) from None
    convert(int, recipe.seed, "seed", file)


__all__ = [
    "DataSpec",
    "EvalSpec",
    "LoggingSpec",
    "LoraSpec",
    "ModelSpec",
    "Recipe",
    "ResourcesSpec",
    "StageSpec",
    "build_recipe",
    "build_stage",
    "stage_to_dict",
]
