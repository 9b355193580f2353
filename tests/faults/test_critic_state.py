"""Fault injection on the critic's training state (`critic.safetensors` + `critic.json` in a
`state/step_N` folder): each damaged, planted or mismatched file is refused with a `StateFileError`
naming it, by the driver-side check where it can see the damage without tensor data and by the
critic's own loader otherwise, and a refused load leaves the critic as it was. No Ray: a tiny
critic saves and loads in-process (the worker's `save_state` / `load_state` call these)."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dare.algorithms.base import CriticSpec
from dare.models import tiny
from dare.workers.critic import Critic, ValueModel, check_critic_state
from dare.workers.state_io import StateFileError, save_tree

V = 48


def value_mse(values: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    mask = batch["response_mask"].float()
    return ((values - batch["scores"][:, None]) ** 2 * mask).sum() / mask.sum(), {}


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(5, V - 3, (2, 8), generator=g),
        "attention_mask": torch.ones(2, 8, dtype=torch.long),
        "response_mask": torch.arange(8).expand(2, 8) >= 4,
        "scores": torch.tensor([1.0, -0.5]),
    }


def critic(**overrides) -> Critic:
    return Critic(ValueModel(tiny("llada", V, seed=0, **overrides)), CriticSpec(lr=1e-2))


@pytest.fixture
def saved(tmp_path) -> Path:
    """A state folder holding a critic after 2 updates."""
    c = critic()
    for _ in range(2):
        c.update(batch(), value_mse)
    c.save(tmp_path)
    return tmp_path


def weights(c: Critic) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in c.model.state_dict().items()}


def assert_refused(directory: Path, message: str, updates: int = 2, driver: bool = False) -> None:
    """The loader refuses `directory` (naming the file) and the fresh critic is left untouched;
    with `driver`, the driver-side check refuses it first."""
    if driver:
        with pytest.raises(StateFileError, match=message):
            check_critic_state(directory)
    fresh = critic()
    before = weights(fresh)
    with pytest.raises(StateFileError, match=message):
        fresh.load(directory, updates)
    assert fresh.updates == 0 and not fresh.optimizer.state
    assert all(before[k].equal(v) for k, v in fresh.model.state_dict().items())


def test_missing_critic_state_is_named(saved):
    for name in ("critic.json", "critic.safetensors"):
        (saved / name).unlink()
    assert_refused(saved, r"critic\.json: missing; this stage trains a critic", driver=True)


def test_missing_half_of_the_pair_is_named(saved):
    (saved / "critic.safetensors").unlink()
    assert_refused(saved, r"critic\.safetensors: missing; the training state in .* is incomplete", driver=True)


def test_planted_pickle_is_refused_unopened(saved, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (saved / "critic.pt").write_bytes(pickle.dumps({"model": Payload()}))
    assert_refused(saved, r"critic\.pt: a pickled training-state file; dare does not load pickles", driver=True)
    assert not marker.exists()


def test_truncated_safetensors_is_named(saved):
    data = saved / "critic.safetensors"
    data.write_bytes(data.read_bytes()[:-100])
    assert_refused(saved, r"critic\.safetensors: not a valid safetensors file")


def test_damaged_manifest_is_named(saved):
    manifest = saved / "critic.json"
    manifest.write_text(manifest.read_text()[:40])
    assert_refused(saved, r"critic\.json: not valid JSON", driver=True)


def test_foreign_tensors_are_named(saved, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    save_tree({"x": torch.zeros(3)}, other, "critic")
    shutil.copy(other / "critic.safetensors", saved / "critic.safetensors")
    assert_refused(saved, r"critic\.safetensors: its tensors do not match its manifest critic\.json", driver=True)


def test_state_of_another_step_is_refused(saved):
    assert_refused(saved, r"critic\.json: holds a critic after 2 updates; the stage resumes at step 3", updates=3)


def test_value_model_of_another_shape_is_refused(tmp_path):
    c = critic(mlp_hidden_size=128)  # another architecture than the stage's critic
    c.update(batch(), value_mse)
    c.save(tmp_path)
    assert_refused(tmp_path, r"critic\.json: weight '.*' is \(.*\) torch.float32, this critic's is", updates=1)


def test_non_finite_weights_are_refused(saved):
    data = saved / "critic.safetensors"
    tensors = load_file(data)
    key = next(k for k in tensors if k.endswith("value_head.weight"))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, data)
    assert_refused(saved, r"critic\.json: weight 'value_head\.weight' holds NaN/inf")


def test_optimizer_moment_of_another_shape_is_refused(saved):
    data, manifest = saved / "critic.safetensors", saved / "critic.json"
    tensors = load_file(data)
    key = next(k for k in tensors if k.startswith("/optimizer/state/") and k.endswith("exp_avg"))
    tensors[key] = torch.zeros(3, 5)
    save_file(tensors, data)
    assert_refused(saved, r"critic\.json: optimizer moment 'exp_avg' of parameter \d+ has shape \(3, 5\)")
    assert json.loads(manifest.read_text())["format"] == "dare-state-v1"  # only the data was changed
