"""Loading released multi-shard checkpoints: every key checked, no random init materialised,
weights read in the dtype asked for, the checkpoint files never written."""

import hashlib
import json

import pytest
import torch
from replicas import make_replica
from safetensors.torch import load_file, save_file

from dare.models import checkpoint, from_pretrained, tiny
from dare.models.dtypes import DTYPES, resolve_dtype


def _saved_state(folder) -> dict[str, torch.Tensor]:
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_sharded_checkpoint_loads_every_tensor_in_the_asked_dtype(tmp_path, dtype):
    folder = make_replica("sdar", tmp_path, size="8b")  # 4 shards + index, stored in bfloat16
    assert len(list(folder.glob("model-0000?-of-00004.safetensors"))) == 4
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    state = _saved_state(folder)
    assert set(index["weight_map"]) == set(state)
    model = from_pretrained(folder, dtype=dtype)
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert loaded[k].dtype == DTYPES[dtype], k
        torch.testing.assert_close(loaded[k], v.to(DTYPES[dtype]), rtol=0, atol=0)


def test_missing_shard_file_is_named(tmp_path):
    folder = make_replica("llada", tmp_path)  # 6 shards
    (folder / "model-00003-of-00006.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model.safetensors.index.json: names shard files that are missing: "
                                                 r"\['model-00003-of-00006.safetensors'\]"):  # fmt: skip
        from_pretrained(folder)


def test_key_missing_from_a_shard_is_named(tmp_path):
    folder = make_replica("dream", tmp_path)  # 4 shards
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    key = "model.layers.1.mlp.up_proj.weight"
    shard = folder / index["weight_map"][key]
    state = load_file(str(shard))
    del state[key]
    save_file(state, str(shard), metadata={"format": "pt"})
    del index["weight_map"][key]
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"model-00001-of-00004.safetensors, .*weights do not match config.json: "
                                         r"missing_keys: \['model.layers.1.mlp.up_proj.weight'\]"):  # fmt: skip
        from_pretrained(folder)


def test_unexpected_key_in_a_shard_is_named(tmp_path):
    folder = make_replica("sdar", tmp_path, size="4b")
    shard = folder / "model-00002-of-00002.safetensors"
    state = load_file(str(shard))
    state["model.layers.9.mlp.up_proj.weight"] = torch.zeros(2, 2, dtype=torch.bfloat16)
    save_file(state, str(shard), metadata={"format": "pt"})
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = shard.name
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"unexpected_keys: \['model.layers.9.mlp.up_proj.weight'\]"):
        from_pretrained(folder)


def _record_inits(monkeypatch) -> list:
    drawn = []
    for name in ("normal_", "uniform_", "zero_", "fill_"):
        original = getattr(torch.Tensor, name)

        def record(t, *a, _original=original, _name=name, **k):
            if t.device.type != "meta" and t.numel() > 1:
                drawn.append((_name, tuple(t.shape)))
            return _original(t, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, record)
    return drawn


def test_loading_a_checkpoint_draws_no_random_init(tmp_path, monkeypatch):
    folder = make_replica("llada", tmp_path)
    with monkeypatch.context() as m:
        drawn = _record_inits(m)
        from_pretrained(folder, dtype="bfloat16")
        from_pretrained(folder, dtype="float32")
    assert drawn == [], drawn[:5]
    with monkeypatch.context() as m:  # the probe sees an init where there is one (a preset)
        drawn = _record_inits(m)
        tiny("llada")
    assert drawn


def test_training_never_writes_into_the_checkpoint(tmp_path):
    folder = make_replica("dream", tmp_path, n_shards=2)

    def digest():
        return hashlib.sha1(b"".join(f.read_bytes() for f in sorted(folder.glob("*.safetensors")))).hexdigest()

    before = digest()
    model = from_pretrained(folder, dtype="bfloat16")  # stored dtype: tensors come from the mmapped shards
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert digest() == before


def test_one_dtype_table():
    assert checkpoint.DTYPES is DTYPES and set(DTYPES) == {"float32", "bfloat16", "float16"}
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(None) is torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'float8'; expected one of float32, bfloat16, float16"):
        resolve_dtype("float8")
