"""Calibration and referral in an evaluation: how far the answers could be trusted, scan by scan.

:func:`trust_metrics` applies predict's rules (:mod:`ctcovid.predict.predictor`) to an evaluated
split: temperature scaling before/after, OOD score, uncertainty, the quality checks from the
statistics the cache stored, and so which scans would be referred; :func:`trust_section` puts them
in the report.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from ctcovid.data.dataset import CachedDataset
from ctcovid.evaluate.render import Doc, fmt
from ctcovid.metrics.metrics import aggregate_by, decide, expected_calibration_error
from ctcovid.metrics.reliability import normalized_entropy, risk_coverage, scan_nll, temper
from ctcovid.train.loop import Inference
from ctcovid.train.reliability import scan_scores


def trust_metrics(
    raw: np.ndarray,
    inf: Inference,
    reliability: dict[str, Any] | None,
    dataset: CachedDataset,
    labels: list[str],
    model: nn.Module,
    decision: str = "argmax",
) -> dict[str, Any]:
    """Calibration before/after temperature scaling and the referral figures, at scan level.

    A scan is referred as predict would refer it (:mod:`ctcovid.predict.predictor`): a blocking
    quality problem (from the statistics the cache stored), an OOD score above 1, or an
    uncertainty above the checkpoint's threshold. The risk-coverage curve orders scans by
    uncertainty (most certain first).
    """
    from ctcovid.predict.member import DEFAULT_REFER_UNCERTAINTY, Member
    from ctcovid.predict.quality import check_quality
    from ctcovid.preprocess.quality import ScanStats

    targets = inf.targets.numpy()
    ids = [m["scan_id"] for m in inf.metas]
    rel = reliability or {}
    t = float(rel.get("temperature", 1.0))
    raw_scan, scan_t, scans = aggregate_by(raw, targets, ids)
    cal_scan = aggregate_by(temper(raw, t), targets, ids)[0]
    ece_before, bins_before = expected_calibration_error(raw_scan, scan_t)
    ece_after, bins_after = expected_calibration_error(cal_scan, scan_t)
    calibration = {
        "fitted": bool(rel),
        "temperature": t,
        "ece_before": ece_before,
        "ece_after": ece_after,
        "nll_before": scan_nll(raw, targets, ids),
        "nll_after": scan_nll(temper(raw, t), targets, ids),
        "bins_before": bins_before,
        "bins_after": bins_after,
    }
    member = Member.build(model, rel)
    method = str(rel.get("ood_method", "mahalanobis"))
    chunk_ood = member.ood_score(method, inf.logits.numpy(), inf.features.numpy())
    ood = scan_scores(chunk_ood, ids)[0] if chunk_ood is not None else np.full(len(scans), np.nan)
    uncertainty = normalized_entropy(cal_scan)
    threshold = float(rel.get("refer_uncertainty", DEFAULT_REFER_UNCERTAINTY))
    reference = rel.get("quality_reference")
    stats_of = {
        row.scan_id: meta.get("scan_stats") for row, meta in zip(dataset.rows, dataset.metas, strict=True)
    }
    reasons: dict[str, int] = {"not assessable": 0, "out of distribution": 0, "uncertain": 0}
    refer = np.zeros(len(scans), dtype=bool)
    for i, sid in enumerate(scans):
        stats = stats_of.get(sid)
        why = []
        if stats and not check_quality(ScanStats.from_dict(stats), reference).ok:
            why.append("not assessable")
        if np.isfinite(ood[i]) and ood[i] > 1.0:
            why.append("out of distribution")
        if uncertainty[i] > threshold:
            why.append("uncertain")
        for w in why:
            reasons[w] += 1
        refer[i] = bool(why)
    correct = decide(cal_scan, decision) == scan_t
    kept = ~refer
    referral = {
        "rate": float(refer.mean()) if len(refer) else None,
        "n_referred": int(refer.sum()),
        "n_scans": len(scans),
        "reasons": reasons,
        "accuracy_all": float(correct.mean()) if len(correct) else None,
        "accuracy_not_referred": float(correct[kept].mean()) if kept.any() else None,
        "accuracy_referred": float(correct[refer].mean()) if refer.any() else None,
        "refer_uncertainty": threshold,
        "ood_method": method if chunk_ood is not None else None,
        "risk_coverage": risk_coverage(1.0 - uncertainty, correct),
    }
    per_scan = {
        sid: {
            "ood_score": None if not np.isfinite(ood[i]) else round(float(ood[i]), 4),
            "uncertainty": round(float(uncertainty[i]), 4),
            "refer": bool(refer[i]),
        }
        for i, sid in enumerate(scans)
    }
    return {"calibration": calibration, "referral": referral, "trust": per_scan}


def trust_section(doc: Doc, result: dict[str, Any]) -> None:
    """The report's "Calibration and referral" section (nothing without those results)."""
    cal, ref = result.get("calibration"), result.get("referral")
    if not cal or not ref:
        return
    doc.heading("Calibration and referral (scan level)")
    if cal["fitted"]:
        doc.text(
            f"Temperature scaling (T = {cal['temperature']:.3f}, fitted on the validation split): ECE "
            f"{fmt(cal['ece_before'], 3)} -> {fmt(cal['ece_after'], 3)}, NLL {fmt(cal['nll_before'], 3)} -> "
            f"{fmt(cal['nll_after'], 3)}. The metrics above use the calibrated probabilities."
        )
    else:
        doc.text(
            "The checkpoint has no reliability data (run `ctcovid calibrate`): no temperature, no OOD score."
        )
    reasons = ", ".join(f"{k} {v}" for k, v in ref["reasons"].items())
    doc.table(
        ["", "value"],
        [
            ["scans referred", f"{ref['n_referred']} of {ref['n_scans']} ({fmt(ref['rate'], 3)})"],
            ["reasons (a scan may have several)", reasons],
            ["accuracy, all scans", fmt(ref["accuracy_all"], 3)],
            ["accuracy, scans not referred", fmt(ref["accuracy_not_referred"], 3)],
            ["accuracy, referred scans", fmt(ref["accuracy_referred"], 3)],
            ["refer above uncertainty", ref["refer_uncertainty"]],
            ["OOD method", ref["ood_method"] or "—"],
            ["area under risk-coverage (lower is better)", fmt(ref["risk_coverage"]["aurc"], 3)],
        ],
    )
