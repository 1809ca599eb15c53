"""Export a checkpoint's model to ONNX or TorchScript, carrying its labels and preprocessing.

The exported file describes itself like a checkpoint does: a JSON document (:func:`export_metadata`:
model name and arguments, labels, task, the preprocessing config, the input shape) is stored in
the ONNX ``metadata_props`` (key ``ctcovid``; ``labels`` and ``preprocess`` are also stored on their
own for people browsing the file in Netron) or in the TorchScript archive as the extra file
``ctcovid.json``. :func:`load_exported` reads either back, metadata included, and runs it
(onnxruntime on CPU, or ``torch.jit.load``).

The input is ``(B, C, D, H, W)`` float32 in [0, 1] as produced by the pipeline; the batch axis is
dynamic, and so is depth for ``depth_mode="keep"``. The output is logits ``(B, num_classes)``.
ONNX export uses PyTorch's TorchScript-based exporter (``dynamo=False``): the newer exporter
needs the ``onnxscript`` package and gives the same graph for these plain CNNs. Both PyTorch
paths are deprecated upstream but present in the torch versions this package accepts.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ctcovid.checkpoint import load_checkpoint, rebuild_model
from ctcovid.errors import CtcovidError, MissingExtraError
from ctcovid.preprocess.pipeline import PreprocessConfig

ExportFormat = Literal["onnx", "torchscript"]
EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torchscript")
METADATA_FORMAT = "ctcovid-export"
METADATA_VERSION = 1
_TS_EXTRA = "ctcovid.json"
_SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


class ExportError(CtcovidError, ValueError):
    """An export that cannot be made or a file that is not a ctcovid export."""


def input_shape(preprocess: PreprocessConfig) -> tuple[int, int, int, int]:
    """``(C, D, H, W)`` of one network input under ``preprocess`` (D = 32 stands in for "keep")."""
    depth = {"uniformize": preprocess.depth, "stack": preprocess.chunk_depth}.get(preprocess.depth_mode, 32)
    return preprocess.in_channels, depth, preprocess.size_hw[0], preprocess.size_hw[1]


def export_metadata(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What an exported model needs to be used: labels, preprocessing, model and input shape."""
    from ctcovid import __version__

    pre = PreprocessConfig.from_dict(ckpt["preprocess"])
    return {
        "format": METADATA_FORMAT,
        "version": METADATA_VERSION,
        "ctcovid_version": __version__,
        "model": ckpt["model"]["name"],
        "kwargs": ckpt["model"]["kwargs"],
        "labels": list(ckpt["labels"]),
        "task": ckpt.get("task", "diagnosis"),
        "preprocess": pre.to_dict(),
        "input_shape": list(input_shape(pre)),
        "dynamic_depth": pre.depth_mode == "keep",
        "epoch": ckpt.get("epoch"),
    }


def default_output(checkpoint: str | Path, fmt: str) -> Path:
    p = Path(checkpoint)
    if p.is_dir():
        return p / f"model{_SUFFIX[fmt]}"
    return p.with_name(p.stem + _SUFFIX[fmt])


def export_model(
    checkpoint: str | Path | dict[str, Any],
    out: str | Path | None = None,
    *,
    format: str = "onnx",
    opset: int = 17,
) -> Path:
    """Export the checkpoint's model; return the written file (written atomically).

    Raises:
        ExportError: unknown format, or no ``out`` for a checkpoint given as a dict.
        MissingExtraError: ``onnx`` is not installed (ONNX export only).
    """
    if format not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {format!r}; valid: {', '.join(EXPORT_FORMATS)}")
    if isinstance(checkpoint, dict):
        ckpt = checkpoint
        if out is None:
            raise ExportError("give an output path when exporting a checkpoint held in memory")
    else:
        ckpt = load_checkpoint(checkpoint)
    target = Path(out) if out is not None else default_output(checkpoint, format)  # type: ignore[arg-type]
    meta = export_metadata(ckpt)
    model = rebuild_model(ckpt)
    example = torch.rand(1, *meta["input_shape"], generator=torch.Generator().manual_seed(0))
    data = (
        _onnx_bytes(model, example, meta, opset)
        if format == "onnx"
        else _torchscript_bytes(model, example, meta)
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def _onnx_bytes(model: torch.nn.Module, example: torch.Tensor, meta: dict[str, Any], opset: int) -> bytes:
    try:
        import onnx
    except ImportError as e:
        raise MissingExtraError("onnx", "export") from e
    axes = {0: "batch", 2: "depth"} if meta["dynamic_depth"] else {0: "batch"}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        torch.onnx.export(
            model,
            (example,),
            buf,  # type: ignore[arg-type]  # the TorchScript-based exporter takes file objects too
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": axes, "logits": {0: "batch"}},
            opset_version=opset,
        )
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in (
        ("ctcovid", json.dumps(meta)),
        ("labels", json.dumps(meta["labels"])),
        ("preprocess", json.dumps(meta["preprocess"])),
    ):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "ctcovid"
    return bytes(proto.SerializeToString())


def _torchscript_bytes(model: torch.nn.Module, example: torch.Tensor, meta: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, buf, _extra_files={_TS_EXTRA: json.dumps(meta)})
    return buf.getvalue()


@dataclass
class ExportedModel:
    """An exported model read back: its metadata and a callable from inputs to logits."""

    path: Path
    kind: str
    metadata: dict[str, Any]
    _run: Callable[[np.ndarray], np.ndarray]

    @property
    def labels(self) -> list[str]:
        return list(self.metadata["labels"])

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.metadata["preprocess"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(B, K)`` of float32 inputs ``(B, C, D, H, W)``."""
        return self._run(np.ascontiguousarray(x, dtype=np.float32))


def load_exported(path: str | Path) -> ExportedModel:
    """Read an exported ONNX or TorchScript model and its ctcovid metadata.

    Raises:
        ExportError: the file is missing, unreadable, or carries no ctcovid metadata.
        MissingExtraError: ``onnxruntime`` is not installed (ONNX only).
    """
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"exported model '{p}' not found")
    if p.suffix.lower() == ".onnx":
        return _load_onnx(p)
    return _load_torchscript(p)


def _check_meta(p: Path, raw: str | bytes | None) -> dict[str, Any]:
    try:
        meta = json.loads(raw) if raw else None
    except ValueError as e:
        raise ExportError(f"'{p}' carries unreadable ctcovid metadata ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        raise ExportError(
            f"'{p}' is not a ctcovid export (no {METADATA_FORMAT!r} metadata); export it with ctcovid export"
        )
    return meta


def _load_onnx(p: Path) -> ExportedModel:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise MissingExtraError("onnxruntime", "export") from e
    try:
        session = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own (non-exported) exception types
        raise ExportError(f"'{p}' is not a readable ONNX model ({type(e).__name__}: {e})") from e
    meta = _check_meta(p, session.get_modelmeta().custom_metadata_map.get("ctcovid"))
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: x})[0])

    return ExportedModel(p, "onnx", meta, run)


def _load_torchscript(p: Path) -> ExportedModel:
    extra = {_TS_EXTRA: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load's notice
            module = torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
    except Exception as e:  # torch raises RuntimeError / ValueError / zip errors on foreign files
        raise ExportError(f"'{p}' is not a readable TorchScript model ({type(e).__name__}: {e})") from e
    meta = _check_meta(p, extra[_TS_EXTRA])
    module.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(module(torch.from_numpy(x)).numpy())

    return ExportedModel(p, "torchscript", meta, run)


def check_parity(
    checkpoint: str | Path | dict[str, Any], exported: str | Path, *, batch: int = 2, seed: int = 0
) -> float:
    """Largest absolute logit difference between the checkpoint's model and the export, on random inputs."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    model = rebuild_model(ckpt)
    loaded = load_exported(exported)
    shape = loaded.metadata["input_shape"]
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref = model(x).numpy()
    return float(np.abs(loaded(x.numpy()) - ref).max())
