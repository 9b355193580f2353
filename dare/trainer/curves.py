"""Training curves of a run for its report: loss, reward and KL to the reference per step, one
line per stage, read from each stage's `metrics.jsonl`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# panel title -> the metrics that fill it, first present wins (an SFT stage logs `actor/sft_loss`
# beside `actor/loss`; preference and RL stages log `actor/loss`)
PANELS: dict[str, tuple[str, ...]] = {
    "loss": ("actor/loss", "actor/sft_loss"),
    "reward (mean)": ("reward/mean",),
    "KL to reference": ("actor/kl",),
}

Series = list[tuple[int, float]]


def curve_panels(stages: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Series]]:
    """`{panel: {stage: [(step, value), ...]}}` of the panels some stage logged; a stage's series
    uses the first of the panel's metrics it logged. `stages`: (stage name, metrics rows)."""
    panels: dict[str, dict[str, Series]] = {}
    for title, keys in PANELS.items():
        for name, rows in stages:
            key = next((k for k in keys if any(isinstance(r.get(k), (int, float)) for r in rows)), None)
            if key is None:
                continue
            series = [(int(r["step"]), float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]
            panels.setdefault(title, {})[name] = series
    return panels


def write_training_curves(stages: list[tuple[str, list[dict[str, Any]]]], path: str | Path) -> Path | None:
    """A PNG of `curve_panels(stages)` side by side; None when there is nothing to plot or
    matplotlib (installed with OpenCompass's dependencies) is missing."""
    panels = curve_panels(stages)
    if not panels:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.0), squeeze=False)
    for ax, (title, by_stage) in zip(axes[0], panels.items()):
        for name, series in by_stage.items():
            ax.plot([s for s, _ in series], [v for _, v in series], label=name, linewidth=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["PANELS", "curve_panels", "write_training_curves"]
