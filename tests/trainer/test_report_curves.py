"""The run report's training curves (loss / reward / KL per step per stage) and the progress
line's metric names."""

import json

import pytest

from dare.config import build_recipe
from dare.trainer.curves import curve_panels, write_training_curves
from dare.trainer.metrics import MetricsLogger
from dare.trainer.pipeline import write_report

SFT = [{"step": s, "actor/loss": 2.0 / s, "actor/sft_loss": 2.0 / s, "actor/lr": 1e-3} for s in (1, 2, 3)]
RL = [{"step": s, "actor/loss": 0.1 * s, "reward/mean": 0.2 * s, "actor/kl": 0.01 * s} for s in (1, 2)]


def test_panels_hold_each_stages_series():
    panels = curve_panels([("stage-1-sft", SFT), ("stage-2-rl", RL)])
    assert list(panels) == ["loss", "reward (mean)", "KL to reference"]
    assert panels["loss"]["stage-1-sft"] == [(1, 2.0), (2, 1.0), (3, pytest.approx(2 / 3))]
    assert panels["loss"]["stage-2-rl"] == [(1, 0.1), (2, 0.2)]
    assert set(panels["reward (mean)"]) == {"stage-2-rl"} and panels["KL to reference"]["stage-2-rl"][-1] == (2, 0.02)
    assert curve_panels([("sft", [{"step": 1, "actor/sft_loss": 1.5}])]) == {"loss": {"sft": [(1, 1.5)]}}
    assert curve_panels([("x", [{"step": 1, "disc/loss": 1.0}])]) == {}


def test_report_links_the_curves_png(tmp_path):
    pytest.importorskip("matplotlib")
    recipe = build_recipe({
        "model": {"family": "llada", "preset": "tiny", "tokenizer": "builtin"},
        "data": {"train": "builtin:sort"},
        "stages": [{"name": "sft", "kind": "sft", "algorithm": "sft", "steps": 3},
                   {"name": "rl", "kind": "rl", "algorithm": "d1", "steps": 2}],
    })  # fmt: skip
    for name, rows in (("stage-1-sft", SFT), ("stage-2-rl", RL)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval").mkdir()
    state = {"eval": {"0": {"accuracy": 0.5, "stderr": 0.1, "num_prompts": 4, "sampling": {}}}}
    text = write_report(tmp_path, recipe, state).read_text()
    assert "![training curves](eval/training.png)" in text
    assert (tmp_path / "eval" / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_training_curves([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_progress_line_names_its_metrics(tmp_path, capsys):
    log = MetricsLogger(tmp_path / "m.jsonl", total_steps=2, log_every=1, stage_name="rl")
    log.log(1, {"reward/mean": 0.5, "reward/std": 0.1, "actor/kl": 0.02, "actor/grad_norm": 1.0})
    line = capsys.readouterr().out
    assert "reward=0.5 " in line and "kl=0.02" in line and "grad_norm=1" in line and "mean=" not in line
