"""Hub ids (`ORG/NAME[@REVISION]`) wherever a checkpoint or tokenizer is named, resolved from a
huggingface_hub cache the tests build (tests/replicas.py), with the network off."""

import json

import pytest
import torch
import yaml
from replicas import RELEASES, install_replica, make_replica, place_in_hub_cache

from dare.cli import main
from dare.config import RecipeError, load_recipe
from dare.models import from_pretrained, load_config
from dare.models.checkpoint import export_checkpoint, load_model_and_tokenizer
from dare.models.hub import HubResolutionError, parse_hub_id, resolve_checkpoint
from dare.workers.builder import build_policy, load_tokenizer

LLADA = RELEASES["llada"].repo_id  # GSAI-ML/LLaDA-8B-Instruct


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf") / "hub"
    snapshots = {key: install_replica(key, root) for key in ("llada", "dream", "sdar-1.7b")}
    return root, snapshots


@pytest.fixture(autouse=True)
def offline_cache(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(cache[0]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_parse_hub_id():
    assert parse_hub_id("GSAI-ML/LLaDA-8B-Instruct") == ("GSAI-ML/LLaDA-8B-Instruct", None)
    assert parse_hub_id("JetLM/SDAR-1.7B-Chat@v1.0") == ("JetLM/SDAR-1.7B-Chat", "v1.0")
    for not_id in ("./org/name", "/abs/path", "name", "a/b/c", "../x/y"):
        assert parse_hub_id(not_id) is None, not_id


def test_cached_id_resolves_offline_and_loads(cache):
    snapshot = cache[1]["llada"]
    assert resolve_checkpoint(LLADA) == snapshot
    assert resolve_checkpoint(f"{LLADA}@main") == snapshot
    model = from_pretrained(LLADA)
    local = from_pretrained(snapshot)
    x = torch.randint(0, 250, (1, 7))
    torch.testing.assert_close(model(x).logits, local(x).logits, rtol=0, atol=0)
    assert load_config(LLADA).mask_token_id == model.config.mask_token_id


def test_local_folder_wins_over_a_cached_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = make_replica("dream", tmp_path / "GSAI-ML")  # ./GSAI-ML/Dream-v0-Instruct-7B
    (tmp_path / "GSAI-ML" / "LLaDA-8B-Instruct").symlink_to(folder)  # a local folder spelled like the id
    assert resolve_checkpoint(LLADA).resolve() == folder.resolve()
    assert load_config(LLADA).model_type == "Dream"


@pytest.mark.parametrize(
    "name,command",
    [("GSAI-ML/LLaDA-8B-Base", "hf download GSAI-ML/LLaDA-8B-Base"),
     (f"{LLADA}@v2", f"hf download {LLADA} --revision v2")],
)  # fmt: skip
def test_uncached_id_offline_is_one_clear_error(name, command):
    with pytest.raises(HubResolutionError) as e:
        from_pretrained(name)
    msg = str(e.value)
    assert msg.startswith(f"{name} is not a checkpoint folder here") and repr(name.split("@")[0]) in msg
    assert f"`{command}`" in msg and "HF_HUB_OFFLINE=1" in msg


def test_not_an_id_nor_a_folder(tmp_path):
    with pytest.raises(HubResolutionError, match=r"nope is not a checkpoint folder \(no such folder\) nor a Hug"):
        load_config(tmp_path / "nope")


def _recipe(tmp_path, model: dict) -> str:
    recipe = {
        "model": model,
        "data": {"train": "builtin:sort", "gen_length": 8},
        "eval": {"sampling": {"algorithm": "llada", "steps": 8, "block_length": 8}},
        "stages": [{"kind": "sft", "algorithm": "sft", "steps": 1, "batch_size": 2, "lr": 1e-3}],
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_recipe_naming_released_llada_runs_dry_and_builds_offline(tmp_path, capsys, cache):
    path = _recipe(tmp_path, {"path": LLADA, "dtype": "bfloat16"})
    assert main(["run", path, "--dry-run"]) == 0
    assert "valid (1 stage(s))" in capsys.readouterr().out
    spec = load_recipe(path).to_dict()["model"]
    tokenizer = load_tokenizer(spec)
    policy = build_policy(spec, tokenizer, seed=0)
    assert type(policy).__name__ == "LLaDAModelLM" and policy.dtype == torch.bfloat16
    assert tokenizer.convert_ids_to_tokens(policy.config.mask_token_id) == "<|mdm_mask|>"
    assert next(policy.parameters()).device.type == "cpu"  # materialised, not left on meta


def test_recipe_naming_an_uncached_id_is_refused_offline(tmp_path):
    with pytest.raises(RecipeError, match=r"model.path: GSAI-ML/LLaDA-8B-Base .*`hf download GSAI-ML/LLaDA-8B-Base`"):
        load_recipe(_recipe(tmp_path, {"path": "GSAI-ML/LLaDA-8B-Base"}))
    with pytest.raises(RecipeError, match=r"model.tokenizer: Dream-org/none .*`hf download Dream-org/none`"):
        load_recipe(_recipe(tmp_path, {"path": LLADA, "tokenizer": "Dream-org/none"}))


def test_dare_generate_and_export_take_hub_ids(tmp_path, capsys):
    sdar = RELEASES["sdar-1.7b"].repo_id
    argv = ["generate", "--model", sdar, "--prompt", "hello", "--algorithm", "sdar", "--gen-length", "4",
            "--block-length", "4", "--device", "cpu", "--dtype", "float16"]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.count("\n") >= 1
    out = export_checkpoint(RELEASES["dream"].repo_id, tmp_path / "exported")
    saved = json.loads((out / "tokenizer_config.json").read_text())
    assert "auto_map" not in saved  # the export does not point at remote code it does not carry
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).mask_token == "<|mask|>"  # plain transformers, no prompt
    assert from_pretrained(out).config.mask_token_id == from_pretrained(RELEASES["dream"].repo_id).config.mask_token_id


def test_eval_loader_takes_hub_ids():
    from dare.evals.runner import check_checkpoint

    check_checkpoint(LLADA, None, {"algorithm": "llada", "steps": 4, "gen_length": 4, "block_length": 4})
    model, tokenizer = load_model_and_tokenizer(RELEASES["dream"].repo_id, dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and tokenizer.mask_token_id == model.config.mask_token_id


def test_revision_refs_select_snapshots(tmp_path, cache):
    other = make_replica("llada", tmp_path, seed=7)
    snap = place_in_hub_cache(other, cache[0], LLADA, revision="v2")
    assert resolve_checkpoint(f"{LLADA}@v2") == snap != resolve_checkpoint(LLADA)


def test_online_validation_fetches_configs_only_and_loading_fetches_weights(tmp_path, monkeypatch, cache):
    from dare.models import hub

    calls = []

    def fake_snapshot(repo_id, revision, local_only, files):
        calls.append((repo_id, local_only, tuple(files)))
        return cache[1]["llada"]

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub, "_snapshot", fake_snapshot)
    load_recipe(_recipe(tmp_path, {"path": LLADA}))
    assert calls and all(c == (LLADA, False, tuple(hub.CONFIG_FILES)) for c in calls)
    assert not any("*.safetensors" in c[2] for c in calls)  # a dry run downloads no weights
    calls.clear()
    from_pretrained(LLADA)
    assert (LLADA, False, tuple(hub.HUB_FILES)) in calls and "*.safetensors" in hub.HUB_FILES
    assert not any("*.py" in f or "*.bin" in f for c in calls for f in c[2])  # never remote code or pickles


def test_lora_adapter_on_a_hub_base_points_at_its_snapshot(tmp_path, cache):
    from dare.models.checkpoint import load_policy, save_policy
    from dare.workers.builder import wrap_lora

    lora = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    model = wrap_lora(from_pretrained(LLADA), lora, seed=0)
    save_policy(model, tmp_path / "adapter", base_dir=LLADA)
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(cache[1]["llada"].resolve())
    merged = load_policy(tmp_path / "adapter")
    x = torch.randint(0, 250, (1, 5))
    torch.testing.assert_close(merged(x).logits, model.eval()(x).logits, rtol=1e-5, atol=1e-5)
