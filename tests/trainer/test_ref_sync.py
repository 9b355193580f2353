"""Reference re-sync (`ref_sync_every`, `ref_sync_alpha`) on GRPO stages: the frozen reference
moves to the policy after every N-th optimizer update, on a replicated and an FSDP2-sharded actor;
the KL term sees it (exactly 0 on the step after a sync with mu = 1, > 0 otherwise); a mixup alpha
averages; a training state carries the synced reference (resume); LoRA recipes are refused at load."""

import pytest
import ray
import torch
from verl import DataProto

from dare.config import ResourcesSpec, build_recipe
from dare.config.loader import RecipeError
from dare.config.schema import build_stage, stage_to_dict
from dare.data.formatting import collate_sft
from dare.data.tasks import builtin_tokenizer, get_task
from dare.trainer.metrics import rank_zero_metrics
from dare.trainer.runtime import worker_group
from dare.workers.actor import ActorWorker

pytestmark = pytest.mark.xdist_group("ref_sync")

MODEL = {"family": "llada", "preset": "tiny", "tokenizer": "builtin", "dtype": "float32", "overrides": {}}
B = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref_sync")
    tok = builtin_tokenizer()
    tok.save_pretrained(tmp / "tok")
    rows = get_task("sort").generate("train", B, seed=0)
    b = collate_sft(rows, tok, gen_length=10)
    keys = ("input_ids", "attention_mask", "response_mask")
    g = torch.Generator().manual_seed(0)
    fixed = {k: b[k] for k in keys}
    fixed["advantages"] = torch.randn(B, generator=g)[:, None].expand_as(b["response_mask"]).float().clone()

    def batch(step: int) -> DataProto:
        seeds = torch.randint(0, 2**62, (B, 1), generator=torch.Generator().manual_seed(100 + step))
        return DataProto.from_dict(tensors={**fixed, "noise_seed": seeds})

    ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="ERROR")
    yield tmp, batch
    ray.shutdown()


def actor(tmp, n: int, strategy: str, name: str, steps: int = 6, **args):
    raw = {"kind": "rl", "algorithm": "d1", "steps": steps, "batch_size": B, "lr": 1e-2, "beta": 0.5, "mu": 1, **args}
    stage = build_stage(raw, "s", None)
    wg = worker_group(ActorWorker, ResourcesSpec(num_workers=n, num_threads=1), name=name, strategy=strategy)
    wg.init_model(MODEL, str(tmp / "tok"), 0, None, None)
    wg.init_stage(stage_to_dict(stage), stage.args, steps)
    return wg


def kl(wg, data: DataProto) -> float:
    """One update; the KL term of its loss."""
    return rank_zero_metrics(wg.update_actor(data).meta_info["metrics"])["actor/kl"]


def test_reference_equals_policy_after_every_n_updates(setup):
    tmp, batch = setup
    wg = actor(tmp, 1, "replicate", "sync", ref_sync_every=2)
    start = wg.state_checksum()[0]
    kls = []
    for s in range(3):
        kls.append(kl(wg, batch(s)))
        ref, policy = wg.reference_checksum()[0], wg.state_checksum()[0]
        if s == 0:  # between syncs the reference stays the stage's starting policy
            assert ref == start and abs(ref - policy) > 1e-4 * abs(policy)
        if s == 1:  # the 2nd update syncs it
            assert ref == policy != start
    # with mu = 1 a step's KL compares the policy at the step's start with the reference:
    # equal at the stage start and right after a sync (steps 0 and 2), apart after an update
    assert kls[0] < 1e-9 and kls[2] < 1e-9
    assert kls[1] > 1e-5


def test_fsdp2_reference_syncs_shard_by_shard(setup):
    tmp, batch = setup
    wg = actor(tmp, 2, "fsdp2", "sync_fsdp2", ref_sync_every=1)
    for s in range(2):
        k = kl(wg, batch(s))
        ref, policy = wg.reference_checksum(), wg.state_checksum()
        assert ref[0] == ref[1] == policy[0] == policy[1]  # gathered full weights on both ranks
        assert k < 1e-9  # the previous update's sync made reference = policy at this step's start


def test_mixup_alpha_averages_and_a_training_state_restores_the_synced_reference(setup, tmp_path):
    tmp, batch = setup
    wg = actor(tmp, 1, "replicate", "alpha", ref_sync_every=1, ref_sync_alpha=0.25)
    ref0 = wg.reference_checksum()[0]
    kl(wg, batch(0))
    p1 = wg.state_checksum()[0]
    assert abs(p1 - ref0) > 1e-2  # (float32 parameters: the sums agree to ~1e-8 relative)
    assert wg.reference_checksum()[0] == pytest.approx(0.75 * ref0 + 0.25 * p1, abs=1e-4)
    kl(wg, batch(1))
    synced, policy = wg.reference_checksum()[0], wg.state_checksum()[0]

    wg.save_state(str(tmp_path / "state"), None, True)
    assert (tmp_path / "state" / "reference.safetensors").is_file()  # safetensors + JSON, no pickle
    after = kl(wg, batch(2))
    assert wg.reference_checksum()[0] != synced
    wg.load_state(str(tmp_path / "state"))  # what a resumed run does after init_stage
    assert wg.reference_checksum()[0] == synced and wg.state_checksum()[0] == policy
    assert kl(wg, batch(2)) == after  # the same step again: same reference, same KL


def _recipe(stage: dict, **model) -> dict:
    return {
        "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin", **model},
        "stages": [{"kind": "rl", "algorithm": "coupled_grpo", "steps": 2, "batch_size": 4, "beta": 0.01, **stage}],
    }


def test_ref_sync_refused_with_lora_or_without_a_reference():
    build_recipe(_recipe({"ref_sync_every": 64, "ref_sync_alpha": 0.6}))  # full fine-tuning: accepted
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj"]}
    with pytest.raises(RecipeError, match=r"stages\[0\]\.ref_sync_every.*LoRA|stages\[0\]\.ref_sync_every.*lora"):
        build_recipe(_recipe({"ref_sync_every": 64}, lora=lora))
    build_recipe(_recipe({"ref_sync_every": 0}, lora=lora))  # the default stays valid with LoRA
    with pytest.raises(RecipeError, match="beta is 0"):
        build_recipe(_recipe({"ref_sync_every": 8, "beta": 0.0}))
    for bad in ({"ref_sync_every": -1}, {"ref_sync_every": 4, "ref_sync_alpha": 0.0}, {"ref_sync_alpha": 1.5}):
        with pytest.raises(RecipeError, match="ref_sync_"):
            build_recipe(_recipe(bad))
