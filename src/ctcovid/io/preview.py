"""Human-readable summaries of a :class:`~ctcovid.types.Volume`: a report dict and a PNG montage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ctcovid.errors import MissingExtraError
from ctcovid.types import Units, Volume


def describe_volume(vol: Volume) -> dict[str, Any]:
    """Shape, spacing, intensity range, series and what was skipped, as plain JSON-able values."""
    v = vol.voxels
    src = vol.source
    d, h, w = vol.shape
    extent = [round(n * s, 1) for n, s in zip(vol.shape, vol.spacing_mm)]
    report: dict[str, Any] = {
        "path": src.path if src else None,
        "format": src.format.value if src else None,
        "shape_dhw": [d, h, w],
        "spacing_mm_zyx": [round(s, 4) for s in vol.spacing_mm],
        "spacing_known": vol.spacing_known,
        "extent_mm_zyx": extent,
        "origin_mm_lps": [round(o, 3) for o in vol.origin_mm],
        "units": vol.units.value,
        "min": float(v.min()),
        "max": float(v.max()),
        "mean": round(float(v.mean()), 2),
        "p1_p99": [round(float(x), 1) for x in np.percentile(v[:: max(1, d // 16)], [1, 99])],
    }
    if vol.units is Units.HU:
        report["air_fraction"] = round(float((v[:: max(1, d // 16)] < -900).mean()), 4)
    if src is not None:
        report["series_uid"] = src.series_uid
        report["patient_id"] = src.patient_id
        report["n_slices"] = src.n_slices
        report["other_series"] = list(src.other_series)
        report["skipped_files"] = [f"{f}: {why}" for f, why in src.skipped_files]
        report["warnings"] = list(src.warnings)
    return report


def _display(vol: Volume) -> tuple[np.ndarray, float, float]:
    if vol.units is Units.HU:
        return vol.voxels, -1350.0, 150.0  # lung window, level -600 width 1500
    return vol.voxels, float(vol.voxels.min()), float(max(vol.voxels.max(), vol.voxels.min() + 1))


def save_montage(vol: Volume, path: str | Path) -> Path:
    """Write axial, coronal and sagittal mid-slices side by side (true aspect from spacing_mm)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - matplotlib is a core dependency
        raise MissingExtraError("matplotlib", "dev") from e
    v, lo, hi = _display(vol)
    d, h, w = vol.shape
    sz, sy, sx = vol.spacing_mm
    # Coronal and sagittal views are flipped vertically so superior is at the top, as radiologists read them.
    views = [
        ("axial", v[d // 2], sy / sx),
        ("coronal", v[:, h // 2, :][::-1], sz / sx),
        ("sagittal", v[:, :, w // 2][::-1], sz / sy),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (name, img, aspect) in zip(axes, views):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        ax.set_title(f"{name} {img.shape[0]}x{img.shape[1]}")
        ax.axis("off")
    title = Path(vol.source.path).name if vol.source else "volume"
    fig.suptitle(f"{title}  spacing (z,y,x) mm = {tuple(round(s, 3) for s in vol.spacing_mm)}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out
