"""Released tokenizers load from their files as published, without remote code; the config's
mask / EOS ids are checked against them; their chat template is what dare applies."""

import json

import pytest
from replicas import TOKENIZER_LAYOUTS, make_replica, write_tokenizer

from dare.data.formatting import collate_sft, encode_prompt
from dare.models.checkpoint import load_model_and_tokenizer
from dare.models.released_tokenizers import REMOTE_TOKENIZERS, load_tokenizer, tokenizer_class_for
from dare.workers.builder import build_policy

QUESTION = "What is 1+1?"
# chat rendering of one user turn with the generation prompt, per release
CHAT = {
    "LLaDA-8B-Instruct": "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 1+1?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "Dream-v0-Instruct-7B": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "What is 1+1?<|im_end|>\n<|im_start|>assistant\n",
    "SDAR-1.7B/4B/8B-Chat": "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n",
    "SDAR-30B-A3B-Chat": "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n",
    "LLaDA2.0/2.1-mini": "<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>What is 1+1?"
    "<|role_end|><role>ASSISTANT</role>",
}
CLASS = {"LLaDA-8B-Instruct": "TokenizersBackend", "LLaDA2.0/2.1-mini": "TokenizersBackend"}
MASK = {"LLaDA-8B-Instruct": "<|mdm_mask|>", "Dream-v0-Instruct-7B": "<|mask|>", "LLaDA2.0/2.1-mini": "<|mask|>"}


@pytest.mark.parametrize("layout", list(TOKENIZER_LAYOUTS))
def test_released_tokenizer_loads_without_remote_code(tmp_path, layout):
    files = TOKENIZER_LAYOUTS[layout]()
    tok = load_tokenizer(write_tokenizer(files, tmp_path / "tok"))
    assert type(tok).__name__ == CLASS.get(layout, "Qwen2Tokenizer")
    assert len(tok) == files.size
    assert tok.convert_tokens_to_ids(MASK.get(layout, "<|MASK|>")) == files.ids["mask_token_id"]
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == files.ids["eos_token_id"]
    text = "hello world, 12+3=15"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    # the released chat template is the one dare applies (SFT, RL, eval and generate share encode_prompt)
    rendered = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                       tokenize=False)  # fmt: skip
    assert rendered == CHAT[layout]
    ids = encode_prompt(tok, QUESTION)
    assert ids == tok(CHAT[layout], add_special_tokens=False).input_ids
    assert tok.decode(ids) == CHAT[layout]
    batch = collate_sft([{"prompt": QUESTION, "response": "2"}], tok, gen_length=4)
    assert batch["input_ids"][0, -1].item() == tok.eos_token_id  # EOS padding with the released EOS


def test_remote_names_map_to_transformers_classes():
    assert tokenizer_class_for({"tokenizer_class": "DreamTokenizer"}).__name__ == "Qwen2Tokenizer"
    cfg = {"auto_map": {"AutoTokenizer": ["tokenization_qwen2.Qwen2Tokenizer", None]}}
    assert tokenizer_class_for(cfg).__name__ == "Qwen2Tokenizer"
    assert tokenizer_class_for({}) is None  # plain files: AutoTokenizer reads them
    assert "tokenization_dream.DreamTokenizer" in REMOTE_TOKENIZERS


@pytest.mark.parametrize(
    "edit,pattern",
    [({"auto_map": {"AutoTokenizer": ["tokenization_foo.FooTokenizer", None]}},
      r"tokenizer_config.json: auto_map.AutoTokenizer names remote tokenizer code 'tokenization_foo.FooTokenizer'"),
     ({"tokenizer_class": "FooTokenizer", "auto_map": None},
      r"tokenizer_config.json: tokenizer_class 'FooTokenizer' is neither a transformers tokenizer nor a known")],
)  # fmt: skip
def test_unknown_remote_tokenizer_code_is_refused(tmp_path, edit, pattern):
    folder = write_tokenizer(TOKENIZER_LAYOUTS["Dream-v0-Instruct-7B"](), tmp_path / "tok")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.update(edit)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=pattern):
        load_tokenizer(folder)


def _dream_ids(tmp_path):
    tok = load_tokenizer(write_tokenizer(TOKENIZER_LAYOUTS["Dream-v0-Instruct-7B"](), tmp_path / "t"))
    return {t: tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|im_start|>", "<|mask|>", "<|endoftext|>")}


def test_config_mask_id_not_the_tokenizers_is_an_error(tmp_path):
    ids = _dream_ids(tmp_path)
    folder = make_replica("dream", tmp_path, config_edits={"mask_token_id": ids["<|im_end|>"]})
    expected = (
        f"config.json mask_token_id={ids['<|im_end|>']} but the tokenizer maps it to '<|im_end|>' / "
        f"the tokenizer's mask token '<|mask|>' is {ids['<|mask|>']}"
    )
    with pytest.raises(ValueError) as e:
        load_model_and_tokenizer(folder)
    assert expected in str(e.value) and str(folder) in str(e.value)
    # the recipe path (build_policy) checks the same
    with pytest.raises(ValueError, match="mask_token_id="):
        build_policy({"path": str(folder)}, load_tokenizer(folder), seed=0)


def test_config_eos_id_not_the_tokenizers_is_an_error(tmp_path):
    ids = _dream_ids(tmp_path)
    folder = make_replica("dream", tmp_path, config_edits={"eos_token_id": ids["<|im_start|>"]})
    with pytest.raises(ValueError) as e:
        load_model_and_tokenizer(folder)
    assert (
        f"config.json eos_token_id={ids['<|im_start|>']} maps to ['<|im_start|>'] but the tokenizer's eos token "
        f"'<|endoftext|>' is {ids['<|endoftext|>']}"
    ) in str(e.value)


@pytest.mark.parametrize(
    "mask,pattern",
    [(70, r"config.json mask_token_id=70 maps to '.', an ordinary vocabulary token"),
     (300, r"config.json mask_token_id=300 is not a token of the tokenizer \(283 tokens\)")],
)  # fmt: skip
def test_llada_mask_id_must_be_an_added_token(tmp_path, mask, pattern):
    folder = make_replica("llada", tmp_path, config_edits={"mask_token_id": mask})
    with pytest.raises(ValueError, match=pattern):
        load_model_and_tokenizer(folder)
