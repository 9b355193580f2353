"""scripts/gpu_check.sh (the prepared one-GPU check): what can be checked without a GPU. The script
parses, refuses clearly without CUDA, and its Python part runs every check on a tiny replica on CPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the script would run the check")
def test_the_script_refuses_without_cuda(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})  # fmt: skip
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr and "--device cpu --tiny" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing ran


def test_the_python_part_runs_every_check_on_cpu(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclass looks its module up
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {
        line.split("|")[1].strip(): line.split("|")[2].strip() for line in out.splitlines() if line.startswith("| ")
    }
    assert rows == {"check": "status", "load replica": "ok", "sft": "ok", "coupled_grpo": "ok", "fsdp2": "ok"}
    assert "memory plan" in out and (tmp_path / "table.md").read_text().strip() == out.strip()
