"""The recipe schema. Typed dataclasses are the only place defaults live.

A recipe is:

    model:      what to train (a family preset initialised at random, or a local checkpoint)
    data:       train / eval data (built-in task or files)
    resources:  workers, Ray address, rollout placement
    seed, output_dir
    eval:       the evaluation run after every stage
    stages:     an ordered list; each names an `algorithm` (its `kind` follows from it), the
                shared optimisation fields below, and the algorithm's own arguments (flat, next to them)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dare.config.loader import build, check_finite, did_you_mean, short_repr, to_dict
from dare.errors import RecipeError

BUILTIN_PREFIX = "builtin:"
# seeds are mixed into 64-bit torch generator seeds ((seed * 1e6 + stage) * 1e6 + step) * 7 in
# dare.trainer.stream; beyond ~2.6e6 they overflow when a stage starts
MAX_SEED = 1_000_000
# a stage name is a folder name under output_dir (stage-K-NAME)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def require(ok: bool, rule: str, obj: Any, name: str, key: str, file: Any) -> None:
    """Raise `RecipeError` at `key.name` ("must be RULE, got VALUE") unless `ok`."""
    if not ok:
        raise RecipeError(file, f"{key}.{name}" if key else name, f"must be {rule}, got {getattr(obj, name)!r}")


def check_path_component(value: str, key: str, file: Any) -> None:
    """`value` is used as one folder name: letters, digits, `._+-`, not starting with a dot,
    no `..`, at most 100 characters (so it can never leave output_dir)."""
    if not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise RecipeError(
            file,
            key,
            f"must be a plain folder name (letters, digits, '._+-', not starting with '.' or '-', "
            f"no '..', at most 100 characters), got {value[:100]!r}",
        )


@dataclass
class LoraSpec:
    """LoRA through peft; the reference policy is the model with the adapter disabled."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    # "all-linear" = every linear layer but the LM head, or a list of module-name suffixes
    target_modules: str | list[str] = "all-linear"

    def validate(self, key: str, file: Any) -> None:
        require(self.r >= 1, ">= 1", self, "r", key, file)
        require(self.alpha >= 1, ">= 1", self, "alpha", key, file)
        require(0 <= self.dropout < 1, "in [0, 1)", self, "dropout", key, file)
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            raise RecipeError(
                file, f"{key}.target_modules", f"must be 'all-linear' or a list, got {short_repr(self.target_modules)}"
            )


@dataclass
class ModelSpec:
    # a family preset initialised at random ...
    family: str | None = None  # a registered family (dare.models.FAMILIES)
    preset: Literal["tiny"] | None = None
    # ... or a checkpoint: a local folder (config.json + safetensors) or a Hub id ORG/NAME[@REVISION]
    path: str | None = None
    # "builtin" = the built-in tasks' character tokenizer; else a tokenizer folder or Hub id (default: path)
    tokenizer: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # config fields of the preset to change (e.g. n_layers: 4)
    overrides: dict[str, Any] = field(default_factory=dict)
    lora: LoraSpec | None = None
    gradient_checkpointing: bool = False

    def validate(self, key: str, file: Any) -> None:
        from dare.models.hub import CONFIG_FILES, TOKENIZER_FILES, HubResolutionError, resolve_checkpoint

        if (self.path is None) == (self.preset is None):
            raise RecipeError(
                file, key, "set exactly one of model.path (a checkpoint folder or Hub id) or model.preset"
            )
        if self.preset is not None and self.family is None:
            raise RecipeError(file, f"{key}.family", "is required with model.preset")
        if self.family is not None:
            from dare.models import FAMILIES

            if self.family not in FAMILIES:
                raise RecipeError(file, f"{key}.family", FAMILIES.unknown_message(self.family))
        if self.path is not None:
            try:  # a Hub id: its configs only (from the cache, or fetched online); weights come at build
                p = resolve_checkpoint(self.path, files=CONFIG_FILES)
            except HubResolutionError as e:
                raise RecipeError(file, f"{key}.path", str(e)) from None
            if not (p / "config.json").is_file():
                raise RecipeError(file, f"{key}.path", f"{p} is not a checkpoint folder (no config.json)")
            if self.overrides:
                raise RecipeError(file, f"{key}.overrides", "only applies to a preset, not to model.path")
        if self.tokenizer not in (None, "builtin"):
            try:
                resolve_checkpoint(self.tokenizer, what="tokenizer", files=TOKENIZER_FILES)
            except HubResolutionError as e:
                raise RecipeError(file, f"{key}.tokenizer", str(e)) from None


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
    # prompt length in tokens (chat template included); a longer prompt is, per long_prompts:
    # skipped (counted, one warning), truncated to its last max_prompt_length tokens, or an error
    max_prompt_length: int = 64
    long_prompts: Literal["skip", "truncate", "fail"] = "skip"
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
        for name in ("num_train", "num_rl_prompts", "num_eval", "gen_length", "max_prompt_length"):
            require(getattr(self, name) >= 1, ">= 1", self, name, key, file)
        from dare.data.loading import ROW_FIELDS

        for name in self.columns:
            if name not in ROW_FIELDS:
                raise RecipeError(
                    file,
                    f"{key}.columns.{name}",
                    f"unknown row field{did_you_mean(name, list(ROW_FIELDS))}; known: {', '.join(ROW_FIELDS)}",
                )
        check_finite(self.task_args, f"{key}.task_args", file)
        files = [v for v in (self.train, self.eval) if v is not None and not v.startswith(BUILTIN_PREFIX)]
        if self.task_args and files:
            raise RecipeError(file, f"{key}.task_args", f"apply to builtin: tasks only, but {files[0]} is a data file")
        for name in ("train", "eval"):
            value = getattr(self, name)
            if value is not None and value.startswith(BUILTIN_PREFIX):
                self._check_builtin(value, f"{key}.{name}", f"{key}.task_args", file)
        if self.system_prompt is not None and not self.system_prompt.strip():
            raise RecipeError(file, f"{key}.system_prompt", "is empty; leave it out (null) for no system prompt")

    def _check_builtin(self, value: str, key: str, args_key: str, file: Any) -> None:
        """A `builtin:<task>` name is a registered task and `task_args` are its knobs with valid values."""
        from dare.data.tasks import TASKS, get_task

        name = value[len(BUILTIN_PREFIX) :]
        if name not in TASKS:
            raise RecipeError(file, key, f"builtin: {TASKS.unknown_message(name)}")
        try:
            get_task(name, **self.task_args)
        except (TypeError, ValueError) as e:
            raise RecipeError(file, args_key, str(e)) from None


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
    # the frozen reference policy (and models built from it): inside the actor (colocated) or its
    # own worker group, one rank per actor rank (separate; dare.workers.reference)
    reference: Literal["colocated", "separate"] = "colocated"
    # nodes of the Ray cluster (ray_address) the workers spread over, num_workers / nodes on each
    # (one per GPU on CUDA): ranks node by node, wired over gloo / NCCL from rank 0's node address
    nodes: int = 1
    # memory of one device in GiB for the dry-run memory plan's check (null: the visible GPU's, if any)
    device_memory_gb: float | None = None
    # FSDP2 options (strategy fsdp2, >= 2 workers; dare.workers.sharding). mixed_precision: the
    # compute dtype of FSDP's MixedPrecisionPolicy (bf16 forward/backward, fp32 gradient reduction,
    # fp32 master weights and optimizer state; needs model.dtype: float32); cpu_offload: shards,
    # gradients and optimizer state in host memory (CPUOffloadPolicy; the optimizer steps on the CPU)
    mixed_precision: Literal["bf16", "fp16"] | None = None
    cpu_offload: bool = False
    # recompute each decoder block's activations in backward (less activation memory); any strategy
    activation_checkpointing: bool = False

    def sharding_kwargs(self) -> dict[str, Any]:
        """The actor worker's sharding arguments (`ActorWorker(**...)`)."""
        return {
            "strategy": self.resolved_strategy(),
            "mixed_precision": self.mixed_precision,
            "cpu_offload": self.cpu_offload,
            "activation_checkpointing": self.activation_checkpointing,
        }

    def resolved_strategy(self) -> str:
        if self.strategy != "auto":
            return self.strategy
        return "fsdp2" if self.device == "cuda" and self.num_workers > 1 else "replicate"

    def validate(self, key: str, file: Any) -> None:
        require(self.num_workers >= 1, ">= 1", self, "num_workers", key, file)
        require(self.num_threads is None or self.num_threads >= 1, ">= 1 or null", self, "num_threads", key, file)
        require(self.nodes >= 1, ">= 1", self, "nodes", key, file)
        require(self.num_workers % self.nodes == 0, "a divisor of num_workers (workers per node = num_workers / nodes)",
                self, "nodes", key, file)  # fmt: skip
        require(self.nodes == 1 or self.ray_address is not None, "1 unless ray_address names a cluster (a local Ray "
                "is one node)", self, "nodes", key, file)  # fmt: skip
        gb = self.device_memory_gb
        require(gb is None or gb > 0, "> 0 or null", self, "device_memory_gb", key, file)
        sharded = self.resolved_strategy() == "fsdp2" and self.num_workers > 1
        for name in ("mixed_precision", "cpu_offload"):
            if getattr(self, name) and not sharded:
                raise RecipeError(
                    file,
                    f"{key}.{name}",
                    f"is an FSDP2 option: needs strategy: fsdp2 and num_workers >= 2 "
                    f"(got strategy {self.resolved_strategy()!r} with {self.num_workers} worker(s))",
                )


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
    # how the built-in check scores an answer (dare.rewards.scorers, docs/evaluation.md): auto (the
    # stages' verifier reward, else each row's declared task / data source, else its ground truth's
    # shape, else exact match), exact, gsm8k, math, code, multiple_choice, task
    scorer: str = "auto"

    def validate(self, key: str, file: Any) -> None:
        """Benchmark names and files and the scorer name are checked here, before anything starts."""
        from dare.rewards.scorers import SCORERS

        if self.scorer not in SCORERS:
            raise RecipeError(file, f"{key}.scorer", SCORERS.unknown_message(self.scorer))
        require(self.num_prompts >= 1, ">= 1", self, "num_prompts", key, file)
        require(self.batch_size >= 1, ">= 1", self, "batch_size", key, file)
        require(self.limit is None or self.limit >= 1, ">= 1 or null", self, "limit", key, file)
        require(self.elbo_samples >= 1, ">= 1", self, "elbo_samples", key, file)
        timeout = self.benchmark_timeout
        require(timeout is None or timeout > 0, "> 0 or null", self, "benchmark_timeout", key, file)
        check_finite(self.sampling, f"{key}.sampling", file)
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
    # MoE families: weights of the router's load-balancing loss and z-loss added to the stage's
    # objective (None: the family config's router_aux_loss_coef, else 0); dense families ignore them
    router_aux_loss_coef: float | None = None
    router_z_loss_coef: float = 0.0
    # the algorithm's arguments (validated against its Args dataclass)
    args: Any = None

    def validate(self, key: str, file: Any) -> None:
        for name in ("steps", "batch_size", "grad_accum", "keep_last", "log_every"):
            require(getattr(self, name) >= 1, ">= 1", self, name, key, file)
        for name in ("warmup_steps", "save_every"):
            require(getattr(self, name) >= 0, ">= 0", self, name, key, file)
        require(self.lr > 0, "> 0", self, "lr", key, file)
        require(self.weight_decay >= 0, ">= 0", self, "weight_decay", key, file)
        require(0 <= self.min_lr_ratio <= 1, "in [0, 1]", self, "min_lr_ratio", key, file)
        # clip_grad_norm_ always runs: 0 would zero every gradient
        require(self.grad_clip > 0, "> 0 (gradients are always clipped to this norm)", self, "grad_clip", key, file)
        if self.router_aux_loss_coef is not None:
            require(self.router_aux_loss_coef >= 0, ">= 0", self, "router_aux_loss_coef", key, file)
        require(self.router_z_loss_coef >= 0, ">= 0", self, "router_z_loss_coef", key, file)
        if self.name is not None:
            check_path_component(self.name, f"{key}.name", file)
        if self.batch_size % self.grad_accum:
            raise RecipeError(
                file, f"{key}.grad_accum", f"must divide batch_size={self.batch_size}, got {self.grad_accum}"
            )
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise RecipeError(
                file, f"{key}.adam_betas", f"must be two numbers in [0, 1), got {short_repr(self.adam_betas)}"
            )


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
        raise RecipeError(file, key, f"a stage must be a mapping, got {short_repr(raw)}")
    for k in raw:
        if not isinstance(k, str):
            raise RecipeError(file, key, f"keys must be strings, got {short_repr(k)} ({type(k).__name__})")
    if "algorithm" not in raw:
        raise RecipeError(file, f"{key}.algorithm", "is required")
    name = raw["algorithm"]
    if not isinstance(name, str):
        raise RecipeError(file, f"{key}.algorithm", f"expected str, got {short_repr(name)} ({type(name).__name__})")
    if name not in ALGORITHMS:
        raise RecipeError(file, f"{key}.algorithm", ALGORITHMS.unknown_message(str(name)))
    algo = ALGORITHMS.get(name)
    arg_fields = {f.name for f in dataclasses.fields(algo.Args)}
    # the stage kind is the algorithm's; writing it in the recipe is optional (checked when written)
    common = {"kind": algo.kind, **{k: v for k, v in raw.items() if k in _STAGE_FIELDS}}
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
        if not isinstance(k, str):
            raise RecipeError(file, "", f"keys must be strings, got {short_repr(k)} ({type(k).__name__})")
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


def _model_spec(recipe: Recipe, file: Any):
    """The model's DiffusionSpec and its maximum sequence length (None when it declares none),
    from the checkpoint's config.json or the preset with `model.overrides` (keys checked
    against the family config's fields)."""
    from dare.models import FAMILIES, load_config

    if recipe.model.path is not None:
        config = load_config(recipe.model.path)
    else:
        family = FAMILIES.get(recipe.model.family)
        known = [f.name for f in dataclasses.fields(family.config_cls)]
        for name in recipe.model.overrides:
            if name not in known:
                raise RecipeError(
                    file,
                    f"model.overrides.{name}",
                    f"not a {family.config_cls.__name__} field{did_you_mean(name, known)}",
                )
        check_finite(recipe.model.overrides, "model.overrides", file)
        try:
            config = family.tiny_config(64, **recipe.model.overrides)
            config.diffusion_spec()
        except Exception as e:  # the config's own (strict dataclass) checks
            raise RecipeError(file, "model.overrides", str(e).splitlines()[0]) from None
    return config.diffusion_spec(), max_model_length(config)


def max_model_length(config: Any) -> int | None:
    """The longest sequence a model config supports (max_position_embeddings or
    max_sequence_length), None when it declares neither."""
    for name in ("max_position_embeddings", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_sampling(sampling: dict[str, Any], spec: Any, key: str, file: Any) -> None:
    """`sampling` (SamplingConfig fields) builds a config that fits the model; an unknown field
    is named with a suggestion."""
    from dare.sampling import SamplingConfig

    check_finite(sampling, key, file)
    try:
        SamplingConfig(**sampling).for_model(spec)
    except TypeError as e:  # an unknown field
        fields = [f.name for f in dataclasses.fields(SamplingConfig)]
        unknown = [k for k in sampling if k not in fields]
        if unknown:
            raise RecipeError(
                file, f"{key}.{unknown[0]}", f"not a sampling setting{did_you_mean(unknown[0], fields)}"
            ) from None
        raise RecipeError(file, key, str(e)) from None
    except ValueError as e:
        raise RecipeError(file, key, str(e)) from None


def stage_sampling_fields(args: Any) -> list[str]:
    """The algorithm arguments that hold SamplingConfig fields: by convention `sampling` (the
    RL rollout) and `*_sampling` (e.g. DiDi's `teacher_sampling`) holding a dict."""
    if args is None or not dataclasses.is_dataclass(args):
        return []
    names = [f.name for f in dataclasses.fields(args) if f.name == "sampling" or f.name.endswith("_sampling")]
    return [n for n in names if isinstance(getattr(args, n), dict)]  # not e.g. `dynamic_sampling` (DAPO's settings)


def _check_rollout_backend(recipe: Recipe, stage: Any, spec: Any, key: str, file: Any) -> None:
    """An RL stage's `rollout_backend` can serve its model, rollout sampling and objective."""
    name = getattr(stage.args, "rollout_backend", None)
    if name is None:
        return
    from dare.algorithms import ALGORITHMS
    from dare.models import FAMILIES
    from dare.sampling.backend import ROLLOUT_BACKENDS
    from dare.sampling.config import SamplingConfig

    sampling = {**stage.args.sampling, "gen_length": recipe.data.gen_length, "num_generations": 1}
    family = recipe.model.family
    model_type = FAMILIES.get(family).model_type if family in FAMILIES else None
    try:
        ROLLOUT_BACKENDS.get(name).check_stage(
            SamplingConfig(**sampling).for_model(spec), ALGORITHMS.get(stage.algorithm).required_batch_keys, model_type
        )
    except ValueError as e:
        raise RecipeError(file, f"{key}.rollout_backend", f"{name}: {e}") from None


def _check_combinations(recipe: Recipe, file: Any) -> None:
    """Choices that are valid alone but not together (checked without loading a model)."""
    from dare.algorithms import ALGORITHMS

    if not 0 <= recipe.seed <= MAX_SEED:
        raise RecipeError(file, "seed", f"must be in [0, {MAX_SEED}], got {recipe.seed}")
    spec, max_length = _model_spec(recipe, file)
    attention = spec.attention
    sharded = recipe.resources.resolved_strategy() == "fsdp2"
    if recipe.resources.mixed_precision and recipe.model.dtype != "float32":
        raise RecipeError(
            file,
            "resources.mixed_precision",
            f"keeps fp32 master weights and computes in {recipe.resources.mixed_precision}: needs model.dtype: "
            f"float32, got {recipe.model.dtype!r}",
        )
    data = recipe.data
    if max_length is not None and data.max_prompt_length + data.gen_length > max_length:
        raise RecipeError(
            file,
            "data.max_prompt_length",
            f"max_prompt_length + gen_length = {data.max_prompt_length} + {data.gen_length} exceeds the "
            f"model's maximum sequence length {max_length}",
        )
    for i, stage in enumerate(recipe.stages):
        algo = ALGORITHMS.get(stage.algorithm)
        algo.check_recipe(recipe, stage, f"stages[{i}]", file)
        if stage.sft_control and not any(s.kind == "sft" for s in recipe.stages[:i]):
            raise RecipeError(
                file, f"stages[{i}].sft_control", "needs an earlier sft stage (its settings train the control)"
            )
        if stage.sft_control and not recipe.eval.enabled:
            raise RecipeError(file, f"stages[{i}].sft_control", "needs eval.enabled (the control is only evaluated)")
        if recipe.resources.reference == "separate" and not algo.separate_reference:
            raise RecipeError(
                file,
                "resources.reference",
                f"stages[{i}] ({stage.algorithm!r}) uses its reference (teacher) beyond a forward pass (builds "
                "modules from it or backpropagates through it), so it must stay with the actor; use reference: colocated",
            )
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
        try:
            algo.check_fit(stage.args, spec, data.gen_length)
        except ValueError as e:
            raise RecipeError(file, f"stages[{i}]", f"{stage.algorithm}: {e}") from None
        for name in stage_sampling_fields(stage.args):
            # the trainers set gen_length and num_generations
            sampling = {**getattr(stage.args, name), "gen_length": data.gen_length, "num_generations": 1}
            _check_sampling(sampling, spec, f"stages[{i}].{name}", file)
        _check_rollout_backend(recipe, stage, spec, f"stages[{i}]", file)
        builtin_train = data.train.startswith(BUILTIN_PREFIX)
        if stage.kind == "preference" and builtin_train and not data.train.startswith(BUILTIN_PREFIX + "pref-"):
            task = data.train[len(BUILTIN_PREFIX) :]
            raise RecipeError(
                file,
                "data.train",
                f"stages[{i}] is a preference stage: it needs pairs; use builtin:pref-{task} (correct vs incorrect)",
            )
    # eval.sampling may set its own gen_length (the rollouts' is data.gen_length)
    _check_sampling({"gen_length": data.gen_length, **recipe.eval.sampling}, spec, "eval.sampling", file)


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
