"""Render a heatmap series written by ``ctcovid explain --dicom-out`` from its DICOM files alone.

    python docs/render_heatmap_dicom.py OUT/<scan>_heatmap docs/heatmap_dicom.png

Only pydicom reads the files (no NIfTI, no ctcovid): slices are ordered by ImagePositionPatient
along the slice normal, and the four with the most colour are drawn with their pixel spacing,
patient position and the series' own description, as a viewer would show them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def main(folder: str, out: str, n: int = 4) -> None:
    ds = [pydicom.dcmread(f) for f in sorted(Path(folder).glob("*.dcm"))]
    iop = np.array([float(v) for v in ds[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    ds.sort(key=lambda d: float(np.dot([float(v) for v in d.ImagePositionPatient], normal)))
    rgb = [d.pixel_array for d in ds]
    colour = [int(((a.max(-1).astype(int) - a.min(-1)) > 10).sum()) for a in rgb]
    picks = sorted(np.argsort(colour)[::-1][:n])
    dr, dc = (float(v) for v in ds[0].PixelSpacing)
    fig = Figure(figsize=(3.0 * n, 3.4), dpi=80)
    FigureCanvasAgg(fig)
    for j, k in enumerate(picks):
        ax = fig.add_subplot(1, n, j + 1)
        ax.imshow(rgb[k], aspect=dr / dc, interpolation="bilinear")
        pos = [float(v) for v in ds[k].ImagePositionPatient]
        ax.set_title(f"#{ds[k].InstanceNumber}  z = {pos[2]:.1f} mm", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{ds[0].SeriesDescription} ({len(ds)} DICOM SC images)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, pil_kwargs={"optimize": True})


if __name__ == "__main__":
    main(*sys.argv[1:3])
