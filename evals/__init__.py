"""OpenCompass evaluation of dare checkpoints (installed as `dare.evals`).

    from dare.evals import EvalRequest, run_benchmarks
    res = run_benchmarks(EvalRequest(model="runs/x/stage-1-sft/checkpoint", benchmarks=["sort", "gsm8k"],
                                     files={"gsm8k": "data/gsm8k_test.jsonl"}, work_dir="runs/x/eval/oc"))
    res["benchmarks"]["gsm8k"]["score"]

- benchmarks.py  the benchmark registry (built-in tasks + local-file GSM8K, MATH-500, HumanEval,
                 MBPP, ARC-C, MMLU, HellaSwag) and their OpenCompass dataset configs
- model.py       `DareModel`, the OpenCompass model (dare sampler; ELBO log-likelihoods)
- likelihood.py  ELBO of a continuation given a context (multiple-choice scoring)
- prompts.py     OpenCompass prompts -> chat messages
- datasets.py    OpenCompass loaders / evaluators for the built-in tasks and local files
- runner.py      write the config, run the OpenCompass CLI, collect the scores
- report.py      the benchmark table across stages and its PNG chart

Only `model.py` and `datasets.py` import OpenCompass; the rest is importable without it.
"""

from dare.evals.benchmarks import BENCHMARKS, Benchmark, check_benchmarks
from dare.evals.runner import EvalRequest, check_request, run_benchmarks

__all__ = ["BENCHMARKS", "Benchmark", "EvalRequest", "check_benchmarks", "check_request", "run_benchmarks"]
