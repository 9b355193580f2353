"""Per-step metrics: console progress line, `metrics.jsonl`, optional TensorBoard / W&B."""

from __future__ import annotations

import json
import sys
import time
import warnings
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
        """Keep the rows of steps <= `step` (a torn last line, from a kill mid-write, is dropped
        with a warning naming the file)."""
        if not self.path.is_file():
            return
        keep = [row for row in read_metrics(self.path) if row["step"] <= step]
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in keep))
        tmp.replace(self.path)  # atomic: a kill here leaves the old file or the new one

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
            f"{_SHOWN[k]}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and k in _SHOWN
        )
        print(f"[{self.stage_name}] [{bar}] {step}/{self.total} {shown} ({elapsed:.0f}s)", file=sys.stdout, flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


# the metrics of the progress line and the names it prints them under (`reward=`, not `mean=`)
_SHOWN = {
    "actor/sft_loss": "sft_loss",
    "actor/loss": "loss",
    "actor/pg_loss": "pg_loss",
    "reward/mean": "reward",
    "actor/kl": "kl",
    "actor/grad_norm": "grad_norm",
    "actor/lr": "lr",
}


def rank_zero_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """verl's collect step lists each rank's meta_info values; workers all-reduce their metrics,
    so rank 0's value is the global one."""
    return {k: (v[0] if isinstance(v, list) else v) for k, v in metrics.items()}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a `metrics.jsonl`. A torn last line (the run was killed while appending it) is
    skipped with a warning naming the file; a damaged line before it raises a ValueError naming
    the file and line (that is not what a kill leaves)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not an object with an integer 'step'")
        except ValueError as e:
            if n == len(lines):
                warnings.warn(f"{path}: line {n} is torn (an interrupted write: {e}); dropped", stacklevel=2)
                break
            raise ValueError(f"{path}: line {n} is not a metrics row ({e}); fix or remove the line") from None
        rows.append(row)
    return rows


__all__ = ["MetricsLogger", "rank_zero_metrics", "read_metrics"]
