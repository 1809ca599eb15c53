"""Fixtures for prediction tests: tiny untrained checkpoints and one synthetic scan in every format."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ctcovid.checkpoint import make_checkpoint, save_checkpoint
from ctcovid.io import write_dicom_series, write_nifti, write_slices
from ctcovid.models import create_model
from ctcovid.preprocess import PreprocessConfig
from ctcovid.synth.cohort import SynthCase, synth_case

LABELS = ["NCP", "CP", "Normal"]
MakeCkpt = Callable[..., Path]


@pytest.fixture(scope="session")
def make_ckpt(tmp_path_factory: pytest.TempPathFactory) -> MakeCkpt:
    """``make_ckpt(depth_mode="uniformize", task="diagnosis", **preprocess) -> path`` (cached)."""
    root = tmp_path_factory.mktemp("ckpt")
    made: dict[str, Path] = {}

    def make(depth_mode: str = "uniformize", task: str = "diagnosis", **pre_kw: object) -> Path:
        key = f"{depth_mode}-{task}-{sorted(pre_kw.items())}"
        if key not in made:
            labels = ["low", "medium", "high"] if task == "severity" else LABELS
            torch.manual_seed(0)
            model = create_model("r3d_10", num_classes=3)
            with torch.no_grad():  # a decisive head, so labels differ between inputs
                model.fc.weight.mul_(30.0)
            kw = {"depth": 8, "chunk_depth": 4, "size_hw": (32, 32), **pre_kw}
            pre = PreprocessConfig(depth_mode=depth_mode, **kw)  # type: ignore[arg-type]
            ckpt = make_checkpoint(
                model,
                name="r3d_10",
                kwargs={"num_classes": 3},
                labels=labels,
                task=task,
                preprocess=pre.to_dict(),
            )
            made[key] = save_checkpoint(ckpt, root / f"{len(made)}.pt")
        return made[key]

    return make


@pytest.fixture(scope="session")
def case() -> SynthCase:
    return synth_case("NCP", rng=np.random.default_rng(1), shape=(20, 64, 64), severity_score=4)


@pytest.fixture(scope="session")
def scan_files(case: SynthCase, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same scan as NIfTI, DICOM folder, zipped DICOM, PNG slice folder and .npy."""
    root = tmp_path_factory.mktemp("scans")
    v = case.volume
    files = {
        "nifti": write_nifti(v, root / "scan.nii.gz"),
        "dicom": root / "dicom",
        "png": root / "png",
        "zip": root / "dicom.zip",
        "npy": root / "scan.npz",
    }
    write_dicom_series(v, files["dicom"])
    write_slices(v, files["png"], window_hu=(-600.0, 1500.0))
    with zipfile.ZipFile(files["zip"], "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(files["dicom"].iterdir()):
            zf.write(f, f"series/{f.name}")
    np.savez(
        files["npy"], voxels=v.voxels, spacing_mm=np.array(v.spacing_mm), origin_mm=np.array(v.origin_mm)
    )
    return files
