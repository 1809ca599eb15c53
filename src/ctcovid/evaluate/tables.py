"""Sweep results in the papers' layouts: Markdown + HTML + CSV tables and their plots.

* ``depth_batch``: the diagnosis paper's Tables 5 and 6 (accuracy and recall per depth x batch
  size) and Figures 4 and 5 (accuracy and recall against depth, one line per batch size, and
  against batch size, one line per depth);
* ``models``: its Table 7 (per model: accuracy, precision, recall, F1, AUROC);
* ``severity``: the severity paper's Table 1 (accuracy per model) with macro F1 and the ordinal
  scores (quadratic weighted kappa, mean absolute error in grades), and Table 2 (the
  row-normalized confusion matrix of the best model).

"Accuracy" is the K-way accuracy. "Recall", "precision" and "F1" are the binary "positive vs
rest" values when the evaluation has a positive class (COVID-19 = ``NCP`` vs CP and normal: the
diagnosis paper's 99.96 % recall next to its 99.24 % three-way accuracy), else macro averages.

The module takes plain rows and names (it does not know the sweep objects): :mod:`.sweep` builds
each run's settings and calls :func:`run_row` and :func:`write_tables`; the import runs one way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ctcovid.evaluate.render import Doc, with_ci, write_csv

METRICS = ("accuracy", "precision", "recall", "f1", "auroc", "kappa_quadratic", "mae")


def run_row(settings: Mapping[str, Any], metrics: dict[str, Any], level: str) -> dict[str, Any]:
    """One flat table row of a run: its ``settings`` (``run``, ``model``, ``depth``, ``batch_size``,
    ``aggregate`` and the swept values) and its metrics (with CI bounds) at ``level``."""
    m = metrics[level]
    ci = metrics.get("ci", {}).get(level, {})
    binary = m.get("binary")
    source = {
        "accuracy": (m["accuracy"], "accuracy"),
        "auroc": (m["auroc"], "auroc"),
        "kappa_quadratic": (m.get("kappa_quadratic"), "kappa_quadratic"),
        "mae": (m.get("mae"), "mae"),
    }
    for name in ("precision", "recall", "f1"):
        source[name] = (binary[name], f"binary_{name}") if binary else (m[f"{name}_macro"], f"{name}_macro")
    row: dict[str, Any] = {
        "run": settings["run"],
        "model": settings["model"],
        "depth": settings["depth"],
        "batch_size": settings["batch_size"],
        "aggregate": settings["aggregate"],
        "level": level,
        "n": m["n"],
        "binary_of": binary["positive"] if binary else "macro",
        **{k: v for k, v in settings.items() if not isinstance(v, dict | list)},
    }
    for name, (value, ci_key) in source.items():
        row[name] = value
        row[f"{name}_low"] = ci.get(ci_key, {}).get("low")
        row[f"{name}_high"] = ci.get(ci_key, {}).get("high")
    row["confusion"] = m["confusion"]
    row["labels"] = metrics["labels"]
    return row


def _cell(row: dict[str, Any], metric: str) -> str:
    return with_ci(row.get(metric), {"low": row.get(f"{metric}_low"), "high": row.get(f"{metric}_high")}, 4)


def write_tables(
    rows: list[dict[str, Any]],
    out: Path,
    *,
    table: str,
    name: str,
    base: str = "",
    grid: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``table.md``, ``table.html``, ``table.csv`` and the plots of layout ``table``
    (``depth_batch``, ``models`` or ``severity``) for the sweep called ``name`` (``base``: its
    base config; ``grid``: the swept keys, CSV columns)."""
    from ctcovid.metrics import plots

    written: dict[str, Path] = {}
    doc = Doc(f"Sweep {name}: {table.replace('_', ' x ')}")
    level = rows[0]["level"] if rows else "scan"
    of = rows[0]["binary_of"] if rows else "macro"
    scores = f"recall/precision/F1 of {of} vs rest" if of != "macro" else "macro recall/precision/F1"
    doc.text(
        f"Base config `{base}`; {len(rows)} evaluated runs; metrics at {level} level; {scores}; "
        "[95% patient-bootstrap CI] where the level allows it; — = undefined."
    )
    labels = {m: m.replace("_", " ").capitalize() for m in METRICS}
    labels.update({"auroc": "AUROC", "f1": "F1", "kappa_quadratic": "Quadratic kappa", "mae": "MAE (grades)"})
    for m in ("precision", "recall", "f1"):
        labels[m] = (
            f"{of} {labels[m].lower() if m != 'f1' else 'F1'}" if of != "macro" else f"Macro {labels[m]}"
        )
    if table == "depth_batch":
        rows = sorted(rows, key=lambda r: (r["batch_size"], r["depth"]))
        shown = ["accuracy", "recall"]
        doc.table(
            ["Depth", "Batch size", *(labels[m] for m in shown)],
            [[r["depth"], r["batch_size"], *(_cell(r, m) for m in shown)] for r in rows],
        )
        depths = sorted({r["depth"] for r in rows})
        batches = sorted({r["batch_size"] for r in rows})
        for metric in shown:
            doc.heading(f"{labels[metric]}: depth x batch size")
            cells = {(r["depth"], r["batch_size"]): r.get(metric) for r in rows}
            doc.table(
                ["depth \\ batch", *map(str, batches)],
                [[d, *(cells.get((d, b)) for b in batches)] for d in depths],
            )
        common: dict[str, Any] = {"metrics": shown, "metric_labels": labels, "log2_x": True}
        written["vs_depth"] = plots.plot_metric_lines(
            rows,
            x="depth",
            series="batch_size",
            series_label="batch",
            xlabel="depth (slices per chunk)",
            path=out / "metrics_vs_depth.png",
            title="accuracy and recall vs depth (Figure 4)",
            **common,
        )
        written["vs_batch"] = plots.plot_metric_lines(
            rows,
            x="batch_size",
            series="depth",
            series_label="depth",
            xlabel="batch size",
            path=out / "metrics_vs_batch.png",
            title="accuracy and recall vs batch size (Figure 5)",
            **common,
        )
    else:
        shown = (
            ["accuracy", "precision", "recall", "f1", "auroc"]
            if table == "models"
            else ["accuracy", "f1", "kappa_quadratic", "mae"]
        )
        doc.table(
            ["Model", *(labels[m] for m in shown)], [[r["run"], *(_cell(r, m) for m in shown)] for r in rows]
        )
        written["bars"] = plots.plot_metric_bars(
            rows,
            name="run",
            metrics=shown if table == "models" else ["accuracy"],
            path=out / "metrics_by_model.png",
            metric_labels=labels,
            title=name,
        )
        if table == "severity" and any(r["accuracy"] is not None for r in rows):
            best = max(rows, key=lambda r: r["accuracy"] or -1.0)
            doc.heading(f"Confusion matrix of the best run, {best['run']} (row-normalized; rows = truth)")
            doc.table(
                ["true \\ predicted", *best["labels"]],
                [[lab, *_percent_row(row)] for lab, row in zip(best["labels"], best["confusion"])],
            )
            written["best_confusion"] = plots.plot_confusion(
                best["confusion"], best["labels"], out / "best_confusion.png", title=f"{best['run']}"
            )
    for key, path in written.items():
        doc.image(path, key.replace("_", " "))
    written["md"], written["html"] = out / "table.md", out / "table.html"
    doc.write(written["md"], written["html"])
    columns = ["run", *grid, "model", "depth", "batch_size", "aggregate", "level", "n", "binary_of"]
    columns += [f"{m}{s}" for m in METRICS for s in ("", "_low", "_high")]
    written["csv"] = write_csv(out / "table.csv", columns, [[r.get(c) for c in columns] for r in rows])
    return written


def _percent_row(counts: list[int]) -> list[str]:
    total = sum(counts)
    return [f"{c / total:.0%}" if total else "—" for c in counts]
