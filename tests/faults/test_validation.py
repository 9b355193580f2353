"""Fault injection (issue 17): bad recipes, overrides, data files and CLI calls each fail early
with one line naming the file and the key (or the file and the line), never a traceback and never
after a stage has trained. One parametrized case per attack.

Recipes are checked with `dare run --dry-run` in-process (`dare.cli.main`): no Ray, no model."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from dare.cli import main
from dare.config import RecipeError, load_recipe
from dare.config.loader import MAX_DEPTH, MAX_EXPANDED_NODES, MAX_RECIPE_BYTES
from dare.data import limit_prompts, load_rows
from dare.data.tasks import builtin_tokenizer

SFT = {"kind": "sft", "algorithm": "sft", "steps": 10, "batch_size": 8, "lr": 1e-3}
RL = {"kind": "rl", "algorithm": "d1", "steps": 2, "batch_size": 2, "num_generations": 2,
      "sampling": {"algorithm": "llada", "steps": 12, "temperature": 1.0}}  # fmt: skip
BASE = {
    "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
    "data": {"train": "builtin:sort", "gen_length": 12},
    "eval": {"sampling": {"algorithm": "llada", "steps": 12, "block_length": 12}},
    "stages": [SFT, RL],
}


def recipe(**changes) -> dict:
    """BASE with `a__b__0__c=value` changes."""
    out = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        node, parts = out, dotted.split("__")
        for p in parts[:-1]:
            node = node[int(p)] if p.isdigit() else node[p]
        node[parts[-1]] = value
    return out


def dry_run_error(path: Path, overrides: list[str], capsys) -> str:
    """`dare run PATH OVERRIDES --dry-run` in-process: exit code 2 and exactly one stderr line."""
    rc = main(["run", str(path), *overrides, "--dry-run"])
    out = capsys.readouterr()
    assert rc == 2, out.out[-500:]
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dare: error: "), out.err[-2000:]
    return lines[0][len("dare: error: ") :]


def alias_bomb() -> str:
    """ "Billion laughs": 9 levels of 9 aliases each expand to 9^9 strings from a 1 KB file."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(8):
        prev, name = chr(ord("a") + i), chr(ord("b") + i)
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\nmodel: {family: llada, preset: tiny}\nstages: [*i]\n"


# (id, recipe text or dict, overrides, the key the error names, a phrase of the message)
RECIPE_CASES = [
    # --- the attack run's findings
    ("duplicate-key", "model: {family: llada, preset: tiny}\nseed: 1\nseed: 2\nstages: []\n", [],
     "line 3", "duplicate key 'seed' (first at line 2)"),
    ("overrides-typo", recipe(model__overrides={"n_layerz": 4}), [],
     "model.overrides.n_layerz", "did you mean 'n_layers'?"),
    ("negative-weight-decay", recipe(stages__0__weight_decay=-0.1), [], "stages[0].weight_decay", "must be >= 0"),
    ("negative-grad-clip", recipe(stages__0__grad_clip=-1.0), [], "stages[0].grad_clip", "must be > 0"),
    ("zero-grad-clip", recipe(stages__0__grad_clip=0), [], "stages[0].grad_clip", "always clipped"),
    ("negative-warmup", recipe(stages__0__warmup_steps=-5), [], "stages[0].warmup_steps", "must be >= 0"),
    ("min-lr-ratio-above-1", recipe(stages__0__min_lr_ratio=1.5), [], "stages[0].min_lr_ratio", "in [0, 1]"),
    ("eval-num-prompts-negative", recipe(eval__num_prompts=-1), [], "eval.num_prompts", "must be >= 1"),
    ("lr-nan", None, ["stages.0.lr=.nan"], "stages[0].lr", "must be a finite number, got nan"),
    ("lr-inf", None, ["stages.0.lr=.inf"], "stages[0].lr", "must be a finite number, got inf"),
    ("lr-nan-string", None, ["stages.0.lr=nan"], "stages[0].lr", "must be a finite number, got 'nan'"),
    ("lr-int-beyond-float", None, [f"stages.0.lr={10**400}"], "stages[0].lr", "expected float"),
    ("num-threads-negative", recipe(resources={"num_threads": -1}), [], "resources.num_threads", ">= 1 or null"),
    ("stage-name-escapes", recipe(stages__0__name="../../etc"), [], "stages[0].name", "plain folder name"),
    ("stage-name-slash", recipe(stages__0__name="a/b"), [], "stages[0].name", "plain folder name"),
    ("stage-name-dot", recipe(stages__0__name=".hidden"), [], "stages[0].name", "plain folder name"),
    ("stage-name-nul", recipe(stages__0__name="a\0b"), [], "stages[0].name", "plain folder name"),
    ("override-into-int", recipe(seed=0), ["seed.x=1"], "seed.x", "seed is 0 (int), not a mapping"),
    ("override-into-str", None, ["data.train.x=1"], "data.train.x", "data.train is 'builtin:sort' (str)"),
    ("override-bad-yaml", None, ["stages.0.lr=[1,"], "override stages.0.lr", "not valid YAML"),
    ("override-missing-stage", None, ["stages.9.lr=1"], "stages.9", "no list element 9 (the list has 2)"),
    ("override-empty-key", None, ["stages..lr=1"], "stages..lr", "dotted names"),
    # --- late failures, now at load
    ("rl-sampling-unknown-key", recipe(stages__1__sampling={"temprature": 1.0}), [],
     "stages[1].sampling.temprature", "did you mean 'temperature'?"),
    ("rl-sampling-negative-temperature", None, ["stages.1.sampling.temperature=-1"],
     "stages[1].sampling", "temperature=-1: must be >= 0"),
    ("rl-sampling-block-misfit", None, ["stages.1.sampling.block_length=5"],
     "stages[1].sampling", "not divisible by block_length=5"),
    ("reward-workers-negative", recipe(stages__1__reward_workers=-1), [], "stages[1].reward_workers", ">= 1"),
    ("unknown-reward", recipe(stages__1__rewards=[{"name": "nosuch"}]), [], "stages[1].rewards[0]", "nosuch"),
    ("reward-name-typo", recipe(stages__1__rewards=[{"name": "sort"}, {"name": "exact_matsh"}]), [],
     "stages[1].rewards[1]", "did you mean 'exact_match'?"),
    ("reward-spec-key-typo", recipe(stages__1__rewards=[{"nme": "sort"}]), [],
     "stages[1].rewards[0].nme", "did you mean 'name'?"),
    ("reward-args-typo", recipe(stages__1__rewards=[{"name": "format", "args": {"tagz": ["answer"]}}]), [],
     "stages[1].rewards[0]", "tagz"),
    ("reward-labels-twice", recipe(stages__1__rewards=[{"name": "sort"}, {"name": "sort"}]), [],
     "stages[1].rewards[1].label", "also labelled 'sort'"),
    ("advantage-typo", recipe(stages__1__advantage="rlo"), [], "stages[1].advantage", "did you mean 'rloo'?"),
    ("eval-batch-size-zero", recipe(eval__batch_size=0), [], "eval.batch_size", "must be >= 1"),
    ("unknown-builtin-task", recipe(data__train="builtin:sortt"), [], "data.train", "did you mean 'sort'?"),
    ("unknown-task-knob", recipe(data__task_args={"max_lenn": 4}), [], "data.task_args", "no knob(s) ['max_lenn']"),
    ("bad-task-knob-value", recipe(data__task_args={"max_len": -3}), [], "data.task_args", "min_len <= max_len"),
    ("task-args-with-a-data-file", recipe(data__eval="{data}", data__task_args={"max_len": 4}), [],
     "data.task_args", "apply to builtin: tasks only"),
    ("preference-on-plain-task", recipe(stages=[SFT, {"kind": "preference", "algorithm": "dpo", "steps": 2}]), [],
     "data.train", "use builtin:pref-sort"),
    ("distill-teacher-sampling-typo", recipe(stages=[SFT, {"kind": "distill", "algorithm": "didi_instruct", "steps": 2,
                                                          "teacher_sampling": {"algorithm": "llada", "temprature": 1}}]),
     [], "stages[1].teacher_sampling", "temprature"),
    ("drakes-blocks-misfit", recipe(stages=[SFT, {"kind": "rl", "algorithm": "drakes", "steps": 2,
                                                  "reward": "task_match", "block_length": 5}]),
     [], "stages[1]", "drakes: gen_length 12 must be a multiple of block_length 5"),
    ("eval-sampling-unknown-key", recipe(eval__sampling={"algorithm": "llada", "stepz": 4}), [],
     "eval.sampling.stepz", "did you mean 'steps'?"),
    # --- more of our own
    ("algorithm-not-a-string", recipe(stages__0__algorithm=["sft"]), [], "stages[0].algorithm", "expected str"),
    ("stage-not-a-mapping", recipe(stages=[list(range(1000))]), [], "stages[0]", "(1000 items)]"),
    ("unknown-top-level-key", recipe(seeds=1), [], "seeds", "did you mean 'seed'?"),
    ("wrong-type-list-for-int", recipe(stages__0__batch_size=[8]), [], "stages[0].batch_size", "expected int"),
    ("bool-for-int", recipe(stages__0__steps=True), [], "stages[0].steps", "expected int, got True (bool)"),
    ("bool-for-float", recipe(stages__0__lr=True), [], "stages[0].lr", "expected float, got True (bool)"),
    ("empty-file", "", [], "", "a recipe must be a YAML mapping (model:, stages:, ...), got an empty file"),
    ("yaml-list", "- model: {}\n- stages: []\n", [], "", "got a list"),
    ("non-string-key", "model: {family: llada, preset: tiny}\nstages: [{kind: sft, algorithm: sft, steps: 1}]\n1: x\n",
     [], "", "keys must be strings, got 1 (int)"),
    ("seed-overflows-generators", recipe(seed=10**12), [], "seed", "must be in [0, 1000000]"),
    ("seed-float", recipe(seed=1.5), [], "seed", "expected int"),
    ("prompt-longer-than-model", recipe(data__max_prompt_length=600), [],
     "data.max_prompt_length", "exceeds the model's maximum sequence length 512"),
    ("adam-beta-above-1", recipe(stages__0__adam_betas=[0.9, 1.5]), [], "stages[0].adam_betas", "in [0, 1)"),
    ("lora-dropout-above-1", recipe(model__lora={"dropout": 1.5}), [], "model.lora.dropout", "in [0, 1)"),
    ("unknown-column-field", recipe(data__columns={"promt": "question"}), [], "data.columns.promt",
     "did you mean 'prompt'?"),
    ("long-prompts-policy-typo", recipe(data__long_prompts="truncat"), [], "data.long_prompts",
     "did you mean 'truncate'?"),
    ("eval-sampling-nan", recipe(eval__sampling={"algorithm": "llada", "temperature": float("nan")}), [],
     "eval.sampling.temperature", "finite"),
    ("clip-ratio-c-below-1", recipe(stages__1__clip_ratio_c=0.5), [], "stages[1].clip_ratio_c", "> 1 or null"),
    ("negative-save-every", recipe(stages__0__save_every=-1), [], "stages[0].save_every", "must be >= 0"),
    ("benchmark-timeout-zero", recipe(eval__benchmark_timeout=0), [], "eval.benchmark_timeout", "> 0 or null"),
]  # fmt: skip


@pytest.mark.parametrize("text,overrides,key,message", [c[1:] for c in RECIPE_CASES], ids=[c[0] for c in RECIPE_CASES])
def test_bad_recipe_is_one_line_naming_the_key(tmp_path, capsys, text, overrides, key, message):
    path, data = tmp_path / "recipe.yaml", tmp_path / "rows.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n")
    text = text if isinstance(text, str) else yaml.safe_dump(text if text is not None else BASE)
    path.write_text(text.replace("{data}", str(data)))
    err = dry_run_error(path, overrides, capsys)
    assert err.startswith(f"{path}: {key}: " if key else f"{path}: "), err
    assert message in err, err


def test_base_recipe_is_valid(tmp_path):
    """The fixture the cases above break is itself valid (so each case fails for its own reason)."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(BASE))
    r = load_recipe(path)
    assert [s.algorithm for s in r.stages] == ["sft", "d1"] and r.data.long_prompts == "skip"


def load_bounded(path: Path) -> tuple[str, float, int]:
    """(error message, seconds, peak bytes allocated) of loading a hostile recipe."""
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return str(e.value), seconds, peak


def test_alias_bomb_fails_fast_with_bounded_memory(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert path.stat().st_size < 1000  # 9^9 = 387M strings once expanded
    message, seconds, peak = load_bounded(path)
    assert message.startswith(f"{path}: line ") and f"expands to more than {MAX_EXPANDED_NODES} values" in message
    assert seconds < 2 and peak < 20e6, (seconds, peak)


def test_deep_nesting_fails_fast_without_recursion_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("model: " + "[" * 100_000 + "]" * 100_000 + "\n")
    message, seconds, peak = load_bounded(path)
    assert message == f"{path}: line 1: nested deeper than {MAX_DEPTH} levels"
    assert seconds < 10 and peak < 50e6, (seconds, peak)


def test_merge_key_bomb_is_refused_and_plain_merges_still_work(tmp_path):
    lines = ["a0: &a0 {k: 1}"] + [f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}], k{i}: 1}}" for i in range(1, 40)]
    path = tmp_path / "merge.yaml"
    path.write_text("\n".join(lines) + "\n")
    message, seconds, _ = load_bounded(path)
    assert f"expands to more than {MAX_EXPANDED_NODES} values" in message and seconds < 2
    stages = "stages:\n  - &sft {kind: sft, algorithm: sft, steps: 10, batch_size: 8, lr: 0.001}\n  - {<<: *sft, lr: 0.0002}\n"
    path.write_text(yaml.safe_dump({k: v for k, v in BASE.items() if k != "stages"}) + stages)
    assert [s.lr for s in load_recipe(path).stages] == [0.001, 0.0002]


def test_alias_chain_deeper_than_the_limit_is_refused(tmp_path):
    """Each anchor is shallow, but aliases nest them: the expanded depth counts."""
    lines = ["a0: &a0 [1]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, MAX_DEPTH + 2)]
    path = tmp_path / "chain.yaml"
    path.write_text("\n".join(lines) + "\n")
    message, _, _ = load_bounded(path)
    assert "nested deeper than 64 levels (aliases included)" in message


def test_oversized_recipe_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * MAX_RECIPE_BYTES + "\nmodel: {}\n")
    with pytest.raises(RecipeError, match=rf"{path}: is \d+ bytes; a recipe is at most {MAX_RECIPE_BYTES} bytes"):
        load_recipe(path)


def test_non_utf8_recipe_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(yaml.safe_dump(BASE).encode() + "# caf\xe9\n".encode("latin-1"))
    line = path.read_bytes().count(b"\n")
    err = dry_run_error(path, [], capsys)
    assert err == f"{path}: line {line}: not UTF-8 text (byte 0xe9 at offset {path.stat().st_size - 2})"


def test_huge_value_in_an_error_is_not_rendered_whole(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(stages__0__steps=list(range(1000)))))
    err = dry_run_error(path, [], capsys)
    assert "stages[0].steps: expected int, got [0, 1, 2, 3, ... (1000 items)] (list)" in err and len(err) < 300


# --- data files ---------------------------------------------------------------------------------

ROWS = [{"prompt": "21", "response": "12"}, {"prompt": "32", "response": "23"}]


def write_non_utf8(tmp_path) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join([json.dumps(ROWS[0]).encode() + b"\n", b'{"prompt": "caf\xe9", "response": "x"}\n',
                               json.dumps(ROWS[1]).encode() + b"\n"]))  # fmt: skip
    return path


def test_non_utf8_data_line_fails_naming_file_and_line(tmp_path):
    path = write_non_utf8(tmp_path)
    with pytest.raises(ValueError, match=rf"^{path}:2: not UTF-8 text \(byte 0xe9 at column 16\)"):
        load_rows(path)


def test_non_utf8_data_line_is_skipped_and_counted(tmp_path, caplog):
    path = write_non_utf8(tmp_path)
    with caplog.at_level(logging.WARNING, logger="dare.data"):
        rows = load_rows(path, on_error="skip")
    assert [r["prompt"] for r in rows] == ["21", "32"]
    assert f"skipped 1 of 3 malformed rows (kind='sft'); first: {path}:2: not UTF-8" in caplog.text


def test_non_utf8_json_array_names_file_and_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[\n{"prompt": "a", "response": "b"},\n{"prompt": "caf\xe9", "response": "b"}\n]\n')
    with pytest.raises(ValueError, match=rf"^{path}:3: not UTF-8 text \(byte 0xe9\)"):
        load_rows(path)


@pytest.fixture(scope="module")
def tok():
    return builtin_tokenizer()


def long_rows(length: int) -> list[dict]:
    return [ROWS[0], {"prompt": "1" * length, "response": "1"}, ROWS[1]]


def test_long_prompt_is_skipped_and_reported(tok, caplog):
    with caplog.at_level(logging.WARNING, logger="dare.data"):
        rows, report = limit_prompts(long_rows(3000), tok, 64, "skip", "data.train (x.jsonl)")
    assert [r["prompt"] for r in rows] == ["21", "32"] and report.long == 1
    assert "data.train (x.jsonl): skipped 1 of 3 prompts longer than data.max_prompt_length=64 tokens" in caplog.text
    assert "row 1 (3004 tokens)" in caplog.text  # 3000 characters + the chat template's 4 tokens


def test_long_prompt_is_truncated_to_its_last_tokens(tok):
    rows, report = limit_prompts(long_rows(5000), tok, 64, "truncate")
    assert report.long == 1 and len(rows) == 3 and "prompt_ids" not in rows[0]
    ids = rows[1]["prompt_ids"]
    assert len(ids) == 64 and tok.decode(ids[-2:]) == "<|eot|><|assistant|>"  # generation continues from it


def test_huge_prompt_is_truncated_without_encoding_it_whole(tok):
    rows, report = limit_prompts([{"prompt": "12" * 1_000_000, "response": "1"}], tok, 8, "truncate")
    assert report.long == 1 and tok.decode(rows[0]["prompt_ids"]) == "121212<|eot|><|assistant|>"


def test_long_prompt_fails_naming_the_row(tok):
    with pytest.raises(ValueError, match=r"data.train: row 1: the prompt is 3004 tokens > data.max_prompt_length=64"):
        limit_prompts(long_rows(3000), tok, 64, "fail", "data.train")


def test_ten_megabyte_line_is_not_passed_silently(tmp_path, tok, caplog):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"prompt": "1" * 10_000_000, "response": "1"}) + "\n")
    with caplog.at_level(logging.WARNING, logger="dare.data"):
        rows, report = limit_prompts(load_rows(path), tok, 64, "skip")
    assert len(rows) == 1 and report.long == 1 and "row 1 (10000000 characters)" in caplog.text


def test_unknown_characters_are_counted_and_reported(tok, caplog):
    rows = [ROWS[0], {"prompt": "caf\u00e9 \u2603", "response": "1"}, {"prompt": "1", "response": "\u00fc"}]
    with caplog.at_level(logging.WARNING, logger="dare.data"):
        kept, report = limit_prompts(rows, tok, 64, "skip", "data.train")
    assert len(kept) == 3 and report.unknown == 2
    assert "data.train: 2 of 3 rows hold characters the tokenizer does not know (encoded as <|unk|>)" in caplog.text
    assert "row 1: 'caf\u00e9 \u2603'" in caplog.text and "row 2: '\u00fc'" in caplog.text


def test_every_prompt_too_long_is_an_error(tok):
    with pytest.raises(ValueError, match="every one of the 1 prompts is longer than data.max_prompt_length=4"):
        limit_prompts([ROWS[0]], tok, 4, "skip")


# --- CLI: corrupt checkpoints, --dtype, long prompts ---------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A good tiny LLaDA checkpoint (built-in tokenizer), a truncated-safetensors copy and a
    bad-config.json copy."""
    from dare.models import tiny
    from dare.models.tokenizer import model_token_ids

    root = tmp_path_factory.mktemp("ckpt")
    tokenizer = builtin_tokenizer()
    good = root / "good"
    tiny("llada", **model_token_ids(tokenizer)).save_pretrained(good)
    tokenizer.save_pretrained(good)
    out = {"good": good}
    for name in ("truncated", "bad_config"):
        (root / name).mkdir()
        for f in good.iterdir():
            (root / name / f.name).write_bytes(f.read_bytes())
        out[name] = root / name
    weights = out["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (out["bad_config"] / "config.json").write_text('{"model_type": "llada", "d_model": ')
    return out


GEN = ["--prompt", "21", "--steps", "4", "--gen-length", "4", "--device", "cpu"]
CLI_CASES = [
    ("generate-truncated", ["generate", "--model", "{truncated}", *GEN], "{truncated}: cannot load the checkpoint "
     "(SafetensorError: Error while deserializing header"),
    ("generate-bad-config", ["generate", "--model", "{bad_config}", *GEN], "{bad_config}/config.json: not valid JSON"),
    ("export-truncated", ["export", "{truncated}", "{out}"], "{truncated}: cannot load the checkpoint (SafetensorError"),
    ("export-bad-config", ["export", "{bad_config}", "{out}"], "{bad_config}/config.json: not valid JSON"),
    ("eval-truncated", ["eval", "--model", "{truncated}", "--benchmarks", "sort", "--out", "{out}"],
     "--model {truncated}: the checkpoint cannot be loaded: SafetensorError"),
    ("eval-bad-config", ["eval", "--model", "{bad_config}", "--benchmarks", "sort", "--out", "{out}"],
     "--model {bad_config}: the checkpoint cannot be loaded: ValueError: {bad_config}/config.json: not valid JSON"),
    ("info-bad-config", ["info", "{bad_config}"], "{bad_config}/config.json: not valid JSON"),
    ("eval-num-workers-0", ["eval", "--model", "{good}", "--benchmarks", "sort", "--out", "{out}", "--num-workers", "0"],
     "--num-workers 0: expected a number of data-parallel workers >= 1"),
    ("eval-unknown-dtype", ["eval", "--model", "{good}", "--benchmarks", "sort", "--out", "{out}", "--dtype", "float64"],
     "--dtype 'float64': unknown dtype; expected one of float32, bfloat16, float16 (or fp32, bf16, fp16)"),
    ("generate-prompt-over-model-max", ["generate", "--model", "{good}", "--prompt", "1" * 600, "--gen-length", "4"],
     "--prompt 1: 604 prompt tokens + gen_length 4 exceed the model's maximum sequence length 512"),
]  # fmt: skip


@pytest.mark.parametrize("argv,message", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_error_is_one_line(checkpoints, tmp_path, capsys, argv, message):
    paths = {**{k: str(v) for k, v in checkpoints.items()}, "out": str(tmp_path / "out")}
    rc = main([a.format(**paths) for a in argv])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("Loading weights")]
    assert rc == 2 and len(err) == 1, err  # (transformers' progress bar is not an error)
    assert err[0].startswith("dare: error: " + message.format(**paths)), err[0]


def test_cli_dtype_float16_as_its_help_lists(checkpoints, capsys):
    assert main(["generate", "--model", str(checkpoints["good"]), *GEN, "--dtype", "float16"]) == 0
    assert "4 tokens in" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(checkpoints["good"]), *GEN, "--dtype", "float64"])
    assert e.value.code == 2
    assert "invalid choice: 'float64' (choose from" in capsys.readouterr().err


def test_cli_corrupt_checkpoint_exits_without_traceback(checkpoints):
    """The real process: nonzero exit, one stderr line, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "dare.cli", "generate", "--model", str(checkpoints["truncated"]), *GEN],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warning" not in ln]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith(f"dare: error: {checkpoints['truncated']}: cannot load the checkpoint"), lines
