"""The benchmarks `dare eval` and a recipe's `eval.benchmarks` can run, registered by name.

Each `Benchmark` turns (file, limit, options) into an OpenCompass dataset config (plain data:
classes are named by dotted path, so the config file OpenCompass parses holds no imports) and
knows how to read one row of its local file. Nothing is downloaded: the built-in tasks generate
their eval split by code, and the file benchmarks read the path the user gives.

    name         data                                   inference                 scorer
    sort, addition, countdown, sudoku   dare's eval split   dare sampler (gen)   the task's verifier
    gsm8k        JSONL {question, answer "... #### 42"} gen                       OpenCompass Gsm8kEvaluator
    math500      JSONL {problem, answer}                gen                       OpenCompass MATHVerifyEvaluator
    humaneval    JSONL {task_id, prompt, test, entry_point}  gen                  execution (dare, see datasets.py)
    mbpp         JSONL {task_id, text, test_list}       gen                       OpenCompass MBPPEvaluator
    arc_c        JSONL ARC {question, choices, answerKey}  ELBO ranking (ppl)     OpenCompass AccEvaluator
    mmlu         JSONL {question, choices[4], answer}   ELBO ranking (ppl)        OpenCompass AccEvaluator
    hellaswag    JSONL {ctx, endings[4], label}         ELBO ranking (ppl)        OpenCompass AccEvaluator

This module does not import OpenCompass (the recipe validator uses it); the loaders and
evaluators OpenCompass runs are in `dare.evals.datasets`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dare.registry import Registry

PKG = "dare.evals"
OC = "opencompass"
LETTERS = "ABCD"


@dataclass(frozen=True)
class Benchmark:
    """One benchmark.

    Attributes:
        name: registry name (`--benchmarks NAME`).
        mode: "gen" (sample an answer) or "ppl" (rank options by ELBO).
        metric: the key of OpenCompass's result dict reported as the score (0-100).
        needs_file: True for the local-file benchmarks.
        file_format: what a row of the file looks like (for error messages).
        normalize: raw file row -> the columns the prompt template reads (None drops the row).
        columns: input columns of the template; `answer` is the output column.
        template: prompt template (gen: the user turn; ppl: the user turn, each option is the
            assistant turn).
        max_out_len: generation length when the decoding settings leave gen_length unset.
        eval_cfg: OpenCompass `eval_cfg` (evaluator and post-processors).
    """

    name: str
    mode: str
    metric: str
    needs_file: bool
    file_format: str
    normalize: Callable[[dict[str, Any]], dict[str, Any] | None] | None
    columns: tuple[str, ...]
    template: str
    max_out_len: int
    eval_cfg: dict[str, Any]
    task: str | None = None  # built-in task name
    options: dict[str, Any] = field(default_factory=dict)

    def dataset_config(
        self,
        path: str | None,
        limit: int | None,
        seed: int = 0,
        task_args: dict | None = None,
        builtin_examples: int = 1000,
    ) -> dict:
        """The OpenCompass dataset config (plain data)."""
        if self.task is not None:
            load = {"type": f"{PKG}.datasets.DareTaskDataset", "task": self.task, "num_examples": limit or builtin_examples, "seed": seed,
                    "task_args": dict(task_args or {})}  # fmt: skip
            eval_cfg = {"evaluator": {"type": f"{PKG}.datasets.DareTaskEvaluator", "task": self.task,
                                      "task_args": dict(task_args or {})}}  # fmt: skip
        else:
            load = {"type": f"{PKG}.datasets.DareFileDataset", "path": str(Path(path).resolve()),
                    "benchmark": self.name, "limit": limit}  # fmt: skip
            eval_cfg = self.eval_cfg
        infer = {"retriever": {"type": f"{OC}.openicl.icl_retriever.ZeroRetriever"}}
        if self.mode == "gen":
            infer["prompt_template"] = {
                "type": f"{OC}.openicl.icl_prompt_template.PromptTemplate",
                "template": {"round": [{"role": "HUMAN", "prompt": self.template}]},
            }
            infer["inferencer"] = {
                "type": f"{OC}.openicl.icl_inferencer.GenInferencer",
                "max_out_len": self.max_out_len,
            }
        else:
            infer["prompt_template"] = {
                "type": f"{OC}.openicl.icl_prompt_template.PromptTemplate",
                "template": {
                    letter: {"round": [{"role": "HUMAN", "prompt": self.template},
                                       {"role": "BOT", "prompt": "{" + letter + "}"}]}
                    for letter in LETTERS
                },
            }  # fmt: skip
            infer["inferencer"] = {"type": f"{OC}.openicl.icl_inferencer.PPLInferencer"}
        return {
            "abbr": self.name,
            **load,
            "reader_cfg": {"input_columns": list(self.columns), "output_column": "answer"},
            "infer_cfg": infer,
            "eval_cfg": eval_cfg,
        }

    def check_file(self, path: str | None, key: str, files_key: str = "files.{name}") -> None:
        """Raise ValueError / FileNotFoundError naming `key` when the file is missing or its first
        row has the wrong shape (checked before OpenCompass starts)."""
        if not self.needs_file:
            return
        if not path:
            raise ValueError(
                f"{key}: benchmark {self.name!r} reads a local file ({self.file_format}); "
                f"give its path: {files_key.format(name=self.name)}"
            )
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{key}: {self.name} file {p} does not exist")
        rows = read_rows(p, limit=1)
        if not rows:
            raise ValueError(f"{key}: {p} holds no rows")
        try:
            out = self.normalize(rows[0])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(f"{key}: {p} row 1 is not a {self.name} row ({self.file_format}): {e!r}") from None
        if out is None:
            raise ValueError(f"{key}: {p} row 1 is not a usable {self.name} row ({self.file_format})")


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def register_benchmark(b: Benchmark) -> Benchmark:
    BENCHMARKS.register(b.name, b)
    return b


def read_rows(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a .jsonl file (one JSON object a line) or a .json file (a list of objects)."""
    path = Path(path)
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json benchmark file must hold a list of rows")
        return data[:limit] if limit else data
    rows = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
            if limit and len(rows) >= limit:
                break
    return rows


# ------------------------------------------------------------------------- built-in tasks

for _task in ("sort", "addition", "countdown", "sudoku"):
    register_benchmark(
        Benchmark(name=_task, mode="gen", metric="accuracy", needs_file=False, file_format="generated by dare",
                  normalize=None, columns=("prompt",), template="{prompt}", max_out_len=32, eval_cfg={}, task=_task)
    )  # fmt: skip


# ------------------------------------------------------------------------- generation benchmarks


def _gsm8k(row: dict[str, Any]) -> dict[str, Any]:
    if "####" not in str(row["answer"]):
        raise ValueError("answer has no '#### <number>' final line")
    return {"question": str(row["question"]), "answer": str(row["answer"])}


register_benchmark(
    Benchmark(
        name="gsm8k", mode="gen", metric="accuracy", needs_file=True,
        file_format='JSONL rows {"question": ..., "answer": "... #### 42"} (openai/gsm8k test.jsonl)',
        normalize=_gsm8k, columns=("question",),
        template="Question: {question}\nLet's think step by step.\nAnswer:", max_out_len=256,
        eval_cfg={"evaluator": {"type": f"{OC}.datasets.gsm8k.Gsm8kEvaluator"},
                  "pred_postprocessor": {"type": f"{OC}.datasets.gsm8k.gsm8k_postprocess"},
                  "dataset_postprocessor": {"type": f"{OC}.datasets.gsm8k.gsm8k_dataset_postprocess"}},
    )
)  # fmt: skip


def _math500(row: dict[str, Any]) -> dict[str, Any]:
    return {"problem": str(row["problem"]), "answer": str(row["answer"])}


register_benchmark(
    Benchmark(
        name="math500", mode="gen", metric="accuracy", needs_file=True,
        file_format='JSONL rows {"problem": ..., "answer": ...} (HuggingFaceH4/MATH-500 test.jsonl)',
        normalize=_math500, columns=("problem",),
        template="{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
        max_out_len=512,
        eval_cfg={"evaluator": {"type": f"{OC}.evaluator.math_evaluator.MATHVerifyEvaluator"}},
    )
)  # fmt: skip


def _humaneval(row: dict[str, Any]) -> dict[str, Any]:
    ref = {"prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]}
    return {"task_id": str(row["task_id"]), "prompt": str(row["prompt"]), "answer": json.dumps(ref)}


register_benchmark(
    Benchmark(
        name="humaneval", mode="gen", metric="humaneval_pass@1", needs_file=True,
        file_format='JSONL rows {"task_id", "prompt", "test", "entry_point"} (openai HumanEval.jsonl)',
        normalize=_humaneval, columns=("prompt",),
        template="Complete the following python code:\n{prompt}", max_out_len=512,
        eval_cfg={"evaluator": {"type": f"{PKG}.datasets.HumanEvalExecEvaluator"}},
    )
)  # fmt: skip


def _mbpp(row: dict[str, Any]) -> dict[str, Any]:
    tests = row["test_list"]
    if not isinstance(tests, list) or not tests:
        raise ValueError("test_list must be a non-empty list of assert statements")
    return {"text": str(row["text"]), "test_list": "\n".join(tests), "answer": "\n".join(tests)}


register_benchmark(
    Benchmark(
        name="mbpp", mode="gen", metric="score", needs_file=True,
        file_format='JSONL rows {"task_id", "text", "test_list": [asserts]} (google-research mbpp.jsonl)',
        normalize=_mbpp, columns=("text", "test_list"),
        template="You are an expert Python programmer, and here is your task: {text} "
                 "Your code should pass these tests:\n\n{test_list}\n", max_out_len=512,
        eval_cfg={"evaluator": {"type": f"{OC}.datasets.mbpp.MBPPEvaluator"}},
    )
)  # fmt: skip


# ------------------------------------------------------------------------- multiple choice (ELBO)

_ACC = {"evaluator": {"type": f"{OC}.openicl.icl_evaluator.AccEvaluator"}}


def _four(options: list[str], answer_index: int, **columns: str) -> dict[str, Any] | None:
    """Columns A-D and the answer letter; rows without exactly four options are dropped."""
    if len(options) != 4 or not 0 <= answer_index < 4:
        return None
    return {**columns, **{L: str(o) for L, o in zip(LETTERS, options)}, "answer": LETTERS[answer_index]}


def _arc(row: dict[str, Any]) -> dict[str, Any] | None:
    q = row["question"]
    if isinstance(q, dict):  # AI2's original ARC JSONL: {"question": {"stem", "choices": [{label, text}]}}
        stem, labels, texts = q["stem"], [c["label"] for c in q["choices"]], [c["text"] for c in q["choices"]]
    else:  # allenai/ai2_arc on the hub: {"question", "choices": {"text": [...], "label": [...]}}
        stem, labels, texts = q, list(row["choices"]["label"]), list(row["choices"]["text"])
    key = str(row["answerKey"])
    if key not in labels:
        raise ValueError(f"answerKey {key!r} is not one of the labels {labels}")
    return _four(texts, labels.index(key), question=str(stem))


def _mmlu(row: dict[str, Any]) -> dict[str, Any] | None:
    answer = row["answer"]
    index = LETTERS.index(answer) if isinstance(answer, str) and answer in LETTERS else int(answer)
    return _four(list(row["choices"]), index, question=str(row["question"]))


def _hellaswag(row: dict[str, Any]) -> dict[str, Any] | None:
    return _four(list(row["endings"]), int(row["label"]), ctx=str(row["ctx"]))


_MC_QUESTION = "Question: {question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:"
for _name, _norm, _fmt, _cols, _tmpl in (
    (
        "arc_c",
        _arc,
        'ARC JSONL rows {"question", "choices", "answerKey"} (AI2 ARC-Challenge or allenai/ai2_arc)',
        ("question", "A", "B", "C", "D"),
        _MC_QUESTION,
    ),
    (
        "mmlu",
        _mmlu,
        'JSONL rows {"question", "choices": [4 options], "answer": 0-3 or A-D} (cais/mmlu)',
        ("question", "A", "B", "C", "D"),
        _MC_QUESTION,
    ),
    (
        "hellaswag",
        _hellaswag,
        'JSONL rows {"ctx", "endings": [4 endings], "label": 0-3} (Rowan/hellaswag)',
        ("ctx", "A", "B", "C", "D"),
        "{ctx}",
    ),
):
    register_benchmark(
        Benchmark(name=_name, mode="ppl", metric="accuracy", needs_file=True, file_format=_fmt, normalize=_norm,
                  columns=_cols, template=_tmpl, max_out_len=1, eval_cfg=_ACC)
    )  # fmt: skip


def check_benchmarks(
    names: list[str], files: dict[str, str], key: str = "benchmarks", files_key: str = "files.{name}"
) -> None:
    """Fail fast (before OpenCompass starts): unknown names, missing or malformed files, files
    given for benchmarks that are not run."""
    for name in names:
        if name not in BENCHMARKS:
            raise KeyError(f"{key}: {BENCHMARKS.unknown_message(name)}")
    for name in files:
        if name not in names:
            raise ValueError(f"{files_key.format(name=name)}: {name!r} is not in the benchmark list {names}")
    for name in names:
        file_key = files_key.format(name=name)
        BENCHMARKS.get(name).check_file(files.get(name), file_key if name in files else key, files_key)


__all__ = ["BENCHMARKS", "Benchmark", "check_benchmarks", "read_rows", "register_benchmark"]
