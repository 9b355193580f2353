"""LoRA (peft) on each family, and the built-in tokenizer."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer

from dare.models import from_pretrained, tiny
from dare.models.lora import apply_lora, linear_module_names
from dare.models.tokenizer import build_tokenizer, model_token_ids


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
def test_lora_train_save_reload_merge(tmp_path, family):
    x = torch.randint(0, 40, (2, 10))
    model = apply_lora(tiny(family, vocab_size=48, seed=1), r=4, alpha=8)
    base_logits = tiny(family, vocab_size=48, seed=1)(x).logits
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # every linear layer but the head is adapted (LLaDA's blocks' ff_out included)
    wrapped = {n.split(".lora_")[0] for n in trainable}
    assert len(wrapped) == len(linear_module_names(tiny(family, vocab_size=48)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(x).logits.flatten(0, 1), x.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    trained = model(x).logits
    assert (trained - base_logits).abs().max() > 1e-4  # the adapter changed the model
    with model.disable_adapter():  # reference policy = adapter disabled
        torch.testing.assert_close(model(x).logits, base_logits)

    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(tiny(family, vocab_size=48, seed=1), tmp_path / "adapter").eval()
    torch.testing.assert_close(reloaded(x).logits, trained, atol=1e-6, rtol=1e-6)

    merged = reloaded.merge_and_unload()
    torch.testing.assert_close(merged(x).logits, trained, atol=1e-5, rtol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    again = from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(again(x).logits, trained, atol=1e-5, rtol=1e-5)


def test_lora_rejects_unknown_target():
    with pytest.raises(ValueError, match=r"target_modules \['qkv'\] match no module"):
        apply_lora(tiny("llada"), target_modules=["qkv"])


def test_char_tokenizer_round_trip_and_chat_template(tmp_path):
    tok = build_tokenizer("0123456789+=")
    ids = tok("12+3=15")["input_ids"]
    assert tok.decode(ids) == "12+3=15"
    assert (tok.pad_token_id, tok.eos_token_id, tok.mask_token_id, tok.bos_token_id) == (0, 1, 2, 3)
    prompt = tok.apply_chat_template([{"role": "user", "content": "1+2"}], add_generation_prompt=True, tokenize=False)
    assert prompt == "<|bos|><|user|>1+2<|eot|><|assistant|>"
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("12+3=15")["input_ids"] == ids
    assert again.mask_token_id == 2 and again.padding_side == "left"
    batch = again(["1", "123"], padding=True)
    assert batch["input_ids"][0][:2] == [0, 0] and batch["attention_mask"][0] == [0, 0, 1]
    # the tokenizer's ids configure a model
    model = tiny("llada", **model_token_ids(tok))
    spec = model.diffusion_spec()
    assert spec.mask_token_id == 2 and spec.eos_token_ids == (1, tok.convert_tokens_to_ids("<|eot|>"))
    assert model.config.vocab_size == len(tok)


def test_word_tokenizer():
    tok = build_tokenizer(["hello", "world"], level="word")
    ids = tok("hello world")["input_ids"]
    assert len(ids) == 2 and tok.decode(ids) == "hello world"
    with pytest.raises(ValueError, match="single characters"):
        build_tokenizer(["ab"], level="char")
