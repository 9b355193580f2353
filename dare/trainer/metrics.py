"""Per-step metrics: console progress line, `metrics.jsonl`, optional TensorBoard / W&B."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends one JSON object per step to `path`; prints a compact progress line every
    `log_every` steps. `truncate_after(step)` drops lines past a resumed checkpoint, so a resumed
    run's metrics file reads like an uninterrupted one."""

    def __init__(self, path: str | Path, total_steps: int, log_every: int = 10, tensorboard: bool = False,
                 wandb_project: str | None = None, stage_name: str = "") -> None:  # fmt: skip
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.total, self.log_every, self.stage_name = total_steps, log_every, stage_name
        self.t0 = time.perf_counter()
        self._tb = None
        self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))
        if wandb_project:
            import wandb

            self._wandb = wandb.init(project=wandb_project, name=stage_name, reinit=True)

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)
        if step % self.log_every == 0 or step == self.total:
            self.print_progress(step, metrics)

    def print_progress(self, step: int, metrics: dict[str, Any]) -> None:
        width = 20
        done = int(width * step / max(1, self.total))
        bar = "#" * done + "." * (width - done)
        elapsed = time.perf_counter() - self.t0
        shown = " ".join(
            f"{k.split('/')[-1]}={v:.4g}" for k, v in metrics.items() if isinstance(v, float) and k in _SHOWN
        )
        print(f"[{self.stage_name}] [{bar}] {step}/{self.total} {shown} ({elapsed:.0f}s)", file=sys.stdout, flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


_SHOWN = {"actor/sft_loss", "actor/loss", "actor/grad_norm", "actor/lr", "reward/mean", "actor/pg_loss"}


def rank_zero_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """verl's collect step lists each rank's meta_info values; workers all-reduce their metrics,
    so rank 0's value is the global one."""
    return {k: (v[0] if isinstance(v, list) else v) for k, v in metrics.items()}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


__all__ = ["MetricsLogger", "rank_zero_metrics", "read_metrics"]
