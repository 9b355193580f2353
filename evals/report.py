"""The benchmark part of a run's report: a table of every benchmark across stages and a PNG chart.

`stages` is an ordered list of (stage label, {benchmark: result}) where a result holds at least
`score` (0-100) and `metric` (what `dare.evals.runner.run_benchmarks` returns per benchmark).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

Stages = list[tuple[str, dict[str, dict[str, Any]]]]


def benchmark_names(stages: Stages) -> list[str]:
    names: list[str] = []
    for _, results in stages:
        names += [n for n in results if n not in names]
    return names


def benchmark_table(stages: Stages) -> list[str]:
    """Markdown rows: one per benchmark, one column per stage (score, 0-100; '-' = not run)."""
    names = benchmark_names(stages)
    if not names:
        return []
    lines = [
        "| benchmark | metric | " + " | ".join(label for label, _ in stages) + " |",
        "|---|---|" + "---|" * len(stages),
    ]
    for name in names:
        metric = next(r[name]["metric"] for _, r in stages if name in r)
        cells = [f"{r[name]['score']:.1f}" if name in r else "-" for _, r in stages]
        lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
    return lines


def write_chart(stages: Stages, path: str | Path) -> Path | None:
    """A grouped bar chart (benchmarks x stages) as PNG; None when matplotlib is not installed
    (it comes with OpenCompass's dependencies) or there is nothing to plot."""
    names = benchmark_names(stages)
    if not names:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    width = 0.8 / len(stages)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) * len(stages) / 2 + 2), 3.2))
    for k, (label, results) in enumerate(stages):
        xs = [i + (k - (len(stages) - 1) / 2) * width for i in range(len(names))]
        ys = [results[n]["score"] if n in results else 0.0 for n in names]
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, labels=[f"{y:.0f}" if n in results else "" for n, y in zip(names, ys)], fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 105)
    ax.set_ylabel("score (%)")
    ax.set_title("OpenCompass benchmarks per stage")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["benchmark_names", "benchmark_table", "write_chart"]
