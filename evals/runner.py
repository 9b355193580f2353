"""Run OpenCompass on a dare checkpoint and collect its scores.

`run_benchmarks(request)`:

1. checks everything that can be checked without OpenCompass (benchmark names, local files,
   the checkpoint and tokenizer load, the decoding settings fit the model, opencompass is
   installed) and raises a clear error before anything starts;
2. writes an OpenCompass config (`WORK/dare_opencompass.py`, plain data) naming `DareModel` and
   the benchmarks' dataset configs;
3. runs the OpenCompass CLI (`python -m opencompass.cli.main CONFIG -w WORK`) in a subprocess:
   its partitioner, LocalRunner and per-task subprocesses, exactly as a user would;
4. reads the scores from OpenCompass's output folder, `WORK/<timestamp>/results/<model>/<benchmark>.json`.

The config uses OpenCompass's defaults with every dataset in one inference task and one
evaluation task (`NaivePartitioner(n=...)`), which saves a Python start-up per benchmark.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dare.evals.benchmarks import BENCHMARKS, check_benchmarks

MODEL_ABBR = "dare"
CONFIG_NAME = "dare_opencompass.py"


@dataclass
class EvalRequest:
    """What to evaluate and how.

    Attributes:
        model: checkpoint folder.
        benchmarks: benchmark names (`dare.evals.benchmarks.BENCHMARKS`).
        work_dir: OpenCompass's output folder for this evaluation.
        files: local file of each file benchmark.
        limit: examples per benchmark (None: `builtin_examples` of a built-in task, a file's every row).
        builtin_examples: eval-split problems of a built-in task when `limit` is None.
        sampling: `SamplingConfig` fields for generation benchmarks.
        elbo_samples: Monte-Carlo samples of the ELBO per option (multiple-choice benchmarks).
        seed: sampler / ELBO seed and the built-in tasks' eval-split seed.
        batch_size: prompts per model call.
        tokenizer: tokenizer folder (default: the checkpoint's).
        task_args: difficulty knobs of a built-in task, by benchmark name ({"sort": {"max_len": 4}}).
        num_threads: torch threads in OpenCompass's task processes.
        debug: run OpenCompass's tasks in its own process (`--debug`) instead of subprocesses.
        timeout: seconds before the OpenCompass run is stopped.
        check_weights: load the weights once before OpenCompass starts (False: config and
            tokenizer only, for a checkpoint just written).
        dtype: the model's dtype in OpenCompass's task processes (a run's: its recipe's model.dtype).
        num_workers: data-parallel inference tasks, each on its own share of every benchmark's
            rows (`NumWorkerPartitioner`), run side by side (on CUDA one device each).
        device: "cuda" gives each task one GPU (OpenCompass sets CUDA_VISIBLE_DEVICES); "cpu" none.
    """

    model: str
    benchmarks: list[str]
    work_dir: str
    files: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    builtin_examples: int = 1000
    sampling: dict[str, Any] = field(default_factory=dict)
    elbo_samples: int = 8
    seed: int = 0
    batch_size: int = 64
    tokenizer: str | None = None
    task_args: dict[str, Any] = field(default_factory=dict)
    num_threads: int | None = 1
    debug: bool = False
    timeout: float | None = None
    check_weights: bool = True
    dtype: str = "float32"
    num_workers: int = 1
    device: str = "cpu"


def opencompass_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("opencompass") is not None


def check_request(req: EvalRequest, key: str = "benchmarks", files_key: str = "files.{name}") -> None:
    """Every check that needs no OpenCompass run; raises ValueError / FileNotFoundError / KeyError
    with a message naming what is wrong (`key` / `files_key` name the benchmark list and files
    in messages)."""
    if not req.benchmarks:
        raise ValueError(f"{key}: no benchmarks to run; known: " + ", ".join(BENCHMARKS.names()))
    check_benchmarks(req.benchmarks, req.files, key, files_key)
    from dare.data.tasks import get_task

    for name, knobs in req.task_args.items():  # {benchmark: {knob: value}}, each knob the task's
        if name not in req.benchmarks:
            raise ValueError(
                f"task_args: {name!r} is not a benchmark of this run ({', '.join(req.benchmarks)}); task_args maps "
                'a built-in benchmark to its knobs, e.g. {"sort": {"direction": "either"}}'
            )
        if not isinstance(knobs, dict):
            raise ValueError(f"task_args.{name}: expected a mapping of knobs, got {knobs!r}")
        try:
            get_task(name, **knobs)
        except (KeyError, TypeError, ValueError) as e:
            reason = str(e).strip("'\"")  # a KeyError's message comes quoted
            raise ValueError(f"task_args.{name}: {reason}") from None
    if req.limit is not None and req.limit < 1:
        raise ValueError(f"limit must be >= 1, got {req.limit}")
    if req.elbo_samples < 1:
        raise ValueError(f"elbo_samples must be >= 1, got {req.elbo_samples}")
    if req.num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {req.num_workers}")
    from dare.models.dtypes import DTYPES

    if req.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {req.dtype!r}")
    check_checkpoint(req.model, req.tokenizer, req.sampling, req.check_weights)
    if not opencompass_installed():
        raise RuntimeError("opencompass is not installed in this environment; run scripts/install.sh (make install)")


def sampling_config(sampling: dict[str, Any], max_out_len: int | None = None):
    """The `SamplingConfig` of a benchmark: `sampling`, with the benchmark's `max_out_len` as the
    gen_length when `sampling` sets none (at least one block when only block_length is set)."""
    from dare.sampling import SamplingConfig

    return SamplingConfig(**{"gen_length": max_out_len or sampling.get("block_length") or 1, **sampling})


def check_checkpoint(path: str, tokenizer: str | None, sampling: dict[str, Any], load_weights: bool = True) -> None:
    """The checkpoint's config (and, with `load_weights`, its weights) and its tokenizer load, and
    the decoding settings fit the model. The pipeline skips the weights of the checkpoint it has
    just written (a large model would otherwise be loaded once more in the driver)."""
    import json as _json

    from dare.models import load_config
    from dare.models.checkpoint import is_adapter_dir, load_policy
    from dare.models.hub import HubResolutionError, resolve_checkpoint
    from dare.models.released_tokenizers import load_tokenizer

    try:  # a folder or a Hub id (fetched, or from the cache offline)
        p = resolve_checkpoint(path)
    except HubResolutionError as e:
        raise FileNotFoundError(f"--model {e}") from None
    try:
        if load_weights:
            load_policy(p)
        base = (
            _json.loads((p / "adapter_config.json").read_text())["base_model_name_or_path"] if is_adapter_dir(p) else p
        )
        spec = load_config(base).diffusion_spec()
    except Exception as e:  # noqa: BLE001 - any loading failure is reported the same way
        raise ValueError(f"--model {path}: the checkpoint cannot be loaded: {type(e).__name__}: {e}") from None
    try:
        load_tokenizer(tokenizer or p)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"tokenizer {tokenizer or path}: cannot be loaded: {type(e).__name__}: {e}") from None
    try:
        sampling_config(sampling).for_model(spec)
    except (TypeError, ValueError) as e:
        raise ValueError(f"sampling: {e}") from None


def opencompass_config(req: EvalRequest) -> dict[str, Any]:
    """The OpenCompass config as plain data (types named by dotted path)."""
    from dare.models.hub import resolve_checkpoint

    datasets = [
        BENCHMARKS.get(name).dataset_config(
            req.files.get(name), req.limit, req.seed, req.task_args.get(name), req.builtin_examples
        )
        for name in req.benchmarks
    ]
    model = {
        "type": "dare.evals.model.DareModel",
        "abbr": MODEL_ABBR,
        # Hub ids become their snapshot folders: OpenCompass's subprocesses then read the same files
        "path": str(resolve_checkpoint(req.model).resolve()),
        "tokenizer_path": str(resolve_checkpoint(req.tokenizer, what="tokenizer").resolve()) if req.tokenizer else None,
        "sampling": dict(req.sampling),
        "elbo_samples": req.elbo_samples,
        "seed": req.seed,
        "num_threads": req.num_threads,
        "batch_size": req.batch_size,
        "max_out_len": max(BENCHMARKS.get(n).max_out_len for n in req.benchmarks),
        "dtype": req.dtype,
        "device": req.device,
        "run_cfg": {"num_gpus": 1 if req.device == "cuda" else 0},
    }
    n = len(datasets)
    stage = lambda task, partitioner, workers: {
        "partitioner": partitioner,
        "runner": {"type": "opencompass.runners.LocalRunner", "max_num_workers": workers,
                   "task": {"type": f"opencompass.tasks.{task}"}},
    }  # fmt: skip
    naive = {"type": "opencompass.partitioners.NaivePartitioner", "n": n}
    infer = naive
    if req.num_workers > 1:  # every benchmark's rows split over the workers; the eval task reads the parts
        infer = {"type": "opencompass.partitioners.NumWorkerPartitioner", "num_worker": req.num_workers,
                 "min_task_size": 1, "strategy": "split", "force_rebuild": True,
                 "dataset_size_path": str(Path(req.work_dir).resolve() / "dataset_size.json")}  # fmt: skip
    return {"models": [model], "datasets": datasets, "work_dir": str(Path(req.work_dir).resolve()),
            "infer": stage("OpenICLInferTask", infer, req.num_workers), "eval": stage("OpenICLEvalTask", naive, 1)}  # fmt: skip


def write_config(req: EvalRequest) -> Path:
    work = Path(req.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cfg = opencompass_config(req)
    lines = ['"""OpenCompass config written by dare (dare.evals.runner); run: opencompass THIS_FILE."""', ""]
    lines += [f"{k} = {v!r}" for k, v in cfg.items()]
    path = work / CONFIG_NAME
    path.write_text("\n".join(lines) + "\n")
    return path


def _env(num_threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if num_threads:
        env.update(OMP_NUM_THREADS=str(num_threads), MKL_NUM_THREADS=str(num_threads))
    # the task subprocesses run this interpreter, where dare (and so dare.evals) is installed
    return env


def latest_output(work_dir: str | Path) -> Path:
    """OpenCompass's timestamped output folder of the last run in `work_dir`."""
    runs = sorted(p for p in Path(work_dir).iterdir() if p.is_dir() and (p / "configs").is_dir())
    if not runs:
        raise FileNotFoundError(f"{work_dir}: no OpenCompass output folder")
    return runs[-1]


def collect_results(output: str | Path, benchmarks: list[str]) -> dict[str, dict[str, Any]]:
    """`{benchmark: {"score", "metric", "metrics", "num_examples"}}` from OpenCompass's result files."""
    out = {}
    for name in benchmarks:
        path = Path(output) / "results" / MODEL_ABBR / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"OpenCompass wrote no result for {name} ({path}); see {Path(output) / 'logs'}")
        res = json.loads(path.read_text())
        if "error" in res:
            raise RuntimeError(f"OpenCompass could not score {name}: {res['error']}")
        metric = BENCHMARKS.get(name).metric
        metrics = {k: v for k, v in res.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if metric not in metrics:
            raise RuntimeError(f"{path}: no {metric!r} in OpenCompass's result (keys: {sorted(res)})")
        out[name] = {
            "score": float(metrics[metric]),
            "metric": metric,
            "metrics": metrics,
            "num_examples": _num_predictions(Path(output) / "predictions" / MODEL_ABBR, name),
        }
    return out


def _num_predictions(folder: Path, name: str) -> int | None:
    """Rows OpenCompass predicted for a benchmark: its one file, or the parts `NAME_0.json`,
    `NAME_1.json`, ... of a run split over several workers (`EvalRequest.num_workers`)."""
    whole = folder / f"{name}.json"
    if whole.is_file():
        return len(json.loads(whole.read_text()))
    n, i = 0, 0
    while (part := folder / f"{name}_{i}.json").is_file():
        n, i = n + len(json.loads(part.read_text())), i + 1
    return n if i else None


def failure_logs(work_dir: str | Path, log: Path, lines: int = 8) -> str:
    """The last lines of the OpenCompass log and of every task log that reports an error."""
    parts = [f"{log}:", *log.read_text().splitlines()[-lines:]]
    for task_log in sorted(Path(work_dir).glob("*/logs/*/*/*.out")):
        text = task_log.read_text(errors="replace")
        if "Error" in text or "Traceback" in text:
            parts += [f"{task_log}:", *text.splitlines()[-lines:]]
    return "\n".join(parts)


def hardware() -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__}  # fmt: skip
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_benchmarks(req: EvalRequest, check: bool = True) -> dict[str, Any]:
    """Run OpenCompass on `req.model`; returns the scores with everything needed to reproduce
    them (decoding settings, model, seed, hardware, wall time, output folder)."""
    if check:
        check_request(req)
    cfg = write_config(req)
    cmd = [sys.executable, "-m", "opencompass.cli.main", str(cfg), "-w", str(Path(req.work_dir).resolve())]
    if req.debug:
        cmd.append("--debug")
    t0 = time.perf_counter()
    log = Path(req.work_dir) / "opencompass.log"
    with log.open("w") as f:
        try:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(req.num_threads),
                                  timeout=req.timeout, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"OpenCompass did not finish within {req.timeout} s; log: {log}") from None
    seconds = time.perf_counter() - t0
    try:
        output = latest_output(req.work_dir)
        results = collect_results(output, req.benchmarks)
    except (FileNotFoundError, RuntimeError) as e:
        raise RuntimeError(
            f"OpenCompass run failed (exit {proc.returncode}): {e}\n{failure_logs(req.work_dir, log)}"
        ) from None
    return {
        "benchmarks": results,
        "model": str(Path(req.model).resolve()),
        "sampling": dict(req.sampling),
        "elbo_samples": req.elbo_samples,
        "seed": req.seed,
        "limit": req.limit,
        "hardware": hardware(),
        "seconds": seconds,
        "output_dir": str(output),
        "request": asdict(req),
    }


__all__ = [
    "EvalRequest",
    "sampling_config",
    "check_checkpoint",
    "check_request",
    "collect_results",
    "latest_output",
    "opencompass_config",
    "run_benchmarks",
    "write_config",
]
