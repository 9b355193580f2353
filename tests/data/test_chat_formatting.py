"""Chat formatting and the masked-diffusion collators: layout, masks, EOS padding."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from dare.data import (
    IGNORE_INDEX,
    SFTCollator,
    builtin_tokenizer,
    collate_preference,
    collate_prompts,
    collate_sft,
    encode_prompt,
    encode_response,
    encode_sft_row,
    get_task,
)
from dare.models.tokenizer import model_token_ids


@pytest.fixture(scope="module")
def tok():
    return builtin_tokenizer()


ROWS = [
    {"prompt": "sort 31", "response": "13"},
    {"prompt": "24 from 3,8,1", "response": "3*8*1"},
    {"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+2"}], "response": "3"},
]


def test_encode_prompt_uses_the_chat_template(tok):
    ids = encode_prompt(tok, "1+2")
    assert tok.convert_ids_to_tokens(ids) == ["<|bos|>", "<|user|>", "1", "+", "2", "<|eot|>", "<|assistant|>"]
    assert encode_prompt(tok, [{"role": "user", "content": "1+2"}]) == ids
    system = encode_prompt(tok, ROWS[2]["prompt"])
    assert tok.convert_ids_to_tokens(system)[:2] == ["<|bos|>", "<|system|>"]
    assert encode_response(tok, "3") == [tok.convert_tokens_to_ids("3"), tok.eos_token_id]
    with pytest.raises(ValueError, match="role"):
        encode_prompt(tok, [{"content": "x"}])


def test_collate_sft_layout_and_masks(tok):
    G = 8
    batch = collate_sft(ROWS, tok, gen_length=G)
    prompts = [encode_prompt(tok, r["prompt"]) for r in ROWS]
    P = max(len(p) for p in prompts)
    B, L = batch["input_ids"].shape
    assert (B, L) == (3, P + G)
    for key in ("attention_mask", "response_mask", "labels"):
        assert batch[key].shape == (B, L), key
    assert batch["response_mask"].dtype == torch.bool
    assert batch["prompt_lengths"].tolist() == [len(p) for p in prompts]
    assert batch["response_lengths"].tolist() == [len(r["response"]) + 1 for r in ROWS]  # + EOS
    eos, pad = tok.eos_token_id, tok.pad_token_id
    for b, (row, p) in enumerate(zip(ROWS, prompts)):
        ids, mask = batch["input_ids"][b], batch["response_mask"][b]
        assert ids[: P - len(p)].eq(pad).all() and batch["attention_mask"][b, : P - len(p)].eq(0).all()
        assert ids[P - len(p) : P].tolist() == p  # prompt right-aligned: responses start at P
        assert batch["attention_mask"][b, P - len(p) :].eq(1).all()
        assert not mask[:P].any() and mask[P:].all()  # prompt never in the loss, EOS padding is
        n = len(row["response"])
        assert tok.decode(ids[P : P + n]) == row["response"]
        assert ids[P + n :].eq(eos).all()  # the EOS after the answer, then EOS padding
    assert batch["labels"][~batch["response_mask"]].eq(IGNORE_INDEX).all()
    assert torch.equal(batch["labels"][batch["response_mask"]], batch["input_ids"][batch["response_mask"]])


def test_collate_sft_gen_length_rules(tok):
    auto = collate_sft(ROWS, tok)
    assert auto["response_mask"].sum(1).tolist() == [6, 6, 6]  # longest response "3*8*1" + EOS
    with pytest.raises(ValueError, match="row 1 .* gen_length=4"):
        collate_sft(ROWS, tok, gen_length=4)
    cut = collate_sft(ROWS, tok, gen_length=4, truncate=True)
    assert cut["response_lengths"].tolist() == [3, 4, 2]
    P = cut["input_ids"].shape[1] - 4
    assert tok.decode(cut["input_ids"][1, P:]) == "3*8*"  # truncated: no EOS left
    with pytest.raises(ValueError, match="no rows"):
        collate_sft([], tok)


def test_pre_encoded_rows_and_dataloader(tok):
    encoded = [encode_sft_row(r, tok) for r in ROWS]
    a, b = collate_sft(ROWS, tok, gen_length=8), collate_sft(encoded, tok, gen_length=8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = get_task("sort").generate("train", 10, seed=0)
    loader = DataLoader(rows, batch_size=4, collate_fn=SFTCollator(tok, gen_length=12))
    shapes = [batch["input_ids"].shape[1] - batch["prompt_lengths"].max().item() for batch in loader]
    assert shapes == [12, 12, 12]
    # Token ids fit a tiny model built from the same tokenizer.
    assert max(batch["input_ids"].max().item() for batch in loader) < model_token_ids(tok)["vocab_size"]


def test_collate_prompts_left_pads(tok):
    batch = collate_prompts(ROWS, tok)
    lengths = batch["prompt_lengths"].tolist()
    assert batch["input_ids"].shape == (3, max(lengths))
    for b, n in enumerate(lengths):
        assert batch["attention_mask"][b].tolist() == [0] * (max(lengths) - n) + [1] * n
        assert batch["input_ids"][b, -1].item() == tok.convert_tokens_to_ids("<|assistant|>")


def test_collate_preference_shares_prompt_layout(tok):
    rows = [
        {"prompt": "1+2", "chosen": "3", "rejected": "12"},
        {"prompt": "sort 210", "chosen": "012", "rejected": "0"},
    ]
    batch = collate_preference(rows, tok)
    P = len(encode_prompt(tok, "sort 210"))  # the longest prompt; G = len("012") + EOS = 4
    assert batch["chosen_input_ids"].shape == batch["rejected_input_ids"].shape == (2, P + 4)
    assert torch.equal(batch["chosen_input_ids"][:, :P], batch["rejected_input_ids"][:, :P])
    assert batch["chosen_response_lengths"].tolist() == [2, 4]
    assert batch["rejected_response_lengths"].tolist() == [3, 2]
