"""FSDP2 actor (torch fully_shard over gloo on CPU): the 2-worker sharded gradient and update equal
the 1-worker full-batch ones, sharded checkpoints (model + optimizer) are full-state files that
resume exactly, the colocated rollout of a sharded actor samples what a replicated one does without
keeping a full copy, and the mixed-precision / CPU-offload / activation-checkpointing options train."""

import pytest
import ray
import torch
from verl import DataProto

from dare.config import ResourcesSpec
from dare.config.schema import build_stage, stage_to_dict
from dare.data.formatting import collate_prompts, collate_sft
from dare.data.tasks import builtin_tokenizer, get_task
from dare.trainer.runtime import release, worker_group
from dare.trainer.stream import BatchStream
from dare.workers.actor import ActorWorker
from dare.workers.sharding import decoder_blocks

# module-scoped fixtures: keep this file's tests on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("fsdp2")

MODEL = {"family": "llada", "preset": "tiny", "tokenizer": "builtin", "dtype": "float32", "overrides": {}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp2")
    tok = builtin_tokenizer()
    tok.save_pretrained(tmp / "tok")
    rows = get_task("sort").generate("train", 8, seed=0)
    stream = BatchStream(rows, 8, seed=0, stage_index=0)

    def batch(step: int) -> DataProto:
        b = collate_sft(stream.rows_at(step), tok, gen_length=10)
        keys = ("input_ids", "attention_mask", "response_mask")
        return DataProto.from_dict(tensors={**{k: b[k] for k in keys}, "noise_seed": stream.noise_seeds(step)})

    ray.init(address="local", num_cpus=16, include_dashboard=False, logging_level="ERROR")
    yield tmp, tok, batch
    ray.shutdown()


def actor(tmp, n: int, strategy: str, name: str, model=MODEL, init_from=None, base_dir=None, **options):
    stage = build_stage({"kind": "sft", "algorithm": "sft", "steps": 4, "batch_size": 8, "lr": 1e-3}, "s", None)
    resources = ResourcesSpec(num_workers=n, num_threads=1)
    wg = worker_group(ActorWorker, resources, name=name, strategy=strategy, **options)
    wg.n_trainable = wg.init_model(model, str(tmp / "tok"), 0, init_from, base_dir)  # one per rank
    wg.init_stage(stage_to_dict(stage), stage.args, 4)
    return wg


def test_decoder_blocks_found_for_every_family():
    from dare.models import tiny

    for family in ("llada", "dream", "sdar"):
        model = tiny(family, vocab_size=64)
        assert len(decoder_blocks(model)) == model.config.num_hidden_layers >= 1


def test_fsdp2_gradient_update_and_resume_match_replicated(setup):
    tmp, _, batch = setup
    ref = actor(tmp, 1, "replicate", "rep1")
    fs = actor(tmp, 2, "fsdp2", "fsdp")
    g_ref = ref.compute_grad(batch(0)).batch["grad"][0]
    g_fs = fs.compute_grad(batch(0)).batch["grad"][0]
    assert g_ref.abs().sum() > 0
    torch.testing.assert_close(g_fs, g_ref, rtol=1e-5, atol=1e-7)

    for step in range(2):
        ref.update_actor(batch(step))
        fs.update_actor(batch(step))
    c_ref, c_fs = ref.state_checksum()[0], fs.state_checksum()
    assert c_fs[0] == c_fs[1]  # both ranks gather the same full weights
    assert abs(c_fs[0] - c_ref) < 1e-6 * abs(c_ref)

    # a sharded checkpoint (full model + full optimizer state) resumes exactly
    fs.save_state(str(tmp / "state"), None, True)
    resumed = actor(tmp, 2, "fsdp2", "fsdp_resumed")
    resumed.load_state(str(tmp / "state"))
    assert resumed.state_checksum()[0] == c_fs[0]
    fs.update_actor(batch(2))
    resumed.update_actor(batch(2))
    assert resumed.state_checksum()[0] == fs.state_checksum()[0]  # Adam moments restored too

    # its weights file is an ordinary checkpoint: a replicated actor reads it
    plain = actor(tmp, 1, "replicate", "plain", init_from=str(tmp / "state"))
    assert abs(plain.state_checksum()[0] - c_fs[0]) < 1e-9 * abs(c_fs[0])

    # a replicated run refuses the sharded optimizer state instead of mis-loading it
    with pytest.raises(Exception, match="strategy 'fsdp2'"):
        plain.load_state(str(tmp / "state"))


def test_fsdp2_colocated_rollout_matches_replicated(setup):
    tmp, tok, batch = setup
    rep = actor(tmp, 2, "replicate", "rep2g")
    fs = actor(tmp, 2, "fsdp2", "fsdpg")
    rep.update_actor(batch(0))
    fs.update_actor(batch(0))  # the plain rollout copy must pick up this update
    prompts = collate_prompts(get_task("sort").generate("eval", 6, seed=1), tok)
    # uneven work per rank (threshold decoding stops early) must not deadlock a sharded actor
    sampling = {"gen_length": 10, "steps": 10, "block_length": 10, "threshold": 0.3, "temperature": 1.0}
    data = DataProto.from_dict(
        tensors={"input_ids": prompts["input_ids"], "attention_mask": prompts["attention_mask"]},
        meta_info={"sampling": sampling, "seed": 3},
    )
    a = rep.generate(data)
    b = fs.generate(data)
    assert torch.equal(a.batch["responses"], b.batch["responses"])
    assert torch.equal(a.batch["decode_step"], b.batch["decode_step"])
    assert b.batch["nfe"][0] != b.batch["nfe"][-1]  # the ranks did run different numbers of forwards

    # between calls each rank holds only its shards: no parameter of any module in full
    for report in fs.memory_report():
        assert report["full_params"] == 0
        assert report["param_bytes"] < 0.55 * report["model_bytes"]
        assert report["optim_bytes"] < 0.55 * 2 * report["model_bytes"]  # Adam: two moments
    assert rep.memory_report()[0]["param_bytes"] == rep.memory_report()[0]["model_bytes"]
    # and training continues as if no rollout had happened (its per-rank forwards are forgotten)
    rep.update_actor(batch(1))
    fs.update_actor(batch(1))
    c_rep, c_fs = rep.state_checksum()[0], fs.state_checksum()[0]
    assert abs(c_fs - c_rep) < 1e-6 * abs(c_rep)
    for group in (rep, fs):  # free the placement groups: the module's Ray has 16 CPUs
        release(group)


def test_fsdp2_mixed_precision_offload_and_activation_checkpointing(setup):
    tmp, _, batch = setup
    # activation checkpointing recomputes the same activations: the same gradient
    plain = actor(tmp, 1, "replicate", "ac0")
    ac = actor(tmp, 1, "replicate", "ac1", activation_checkpointing=True)
    g = plain.compute_grad(batch(0)).batch["grad"][0]
    torch.testing.assert_close(ac.compute_grad(batch(0)).batch["grad"][0], g, rtol=1e-5, atol=1e-7)
    # bf16 compute (fp32 reduction and master weights), shards offloaded, blocks checkpointed
    options = {"mixed_precision": "bf16", "cpu_offload": True, "activation_checkpointing": True}
    fs = actor(tmp, 2, "fsdp2", "fsdp_opts", **options)
    g_fs = fs.compute_grad(batch(0)).batch["grad"][0]
    assert g_fs.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(g_fs, g, dim=0) > 0.99  # bf16 rounding, not another gradient
    assert not torch.equal(g_fs, g)  # it did compute in bf16
    fs.update_actor(batch(0))
    report = fs.memory_report()[0]
    assert report["param_bytes"] < 0.55 * report["model_bytes"] and report["full_params"] == 0
    plain.update_actor(batch(0))
    c, c_fs = plain.state_checksum()[0], fs.state_checksum()[0]
    assert abs(c_fs - c) < 1e-3 * abs(c)
    for group in (plain, ac, fs):
        release(group)


def test_fsdp2_with_lora_matches_replicated(setup, tmp_path):
    tmp, _, batch = setup
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    model = {**MODEL, "lora": lora}
    base = str(tmp_path / "base")
    # the adapter's random init is seeded: every rank and process starts from the same lora_A
    ref = actor(tmp, 2, "replicate", "lora1", model=model, base_dir=base)
    fs = actor(tmp, 2, "fsdp2", "lora2", model=model, base_dir=base)
    c_ref = ref.state_checksum()
    assert c_ref[0] == c_ref[1] == fs.state_checksum()[0]
    torch.testing.assert_close(
        fs.compute_grad(batch(0)).batch["grad"][0], ref.compute_grad(batch(0)).batch["grad"][0], rtol=1e-5, atol=1e-7
    )
    ref.update_actor(batch(0))
    fs.update_actor(batch(0))
    c_ref, c_fs = ref.state_checksum(), fs.state_checksum()[0]
    assert c_ref[0] == c_ref[1]
    assert abs(c_fs - c_ref[0]) < 1e-6 * abs(c_ref[0])
    fs.save_state(str(tmp_path / "adapter"), base, False)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_bgpo_per_sample_backward_through_the_actor(setup):
    """BGPO through the actor's `loss_backward` path (one backward per Monte-Carlo sample): the
    1-worker gradient equals the one-graph `compute_loss` gradient of the same model in-process,
    and under FSDP2 (a reduce-scatter per backward on the syncing micro-batch, grad_accum 2) the
    2-worker gradient and update equal the 1-worker ones."""
    from dare.algorithms import ALGORITHMS
    from dare.workers.builder import build_policy

    tmp, tok, batch = setup
    raw = {"kind": "rl", "algorithm": "bgpo", "steps": 4, "batch_size": 8, "lr": 1e-3, "mc_num": 4, "grad_accum": 2}
    stage = build_stage(raw, "s", None)
    policy = build_policy(MODEL, tok, 0)
    algo = ALGORITHMS.get("bgpo")(stage.args, policy.diffusion_spec())
    b = batch(0).batch
    resp = b["response_mask"]
    rows = {k: b[k] for k in ("input_ids", "attention_mask", "response_mask")}
    rows["advantages"] = torch.linspace(-1.0, 1.0, len(resp))[:, None] * resp
    rows["noise_seed"] = b["noise_seed"][:, None]  # [B, mu]
    (prepared,) = algo.prepare(policy, None, rows)
    data = DataProto.from_dict(tensors=prepared)
    policy.train().zero_grad(set_to_none=True)
    algo.compute_loss(policy, prepared)[0].backward()
    one_graph = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])

    groups = {}
    for name, n, strategy in (("bgpo1", 1, "replicate"), ("bgpo_fs", 2, "fsdp2")):
        wg = worker_group(ActorWorker, ResourcesSpec(num_workers=n, num_threads=1), name=name, strategy=strategy)
        wg.init_model(MODEL, str(tmp / "tok"), 0, None, None)
        wg.init_stage(stage_to_dict(stage), stage.args, 4)
        groups[name] = wg
    g1 = groups["bgpo1"].compute_grad(data).batch["grad"][0]
    assert one_graph.abs().max() > 1e-3
    torch.testing.assert_close(g1, one_graph, rtol=0, atol=1e-6)
    # the 2-worker sharded gradient and update equal the 1-worker replicated ones (as plain SFT above)
    g_fs = groups["bgpo_fs"].compute_grad(data).batch["grad"][0]
    torch.testing.assert_close(g_fs, g1, rtol=1e-5, atol=1e-7)
    for wg in groups.values():
        wg.update_actor(data)
    c_1, c_fs = groups["bgpo1"].state_checksum()[0], groups["bgpo_fs"].state_checksum()
    assert c_fs[0] == c_fs[1] and abs(c_fs[0] - c_1) < 1e-6 * abs(c_1)
    for wg in groups.values():
        release(wg)


def full_weights(group) -> dict[str, torch.Tensor]:
    """The policy's full state dict (buffers included) as rank 0 gathers it."""
    return group.get_weights()[0]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_fsdp2_init_builds_the_full_model_on_rank0_only(setup, tmp_path):
    """A 2-worker sharded actor starts from exactly the model a 1-worker one builds (`build_replica`:
    the actor's way), while only rank 0 materialises unsharded parameters: rank 1 builds the
    module tree on the meta device and receives its shards from rank 0. Four starts of one group:
    the recipe seed's init; an MoE `init_from` checkpoint whose persistent `expert_bias` buffers
    (not sharded, left uninitialised by `to_empty` on rank 1) must come from rank 0; a fresh LoRA
    adapter (seeded lora_A); a LoRA adapter checkpoint (lora_B not zero)."""
    from dare.models import tiny
    from dare.models.checkpoint import save_policy
    from dare.workers.builder import build_replica

    tmp, _, _ = setup
    tok = str(tmp / "tok")
    group = worker_group(ActorWorker, ResourcesSpec(num_workers=2, num_threads=1), name="init2", strategy="fsdp2")

    def check(model: dict, init_from: str | None = None, base_dir: str | None = None) -> torch.nn.Module:
        n_trainable = group.init_model(model, tok, 0, init_from, base_dir)
        replica = build_replica(model, tok, 0, init_from)  # what a 1-worker actor holds
        assert_same_weights(full_weights(group), replica.state_dict())
        assert n_trainable == [sum(p.numel() for p in replica.parameters() if p.requires_grad)] * 2
        rank0, rank1 = group.memory_report()
        assert rank1["init_full_param_bytes"] == 0  # rank 1 never holds an unsharded parameter
        assert rank0["init_full_param_bytes"] == rank0["model_bytes"]  # rank 0 builds it whole, on the CPU
        assert rank1["full_params"] == 0 and rank1["param_bytes"] < 0.55 * rank1["model_bytes"]
        return replica

    check(MODEL)

    moe = tiny("llada2_moe", vocab_size=64, seed=1)
    with torch.no_grad():
        for name, buf in moe.named_buffers():
            if name.endswith("expert_bias"):
                buf.copy_(torch.randn_like(buf))
    save_policy(moe, tmp_path / "moe")
    assert any(k.endswith("expert_bias") for k in check(MODEL, str(tmp_path / "moe")).state_dict())

    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    model, base = {**MODEL, "lora": lora}, str(tmp_path / "base")
    replica = check(model, base_dir=base)  # rank 0 writes the base the adapter points at
    with torch.no_grad():  # a fresh adapter's lora_B is zero: the checkpoint differs from any fresh one
        for name, p in replica.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p))
    save_policy(replica, tmp_path / "adapter", base)
    check(model, str(tmp_path / "adapter"))
    release(group)
