"""Prediction commands: predict, explain, export, serve."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from ctcovid.cli.progress import progress


def _add_model_args(p: argparse.ArgumentParser, *, ensemble: bool = True) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        action="append" if ensemble else "store",
        help="checkpoint file or run folder"
        + ("; give it several times for a deep ensemble (mean of the members' answers)" if ensemble else ""),
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch-size", type=int, default=4, help="chunks per forward pass (default 4)")
    trust = p.add_argument_group("trust (see the README: 'Can I trust this answer?')")
    trust.add_argument(
        "--mc-samples",
        type=int,
        default=0,
        metavar="N",
        help="MC dropout: N samples with dropout on (models with dropout, e.g. CT-S; drawn on the pooled "
        "features when the only dropout is before the head, so they cost ~nothing); default 0 (off)",
    )
    trust.add_argument(
        "--refer-uncertainty",
        type=float,
        default=None,
        metavar="U",
        help="refer answers whose normalised entropy exceeds U (default: the checkpoint's, fitted on "
        "its validation split; 0.6 for checkpoints without reliability data)",
    )
    trust.add_argument(
        "--ood-method",
        choices=["mahalanobis", "energy"],
        default=None,
        help="out-of-distribution score (default: the checkpoint's, mahalanobis)",
    )
    trust.add_argument(
        "--no-quality-checks",
        action="store_true",
        help="skip the scan quality checks (a scan that fails them is otherwise not assessed)",
    )


def _load_predictor(args: argparse.Namespace) -> Any:
    from ctcovid.predict import Predictor

    ckpts = args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint]
    return Predictor.from_checkpoints(
        ckpts,
        device=args.device,
        batch_size=args.batch_size,
        mc_samples=args.mc_samples,
        refer_uncertainty=args.refer_uncertainty,
        ood_method=args.ood_method,
        quality_checks=not args.no_quality_checks,
    )


def _trust_cells(pred: Any) -> str:
    """``refer``, OOD score and uncertainty as table cells (— where not computed)."""
    ood = "—" if pred.ood_score is None else f"{pred.ood_score:.2f}"
    unc = "—" if pred.uncertainty is None else f"{pred.uncertainty:.2f}"
    return f"{'REFER' if pred.refer else 'ok':<6} {ood:>6} {unc:>6}"


# --------------------------------------------------------------------------- predict
def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="DICOM series folder, NIfTI file, slice-image folder, .zip of a DICOM series, or a folder of scans",
    )
    _add_model_args(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", metavar="OUT", help="write every prediction (with chunk detail) to OUT")
    out.add_argument("--csv", metavar="OUT", help="write one row per scan to OUT")
    p.add_argument(
        "--dicom-out",
        metavar="DIR",
        help="also write a DICOM Structured Report per DICOM scan into DIR, in the scan's study "
        "(needs ctcovid[dicom]; non-DICOM inputs are refused: they have no study to join)",
    )


def _run_predict(args: argparse.Namespace) -> int:
    predictor = _load_predictor(args)
    dicom: dict[int, tuple[list[Path], str | None]] = {}
    with progress(len(args.paths), "predict") as tick:
        if args.dicom_out:
            from ctcovid.predict.dicom_out import predict_to_dicom

            results = predict_to_dicom(predictor, args.paths, args.dicom_out, progress=tick)
            preds = [r.prediction for r in results]
            dicom = {i: (r.files, r.error) for i, r in enumerate(results)}
        else:
            preds = predictor.predict_paths(args.paths, progress=tick)
    labels = predictor.labels
    width = max([len(p.scan_id) for p in preds] + [7])
    print(
        f"{'scan_id':<{width}}  {'label':<8} "
        + " ".join(f"{lab:>8}" for lab in labels)
        + f"  {'refer':<6} {'ood':>6} {'uncert':>6}"
    )
    for pred in preds:
        if not pred.ok:
            print(f"{pred.scan_id:<{width}}  ERROR    {pred.error}")
        elif not pred.assessable:
            blank = " ".join(f"{'—':>8}" for _ in labels)
            print(f"{pred.scan_id:<{width}}  {'—':<8} {blank}  {_trust_cells(pred)}")
        else:
            probs = " ".join(f"{pred.probs[lab]:>8.3f}" for lab in labels)
            chunks = f"  ({len(pred.chunks)} chunks)" if len(pred.chunks) > 1 else ""
            print(f"{pred.scan_id:<{width}}  {pred.label:<8} {probs}  {_trust_cells(pred)}{chunks}")
        for reason in pred.refer_reasons if pred.ok else []:
            print(f"{'':<{width}}    refer: {reason}")
        for w in (pred.quality or {}).get("warnings", []):
            print(f"{'':<{width}}    quality warning: {w}")
    if args.json:
        doc = {"model": predictor.info(), "predictions": [p.to_dict() for p in preds]}
        Path(args.json).write_text(json.dumps(doc, indent=2))
        print(f"predictions written to {args.json}")
    elif args.csv:
        _write_csv(Path(args.csv), preds, labels)
        print(f"predictions written to {args.csv}")
    refused = 0
    for i, (files, why) in dicom.items():
        for f in files:
            print(f"{preds[i].scan_id}: DICOM SR {f}")
        if why:
            refused += 1
            print(f"{preds[i].scan_id}: no DICOM written: {why}", file=sys.stderr)
    failed = sum(1 for p in preds if not p.ok)
    if failed:
        print(f"{failed} of {len(preds)} scan(s) failed (see the error column)", file=sys.stderr)
    referred = sum(1 for p in preds if p.ok and p.refer)
    if referred:
        print(f"{referred} of {len(preds)} scan(s) referred to a person (reasons above)")
    return 1 if failed or refused else 0


def _write_csv(path: Path, preds: list[Any], labels: list[str]) -> None:
    columns = [
        "scan_id",
        "path",
        "label",
        "severity",
        *[f"p_{lab}" for lab in labels],
        "n_chunks",
        "quality_ok",
        "ood_score",
        "uncertainty",
        "refer",
        "refer_reasons",
        "warnings",
        "error",
    ]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for p in preds:
            row = {
                "scan_id": p.scan_id,
                "path": p.path or "",
                "label": p.label or "",
                "severity": p.severity or "",
                "n_chunks": len(p.chunks),
                "quality_ok": "" if p.quality is None else str(bool(p.quality["ok"])).lower(),
                "ood_score": "" if p.ood_score is None else f"{p.ood_score:.4f}",
                "uncertainty": "" if p.uncertainty is None else f"{p.uncertainty:.4f}",
                "refer": str(p.refer).lower(),
                "refer_reasons": "; ".join(p.refer_reasons),
                "warnings": "; ".join(p.warnings),
                "error": p.error or "",
            }
            row.update({f"p_{lab}": f"{p.probs[lab]:.6f}" if p.probs else "" for lab in labels})
            w.writerow(row)


# --------------------------------------------------------------------------- explain
#: ctcovid.predict.explain.METHODS, spelled out so that ``--help`` needs no torch (a test keeps them equal).
EXPLAIN_METHODS = ["ig", "gradxinput", "gradcam", "gradcam++"]


def _add_explain(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="one scan, or a folder of scans (as for predict)")
    _add_model_args(p, ensemble=False)
    p.add_argument("--out", metavar="DIR", help="folder for heatmaps (NIfTI), montages (PNG), JSON")
    p.add_argument(
        "--dicom-out",
        metavar="DIR",
        help="write the heatmap as a DICOM series lined up with the input slices (colour-fused "
        "Secondary Capture, one image per slice) and the DICOM SR of the prediction into DIR "
        "(DICOM inputs only; needs ctcovid[dicom])",
    )
    p.add_argument(
        "--dicom-syntax",
        choices=["explicit_le", "jpeg2000"],
        default="explicit_le",
        help="transfer syntax of the heatmap series: uncompressed (default, every viewer reads it) "
        "or JPEG 2000 lossless (about 6x smaller)",
    )
    p.add_argument(
        "--method",
        choices=EXPLAIN_METHODS,
        default="ig",
        help="ig (default): integrated gradients at the input's resolution (8 passes); gradxinput: "
        "gradient x input (one pass); gradcam, gradcam++: class activation maps on --layer (coarse "
        "blobs); localization figures in bench/RESULTS.md",
    )
    p.add_argument(
        "--layer",
        default=None,
        help="gradcam and gradcam++ only: layer to hook, 'a+b' for several (default: auto, the "
        "deepest stage with a grid of at least 4x8x8, e.g. layer2 of a 3D ResNet at 24x96x96)",
    )
    p.add_argument(
        "--restrict",
        choices=["lungs", "body", "none"],
        default="lungs",
        help="keep heat only inside the lung field (default), the body, or anywhere",
    )
    p.add_argument(
        "--baseline",
        choices=["healthy", "air", "zero"],
        default="healthy",
        help="ig and gradxinput only: the reference the evidence is measured against: the same scan "
        "with clear lungs (default), an all-air scan, or zeros",
    )
    p.add_argument(
        "--target", default=None, metavar="CLASS", help="class to explain (default: the predicted one)"
    )
    p.add_argument("--slices", type=int, default=6, help="slices in the montage (default 6)")


def _run_explain(args: argparse.Namespace) -> int:
    from ctcovid.predict import explain, find_scans, open_scan
    from ctcovid.predict.dicom_out import NotDicomError
    from ctcovid.predict.explain import safe_stem
    from ctcovid.predict.predictor import describe_error

    if not args.out and not args.dicom_out:
        from ctcovid.errors import CtcovidError

        raise CtcovidError("explain needs somewhere to write: give --out DIR, --dicom-out DIR, or both")
    predictor = _load_predictor(args)
    scans = find_scans(args.path)
    failed = 0
    with progress(len(scans), "explain") as tick:
        for k, (scan_id, path) in enumerate(scans):
            refused: str | None = None
            files: dict[str, Path] = {}
            try:
                with open_scan(path) as volume:
                    e = explain(
                        predictor,
                        volume,
                        scan_id=scan_id,
                        method=args.method,
                        layer=args.layer,
                        target=args.target,
                        restrict=args.restrict,
                        baseline=args.baseline,
                    )
                    # Inside the with block: the DICOM writer reads the input's headers (a zip's
                    # files exist only here).
                    if args.dicom_out:
                        try:
                            files = _write_explain_dicom(e, predictor, args)
                        except NotDicomError as err:  # the NIfTI/PNG outputs are still wanted
                            refused = str(err)
                if args.out:
                    files.update(e.save(args.out, safe_stem(scan_id), n_slices=args.slices))
            except Exception as err:  # report and go on with the other scans
                failed += 1
                print(f"{scan_id}: ERROR {describe_error(err)}", file=sys.stderr)
                continue
            finally:
                tick(k + 1, len(scans))
            p = e.prediction
            print(
                f"{scan_id}: {p.label} ({p.probs[p.label or '']:.3f}); {e.method} on {e.layer}"
                f"{f' from {e.baseline}' if e.baseline else ''} for {e.target}; "
                f"hottest slices {e.top_slices(args.slices)}"
            )
            for reason in p.refer_reasons:
                print(f"  refer: {reason}")
            for kind, f in files.items():
                print(f"  {kind}: {f}")
            if refused:
                failed += 1
                print(f"{scan_id}: no DICOM written: {refused}", file=sys.stderr)
    return 1 if failed else 0


def _write_explain_dicom(e: Any, predictor: Any, args: argparse.Namespace) -> dict[str, Path]:
    from ctcovid.predict.dicom_out import write_explanation

    series, sr = write_explanation(e, predictor, args.dicom_out, transfer_syntax=args.dicom_syntax)
    return {"dicom_heatmap": series[0].parent, "dicom_sr": sr}


# --------------------------------------------------------------------------- export
def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or run folder")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", metavar="FILE", help="output file (default: beside the checkpoint)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")


def _run_export(args: argparse.Namespace) -> int:
    from ctcovid.predict import check_parity, export_model, load_exported

    out = export_model(args.checkpoint, args.out, format=args.format, opset=args.opset)
    meta = load_exported(out).metadata
    size_mb = out.stat().st_size / 2**20
    print(f"exported {meta['model']} ({args.format}, {size_mb:.1f} MiB) to {out}")
    print(
        f"  input (B, {', '.join(map(str, meta['input_shape']))}) float32 in [0, 1]; output logits for {meta['labels']}"
    )
    if not args.no_check:
        diff = check_parity(args.checkpoint, out)
        tol = 1e-4 if args.format == "onnx" else 1e-5
        print(f"  parity with PyTorch: max |logit difference| = {diff:.2e} (tolerance {tol:g})")
        if diff > tol:
            print("  parity check FAILED", file=sys.stderr)
            return 1
    return 0


# --------------------------------------------------------------------------- serve
def _add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint file or run folder")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-upload-mb", type=int, default=1024, help="largest upload accepted (default 1024)")
    p.add_argument("--max-concurrent", type=int, default=1, help="inferences at once (default 1)")
    p.add_argument("--max-queue", type=int, default=8, help="requests waiting beyond those; more get 503")
    p.add_argument("--tmp-dir", help="folder for request files (default: the system temp folder)")
    p.epilog = "Set CTCOVID_API_TOKEN to require 'Authorization: Bearer <token>' on the API."


def _run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as e:
        from ctcovid.errors import MissingExtraError

        raise MissingExtraError("uvicorn", "serve") from e
    from ctcovid.serve import ServeSettings, create_app

    settings = ServeSettings(
        max_upload_bytes=args.max_upload_mb * 2**20,
        max_concurrent=args.max_concurrent,
        max_queue=args.max_queue,
        tmp_dir=args.tmp_dir,
        device=args.device,
    )
    app = create_app(args.checkpoint, settings)
    auth = "bearer token required" if settings.token() else "no token (set CTCOVID_API_TOKEN to require one)"
    print(
        f"serving {app.state.predictor.model_name} on http://{args.host}:{args.port}/ ({auth}); docs at /docs"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


COMMANDS = {
    "predict": ("predict the label of one or many scans with a checkpoint", _add_predict, _run_predict),
    "explain": (
        "heatmaps (integrated gradients or Grad-CAM) as NIfTI on the input scan, and PNG montages",
        _add_explain,
        _run_explain,
    ),
    "export": (
        "export a checkpoint to ONNX or TorchScript (labels and preprocessing included)",
        _add_export,
        _run_export,
    ),
    "serve": ("HTTP API and upload page for a checkpoint (FastAPI + uvicorn)", _add_serve, _run_serve),
}
