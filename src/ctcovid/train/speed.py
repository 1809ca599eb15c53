"""Tuned execution: the autocast dtype, memory layout and kernels ``fit`` trains with.

Every rule here comes from a measurement on this project's machines (``bench/bench_train_step.py``,
figures in ``bench/RESULTS.md``):

* **bf16 autocast**: ``precision="auto"`` takes it on CUDA GPUs with bf16. On CPUs it is opt-in
  (``precision="bf16"``): with native bf16 (AVX512-BF16 or AMX) it made the 3D ResNets' training
  steps 2.4-9x faster on a Zen 5 CPU, but the issue's accuracy check (the synthetic demo trained
  in bf16 reaching fp32's accuracy) has not yet been run on such a CPU, so it is not a default
  there. Without native bf16 (AVX2 only, e.g. Zen 3) torch emulates it: conv3d ran at 0.13 GFLOP/s
  against 80 in fp32 (~600x slower), and asking for it logs a warning.
* **Depth folding.** torch 2.13's CPU bf16 ``conv3d`` (oneDNN 3.12) returns wrong weight gradients
  (garbage, inf or NaN) when the input is thinner than the kernel in depth, ``stride < D < kernel``
  (and for ``D == 1`` with one channel in channels-last layout), and corrupts the heap for some of
  those shapes (7-deep kernel, ``D == 4``). That is what made bf16 training "go NaN" on small
  volumes: the last stage of a 3D ResNet on 24 slices sees ``D == 2``. Such a convolution is
  computed instead as a 2D convolution over depth folded into channels
  (:func:`~ctcovid.train.fold.fold_depth_conv3d`): the same sum of products, exact up to rounding, and no slower.
  In fp32 the fold is done too, for speed: oneDNN's conv3d spends time on the kernel taps that
  fall on depth padding, the folded 2D convolution does not. Measured on a Zen 3 core (AVX2, no
  bf16), forward + backward of each thin convolution of r3d_18 and R(2+1)D-18 at 8x3x4x224x224
  is 1.04-4.75x faster folded, the r3d_18 training step 1.38x.
* **A numerical check before bf16 is used** (:func:`bf16_conv_mismatches`): each distinct 3D
  convolution of the model, at the shape it will see, is run once in bf16 and compared with fp32;
  ``precision="auto"`` falls back to fp32 if any differs by more than rounding.
* **channels_last_3d** with bf16 on CPU: 4% faster at 40 slices; never for the inputs of the known
  heap-corruption case (3+ channels, 4 slices). Not in fp32, where it wins for some models and
  loses for others (see :func:`resolve_channels_last`).
* **Fused Adam/AdamW** (``fused=True``): the optimizer step of a 33M-parameter network takes 21 ms
  instead of 156 ms on one core.

``torch.compile`` is an option (``train.compile``), off by default: on this CPU it took 50-110 s to
compile r3d_18 and the compiled step was not faster (0.94x).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ctcovid.errors import ConfigError, CtcovidError
from ctcovid.preprocess.pipeline import PreprocessConfig
from ctcovid.train.fold import fold_thin_convs, thin_convs

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16", "auto"]
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: A bf16 convolution counts as wrong when it differs from fp32 by more than this share of the
#: largest reference value. bf16 rounding gives 0.002-0.004 on these layers; the kernel bug >= 1.5.
BF16_TOLERANCE = 0.05


class Bf16Unsupported(CtcovidError, RuntimeError):
    """``precision='bf16'`` was asked for where bf16 would give wrong numbers."""


# --------------------------------------------------------------------------- hardware
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX), so oneDNN runs bf16 at ~2x fp32."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except RuntimeError:
                pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 faster than fp32 (CUDA with bf16 support, or a bf16 CPU)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` (None: fp32), before the numerical check.

    ``"auto"`` is bf16 on CUDA devices that support it and fp32 elsewhere: on CPUs bf16 is opt-in
    (see the module docstring), and asking for it on a CPU without native bf16 logs a warning.
    """
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and native_bf16(device) else None
    if precision not in PRECISIONS:
        raise ConfigError(
            f"train.precision={precision!r} is not one of {', '.join(map(repr, [*PRECISIONS, 'auto']))}"
        )
    if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        log.warning(
            "train.precision='bf16' on a CPU without native bf16 (no AVX512-BF16/AMX): torch emulates it, "
            "measured ~600x slower than fp32 for conv3d; use 'fp32' or 'auto'"
        )
    return PRECISIONS[precision]


# --------------------------------------------------------------------------- channels_last
def channels_last_crash_case(
    device: torch.device, dtype: torch.dtype | None, in_channels: int, depth: int | None
) -> bool:
    """The torch 2.13 CPU heap corruption: channels_last_3d + bf16 backward, 3+ channels, <= 4 slices.

    Measured on the 7x7x7 stem: 3, 4, 6, 8 and 16 input channels crash at 4 slices, 1 and 2 do not.
    Depth folding keeps that kernel from running, but channels_last gains nothing at these depths
    (every convolution is folded into 2D there), so it stays off rather than rely on the fold.
    """
    return (
        device.type == "cpu"
        and dtype == torch.bfloat16
        and in_channels >= 3
        and depth is not None
        and depth <= 4
    )


def resolve_channels_last(
    setting: bool | str, device: torch.device, dtype: torch.dtype | None, in_channels: int, depth: int | None
) -> bool:
    """``train.channels_last``: true/false, or "auto" (on for bf16 on CPU and CUDA, where it was measured to win).

    Not for fp32 (measured on a Zen 3 core at 1x1x40x128x128: r3d_18 steps 1.10x faster, r3d_50
    steps 0.86x, i.e. slower; with folded convolutions 0.85x). On an H200 (torch 2.11, cudnn 9.19)
    bf16 training steps in channels_last_3d were 1.15-2.19x faster than bf16 in NCDHW for r3d_18,
    r3d_50, R(2+1)D-18 and CT-S50 at 8x1x40x256x256 and 32x3x4x224x224, except r3d_50 at the
    latter (0.97x); ``bench/RESULTS.md``, "GPU".
    """
    if setting == "auto":
        wanted = device.type in ("cpu", "cuda") and dtype == torch.bfloat16
    elif isinstance(setting, bool):
        wanted = setting
    else:
        raise ConfigError(f"train.channels_last={setting!r} must be true, false or 'auto'")
    if wanted and channels_last_crash_case(device, dtype, in_channels, depth):
        log.warning(
            "channels_last disabled: channels_last_3d + bf16 crashes on %d-channel %s-slice inputs on CPU",
            in_channels,
            depth,
        )
        return False
    return wanted


# --------------------------------------------------------------------------- numerical check
def conv3d_inputs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Input shape of every ``nn.Conv3d`` of ``model`` for an input of ``input_shape``.

    Found with one fp32 forward pass of a batch of one in eval mode without gradients, so the
    model's weights and BatchNorm statistics are left as they were. (The meta device would avoid
    the compute but costs seconds of imports on first use, more than this pass.)
    """
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv3d):

            def record(m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                shapes.setdefault(name, (input_shape[0], *args[0].shape[1:]))

            handles.append(module.register_forward_pre_hook(record))
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape[1:]), device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes


def _conv_error(
    conv: nn.Conv3d, shape: tuple[int, ...], channels_last: bool, seed: int, device: torch.device
) -> float:
    """Largest relative difference of a bf16-autocast conv (output and both gradients) from fp32.

    On CUDA the fp32 reference runs with TF32 off, so it is exact fp32.
    """
    g = torch.Generator().manual_seed(seed)
    probe = conv.__class__(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        conv.groups,
        conv.bias is not None,
    )
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.randn(p.shape, generator=g).to(torch.bfloat16))  # exactly representable
    x = torch.randn((1, *shape[1:]), generator=g).to(torch.bfloat16).float().to(device)
    probe = probe.to(device)
    if channels_last:
        probe = probe.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y = probe(x)
    grad = torch.randn(y.shape, generator=g).to(torch.bfloat16).float().to(device)
    y.float().backward(grad)
    ref_x = x.detach().contiguous().requires_grad_(True)
    ref_w = probe.weight.detach().contiguous().requires_grad_(True)
    ref_b = probe.bias.detach().clone() if probe.bias is not None else None
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        ref = F.conv3d(ref_x, ref_w, ref_b, probe.stride, probe.padding, probe.dilation, probe.groups)  # type: ignore[arg-type]
        ref.backward(grad)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    errors = []
    for got, want in ((y.float(), ref), (x.grad, ref_x.grad), (probe.weight.grad, ref_w.grad)):
        assert got is not None and want is not None
        scale = want.abs().max().item() or 1.0
        err = (got.float() - want).abs().max().item() / scale
        errors.append(err if err == err else float("inf"))  # NaN counts as wrong
    return max(errors)


def bf16_conv_mismatches(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    channels_last: bool = False,
    thin_only: bool = False,
    shapes: dict[str, tuple[int, ...]] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """3D convolutions of ``model`` whose bf16 autocast result on ``device`` is wrong at ``input_shape``.

    Each distinct convolution (kernel deeper than 1; geometry and input shape) is run once with
    random bf16-representable data, batch 1, and compared with fp32 on the same values. Returns
    ``{module name: relative error}`` for those beyond :data:`BF16_TOLERANCE`; empty when all
    agree. Costs about one training step of the model at batch 1; with ``thin_only`` only the
    convolutions whose input is thinner than their kernel (the ones the torch bug hits, which
    :class:`~ctcovid.train.fold.DepthFoldedConv3d` computes its own way) are checked, which is cheap. ``shapes``:
    the result of :func:`conv3d_inputs` for ``input_shape``, when already known.
    """
    errors: dict[tuple[Any, ...], float] = {}
    bad: dict[str, float] = {}
    modules = dict(model.named_modules())
    if shapes is None:
        shapes = conv3d_inputs(model, input_shape)
    for i, (name, shape) in enumerate(shapes.items()):
        conv = modules[name]
        assert isinstance(conv, nn.Conv3d)
        if conv.kernel_size[0] == 1 or conv.padding_mode != "zeros":
            continue  # the kernel bug is in depth; 1-deep kernels were never wrong
        if thin_only and shape[2] >= conv.kernel_size[0]:
            continue
        key = (
            type(conv),
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            shape[1:],
        )
        if key not in errors:
            errors[key] = _conv_error(conv, shape, channels_last, seed=i, device=torch.device(device))
        if errors[key] > BF16_TOLERANCE:
            bad[name] = errors[key]
    return bad


# --------------------------------------------------------------------------- determinism
def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """``train.deterministic``: deterministic kernels (and no cudnn autotuning), else cudnn benchmark on CUDA.

    On CUDA cuBLAS needs a fixed workspace (read at each call, so set before the first matmul), and
    max/avg-pool3d backward have no deterministic kernel: torch warns for them instead of stopping
    the run, so bitwise-equal reruns hold on CPU only (two H200 runs differed; bench/RESULTS.md).
    """
    if deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            log.info("deterministic on CUDA: pooling backward stays non-deterministic (no such kernel)")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


# --------------------------------------------------------------------------- the plan
@dataclass
class ExecutionPlan:
    """How ``fit`` runs the model: autocast dtype, layout, optimizer kernel, compile; ``notes`` say why."""

    autocast_dtype: torch.dtype | None
    channels_last: bool
    fused_optimizer: bool
    compile: bool = False
    folded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def input_shape(pre: PreprocessConfig, batch_size: int) -> tuple[int, ...] | None:
    """``(B, C, D, H, W)`` of a training batch, or None when depth varies by scan (``depth_mode='keep'``)."""
    depth = {"uniformize": pre.depth, "stack": pre.chunk_depth}.get(pre.depth_mode)
    if depth is None:
        return None
    return (batch_size, pre.in_channels, depth, *pre.size_hw)


def fused_optimizer_supported(device: torch.device) -> bool:
    """``torch.optim.Adam(fused=True)`` exists for CPU and CUDA tensors."""
    return device.type in ("cpu", "cuda")


def plan_execution(
    model: nn.Module,
    device: torch.device,
    *,
    precision: str,
    channels_last: bool | str,
    compile: bool,
    shape: tuple[int, ...] | None,
) -> ExecutionPlan:
    """Choose (and apply, for depth folding) the execution of ``model`` on ``device`` for ``shape`` batches.

    Raises:
        Bf16Unsupported: ``precision='bf16'`` on a CPU where a convolution of the model gives wrong
            bf16 results even after depth folding.
    """
    notes: list[str] = []
    dtype = resolve_precision(precision, device)
    folded: list[str] = []
    in_channels = shape[1] if shape else 1
    depth = shape[2] if shape else None
    shapes: dict[str, tuple[int, ...]] | None = None
    if device.type == "cpu":
        folded = fold_thin_convs(model)
        if shape is not None:
            shapes = conv3d_inputs(model, shape)
            n_thin = len(thin_convs(model, shapes))
            if n_thin:
                notes.append(
                    f"{n_thin} of {len(shapes)} 3D convolutions see inputs thinner than their kernel: folded into 2D"
                )
    layout = resolve_channels_last(channels_last, device, dtype, in_channels, depth)
    if dtype == torch.bfloat16 and device.type == "cpu" and shape is not None:
        bad = bf16_conv_mismatches(model, shape, channels_last=layout, thin_only=True, shapes=shapes)
        if bad:
            # Only an explicit 'bf16' reaches here ('auto' is fp32 on CPUs): refuse rather than train wrong.
            where = ", ".join(f"{k} (error {v:.3g})" for k, v in list(bad.items())[:4])
            raise Bf16Unsupported(
                f"train.precision='bf16' would train with wrong gradients on this CPU: the bf16 "
                f"convolution of {where} differs from fp32 at input {shape} (torch {torch.__version__}). "
                "Use precision='auto' or 'fp32'."
            )
        notes.append("bf16 checked against fp32 on the thin 3D convolutions")
    if dtype is not None:
        notes.append(f"autocast {str(dtype).removeprefix('torch.')}")
    if layout:
        notes.append("channels_last_3d")
    fused = fused_optimizer_supported(device)
    return ExecutionPlan(dtype, layout, fused, compile, folded, notes)
