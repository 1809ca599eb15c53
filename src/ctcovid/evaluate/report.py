"""Evaluate a checkpoint on a manifest split, at chunk, scan and patient level, and write a report.

The checkpoint's own preprocessing config rebuilds the pipeline, so evaluation sees exactly what
training saw. Chunk probabilities are combined per scan (``aggregate="mean"`` probability, or
``"majority"`` vote of the chunk argmaxes with ties broken by mean probability: the severity
paper's 2D slice baseline), and scan probabilities are averaged per patient. Confidence
intervals resample patients (:mod:`ctcovid.metrics.stats`).

:func:`write_report` turns the result into ``metrics.json``, ``report.md``, ``report.html``
(plots embedded) and the PNG plots.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ctcovid.checkpoint import load_checkpoint, rebuild_model
from ctcovid.data.cache import PreprocessCache
from ctcovid.data.dataset import CachedDataset
from ctcovid.data.manifest import MOSMED_LABELS, read_manifest
from ctcovid.data.splits import read_split, split_path
from ctcovid.errors import ConfigError, ManifestError
from ctcovid.evaluate import trust
from ctcovid.evaluate.render import Doc, fmt, with_ci
from ctcovid.metrics.metrics import (
    AGGREGATE_METHODS,
    aggregate_by,
    classification_metrics,
    decide,
    decision_for_head,
)
from ctcovid.metrics.reliability import temper
from ctcovid.metrics.stats import N_RESAMPLES, bootstrap_ci
from ctcovid.preprocess.pipeline import PreprocessConfig
from ctcovid.train.loop import StepOptions, infer
from ctcovid.types import SEVERITY_LABELS

log = logging.getLogger(__name__)
LEVELS = ("chunk", "scan", "patient")
DEFAULT_POSITIVE = "NCP"  # COVID-19 in CC-CCII naming: the diagnosis paper's "COVID vs rest"


def evaluate_checkpoint(
    checkpoint: str | Path,
    manifest: str | Path | None = None,
    *,
    split: str = "test",
    split_file: str | Path | None = None,
    aggregate: str = "mean",
    positive: str | None = "auto",
    ordinal: bool | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "auto",
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on the ``split`` rows of ``manifest`` (``split='all'``: every row).

    Args:
        checkpoint: A ``.pt`` file or a run folder (its best, else last, checkpoint).
        manifest: The cohort manifest; default: the one the model was trained on.
        split: ``train``, ``val``, ``test`` or ``all``.
        split_file: Default: the run's own ``split.csv`` when evaluating on the training
            manifest (the split training used), else ``<manifest>.split.csv``.
        aggregate: Chunks -> scan: ``"mean"`` probability or ``"majority"`` vote.
        positive: Class of the binary "positive vs rest" metrics; ``"auto"``: ``NCP`` when it is
            a label; ``None``: none.
        ordinal: Add quadratic kappa; default: for severity and MosMed labels.
        n_resamples: Patient-bootstrap resamples of the confidence intervals (0: none).
        seed: Seed of the bootstrap.
        batch_size, device, cache_dir: Inference settings (``device="auto"``: CUDA if present).

    Returns:
        A JSON-ready dict: run information, ``chunk``/``scan``/``patient`` metrics (see
        :func:`~ctcovid.metrics.metrics.classification_metrics`), ``ci`` (scan and patient
        level), and ``scans`` (per-scan probabilities, for :mod:`ctcovid.evaluate.compare`).
    """
    if aggregate not in AGGREGATE_METHODS:
        raise ConfigError(f"aggregate {aggregate!r} is not one of {', '.join(AGGREGATE_METHODS)}")
    ckpt = load_checkpoint(checkpoint)
    labels = list(ckpt["labels"])
    positive = _positive(positive, labels)
    if positive is not None and positive not in labels:  # fail before inference, not after
        raise ConfigError(f"positive class {positive!r} is not one of the labels {labels}")
    data_cfg = ckpt.get("config", {}).get("data", {})
    trained_on = data_cfg.get("manifest") or None
    if manifest is None:
        if not trained_on:
            raise ConfigError(f"{ckpt['path']} does not record its manifest; pass --manifest")
        manifest = trained_on
    manifest = Path(manifest)
    run_split = Path(ckpt["path"]).parent / "split.csv"
    if split_file is None and split != "all":
        same = trained_on is not None and Path(trained_on).resolve() == manifest.resolve()
        split_file = run_split if same and run_split.is_file() else split_path(manifest)
    rows = read_manifest(manifest, labels=labels)
    if split != "all":
        assignment = read_split(split_file)  # type: ignore[arg-type]
        rows = [r for r in rows if assignment.get(r.scan_id) == split]
    if not rows:
        raise ManifestError(f"no scans in split {split!r} of {manifest} (split file {split_file})")
    root = manifest.parent
    cache = PreprocessCache(
        cache_dir or data_cfg.get("cache_dir") or root / ".ctcovid_cache",
        PreprocessConfig.from_dict(ckpt["preprocess"]),
        root,
    )
    cache.build(rows, workers=int(data_cfg.get("workers") or os.cpu_count() or 1))
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    )
    dataset = CachedDataset(rows, cache, labels)
    excluded = excluded_scans(dataset)
    if excluded["count"]:
        log.warning(
            "%d of %d scans give no model input and are excluded (listed in metrics.json), e.g. %s: %s",
            excluded["count"], len(rows), excluded["scans"][0]["scan_id"], excluded["scans"][0]["reason"],
        )  # fmt: skip
    if len(dataset) == 0:
        raise ManifestError(
            f"none of the {len(rows)} scans in split {split!r} of {manifest} gives a model input: "
            f"{excluded['scans'][0]['reason']}"
        )
    model = rebuild_model(ckpt).to(dev)
    loader = DataLoader(dataset, batch_size=batch_size)
    inf = infer(model, loader, StepOptions(dev))
    metas, targets_t = inf.metas, inf.targets
    loss = (
        float(nn.functional.cross_entropy(inf.logits, targets_t).item()) if len(targets_t) else float("nan")
    )
    raw = torch.softmax(inf.logits, 1).numpy().astype(np.float64)
    rel = ckpt.get("reliability")
    probs = temper(raw, float(rel.get("temperature", 1.0))) if rel else raw
    info = {
        "checkpoint": ckpt["path"],
        "epoch": ckpt.get("epoch"),
        "model": ckpt["model"]["name"],
        "task": ckpt.get("task"),
        "manifest": str(manifest),
        "split": split,
        "split_file": None if split == "all" else str(split_file),
        "loss": loss,
        "excluded": excluded,
    }
    decision = decision_for_head(ckpt["model"]["kwargs"].get("head"))  # median for ordinal heads
    result = {
        **info,
        **evaluate_predictions(
            probs,
            targets_t.numpy(),
            [m["scan_id"] for m in metas],
            [m["patient_id"] for m in metas],
            labels,
            aggregate=aggregate,
            positive=positive,
            ordinal=(_is_ordinal(labels, ckpt.get("task")) or decision == "median")
            if ordinal is None
            else ordinal,
            n_resamples=n_resamples,
            seed=seed,
            decision=decision,
        ),
    }
    result.update(trust.trust_metrics(raw, inf, rel, dataset, labels, model, decision))
    return result


def excluded_scans(dataset: CachedDataset) -> dict[str, Any]:
    """The scans of ``dataset`` that give no model input, for ``metrics.json``: count and reasons."""
    return {
        "count": len(dataset.excluded),
        "scans": [
            {"scan_id": s, "patient_id": p, "label": lab, "reason": why}
            for s, p, lab, why in dataset.excluded
        ],
    }


def _positive(positive: str | None, labels: list[str]) -> str | None:
    if positive != "auto":
        return positive
    return DEFAULT_POSITIVE if DEFAULT_POSITIVE in labels else None


def _is_ordinal(labels: list[str], task: str | None) -> bool:
    return task == "severity" or tuple(labels) in (SEVERITY_LABELS, MOSMED_LABELS)


def evaluate_predictions(
    probs: np.ndarray,
    targets: np.ndarray,
    scan_ids: list[str],
    patient_ids: list[str],
    labels: list[str],
    *,
    aggregate: str = "mean",
    positive: str | None = None,
    ordinal: bool = False,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    decision: str = "argmax",
) -> dict[str, Any]:
    """Chunk-level probabilities -> metrics at every level (the model-free half of the evaluation).

    ``decision``: how a class is read from probabilities, ``"argmax"`` or ``"median"`` (ordinal
    heads; :func:`~ctcovid.metrics.metrics.decide`).
    """
    if positive is not None and positive not in labels:
        raise ConfigError(f"positive class {positive!r} is not one of the labels {labels}")
    k = len(labels)
    scan_p, scan_t, scans = aggregate_by(probs, targets, scan_ids, aggregate)  # type: ignore[arg-type]
    patient_of = dict(zip(scan_ids, patient_ids))
    scan_patients = [patient_of[s] for s in scans]
    pat_p, pat_t, pat_ids = aggregate_by(scan_p, scan_t, scan_patients)
    opts: dict[str, Any] = {"labels": labels, "positive": positive, "ordinal": ordinal, "decision": decision}
    out: dict[str, Any] = {
        "labels": labels,
        "aggregate": aggregate,
        "positive": positive,
        "ordinal": ordinal,
        "decision": decision,
        "n_chunks": len(targets),
        "n_scans": len(scans),
        "n_patients": len(pat_ids),
        "chunk": classification_metrics(probs, targets, k, **opts),
        "scan": classification_metrics(scan_p, scan_t, k, **opts),
        "patient": classification_metrics(pat_p, pat_t, k, **opts),
    }
    pos = labels.index(positive) if positive is not None else None
    ci: dict[str, Any] = {
        "n_resamples": n_resamples,
        "seed": seed,
        "confidence": 0.95,
        "resampled": "patients",
    }
    if n_resamples > 0:
        kw: dict[str, Any] = {
            "positive": pos,
            "ordinal": ordinal,
            "n_resamples": n_resamples,
            "seed": seed,
            "decision": decision,
        }
        ci["scan"] = bootstrap_ci(scan_p, scan_t, scan_patients, **kw)
        ci["patient"] = bootstrap_ci(pat_p, pat_t, pat_ids, **kw)
    out["ci"] = ci
    out["scans"] = [
        {
            "scan_id": s,
            "patient_id": patient_of[s],
            "label": labels[int(t)],
            "pred": labels[int(decide(p[None], decision)[0])],
            "probs": [round(float(x), 6) for x in p],
        }
        for s, t, p in zip(scans, scan_t, scan_p)
    ]
    return out


# ------------------------------------------------------------------------------------ the report
def write_report(
    result: dict[str, Any], out_dir: str | Path, *, run_dir: str | Path | None = None
) -> dict[str, Path]:
    """Write ``metrics.json``, plots, ``report.md`` and ``report.html`` into ``out_dir``.

    ``run_dir`` (default: the checkpoint's folder) supplies ``metrics.jsonl`` for the training
    curves when it has one. Returns the paths written, by name.
    """
    from ctcovid.metrics import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = result["labels"]
    written: dict[str, Path] = {"metrics": out / "metrics.json"}
    written["metrics"].write_text(json.dumps(result, indent=2))
    scan = result["scan"]
    probs = np.array([s["probs"] for s in result["scans"]], dtype=np.float64).reshape(-1, len(labels))
    targets = np.array([labels.index(s["label"]) for s in result["scans"]], dtype=np.int64)
    written["confusion_scan"] = plots.plot_confusion(
        scan["confusion"], labels, out / "confusion_scan.png", title=f"scan level, {result['split']} split"
    )
    written["confusion_patient"] = plots.plot_confusion(
        result["patient"]["confusion"], labels, out / "confusion_patient.png", title="patient level"
    )
    written["roc_scan"] = plots.plot_roc(probs, targets, labels, out / "roc_scan.png", title="scan level ROC")
    written["reliability_scan"] = plots.plot_reliability(
        scan["calibration_bins"], scan["ece"], out / "reliability_scan.png"
    )
    cal = result.get("calibration")
    if cal and cal.get("fitted"):
        written["reliability_uncalibrated"] = plots.plot_reliability(
            cal["bins_before"],
            cal["ece_before"],
            out / "reliability_uncalibrated.png",
            title=f"before temperature scaling (ECE {fmt(cal['ece_before'], 3)})",
        )
    ref = result.get("referral")
    if ref and ref["risk_coverage"]["coverage"]:
        rc = ref["risk_coverage"]
        kept = ref["accuracy_not_referred"]
        point = (1.0 - ref["rate"], 1.0 - kept) if kept is not None else None
        written["risk_coverage"] = plots.plot_risk_coverage(
            rc["coverage"], rc["risk"], out / "risk_coverage.png", referral=point
        )
    rdir = Path(run_dir) if run_dir is not None else Path(result["checkpoint"]).parent
    history_path = rdir / "metrics.jsonl"
    if history_path.is_file():
        history = [json.loads(x) for x in history_path.read_text().splitlines() if x.strip()]
        if history:
            written["training_curves"] = plots.plot_training_curves(history, out / "training_curves.png")
    doc = report_document(result, written)
    written["report_md"], written["report_html"] = out / "report.md", out / "report.html"
    doc.write(written["report_md"], written["report_html"])
    return written


def _summary_rows(result: dict[str, Any]) -> list[list[Any]]:
    names = [
        ("accuracy", "accuracy"),
        ("precision_macro", "precision (macro)"),
        ("recall_macro", "recall (macro)"),
        ("f1_macro", "F1 (macro)"),
        ("f1_weighted", "F1 (weighted)"),
        ("auroc", "AUROC (macro, one-vs-rest)"),
    ]
    if result.get("positive"):
        p = result["positive"]
        names += [
            (f"binary_{m}", f"{p} vs rest {m}") for m in ("accuracy", "precision", "recall", "f1", "auroc")
        ]
    if result.get("ordinal"):
        names.append(("kappa_quadratic", "quadratic weighted kappa"))
        names.append(("mae", "mean absolute error (grades)"))
    names.append(("ece", "ECE (15 bins)"))
    rows = []
    for key, title in names:
        cells: list[Any] = [title]
        for level in LEVELS:
            m = result[level]
            v = m.get("binary", {}).get(key[7:]) if key.startswith("binary_") else m.get(key)
            ci = result.get("ci", {}).get(level, {}).get(key)
            cells.append(with_ci(v, ci) if level != "chunk" else fmt(v, 3))
        rows.append(cells)
    return rows


def report_document(result: dict[str, Any], images: dict[str, Path]) -> Doc:
    """The report as a :class:`~ctcovid.evaluate.render.Doc` (Markdown and HTML from one source)."""
    labels = result["labels"]
    doc = Doc(f"Evaluation of {result.get('model', 'model')} on the {result['split']} split")
    doc.text(
        f"Checkpoint `{result.get('checkpoint')}` (epoch {result.get('epoch')}), manifest "
        f"`{result.get('manifest')}`: {result['n_patients']} patients, {result['n_scans']} scans, "
        f"{result['n_chunks']} model inputs; chunks -> scan by {result['aggregate']}, scans -> patient "
        "by mean probability."
    )
    excluded = result.get("excluded") or {}
    if excluded.get("count"):
        doc.heading("Excluded scans")
        doc.text(
            f"{excluded['count']} scan(s) of the split gave no model input and are not in any metric "
            "or confidence interval below:"
        )
        doc.table(
            ["scan", "patient", "label", "reason"],
            [[e["scan_id"], e["patient_id"], e["label"], e["reason"]] for e in excluded["scans"]],
        )
    doc.heading("Summary")
    ci = result.get("ci", {})
    doc.text(
        f"Scan and patient columns show [{ci.get('confidence', 0.95):.0%} bootstrap CI] over "
        f"{ci.get('n_resamples')} patient resamples (seed {ci.get('seed')}). — marks an undefined value."
    )
    doc.table(["metric", "chunk", "scan", "patient"], _summary_rows(result))
    doc.heading("Per class (scan level)")
    per = result["scan"]["per_class"]
    doc.table(
        ["class", "support", "predicted", "precision", "recall", "F1", "AUROC"],
        [
            [c, p["support"], p["predicted"], p["precision"], p["recall"], p["f1"], p["auroc"]]
            for c, p in per.items()
        ],
    )
    for level in ("scan", "patient"):
        m = result[level]
        doc.heading(f"Confusion matrix ({level} level; rows = truth, columns = prediction)")
        doc.table(["true \\ predicted", *labels], [[lab, *row] for lab, row in zip(labels, m["confusion"])])
        doc.table(
            ["true \\ predicted", *labels],
            [
                [lab, *(["—"] * len(labels) if r is None else [f"{v:.0%}" for v in r])]
                for lab, r in zip(labels, m["confusion_normalized"])
            ],
        )
    trust.trust_section(doc, result)
    notes = [f"{level}: {k}: {why}" for level in LEVELS for k, why in result[level]["undefined"].items()]
    if notes:
        doc.heading("Undefined values")
        for n in notes:
            doc.text(n)
    doc.heading("Plots")
    captions = {
        "confusion_scan": "row-normalized confusion matrix, scan level",
        "confusion_patient": "row-normalized confusion matrix, patient level",
        "roc_scan": "ROC curves, one vs rest, scan level",
        "reliability_scan": "reliability diagram, scan level (after temperature scaling when fitted)",
        "reliability_uncalibrated": "reliability diagram, scan level, before temperature scaling",
        "risk_coverage": "risk-coverage: error rate of the most certain scans (dot: scans not referred)",
        "training_curves": "training curves (metrics.jsonl)",
    }
    for key, caption in captions.items():
        if key in images:
            doc.image(images[key], caption)
    return doc
