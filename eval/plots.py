"""Plots for :mod:`eval.compare` (matplotlib, Agg backend: no display needed).

- :func:`accuracy_vs_budget`: for a critical-path budget ``b``, the share of samples
  that are correct *and* have ``critical_path <= b``; x = budget (sampled tokens on
  the longest causal chain), one step line per run.
- :func:`speedup_histogram`: the per-sample ``total_tokens / critical_path`` of each
  run as overlaid histograms on shared bins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def budget_curve(samples: Sequence[dict], budgets: Sequence[int]) -> list[float]:
    """Accuracy under each budget: mean over samples of ``correct and cp <= b``."""
    n = len(samples)
    if n == 0:
        return [0.0 for _ in budgets]
    solved = sorted(max(int(s["critical_path"]), 0) for s in samples if s.get("correct"))
    out, k = [], 0
    for b in budgets:
        while k < len(solved) and solved[k] <= b:
            k += 1
        out.append(k / n)
    return out


def budgets_for(runs: Mapping[str, Sequence[dict]], points: int = 200) -> list[int]:
    """Budgets from 0 to the largest critical path of any run (every distinct value
    when there are few, else ``points`` evenly spaced ones plus the distinct values)."""
    values = sorted({int(s["critical_path"]) for ss in runs.values() for s in ss})
    hi = values[-1] if values else 1
    if len(values) <= points:
        grid = set(values)
    else:
        step = max(hi / points, 1.0)
        grid = {int(round(i * step)) for i in range(points + 1)} | set(values)
    return sorted(grid | {0, hi})


def accuracy_vs_budget(runs: Mapping[str, Sequence[dict]], path: str | Path, title: str | None = None) -> Path:
    """Write the accuracy-vs-critical-path-budget plot; returns its path."""
    budgets = budgets_for(runs)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for name, samples in runs.items():
        ax.step(budgets, budget_curve(samples, budgets), where="post", label=name)
    ax.set_xlabel("critical-path budget (sampled tokens on the longest chain)")
    ax.set_ylabel("accuracy (correct and critical path <= budget)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title or "Accuracy vs critical-path budget")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def speedup_histogram(
    runs: Mapping[str, Sequence[dict]], path: str | Path, bins: int = 20, title: str | None = None
) -> Path:
    """Write the histogram of per-sample speedups (total / critical path); returns its path."""
    data = {name: [s["total_tokens"] / max(s["critical_path"], 1) for s in samples] for name, samples in runs.items()}
    flat = [v for vs in data.values() for v in vs]
    lo, hi = (min(flat), max(flat)) if flat else (1.0, 2.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for name, vs in data.items():
        ax.hist(vs, bins=edges, alpha=0.5, label=name)
    ax.set_xlabel("speedup per sample (total tokens / critical path)")
    ax.set_ylabel("samples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title or "Speedup per problem")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def curves(
    runs: Mapping[str, Sequence[dict]],
    keys: Sequence[str],
    path: str | Path,
    title: str | None = None,
    xkey: str = "step",
    logy: bool = False,
) -> Path:
    """One panel per metric in ``keys``: each run's value against ``xkey`` (entries
    lacking a metric are skipped), e.g. SFT losses or per-step GRPO rollout metrics."""
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.4), dpi=110, squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, entries in runs.items():
            pts = [
                (e[xkey], e[key])
                for e in entries
                if isinstance(e.get(key), (int, float)) and isinstance(e.get(xkey), (int, float))
            ]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="." if len(pts) < 60 else None, label=name)
        ax.set_xlabel(xkey)
        if logy:
            ax.set_yscale("log")
        ax.set_title(key, fontsize="medium")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


__all__ = ["accuracy_vs_budget", "budget_curve", "budgets_for", "curves", "speedup_histogram"]
