"""Built-in tasks: registry, determinism, split disjointness, demonstrations and scorers."""

from __future__ import annotations

import pytest

from dare.data.tasks import (
    BUILTIN_SYMBOLS,
    TASKS,
    builtin_tokenizer,
    evaluate_expression,
    extract_answer,
    get_task,
    split_of,
)
from dare.data.tasks.sudoku import all_grids, is_valid_grid, solutions

NAMES = ["addition", "countdown", "mirror", "sort", "sudoku"]


def canonical_key(task: str, row: dict) -> str:
    """The problem's canonical key, recomputed from the row independently of the task code."""
    gt = row["ground_truth"]
    if task == "countdown":
        return ",".join(map(str, sorted(gt["numbers"]))) + f"={gt['target']}"
    if task == "addition":
        a, b = sorted(int(x) for x in row["prompt"].split("+"))
        return f"{a}+{b}"
    if task == "sort":
        return "".join(sorted(row["prompt"].removeprefix("sort ")))
    if task == "mirror":
        return row["prompt"].removeprefix("mirror ")
    return gt["puzzle"]


def test_registry_names_and_errors():
    assert TASKS.names() == sorted(NAMES + [f"pref-{n}" for n in NAMES])  # + the preference pairs of each
    with pytest.raises(KeyError, match="did you mean 'countdown'"):
        get_task("countdwn")
    with pytest.raises(TypeError, match="no knob"):
        get_task("sort", length=3)
    with pytest.raises(ValueError, match="min_len"):
        get_task("sort", min_len=5, max_len=2)


@pytest.mark.parametrize("name", NAMES)
def test_generate_is_deterministic_and_prefix_stable(name):
    task = get_task(name)
    rows = task.generate("train", 50, seed=3)
    assert rows == task.generate("train", 50, seed=3)
    assert rows[:20] == task.generate("train", 20, seed=3)
    assert rows != task.generate("train", 50, seed=4)
    assert len({canonical_key(name, r) for r in rows}) == 50  # distinct problems within a call
    assert all(set(r) == {"prompt", "response", "ground_truth", "task"} and r["task"] == name for r in rows)


@pytest.mark.parametrize("name", NAMES)
def test_train_and_eval_are_disjoint(name):
    task = get_task(name)
    train = {canonical_key(name, r) for seed in (0, 1) for r in task.generate("train", 300, seed)}
    evals = {canonical_key(name, r) for seed in (0, 1) for r in task.generate("eval", 100, seed)}
    assert not train & evals
    assert all(split_of(name, k, task.eval_fraction) == "eval" for k in evals)


@pytest.mark.parametrize("name", NAMES)
def test_demonstrations_score_one_and_fit_the_vocabulary(name):
    task = get_task(name)
    tok = builtin_tokenizer()
    assert set(task.symbols) <= set(BUILTIN_SYMBOLS)
    for split, n in (("train", 500), ("eval", 100)):
        for row in task.generate(split, n, seed=0):
            assert task.score(row["response"], row["ground_truth"]) == 1.0, row
            assert set(row["prompt"] + row["response"]) <= set(task.symbols), row
            assert len(row["prompt"]) <= 30 and len(row["response"]) <= 16, row
    ids = tok(row["prompt"] + row["response"], add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == row["prompt"] + row["response"]


def test_generate_errors():
    with pytest.raises(ValueError, match="split must be one of"):
        get_task("sort").generate("test", 3)
    with pytest.raises(ValueError, match="found only"):  # 1-digit sums: 55 unordered pairs in all
        get_task("addition", max_digits=1).generate("train", 100)


@pytest.mark.parametrize(
    "knobs",
    [
        {"num_numbers": 4, "max_number": 10},
        {"operators": "+-*/"},
        {"num_numbers": 2, "max_number": 50, "operators": "+-"},
    ],
)
def test_countdown_knobs(knobs):
    task = get_task("countdown", **knobs)
    rows = task.generate("train", 200, seed=0)
    assert all(len(r["ground_truth"]["numbers"]) == task.num_numbers for r in rows)
    assert all(task.score(r["response"], r["ground_truth"]) == 1.0 for r in rows)


def test_extract_answer():
    assert extract_answer("  123 \n") == "123"
    assert extract_answer("123<|eos|><|eos|>") == "123"
    assert extract_answer("12<|eot|>3") == "12"
    assert extract_answer(None) is None


def test_countdown_scorer():
    task = get_task("countdown")
    gt = {"numbers": [3, 8, 1], "target": 24}
    for good in ["3*8*1", "8*3/1", "(8*1)*3", " 3 * 8 * 1 \n", "3*8*1<|eos|>"]:
        assert task.score(good, gt) == 1.0, good
    assert task.score("(8+1)*3-3", {"numbers": [8, 1, 3, 3], "target": 24}) == 1.0
    assert task.score("8/(1-2/3)", {"numbers": [8, 1, 2, 3], "target": 24}) == 1.0  # exact fractions
    bad = [
        "3*8+1",  # wrong value
        "3*8",  # a number unused
        "3*8*1*1",  # 1 used twice
        "3*3*8/3*1",  # reuse of 3
        "24",  # a number not given
        "3*08*1",  # leading zero
        "-3*-8*1",  # unary minus
        "3*8*1)",  # unbalanced
        "(3*8*1",
        "3**8*1",
        "3*8*1=24",
        "3x8x1",
        "__import__('os').system('true')",
        "3*8*1; print(1)",
        "3*8*1/0",
        "(" * 40 + "3*8*1" + ")" * 40,  # nested deeper than 32
        "1+" * 200 + "3*8*1",  # longer than 256 characters
        "",
        None,
        42,
    ]
    for answer in bad:
        assert task.score(answer, gt) == 0.0, answer
    assert evaluate_expression("2+3*4-(5-1)") == (10, [2, 3, 4, 5, 1])
    assert evaluate_expression("2+") is None


def test_sudoku_grids_and_scorer():
    grids = all_grids()
    assert len(grids) == 288 and all(is_valid_grid(g) for g in grids)
    task = get_task("sudoku")
    # A puzzle with several solutions: blank the cells where two valid grids differ.
    a, b = grids[0], next(g for g in grids[1:] if sum(x != y for x, y in zip(grids[0], g)) == 4)
    puzzle = "".join("." if x != y else x for x, y in zip(a, b))
    assert {a, b} <= set(solutions(puzzle))
    gt = {"puzzle": puzzle, "solution": a}
    assert task.score(a, gt) == 1.0
    assert task.score(b, gt) == 1.0  # the valid alternative, not the stored solution
    assert task.score(f"  {b}\n", gt) == 1.0
    other = next(g for g in grids if any(p != "." and p != c for p, c in zip(puzzle, g)))
    assert task.score(other, gt) == 0.0  # valid grid, but changes a given
    swapped = a[1] + a[0] + a[2:]  # first row still a permutation, columns broken
    assert not is_valid_grid(swapped)
    for answer in [swapped, "1" * 16, a[:15], a + "1", a.replace("1", "5"), a[:8] + "/" + a[8:], "", None]:
        assert task.score(answer, gt) == 0.0, answer
    with pytest.raises(ValueError, match="16 characters"):
        solutions("123")


def test_sudoku_generated_puzzles_are_unique_by_default():
    task = get_task("sudoku")
    for row in task.generate("train", 100, seed=0):
        puzzle = row["ground_truth"]["puzzle"]
        assert solutions(puzzle) == [row["response"]]
        assert task.min_blanks <= puzzle.count(".") <= task.max_blanks


def test_addition_and_sort_scorers():
    add = get_task("addition")
    assert add.score("168", "168") == 1.0
    assert add.score(" 168\n", "168") == 1.0
    for wrong in ["0168", "168.0", "+168", "16 8", "167", "", None]:
        assert add.score(wrong, "168") == 0.0, wrong
    srt = get_task("sort")
    assert srt.score("13799", "13799") == 1.0
    for wrong in ["1379", "97331", "1 3 7 9 9", "1,3,7,9,9", None]:
        assert srt.score(wrong, "13799") == 0.0, wrong


def test_mirror_accepts_both_orders_and_draws_both():
    task = get_task("mirror")
    assert task.score("3071", "3071") == 1.0 and task.score(" 1703<|eos|>", "3071") == 1.0
    for wrong in ["3001", "1730", "307", "30711", "3 0 7 1", "", None]:
        assert task.score(wrong, "3071") == 0.0, wrong
    rows = task.generate("train", 400, seed=0)
    assert all(len(set(r["ground_truth"])) == 4 == len(r["ground_truth"]) for r in rows)  # distinct digits
    reversed_share = sum(r["response"] != r["ground_truth"] for r in rows) / len(rows)
    assert 0.4 < reversed_share < 0.6  # demonstrations hold both modes
    assert all(r["response"] == r["ground_truth"] for r in get_task("mirror", reverse_prob=0.0).generate("eval", 50))
    assert len(get_task("mirror", num_digits=7).generate("train", 5)[0]["response"]) == 7
    with pytest.raises(ValueError, match="num_digits"):
        get_task("mirror", num_digits=1)


def test_task_tokenizer_is_the_shared_one():
    a, b = get_task("sort").tokenizer(), get_task("sudoku").tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert (a.pad_token_id, a.eos_token_id, a.mask_token_id, a.bos_token_id) == (0, 1, 2, 3)


def test_sort_either_direction_accepts_both_orders_and_draws_both():
    task = get_task("sort", direction="either")
    rows = task.generate("train", 400, seed=0)
    descending = [r["response"] != r["ground_truth"] for r in rows]
    assert 0.4 < sum(descending) / len(rows) < 0.6  # demonstrations 50/50
    for r in rows:
        assert r["response"] in (r["ground_truth"], r["ground_truth"][::-1])
        assert task.score(r["response"], r["ground_truth"]) == 1.0
    assert task.score("1379", "1379") == task.score("9731", "1379") == 1.0
    assert task.score("1771", "1379") == 0.0  # the two orders mixed
    # the default is unchanged: one correct answer, the same rows as before the knob existed
    plain = get_task("sort")
    assert plain.score("9731", "1379") == 0.0
    assert all(r["response"] == r["ground_truth"] for r in plain.generate("train", 50, seed=0))
    assert [r["prompt"] for r in plain.generate("train", 3, seed=0)] == ["sort 8286557", "sort 3518", "sort 676076"]
    with pytest.raises(ValueError, match="direction"):
        get_task("sort", direction="down")


def test_rows_carry_their_knobs_so_every_scorer_is_the_rows_task():
    """Rows of a task with non-default knobs carry them (`task_args`); the built-in eval's row
    scorer and the task rewards rebuild the row's task from them, so `direction: either` is
    scored as either order everywhere (not as the default ascending sort)."""
    from dare.data.tasks import row_task
    from dare.rewards import REWARDS
    from dare.trainer.evaluate import row_scorer

    row = get_task("sort", direction="either", max_len=5).generate("eval", 1, seed=0)[0]
    assert row["task_args"] == {"direction": "either", "max_len": 5}
    assert "task_args" not in get_task("sort").generate("eval", 1, seed=0)[0]  # default rows unchanged
    reversed_answer = row["ground_truth"][::-1]
    assert row_task(row) == get_task("sort", direction="either", max_len=5)
    assert row_scorer(row)(reversed_answer) == 1.0
    assert row_scorer({k: v for k, v in row.items() if k != "task_args"})(reversed_answer) == 0.0
    sort_reward = REWARDS.get("sort")
    assert sort_reward(row["prompt"], reversed_answer, row["ground_truth"], task_args=row["task_args"]) == 1.0
    assert sort_reward(row["prompt"], reversed_answer, row["ground_truth"]) == 0.0
    pref = get_task("pref-sort", direction="either").generate("train", 2, seed=0)
    assert all(r["task_args"] == {"direction": "either"} for r in pref)


def test_answer_is_the_ground_truth_computed_from_the_prompt():
    """`Task.answer` (the target of the differentiable `task_match`) is what the rows hold."""
    from dare.data.tasks import TASKS, has_answer

    for name, truth in (("sort", lambda gt: gt), ("addition", lambda gt: gt), ("sudoku", lambda gt: gt["solution"])):
        task = get_task(name)
        assert has_answer(task)
        for row in task.generate("train", 20, seed=3):
            assert task.answer(row["prompt"]) == truth(row["ground_truth"]), row
            assert task.score(task.answer(row["prompt"]), row["ground_truth"]) == 1.0
    assert get_task("sort", direction="either").answer("sort 31979") == "13799"
    assert not has_answer(get_task("countdown")) and not has_answer(TASKS.get("mirror"))
    with pytest.raises(NotImplementedError, match="countdown: a prompt of this task has no single answer"):
        get_task("countdown").answer("24 from 3,8,1")
    with pytest.raises(ValueError, match="sort: expected a prompt 'sort <digits>'"):
        get_task("sort").answer("123+45")
    with pytest.raises(ValueError, match="addition: expected a prompt '<int>[+]<int>'"):
        get_task("addition").answer("sort 12")
