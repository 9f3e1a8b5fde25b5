"""Matplotlib figures logged with each run: learning curves and model-vs-baseline bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless workers (Airflow, CI) have no display

import matplotlib.pyplot as plt  # noqa: E402


def _numeric_series(history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for i, row in enumerate(history):
        step = int(row.get("epoch", i))
        for key, value in row.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            series.setdefault(key, []).append((step, float(value)))
    return series


def learning_curves(history: list[dict], path: Path) -> Path | None:
    """One panel per metric in the per-epoch history; None when the history is empty."""
    series = _numeric_series(history)
    if not series:
        return None
    fig, axes = plt.subplots(len(series), 1, figsize=(6, 2.4 * len(series)), squeeze=False)
    for ax, (name, points) in zip(axes[:, 0], sorted(series.items())):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def baseline_pairs(eval_metrics: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Metrics that have a `baseline_<name>` counterpart: name -> (model, baseline)."""
    return {
        name: (float(value), float(eval_metrics[f"baseline_{name}"]))
        for name, value in sorted(eval_metrics.items())
        if not name.startswith("baseline_") and f"baseline_{name}" in eval_metrics
    }


def model_vs_baseline(eval_metrics: dict[str, float], path: Path) -> Path | None:
    """Grouped bars of each metric for the model and the popularity baseline."""
    pairs = baseline_pairs(eval_metrics)
    if not pairs:
        return None
    names = list(pairs)
    xs = range(len(names))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(names)), 3.2))
    ax.bar([x - width / 2 for x in xs], [pairs[n][0] for n in names], width, label="model")
    ax.bar([x + width / 2 for x in xs], [pairs[n][1] for n in names], width, label="baseline")
    ax.set_xticks(list(xs), names, rotation=20)
    ax.legend()
    ax.set_title("model vs popularity baseline")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def comparison_plots(comparison: Any, folder: Path) -> list[Path]:
    """One bar chart per metric (NDCG, Recall, MRR, HitRate @k): every method with its 95% bootstrap
    interval over users, the served path first (a `training.compare.Comparison`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    k = comparison.k
    names = list(comparison.results)
    paths = []
    for metric in (f"ndcg_at_{k}", f"recall_at_{k}", f"mrr_at_{k}", f"hitrate_at_{k}"):
        means, lows, highs = [], [], []
        for name in names:
            ci = comparison.results[name].intervals[metric]
            means.append(ci.mean)
            lows.append(ci.mean - ci.low)
            highs.append(ci.high - ci.mean)
        fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(names)), 3.2))
        colors = ["tab:green" if n == "served" else "tab:gray" for n in names]
        ax.bar(range(len(names)), means, yerr=[lows, highs], capsize=4, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_title(f"{metric}, full catalogue, {comparison.n_users} users (95% interval)")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = folder / f"{metric}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def drift_plots(report: Any, reference: dict, current: dict, folder: Path, n_histograms: int = 4) -> list[Path]:
    """PSI per figure against the warn and block lines (a `registry.drift.DriftReport`; reported-only
    figures hatched), and reference-vs-tonight histograms of the score and the most drifted figures."""
    import numpy as np

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if not report.psi:
        return paths
    names = sorted(report.psi, key=lambda n: -report.psi[n])
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.6))
    values = [report.psi[n] for n in names]
    colors = ["tab:red" if v >= report.block else "tab:orange" if v >= report.warn else "tab:green" for v in values]
    bars = ax.barh(range(len(names)), values, color=colors)
    for bar, name in zip(bars, names):
        if name in report.reported_only:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
    ax.axvline(report.warn, color="tab:orange", ls="--", label=f"warn {report.warn}")
    ax.axvline(report.block, color="tab:red", ls="--", label=f"block {report.block}")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("PSI vs " + (report.reference or "reference"))
    ax.set_title(f"drift: {report.level} (hatched: reported only)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(folder / "drift_psi.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    shown = [n for n in ("score",) if n in report.psi] + [n for n in names if n != "score"][:n_histograms - 1]
    fig, axes = plt.subplots(len(shown), 1, figsize=(6, 2.2 * len(shown)), squeeze=False)
    for ax, name in zip(axes[:, 0], shown):
        a, b = np.asarray(reference[name], float), np.asarray(current[name], float)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        edges = np.histogram_bin_edges(np.concatenate([a, b]), bins=40)
        ax.hist(a, edges, density=True, alpha=0.5, label="reference")
        ax.hist(b, edges, density=True, alpha=0.5, label="tonight")
        ax.set_title(f"{name}: PSI {report.psi[name]:.3f}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(folder / "drift_histograms.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return paths
