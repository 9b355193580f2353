"""The `dare` command.

dare --help
dare run RECIPE [key=value ...] [--dry-run]   # run a recipe's stages (overrides: stages.0.lr=1e-4)
dare run --resume RUN_DIR                     # continue a stopped run from its last checkpoint
dare run RECIPE --overwrite                   # replace an earlier run in the recipe's output_dir
dare export RUN_DIR/stage-K-NAME [--merge-lora] OUT   # a plain Hugging Face folder
dare info PATH                      # print a checkpoint's family and DiffusionSpec
dare generate --model PATH --prompt "..." [--prompt ...] [sampler options]
dare generate --model tiny:llada --prompt "hi"    # random tiny model + char tokenizer (smoke test)
dare eval --model PATH --benchmarks sort,gsm8k --file gsm8k=test.jsonl [--limit N] [sampler options]
dare eval ... --num-workers 4 [--dtype bfloat16]   # split over 4 tasks; default dtype: the checkpoint's
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import string
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path

# --dtype of `dare generate` (checkpoints are loaded in this dtype)
DTYPE_CHOICES = ("float32", "bfloat16", "float16")


@contextlib.contextmanager
def checkpoint_errors(path: str) -> Iterator[None]:
    """A checkpoint folder that fails to load (truncated safetensors, a bad config.json, broken
    tokenizer files) becomes one `dare: error:` line naming it, not a traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError, KeyError):
        raise  # dare's own messages already name the file
    except Exception as e:  # safetensors / torch / transformers errors of a corrupt folder
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: cannot load the checkpoint ({type(e).__name__}: {first})") from None


def _cmd_info(args: argparse.Namespace) -> int:
    from dare.models import family_of, load_config

    with checkpoint_errors(args.path):
        config = load_config(args.path)
    print(f"family: {family_of(config).name}")
    print(f"spec:   {config.diffusion_spec()}")
    return 0


# ---------------------------------------------------------------------------------------------
# dare generate
# ---------------------------------------------------------------------------------------------

TINY_PREFIX = "tiny:"
TINY_SYMBOLS = string.ascii_letters + string.digits + " .,;:!?'\"-+*/=()\n"


def _field_parser(annotation: object):
    """argparse `type` for a SamplingConfig field annotation (int, float, str, bool, X | None, tuple[int, ...])."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _field_parser(args[0])
    if typing.get_origin(annotation) is tuple:
        return lambda text: tuple(int(t) for t in text.split(",") if t.strip())
    if annotation is bool:
        return lambda text: {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[
            text.lower()
        ]
    return annotation


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    """One --flag per SamplingConfig field; an unset flag keeps the dataclass default."""
    from dare.sampling import SamplingConfig

    hints = typing.get_type_hints(SamplingConfig)
    group = p.add_argument_group("sampling (SamplingConfig fields; unset = its default)")
    for f in dataclasses.fields(SamplingConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        group.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, type=_field_parser(hints[f.name]), default=None,
            metavar=f.name.upper(), help=f"default: {default!r}" + (" (comma-separated ids)" if f.name.endswith("_ids") else ""),
        )  # fmt: skip


def _load_for_generate(args: argparse.Namespace):
    """(model, tokenizer) from a checkpoint folder or `tiny:<family>`."""
    import torch

    if args.model.startswith(TINY_PREFIX):
        from dare.models import FAMILIES, tiny
        from dare.models.tokenizer import build_tokenizer, model_token_ids

        family = args.model[len(TINY_PREFIX) :]
        if family not in FAMILIES:
            raise ValueError(f"--model {args.model}: {FAMILIES.unknown_message(family)}")
        tokenizer = build_tokenizer(TINY_SYMBOLS)
        model = tiny(family, seed=args.seed, **model_token_ids(tokenizer))
    else:
        from dare.models.checkpoint import load_model_and_tokenizer

        # a folder or Hub id; a LoRA adapter is merged; tokenizer ids checked against the config
        with checkpoint_errors(args.model):
            model, tokenizer = load_model_and_tokenizer(args.model, args.tokenizer, args.dtype)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def _encode_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text, add_special_tokens=False).input_ids
    return tokenizer(text).input_ids


def _check_prompt_lengths(prompts: list[list[int]], gen_length: int, model_config: object) -> None:
    """Refuse, before generating, a prompt that with gen_length exceeds the model's maximum
    sequence length (when its config declares one)."""
    from dare.config.schema import max_model_length

    limit = max_model_length(model_config)
    for i, ids in enumerate(prompts):
        if limit is not None and len(ids) + gen_length > limit:
            raise ValueError(
                f"--prompt {i + 1}: {len(ids)} prompt tokens + gen_length {gen_length} exceed the model's "
                f"maximum sequence length {limit}"
            )


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from dare.sampling import SamplingConfig, generate

    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingConfig) if getattr(args, f.name) is not None
    }
    config = SamplingConfig(**overrides)  # validated before the model is loaded
    model, tokenizer = _load_for_generate(args)
    prompts = [_encode_prompt(tokenizer, p, not args.no_chat_template) for p in args.prompt]
    _check_prompt_lengths(prompts, config.gen_length, model.config)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    rollout = generate(model, prompts, config, generator)
    for n in range(len(rollout)):
        i, g = int(rollout.prompt_index[n]), n % rollout.config.num_generations
        ids = rollout.response_ids[n][rollout.response_mask[n]].tolist()
        print(f"--- prompt {i} sample {g}: {args.prompt[i]!r}")
        print(tokenizer.decode(ids, skip_special_tokens=True))
    print(
        f"--- {rollout.config.algorithm} (remasking={rollout.config.remasking}, cache={rollout.config.cache}): "
        f"{rollout.num_tokens} tokens in {rollout.wall_time:.2f}s = {rollout.tokens_per_second:.1f} tokens/s, "
        f"{rollout.nfe} forward passes ({rollout.nfe_per_token:.2f} per token)"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# dare run / export
# ---------------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    import yaml

    from dare.config import load_recipe

    if args.resume:
        if args.recipe or args.overrides or args.overwrite:
            raise ValueError(
                "--resume RUN_DIR continues a run with its saved recipe; give no recipe, overrides or --overwrite"
            )
        from dare.trainer import Pipeline

        Pipeline.resume(args.resume).run()
        return 0
    if not args.recipe:
        raise ValueError("dare run needs a RECIPE (or --resume RUN_DIR)")
    recipe = load_recipe(args.recipe, args.overrides)  # validated before anything heavy starts
    if args.dry_run:
        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False), end="")
        print(f"# {args.recipe}: valid ({len(recipe.stages)} stage(s))")
        _print_memory_plan(recipe)
        return 0
    from dare.trainer import Pipeline

    Pipeline(recipe, overwrite=args.overwrite).run()
    return 0


def _print_memory_plan(recipe) -> None:
    """The per-rank memory plan (model config on the meta device, no weights) and a warning per
    stage that does not fit resources.device_memory_gb (or the visible GPU)."""
    from dare.config.memory_plan import device_memory_bytes, plan_recipe

    try:
        plan = plan_recipe(recipe)
    except Exception as e:  # an estimate only: a model the meta trace cannot run leaves the recipe valid
        print(f"# memory plan: not available ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return
    print(plan.table())
    for line in plan.warnings(device_memory_bytes(recipe)):
        print(f"dare: warning: {line}", file=sys.stderr)


def _cmd_export(args: argparse.Namespace) -> int:

    from dare.models.checkpoint import export_checkpoint

    with checkpoint_errors(args.stage_dir):
        out = export_checkpoint(args.stage_dir, args.out, merge_lora=args.merge_lora)
    print(f"dare: wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# dare eval
# ---------------------------------------------------------------------------------------------


def _eval_dtype_flag(value: str | None) -> str | None:
    """`dare eval --dtype`: a name of `dare.models.dtypes.DTYPES` (or an alias), None = the checkpoint's."""
    from dare.models.dtypes import DTYPE_ALIASES, DTYPES

    if value is None:
        return None
    name = DTYPE_ALIASES.get(value, value)
    if name not in DTYPES:
        aliases = ", ".join(DTYPE_ALIASES)
        raise ValueError(f"--dtype {value!r}: unknown dtype; expected one of {', '.join(DTYPES)} (or {aliases})")
    return name


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    import torch

    from dare.evals import EvalRequest, check_request, run_benchmarks
    from dare.evals.report import benchmark_table
    from dare.models.checkpoint import checkpoint_dtype
    from dare.sampling import SamplingConfig

    if args.num_workers < 1:  # checked before anything is loaded
        raise ValueError(f"--num-workers {args.num_workers}: expected a number of data-parallel workers >= 1")
    dtype = _eval_dtype_flag(args.dtype)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to this process")
    files = {}
    for item in args.file or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--file {item!r}: expected BENCHMARK=PATH")
        files[name] = path
    sampling = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingConfig) if getattr(args, f.name) is not None
    }
    req = EvalRequest(
        model=args.model, benchmarks=[b for b in args.benchmarks.split(",") if b], work_dir=args.out,
        files=files, limit=args.limit, sampling=sampling, elbo_samples=args.elbo_samples, seed=args.seed,
        batch_size=args.batch_size, tokenizer=args.tokenizer, task_args=json.loads(args.task_args or "{}"),
        debug=args.debug, num_workers=args.num_workers,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
    )  # fmt: skip
    try:  # names, files, checkpoint and settings are checked before OpenCompass starts
        check_request(req, "--benchmarks", "--file {name}=PATH")
        # the after-stage evaluation's path (dare.trainer.evaluate.benchmark_request): the model in
        # its dtype, inference split over num_workers OpenCompass tasks (one GPU each on CUDA)
        req.dtype = dtype or checkpoint_dtype(req.model)
        print(f"dare: evaluating {args.model} in {req.dtype} on {req.device}, {req.num_workers} worker(s)", flush=True)
        res = run_benchmarks(req, check=False)
    except KeyError as e:  # an unknown benchmark name: print the message without KeyError's quotes
        raise ValueError(e.args[0]) from None
    except RuntimeError as e:  # OpenCompass missing or its run failed (the message shows its logs)
        print(f"dare: error: {e}", file=sys.stderr)
        return 1
    print("\n".join(benchmark_table([(args.model, res["benchmarks"])])))
    print(f"dare: OpenCompass output in {res['output_dir']} ({res['seconds']:.0f}s)")
    (Path(args.out) / "results.json").write_text(json.dumps(res, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dare", description="Post-train diffusion language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("run", help="run a recipe (SFT / RL / ... stages, eval after each)")
    p.add_argument("recipe", nargs="?", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. stages.0.lr=1e-4 output_dir=/tmp/x")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate, print the resolved recipe and its per-rank memory plan; load no weights",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier run in output_dir first")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("export", help="write a stage's checkpoint as a plain Hugging Face folder")
    p.add_argument("stage_dir", help="RUN_DIR/stage-K-NAME (or any dare checkpoint folder or Hub id)")
    p.add_argument("out", help="output folder")
    p.add_argument("--merge-lora", action="store_true", help="merge a LoRA adapter into its base weights")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("info", help="show a checkpoint's family and diffusion spec")
    p.add_argument("path", help="local checkpoint folder")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("generate", help="generate with any sampler from a checkpoint or a tiny random model")
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint folder or Hub id ORG/NAME[@REV], or tiny:<family> (any registered family)",
    )
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or Hub id (default: --model's)")
    p.add_argument("--no-chat-template", action="store_true", help="encode prompts as plain text")
    p.add_argument("--seed", type=int, default=0, help="generator seed (and tiny-model init seed)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument(
        "--dtype", default="float32", choices=DTYPE_CHOICES, help="checkpoint dtype: %(choices)s (default float32)"
    )
    _add_sampling_options(p)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("eval", help="run OpenCompass benchmarks on a checkpoint")
    p.add_argument("--model", required=True, help="checkpoint folder (or RUN/stage-K-NAME/checkpoint) or Hub id")
    p.add_argument("--benchmarks", required=True, help="comma-separated: sort,addition,countdown,sudoku,gsm8k,...")
    p.add_argument("--file", action="append", metavar="BENCHMARK=PATH", help="local file of a file benchmark (repeat)")
    p.add_argument("--limit", type=int, default=None, help="examples per benchmark (default: all / 1000 generated)")
    p.add_argument("--out", default="runs/eval", help="OpenCompass work dir (default runs/eval)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or Hub id (default: --model's)")
    p.add_argument("--seed", type=int, default=0, help="sampler / ELBO seed and built-in tasks' eval-split seed")
    p.add_argument("--elbo-samples", type=int, default=8, help="ELBO Monte-Carlo samples per option (multiple choice)")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per model call")
    p.add_argument("--task-args", default=None, help='JSON knobs of built-in tasks, e.g. \'{"sort": {"max_len": 4}}\'')
    p.add_argument("--debug", action="store_true", help="run OpenCompass tasks in one process (no subprocesses)")
    p.add_argument(
        "--dtype", default=None,
        help="model dtype: float32 | bfloat16 | float16 (default: the checkpoint's, config.json dtype / torch_dtype)",
    )  # fmt: skip
    p.add_argument(
        "--num-workers", type=int, default=1,
        help="data-parallel inference tasks, each on its share of every benchmark's rows (one GPU each on cuda)",
    )  # fmt: skip
    p.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: cuda when available")
    _add_sampling_options(p)
    p.set_defaults(func=_cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"dare: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
