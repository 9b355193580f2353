"""Dataset loading: JSONL / JSON / parquet / HF folders, column mapping, chat and preference rows,
malformed-row policy, built-in specs."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dare.data import RowError, get_task, load_dataset_spec, load_rows, normalize_row

GOOD = [
    {"prompt": "1+2", "response": "3", "ground_truth": "3"},
    {"prompt": "sort 21", "response": "12", "ground_truth": {"answer": "12"}, "id": 7},
]


def write_jsonl(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_jsonl_round_trip_keeps_extra_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD[0], "", GOOD[1]])  # blank lines are ignored
    assert load_rows(path) == GOOD


@pytest.fixture
def broken_jsonl(tmp_path):
    return write_jsonl(
        tmp_path / "broken.jsonl",
        [GOOD[0], GOOD[1], '{"prompt": "1+1", "response": ', {"prompt": "x"}, [1, 2], GOOD[0]],
    )


def test_jsonl_fail_names_file_and_line(broken_jsonl):
    with pytest.raises(ValueError, match=rf"{broken_jsonl}:3: invalid JSON"):
        load_rows(broken_jsonl)
    lines = broken_jsonl.read_text().splitlines()
    broken_jsonl.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # drop the bad JSON line
    with pytest.raises(ValueError, match=rf"{broken_jsonl}:3: missing the response: expected one of"):
        load_rows(broken_jsonl)


def test_jsonl_skip_counts_and_reports(broken_jsonl, caplog):
    with caplog.at_level(logging.WARNING, logger="dare.data"):
        rows = load_rows(broken_jsonl, on_error="skip")
    assert rows == [GOOD[0], GOOD[1], GOOD[0]]
    (record,) = caplog.records
    msg = record.getMessage()
    assert "skipped 3 of 6 malformed rows" in msg
    assert f"{broken_jsonl}:3: invalid JSON" in msg and f"{broken_jsonl}:4: missing the response" in msg
    assert f"{broken_jsonl}:5: expected an object" in msg


def test_path_and_policy_errors(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_rows(missing)
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        load_rows(tmp_path / "d.csv")
    with pytest.raises(ValueError, match="on_error"):
        load_rows(tmp_path / "d.csv", on_error="ignore")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="save_to_disk"):
        load_rows(empty)
    only_bad = write_jsonl(tmp_path / "bad.jsonl", [{"q": 1}])
    with pytest.raises(ValueError, match="no valid rows .1 skipped"):
        load_rows(only_bad, on_error="skip")


def test_parquet_round_trip_and_row_index(tmp_path):
    rows = [
        {"prompt": "1+2", "response": "3", "ground_truth": "3"},
        {"prompt": "2+2", "response": "4", "ground_truth": "4"},
    ]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert load_rows(path) == rows
    pq.write_table(
        pa.Table.from_pylist([{"prompt": "1+2", "response": "3"}, {"prompt": "2+2", "response": None}]), path
    )
    with pytest.raises(ValueError, match=rf"{path}: row 1: missing the response"):
        load_rows(path)
    assert load_rows(path, kind="prompt") == [
        {"prompt": "1+2", "response": "3", "ground_truth": None},
        {"prompt": "2+2", "ground_truth": None},
    ]


def test_verl_style_parquet_prompt_rows(tmp_path):
    rows = [
        {
            "data_source": "countdown",
            "prompt": [{"role": "user", "content": "24 from 3,8,1"}],
            "reward_model": {"ground_truth": {"numbers": [3, 8, 1], "target": 24}},
        }
    ]
    path = tmp_path / "verl.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert load_rows(path, kind="prompt") == [
        {"prompt": "24 from 3,8,1", "ground_truth": {"numbers": [3, 8, 1], "target": 24}, "data_source": "countdown"}
    ]


def test_hf_dataset_folder_round_trip(tmp_path):
    import datasets

    rows = [{"question": "1+2", "answer": "3"}, {"question": "5+5", "answer": "10"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    mapped = load_rows(tmp_path / "single", columns={"response": "answer", "ground_truth": "answer"})
    assert mapped == [
        {"prompt": "1+2", "response": "3", "ground_truth": "3"},
        {"prompt": "5+5", "response": "10", "ground_truth": "10"},
    ]
    with pytest.raises(ValueError, match=r"single: row 0: missing the response"):
        load_rows(tmp_path / "single")  # 'answer' is not a response alias: map it
    with pytest.raises(ValueError, match="missing column 'solution'"):
        load_rows(tmp_path / "single", columns={"response": "solution"})
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert len(load_rows(tmp_path / "dict", kind="prompt", split="test")) == 1
    with pytest.raises(ValueError, match=r"splits \['test', 'train'\], asked for split 'eval'"):
        load_rows(tmp_path / "dict", kind="prompt", split="eval")


def test_chat_message_rows(tmp_path):
    system = {"role": "system", "content": "be brief"}
    user, assistant = {"role": "user", "content": "1+2"}, {"role": "assistant", "content": "3"}
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [user, assistant]}, {"messages": [system, user, assistant], "ground_truth": "3"}],
    )
    assert load_rows(path) == [
        {"prompt": "1+2", "response": "3", "ground_truth": None},  # a single user turn becomes a string
        {"prompt": [system, user], "response": "3", "ground_truth": "3"},
    ]
    assert load_rows(write_jsonl(tmp_path / "p.jsonl", [{"messages": [system, user]}]), kind="prompt") == [
        {"prompt": [system, user], "ground_truth": None}
    ]
    with pytest.raises(ValueError, match=r"p.jsonl:1: messages must end with an assistant turn"):
        load_rows(tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match=r"messages\[0\] must be a dict"):
        load_rows(write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user"}, assistant]}]))
    # UltraChat-style: a prompt column plus the whole conversation.
    assert normalize_row({"prompt": "1+2", "prompt_id": "a", "messages": [user, assistant]}) == {
        "prompt": "1+2",
        "response": "3",
        "ground_truth": None,
        "prompt_id": "a",
    }


def test_preference_rows():
    user = {"role": "user", "content": "1+2"}
    ultra = {
        "prompt": "1+2",
        "chosen": [user, {"role": "assistant", "content": "3"}],
        "rejected": [user, {"role": "assistant", "content": "4"}],
        "score_chosen": 9.0,
    }
    assert normalize_row(ultra, "preference") == {"prompt": "1+2", "chosen": "3", "rejected": "4", "score_chosen": 9.0}
    no_prompt = {k: v for k, v in ultra.items() if k != "prompt"}
    assert normalize_row(no_prompt, "preference")["prompt"] == "1+2"  # from chosen[:-1]
    plain = {"question": "1+2", "chosen": "3", "rejected": "4"}
    assert normalize_row(plain, "preference") == {"prompt": "1+2", "chosen": "3", "rejected": "4"}
    with pytest.raises(RowError, match="need 'chosen' and 'rejected'"):
        normalize_row({"prompt": "1+2", "chosen": "3"}, "preference")
    with pytest.raises(RowError, match="share their turns"):
        normalize_row({**no_prompt, "rejected": [{"role": "user", "content": "9"}, ultra["rejected"][1]]}, "preference")


def test_load_dataset_spec(tmp_path):
    rows = load_dataset_spec("builtin:countdown", split="eval", n=5, seed=1)
    assert rows == get_task("countdown").generate("eval", 5, seed=1)
    four = load_dataset_spec("builtin:countdown", n=5, task_kwargs={"num_numbers": 4, "max_number": 9})
    assert all(len(r["ground_truth"]["numbers"]) == 4 for r in four)
    with pytest.raises(ValueError, match="give the number of rows n"):
        load_dataset_spec("builtin:sort")
    with pytest.raises(ValueError, match="not preference pairs"):
        load_dataset_spec("builtin:sort", n=3, kind="preference")
    with pytest.raises(KeyError, match="did you mean 'sudoku'"):
        load_dataset_spec("builtin:sudok", n=3)
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "a.jsonl", [GOOD[0]])
    write_jsonl(shards / "b.jsonl", [GOOD[1], GOOD[0]])
    assert load_dataset_spec(str(shards)) == [GOOD[0], GOOD[1], GOOD[0]]
    assert load_dataset_spec(str(shards), n=2) == GOOD
    (tmp_path / "arr.json").write_text(json.dumps(GOOD))
    assert load_dataset_spec(str(tmp_path / "arr.json")) == GOOD
