"""The model-file policy (docs/models.md): a family is its own file in dare/models/ built on the
shared kernel, plus its `register_family` call; the one marked copy (the Qwen-layout release
fields) stays identical."""

import inspect

import pytest
import torch
from huggingface_hub.dataclasses import strict
from transformers import AutoModel

from dare.models import FAMILIES, family_of, from_pretrained, tiny
from dare.models.dream import DreamConfig
from dare.models.family import ModelFamily, register_family
from dare.models.qwen_layers import QwenBackbone, QwenDiffusionConfig, QwenLM
from dare.models.sdar import SDARConfig
from dare.models.spec import DiffusionSpec, spec_from_config


def test_qwen_family_configs_declare_the_release_fields_alike():
    """DreamConfig and SDARConfig each declare their release's sizes (marked copies): the same
    names with the same types in the same order; SDAR's own fields may sit between them."""
    dream = inspect.get_annotations(DreamConfig)
    sdar = inspect.get_annotations(SDARConfig)
    assert list(dream) == [k for k in sdar if k in dream]
    assert {k: sdar[k] for k in dream} == dream
    assert set(sdar) - set(dream) == {"head_dim", "attention_bias", "block_size"}


# --- a new family: one file's worth of code and its registration ----------------------------


@strict
class ToyConfig(QwenDiffusionConfig):
    """A bidirectional Qwen3-layout family, as a new family file would declare it."""

    model_type = "dare-test-toy"

    vocab_size: int = 64
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int | None = 2
    max_position_embeddings: int = 256
    mask_token_id: int | None = 63

    def validate_architecture(self) -> None:
        pass

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def diffusion_spec(self) -> DiffusionSpec:
        return spec_from_config(self, shift_logits=False, attention="full")


class ToyModel(QwenBackbone):
    config_class = ToyConfig
    qkv_bias, qk_norm = False, True


class ToyForMaskedDiffusion(QwenLM):
    config_class = ToyConfig
    backbone_class = ToyModel


def toy_tiny(vocab_size: int = 64, **overrides) -> ToyConfig:
    return ToyConfig.tiny(vocab_size, **overrides)


@pytest.fixture
def toy_family():
    fam = register_family(ModelFamily("toy", ToyForMaskedDiffusion, toy_tiny, {AutoModel: ToyForMaskedDiffusion}))
    yield fam
    del FAMILIES._items["toy"]  # the registry is process-wide; other tests list the families


def test_a_registered_family_builds_saves_and_loads_with_dare_and_transformers(tmp_path, toy_family):
    model = tiny("toy", vocab_size=64, seed=1).eval()
    assert isinstance(model, ToyForMaskedDiffusion) and family_of(model) is toy_family
    x = torch.randint(0, 60, (2, 10), generator=torch.Generator().manual_seed(0))
    logits = model(x).logits
    assert logits.shape == (2, 10, 64)
    # bidirectional: the last token changes the first position's logits
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 60
    assert (model(y).logits[:, 0] - logits[:, 0]).abs().amax() > 1e-5

    model.save_pretrained(tmp_path)
    assert torch.equal(from_pretrained(tmp_path)(x).logits, logits)
    auto = AutoModel.from_pretrained(tmp_path).eval()  # no trust_remote_code
    assert type(auto) is ToyForMaskedDiffusion
    assert torch.equal(auto(x).logits, logits)


def test_the_lm_ignores_keywords_generic_callers_pass_and_the_backbone_refuses_unknown_ones():
    model = tiny("sdar", vocab_size=48).eval()
    x = torch.randint(0, 40, (1, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(x, return_dict=True).logits, model(x).logits)
    with pytest.raises(TypeError, match="attention_msk"):
        model.model(x, attention_msk=torch.ones_like(x))
