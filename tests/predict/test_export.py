from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctcovid.checkpoint import load_checkpoint, rebuild_model
from ctcovid.cli import main
from ctcovid.predict import ExportError, check_parity, export_model, load_exported
from ctcovid.preprocess import PreprocessConfig

pytest.importorskip(
    "onnxruntime", reason="ONNX export needs onnx and onnxruntime (pip install 'ctcovid[export]')"
)


@pytest.fixture(scope="module")
def exported(make_ckpt, tmp_path_factory) -> dict[str, Path]:
    ckpt = make_ckpt("stack")
    out = tmp_path_factory.mktemp("export")
    return {
        "ckpt": ckpt,
        "onnx": export_model(ckpt, out / "m.onnx", format="onnx"),
        "torchscript": export_model(ckpt, out / "m.torchscript.pt", format="torchscript"),
    }


def test_onnx_matches_pytorch_within_1e_4(exported) -> None:
    assert check_parity(exported["ckpt"], exported["onnx"], batch=3) <= 1e-4  # batch axis is dynamic


def test_torchscript_matches_pytorch_within_1e_5(exported) -> None:
    assert check_parity(exported["ckpt"], exported["torchscript"], batch=2) <= 1e-5


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_exported_file_carries_labels_and_preprocessing(exported, kind: str) -> None:
    loaded = load_exported(exported[kind])
    ckpt = load_checkpoint(exported["ckpt"])
    assert loaded.kind == kind and loaded.labels == ["NCP", "CP", "Normal"]
    assert loaded.preprocess == PreprocessConfig.from_dict(ckpt["preprocess"])
    assert loaded.metadata["model"] == "r3d_10" and loaded.metadata["input_shape"] == [1, 4, 32, 32]
    x = np.random.default_rng(0).random((1, 1, 4, 32, 32), dtype=np.float32)
    import torch

    with torch.inference_mode():
        ref = rebuild_model(ckpt)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(loaded(x), ref, atol=1e-4)


def test_onnx_metadata_is_readable_with_onnx_alone(exported) -> None:
    onnx = pytest.importorskip("onnx")
    props = {p.key: p.value for p in onnx.load(str(exported["onnx"])).metadata_props}
    assert {"ctcovid", "labels", "preprocess"} <= set(props)


def test_a_foreign_file_is_not_taken_for_an_export(tmp_path: Path) -> None:
    bogus = tmp_path / "x.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="not a readable ONNX model"):
        load_exported(bogus)
    with pytest.raises(ExportError, match="not found"):
        load_exported(tmp_path / "none.pt")
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_model(tmp_path / "c.pt", format="tflite")


def test_export_cli_writes_beside_the_checkpoint_and_checks_parity(make_ckpt, tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(Path(make_ckpt()).read_bytes())
    assert main(["export", str(ckpt), "--format", "torchscript"]) == 0
    assert (tmp_path / "best.torchscript.pt").is_file()
    out = capsys.readouterr().out
    assert "parity with PyTorch" in out and "labels" not in out.split("parity")[1]
