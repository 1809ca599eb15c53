"""Compare evaluated runs on the same test scans: side-by-side metrics and paired tests.

Paired, because the runs saw the very same scans: the accuracy difference gets a patient
bootstrap (:func:`~ctcovid.metrics.stats.paired_bootstrap`: CI and p-value) and each one-vs-rest
AUROC difference a DeLong test (:func:`~ctcovid.metrics.stats.delong_test`). Every pair of runs
is tested; with several runs, mind multiple comparisons when reading the p-values.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from ctcovid.errors import ConfigError
from ctcovid.evaluate.render import Doc, fmt, with_ci
from ctcovid.metrics.metrics import aggregate_by, decide
from ctcovid.metrics.stats import N_RESAMPLES, delong_test, paired_bootstrap


def load_evaluation(
    run: str | Path, *, split: str = "test", manifest: str | Path | None = None, **evaluate_kw: Any
) -> dict[str, Any]:
    """The evaluation of a run: ``metrics.json`` itself, an eval folder, or ``<run>/eval_<split>/``.

    A run folder without an evaluation is evaluated now (into ``<run>/eval_<split>/``) on
    ``manifest`` (default: the one it was trained on).
    """
    p = Path(run)
    for candidate in (p, p / "metrics.json", p / f"eval_{split}" / "metrics.json"):
        if candidate.is_file() and candidate.suffix == ".json":
            data = json.loads(candidate.read_text())
            if "scans" not in data:
                raise ConfigError(
                    f"'{candidate}' is not an evaluation (no per-scan results); run ctcovid evaluate"
                )
            return data
    if not (p / "checkpoint_best.pt").is_file() and not (p / "checkpoint_last.pt").is_file():
        raise ConfigError(
            f"'{run}' has no eval_{split}/metrics.json and no checkpoint; pass a run folder, an eval folder "
            "or a metrics.json written by 'ctcovid evaluate'"
        )
    from ctcovid.evaluate.report import evaluate_checkpoint, write_report

    result = evaluate_checkpoint(p, manifest, split=split, **evaluate_kw)
    write_report(result, p / f"eval_{split}", run_dir=p)
    return result


def _scan_table(ev: dict[str, Any], level: str) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """ids, probs, targets, patient per id; at patient level scans are averaged per patient."""
    labels = ev["labels"]
    scans = sorted(ev["scans"], key=lambda s: s["scan_id"])
    probs = np.array([s["probs"] for s in scans], dtype=np.float64).reshape(-1, len(labels))
    targets = np.array([labels.index(s["label"]) for s in scans], dtype=np.int64)
    ids = [s["scan_id"] for s in scans]
    patients = [s["patient_id"] for s in scans]
    if level == "patient":
        probs, targets, ids = aggregate_by(probs, targets, patients)
        order = np.argsort(ids)
        probs, targets, ids = probs[order], targets[order], [ids[i] for i in order]
        patients = list(ids)
    return ids, probs, targets, patients


def compare_evaluations(
    evaluations: list[dict[str, Any]],
    names: list[str],
    *,
    level: str = "scan",
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Side-by-side metrics and paired tests of every pair of evaluations (same scans required)."""
    if level not in ("scan", "patient"):
        raise ConfigError(f"compare level {level!r} is not one of scan, patient")
    if len(evaluations) < 2:
        raise ConfigError(f"compare needs at least two runs, got {len(evaluations)}")
    labels = evaluations[0]["labels"]
    tables = []
    for name, ev in zip(names, evaluations):
        if ev["labels"] != labels:
            raise ConfigError(
                f"run {name!r} has labels {ev['labels']}, the first run {labels}: not comparable"
            )
        tables.append(_scan_table(ev, level))
    ids0 = tables[0][0]
    for name, t in zip(names[1:], tables[1:]):
        if t[0] != ids0:
            only_a, only_b = len(set(ids0) - set(t[0])), len(set(t[0]) - set(ids0))
            raise ConfigError(
                f"runs {names[0]!r} and {name!r} were evaluated on different {level}s ({only_a} only in the "
                f"first, {only_b} only in {name!r}); evaluate them on the same manifest and split"
            )
    targets, patients = tables[0][2], tables[0][3]
    # Each run's predictions by its own decision rule (the median for an ordinal head), as recorded
    # in its metrics; older evaluations have none recorded and decided by argmax.
    correct = [
        decide(t[1], ev[level].get("decision", "argmax")) == targets for t, ev in zip(tables, evaluations)
    ]
    pairs = []
    for (i, a), (j, b) in itertools.combinations(enumerate(tables), 2):
        correct_a, correct_b = correct[i], correct[j]
        pair: dict[str, Any] = {
            "a": names[i],
            "b": names[j],
            "accuracy": paired_bootstrap(correct_a, correct_b, patients, n_resamples=n_resamples, seed=seed),
            "auroc": {lab: delong_test(a[1][:, c], b[1][:, c], targets == c) for c, lab in enumerate(labels)},
        }
        pairs.append(pair)
    runs = []
    for name, ev in zip(names, evaluations):
        m, ci = ev[level], ev.get("ci", {}).get(level, {})
        runs.append(
            {
                "name": name,
                "model": ev.get("model"),
                "checkpoint": ev.get("checkpoint"),
                "metrics": m,
                "ci": ci,
            }
        )
    return {
        "level": level,
        "labels": labels,
        "n": len(ids0),
        "positive": evaluations[0].get("positive"),
        "runs": runs,
        "pairs": pairs,
    }


def comparison_document(comparison: dict[str, Any]) -> Doc:
    """The comparison as Markdown/HTML: one row per run, then one row per pair and test."""
    level, pos = comparison["level"], comparison.get("positive")
    doc = Doc(f"Comparison of {len(comparison['runs'])} runs on {comparison['n']} {level}s")
    header = ["run", "model", "accuracy", "macro F1", "AUROC (macro)"]
    if pos:
        header += [f"{pos} recall", f"{pos} precision"]
    rows = []
    for r in comparison["runs"]:
        m, ci = r["metrics"], r["ci"]
        row = [
            r["name"],
            r["model"],
            with_ci(m["accuracy"], ci.get("accuracy")),
            with_ci(m["f1_macro"], ci.get("f1_macro")),
            with_ci(m["auroc"], ci.get("auroc")),
        ]
        if pos and m.get("binary"):
            row += [
                with_ci(m["binary"]["recall"], ci.get("binary_recall")),
                with_ci(m["binary"]["precision"], ci.get("binary_precision")),
            ]
        rows.append(row)
    doc.table(header, rows)
    doc.heading("Paired tests (a - b)")
    doc.text(
        "Accuracy: patient bootstrap of the paired difference [95% CI], two-sided p. AUROC: DeLong "
        "test of the one-vs-rest AUROC difference per class."
    )
    test_rows = []
    for p in comparison["pairs"]:
        acc = p["accuracy"]
        test_rows.append([f"{p['a']} - {p['b']}", "accuracy", with_ci(acc["diff"], acc), fmt(acc["p_value"])])
        for lab, d in p["auroc"].items():
            cell = d.get("reason") or f"{d['diff']:+.4f} (SE {d['se']:.4f})"
            test_rows.append([f"{p['a']} - {p['b']}", f"AUROC {lab} vs rest", cell, fmt(d["p_value"])])
    doc.table(["pair", "metric", "difference", "p-value"], test_rows)
    return doc
