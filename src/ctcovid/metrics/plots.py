"""Plots of evaluation results, as PNG files (matplotlib, imported lazily).

Figures are built with ``matplotlib.figure.Figure`` and saved through the Agg canvas directly:
no ``pyplot``, so nothing here changes the process-wide backend or leaks open figures.
Every function takes plain data (arrays, lists, dicts from :mod:`ctcovid.metrics.metrics`) and a
path, and returns the path written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure  # a core dependency, imported late: `import ctcovid` stays light

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig, fig.subplots(1, ncols)


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def plot_confusion(
    cm: Sequence[Sequence[int]] | np.ndarray, labels: Sequence[str], path: str | Path, *, title: str = ""
) -> Path:
    """Row-normalized confusion matrix (colour and percent) with the counts; rows = truth."""
    counts = np.asarray(cm, dtype=np.float64)
    rows = counts.sum(1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = len(labels)
    fig, ax = _figure(1.4 + 1.1 * k, 1.0 + 1.0 * k)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            text = f"{norm[i, j]:.0%}\n({int(counts[i, j])})" if rows[i, 0] > 0 else "-"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
                fontsize=9,
            )
    ax.set_xticks(range(k), labels)
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (row-normalized)")
    fig.colorbar(im, ax=ax, shrink=0.85)
    return _save(fig, path)


def plot_roc(
    probs: np.ndarray, targets: np.ndarray, labels: Sequence[str], path: str | Path, *, title: str = ""
) -> Path:
    """One-vs-rest ROC curve of every class present with positives and negatives."""
    from sklearn.metrics import roc_auc_score, roc_curve

    probs, targets = np.asarray(probs), np.asarray(targets)
    fig, ax = _figure(5.0, 4.4)
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
    for c, name in enumerate(labels):
        y = targets == c
        if y.all() or not y.any():
            continue  # AUROC undefined for this class
        fpr, tpr, _ = roc_curve(y, probs[:, c])
        # Thinner lines for later classes, so identical curves (often at AUC 1) stay visible.
        ax.plot(
            fpr,
            tpr,
            lw=max(1.0, 3.5 - 0.8 * c),
            alpha=0.85,
            ls=("-", "--", "-.", ":")[c % 4],
            label=f"{name} vs rest (AUC {roc_auc_score(y, probs[:, c]):.3f})",
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title or "ROC, one vs rest")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Loss and accuracy / AUROC per epoch from ``metrics.jsonl`` records."""
    epochs = [int(h["epoch"]) + 1 for h in history]
    fig, (ax_loss, ax_acc) = _figure(9.0, 3.6, ncols=2)

    def series(ax: Any, key: str, label: str, style: str = "-") -> None:
        pts = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, style, marker="o", ms=3, label=label)

    series(ax_loss, "train_loss", "train")
    series(ax_loss, "val_loss", "validation")
    ax_loss.set_title("loss")
    series(ax_acc, "train_accuracy", "train accuracy")
    series(ax_acc, "val_accuracy", "validation accuracy")
    series(ax_acc, "val_auroc", "validation AUROC", "--")
    series(ax_acc, "val_f1_macro", "validation macro F1", ":")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.set_title("accuracy / AUROC")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_reliability(
    bins: Sequence[Mapping[str, Any]], ece: float | None, path: str | Path, *, title: str = ""
) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, bin counts below."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, 5.2), dpi=DPI, layout="constrained")
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    full = [b for b in bins if b["count"]]
    if full:
        lows = [b["low"] for b in full]
        widths = [b["high"] - b["low"] for b in full]
        ax.bar(lows, [b["accuracy"] for b in full], widths, align="edge", alpha=0.7, ec="k", label="accuracy")
        ax.plot(
            [b["confidence"] for b in full],
            [b["accuracy"] for b in full],
            "o",
            color="C3",
            ms=3,
            label="bin (mean confidence, accuracy)",
        )
        ax_n.bar(lows, [b["count"] for b in full], widths, align="edge", color="0.6", ec="k")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, 1)
    ax.set_ylabel("accuracy")
    fig.suptitle(title or ("reliability" + (f" (ECE {ece:.3f})" if ece is not None else "")))
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=7, frameon=False)
    ax_n.set_xlabel("confidence (top-class probability)")
    ax_n.set_ylabel("count")
    return _save(fig, path)


def plot_risk_coverage(
    coverage: Sequence[float],
    risk: Sequence[float],
    path: str | Path,
    *,
    referral: tuple[float, float] | None = None,
    title: str = "",
) -> Path:
    """Error rate of the most certain fraction of scans against that fraction (selective prediction).

    ``referral``: ``(coverage, risk)`` of the scans the refer rule keeps, marked on the plot.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, 3.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.plot(coverage, risk, color="C0", lw=1.5, label="most certain first")
    if len(risk):
        ax.axhline(risk[-1], ls="--", color="0.5", lw=1, label=f"all scans ({risk[-1]:.1%} errors)")
    if referral is not None:
        ax.plot([referral[0]], [referral[1]], "o", color="C3", ms=6, label="scans not referred")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max([*risk, 0.05]) * 1.1)
    ax.set_xlabel("coverage (fraction of scans answered)")
    ax.set_ylabel("risk (error rate)")
    ax.legend(fontsize=7, frameon=False)
    fig.suptitle(title or "risk-coverage")
    return _save(fig, path)


def plot_metric_lines(
    rows: Sequence[Mapping[str, Any]],
    *,
    x: str,
    series: str,
    metrics: Sequence[str],
    path: str | Path,
    xlabel: str = "",
    series_label: str = "",
    metric_labels: Mapping[str, str] | None = None,
    log2_x: bool = False,
    title: str = "",
) -> Path:
    """Metric against ``x``, one line per value of ``series``, one panel per metric.

    The diagnosis paper's Figure 4 is ``x="depth", series="batch_size"`` and Figure 5 is
    ``x="batch_size", series="depth"``, with ``metrics=["accuracy", "recall"]``.
    """
    labels = metric_labels or {}
    fig, axes = _figure(4.2 * len(metrics), 3.6, ncols=len(metrics))
    axes = np.atleast_1d(axes)
    groups = sorted({r[series] for r in rows}, key=_sort_key)
    for ax, metric in zip(axes, metrics):
        values: list[float] = []
        for i, g in enumerate(groups):
            pts = sorted(
                ((r[x], r[metric]) for r in rows if r[series] == g and r.get(metric) is not None),
                key=lambda p: _sort_key(p[0]),
            )
            if pts:
                xs, ys = zip(*pts)
                values += ys
                # Distinct markers, dashes and shrinking widths keep coinciding lines visible.
                ax.plot(
                    xs,
                    ys,
                    marker="osD^v"[i % 5],
                    ms=7 - i % 4,
                    lw=max(1.0, 3.0 - 0.6 * i),
                    ls=("-", "--", "-.", ":")[i % 4],
                    label=f"{series_label or series} {g}",
                )
        if values:
            lo, hi = min(values), max(values)
            pad = max(0.02, (hi - lo) * 0.1)
            ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) + 0.01)
        if log2_x:
            ax.set_xscale("log", base=2)
            ticks = sorted({r[x] for r in rows}, key=_sort_key)
            ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(labels.get(metric, metric))
        ax.set_title(labels.get(metric, metric))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_metric_bars(
    rows: Sequence[Mapping[str, Any]],
    *,
    name: str,
    metrics: Sequence[str],
    path: str | Path,
    metric_labels: Mapping[str, str] | None = None,
    title: str = "",
) -> Path:
    """Grouped bars of ``metrics`` per row (a model), with ``<metric>_low/_high`` as error bars."""
    labels = metric_labels or {}
    names = [str(r[name]) for r in rows]
    fig, ax = _figure(max(5.0, 0.4 * len(names) * len(metrics) + 2.5), 3.8)
    width = 0.8 / max(1, len(metrics))
    xs = np.arange(len(names))
    for i, metric in enumerate(metrics):
        vals = np.array([np.nan if r.get(metric) is None else r[metric] for r in rows], dtype=float)
        lo = np.array([r.get(f"{metric}_low") for r in rows], dtype=float)
        hi = np.array([r.get(f"{metric}_high") for r in rows], dtype=float)
        err = np.vstack([vals - lo, hi - vals])  # NaN (no CI, or no value): no error bar drawn
        pos = xs + (i - (len(metrics) - 1) / 2) * width
        ax.bar(pos, np.nan_to_num(vals), width, yerr=err, capsize=3, label=labels.get(metric, metric))
        for px, v in zip(pos, vals):
            if not np.isnan(v):
                ax.text(px, 0.02, f"{v:.3f}", ha="center", va="bottom", rotation=90, fontsize=7, color="w")
    ax.set_xticks(xs, names, rotation=15)
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title)
    return _save(fig, path)


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, int | float) else (1, str(v))
