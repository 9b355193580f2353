"""The FSDP2 recipe keys (resources.mixed_precision, cpu_offload, activation_checkpointing): they
reach the actor worker, and a value that cannot work is refused at load with the key named."""

import pytest
import yaml

from dare.config import RecipeError, load_recipe

FSDP2 = {"strategy": "fsdp2", "num_workers": 2}


def write(tmp_path, resources, **model):
    recipe = {
        "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin", **model},
        "data": {"train": "builtin:sort", "gen_length": 12},
        "eval": {"sampling": {"algorithm": "llada", "steps": 12, "block_length": 12}},
        "stages": [{"kind": "sft", "algorithm": "sft", "steps": 10, "batch_size": 8, "lr": 1e-3}],
        "resources": resources,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_sharding_keys_load_and_reach_the_actor(tmp_path):
    resources = {**FSDP2, "mixed_precision": "bf16", "cpu_offload": True, "activation_checkpointing": True}
    r = load_recipe(write(tmp_path, resources))
    assert r.resources.sharding_kwargs() == {
        "strategy": "fsdp2",
        "mixed_precision": "bf16",
        "cpu_offload": True,
        "activation_checkpointing": True,
    }
    # defaults: nothing changes for an existing recipe; checkpointing alone works with any strategy
    r = load_recipe(write(tmp_path, {"activation_checkpointing": True}))
    assert r.resources.sharding_kwargs() == {
        "strategy": "replicate",
        "mixed_precision": None,
        "cpu_offload": False,
        "activation_checkpointing": True,
    }


@pytest.mark.parametrize(
    "resources,model,match",
    [
        ({**FSDP2, "mixed_precision": "int8"}, {}, r"resources.mixed_precision: must be one of \['bf16', 'fp16'\]"),
        ({"mixed_precision": "bf16"}, {}, r"resources.mixed_precision: is an FSDP2 option: needs strategy: fsdp2"),
        ({"strategy": "fsdp2", "cpu_offload": True}, {}, r"resources.cpu_offload: .*got strategy 'fsdp2' with 1 "),
        ({"strategy": "replicate", "num_workers": 2, "cpu_offload": True}, {}, r"got strategy 'replicate'"),
        ({**FSDP2, "mixed_precision": "bf16"}, {"dtype": "bfloat16"}, r"needs model.dtype: float32, got 'bfloat16'"),
        ({**FSDP2, "cpu_offload": "yes"}, {}, r"resources.cpu_offload"),
    ],
)
def test_bad_sharding_keys_fail_at_load(tmp_path, resources, model, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(write(tmp_path, resources, **model))
