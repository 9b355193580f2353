"""FSDP2 init pieces in one process (a 1-rank gloo group): a meta-device model, sharded, takes rank
0's full model's values (parameters, tied weights, persistent and non-persistent buffers), its
skeleton gets the real buffers, and a rank whose build failed raises instead of waiting."""

import pytest
import torch
import torch.distributed as dist
from torch import nn

from dare.models import tiny
from dare.workers import sharding


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        # computed at init, not in the state dict: `to_empty` leaves it uninitialised
        self.register_buffer("scale", torch.arange(1.0, 5.0), persistent=False)
        self.register_buffer("count", torch.full((4,), 7.0))


class Toy(nn.Module):
    _no_split_modules = ["Block"]

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])


@pytest.fixture
def group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def sharded_from_meta(build):
    with torch.device("meta"):
        model = build()
    skel = sharding.skeleton(model)
    return skel, sharding.shard_model(model)


def test_meta_model_takes_rank0_values_buffers_included(group):
    torch.manual_seed(0)
    full = Toy()
    with torch.no_grad():
        full.blocks[1].count.fill_(3.0)
        full.blocks[0].scale.mul_(-2.0)  # rank 0's value, not the init's
    skel, model = sharded_from_meta(Toy)
    sharding.materialize_from_rank0(model, full, "cpu")
    state = sharding.full_state_dict(model)
    assert sorted(state) == sorted(full.state_dict())
    for k, v in full.state_dict().items():
        assert torch.equal(state[k], v), k
    for name, buf in full.named_buffers():  # non-persistent ones included
        assert torch.equal(model.get_buffer(name), buf), name
    sharding.copy_buffers(skel, model)
    assert all(not b.is_meta for b in skel.buffers())
    assert torch.equal(skel.blocks[0].scale, torch.tensor([-2.0, -4.0, -6.0, -8.0]))
    frozen = sharding.sharded_copy(skel, model)  # the reference copy keeps them
    assert torch.equal(frozen.blocks[0].scale, full.blocks[0].scale)


def test_meta_model_keeps_tied_weights(group):
    full = tiny("dream", seed=3, tie_word_embeddings=True)
    assert full.get_output_embeddings().weight is full.get_input_embeddings().weight
    _, model = sharded_from_meta(lambda: tiny("dream", tie_word_embeddings=True))
    sharding.materialize_from_rank0(model, full, "cpu")
    sharding.reshard(model)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    state = sharding.full_state_dict(model)
    for k, v in full.state_dict().items():
        assert torch.equal(state[k], v), k


def test_a_failed_build_raises_on_every_rank(group):
    with pytest.raises(FileNotFoundError, match="no weights"):
        sharding.check_ranks_agree(FileNotFoundError("no weights"), "")
    sharding.check_ranks_agree(None, sharding.tree_signature(Toy()))  # agreeing ranks pass


def test_tree_signature_tells_trees_apart():
    a, b = Toy(), Toy()
    assert sharding.tree_signature(a) == sharding.tree_signature(b)
    b.blocks[0].proj.weight.requires_grad_(False)
    assert sharding.tree_signature(a) != sharding.tree_signature(b)
    assert sharding.tree_signature(a) != sharding.tree_signature(a.double())


@pytest.mark.parametrize("family", ["llada", "dream", "sdar", "llada2_moe", "sdar_moe"])
def test_meta_build_is_the_full_build_on_the_meta_device(family, tmp_path):
    """What the other ranks build (`meta=True`: a preset, a checkpoint's config, LoRA on top, an
    adapter checkpoint) has the tree rank 0 builds in full, on the meta device, with no parameter
    materialised: the check every sharded start makes before the broadcast."""
    from dare.data.tasks import builtin_tokenizer
    from dare.models.checkpoint import load_policy, load_policy_skeleton, save_policy
    from dare.workers.builder import build_policy, wrap_lora

    tok = builtin_tokenizer()
    spec = {"family": family, "tokenizer": "builtin", "dtype": "bfloat16"}
    lora = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": "all-linear"}

    def both(build):
        with sharding.track_full_params() as built:
            meta = build(True)
        assert built == [] and all(t.is_meta for t in [*meta.parameters(), *meta.buffers()])
        full = build(False)
        assert sharding.tree_signature(meta) == sharding.tree_signature(full)
        return full

    full = both(lambda meta: build_policy(spec, tok, 0, meta=meta))
    save_policy(full, tmp_path / "ckpt")
    path_spec = {**spec, "path": str(tmp_path / "ckpt")}
    full = both(lambda meta: wrap_lora(build_policy(path_spec, tok, 0, meta=meta), lora, 0))
    save_policy(full, tmp_path / "adapter", tmp_path / "ckpt")
    both(lambda meta: (load_policy_skeleton if meta else lambda p: load_policy(p, merge=False))(tmp_path / "adapter"))
