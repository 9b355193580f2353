"""`data.system_prompt`: added to every SFT, RL, preference and eval row's prompt when the pipeline
loads them, as a system turn or (d1's way) before the user's text; bad combinations are refused."""

from __future__ import annotations

import pytest

from dare.config import build_recipe
from dare.config.loader import RecipeError
from dare.data import builtin_tokenizer, encode_prompt
from dare.data.formatting import apply_system_prompt, with_system_prompt
from dare.trainer.pipeline import Pipeline

SYS = "Respond in the following format: <answer>...</answer>"


def test_placements():
    assert with_system_prompt("sort 31", None) == "sort 31"
    assert with_system_prompt("sort 31", SYS) == [
        {"role": "system", "content": SYS},
        {"role": "user", "content": "sort 31"},
    ]
    assert with_system_prompt("sort 31", SYS, "user_prefix") == f"{SYS}\n\nsort 31"
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "q"}]
    out = with_system_prompt(chat, SYS, "user_prefix")
    assert out[0]["content"] == f"{SYS}\n\nhi" and out[2]["content"] == "q"
    assert chat[0]["content"] == "hi"  # the row's own messages are not modified
    with pytest.raises(ValueError, match="already has a system turn"):
        with_system_prompt([{"role": "system", "content": "x"}, {"role": "user", "content": "q"}], SYS)
    with pytest.raises(ValueError, match="no user turn"):
        with_system_prompt([{"role": "system", "content": "x"}], SYS, "user_prefix")
    with pytest.raises(ValueError, match="row 1: .*system turn"):
        apply_system_prompt([{"prompt": "a"}, {"prompt": [{"role": "system", "content": "x"}]}], SYS)


def test_the_system_turn_reaches_the_tokens():
    tok = builtin_tokenizer()
    plain = tok.decode(encode_prompt(tok, "sort 31"))
    with_sys = tok.decode(encode_prompt(tok, with_system_prompt("sort 31", "be brief")))
    assert "be brief" in with_sys and "be brief" not in plain
    assert with_sys.index("be brief") < with_sys.index("sort 31")


def recipe(kind: str, algorithm: str, **data) -> dict:
    return {
        "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
        "data": {"train": "builtin:pref-sort" if kind == "preference" else "builtin:sort", "num_train": 4,
                 "num_rl_prompts": 3, "num_eval": 5, "max_prompt_length": 256, **data},
        "eval": {"num_prompts": 5},
        "stages": [{"kind": kind, "algorithm": algorithm, "steps": 1, "batch_size": 2}],
    }  # fmt: skip


@pytest.mark.parametrize("kind, algorithm", [("sft", "sft"), ("rl", "d1"), ("preference", "dpo")])
@pytest.mark.parametrize("placement", ["system", "user_prefix"])
def test_pipeline_rows_carry_the_system_prompt(kind, algorithm, placement):
    pipe = Pipeline(build_recipe(recipe(kind, algorithm, system_prompt=SYS, system_prompt_placement=placement)))
    bare = Pipeline(build_recipe(recipe(kind, algorithm)))
    tok = builtin_tokenizer()
    pairs = ((pipe.train_rows(kind, tok), bare.train_rows(kind, tok)), (pipe._eval_rows(tok), bare._eval_rows(tok)))
    for rows, plain in pairs:
        assert len(rows) == len(plain) > 0
        for row, p in zip(rows, plain):
            assert row["prompt"] == with_system_prompt(p["prompt"], SYS, placement)
            assert {k: v for k, v in row.items() if k != "prompt"} == {k: v for k, v in p.items() if k != "prompt"}


def test_recipe_checks():
    with pytest.raises(RecipeError, match="data.system_prompt"):
        build_recipe(recipe("sft", "sft", system_prompt="  "))
    with pytest.raises(RecipeError, match="data.system_prompt_placement"):
        build_recipe(recipe("sft", "sft", system_prompt=SYS, system_prompt_placement="assistant"))
