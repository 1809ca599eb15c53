"""Training-step speed of our 3D CNNs against MONAI's same-architecture ResNets, side by side.

    python bench/bench_train_step.py [--quick] [--models r3d_18 ...] [--inputs 1x1x40x128x128 ...]
        [--reps 5] [--clock wall|cpu] [--threads N] [--bf16 auto|on|off] [--compile] [--crash-demo] [--check]
        [--device cpu|cuda]

One training step = forward, cross-entropy, backward and an Adam step (lr 1e-3), on a random batch
of the given input shape ``BxCxDxHxW``. Configurations, all built from the same weights:

* ``monai fp32``: MONAI's ``resnetXX`` with our architecture (stem 7x7x7 with stride (1, 2, 2),
  shortcut A for 10/18/34 and B for 50+, no projection bias), fp32 eager, default Adam. R(2+1)D has
  no MONAI counterpart; its speed-ups are against our own fp32 step.
* ``fp32``: ours, fp32 eager, default Adam.
* ``bf16 raw`` (``--raw``): ours under bf16 autocast as torch runs it, where a convolution sees an
  input thinner than its kernel, which torch 2.13's CPU bf16 kernel gets wrong (wrong gradients;
  on small inputs a crash of the whole process; see ``ctcovid.train.speed``).
* ``bf16``: bf16 autocast with those convolutions folded into 2D (``DepthFoldedConv3d``).
* ``bf16+cl``: the same in channels_last_3d (skipped for the known heap-corruption inputs).
* ``tuned``: what ``fit`` runs (``ctcovid.train.speed.plan_execution`` with precision and
  channels_last "auto", fused Adam; on a CPU without native bf16 that is fp32 with thin
  convolutions folded into 2D, channels_last_3d where none is thin, fused Adam).

The bf16 configurations run only where the CPU computes bf16 natively (``--bf16 auto``; ``on``
forces them): elsewhere torch's bf16 conv3d is a scalar reference kernel (~0.2 GFLOP/s, minutes a
step). The bf16 peak is then measured once on a small probe and reported, marked emulated.
* ``compiled``: ``tuned`` plus ``model.compile()`` (``--compile``; compile time reported).

Every configuration runs once per round, in rotating order, for ``--reps`` rounds; the best and
median step times are printed (other jobs on a shared machine slow single rounds, rarely all).
FLOPs are counted once per model and input with ``FlopCounterMode`` on an fp32 step: "nominal"
is its default count, "useful" leaves out kernel taps that fall on zero padding (which oneDNN skips;
for thin inputs the nominal count is up to 3x the work done). GFLOP/s use the useful count and are
compared with the peak of a large 3x3x3 convolution (4x64x32x64x64, 64 channels out, forward
only) in fp32 and bf16, measured in the same rounds (best of all rounds, either layout).
``% peak`` compares a whole training step (forward, both backward passes, BatchNorm, ReLU, pooling,
Adam) with the forward pass of one ideal convolution: an upper bound near 100% is not reachable.

``--clock cpu`` runs everything on one thread and times it with the thread's CPU time, which other
jobs on the machine cannot inflate: use it for ratios on a shared box. ``--crash-demo`` runs the
known torch crash (channels_last_3d + bf16 backward on 3-channel 4-slice input) in a subprocess,
raw and with depth folding. ``--check`` compares every bf16 3D convolution with fp32 at the
shapes each model sees, raw and folded.

``--device cuda`` runs every configuration on the GPU (timed with ``torch.cuda.synchronize``):
``bf16 raw`` is then always timed (the CPU kernel bug does not exist there), ``tuned`` is what
``fit`` runs on CUDA (bf16 autocast, no folding, fused Adam, cudnn benchmark), and the peak probe
runs on the GPU too. ``--crash-demo`` and ``--check`` stay CPU-only.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from _machine import commit, cpu_name
from ctcovid.models import create_model
from ctcovid.train import fold, speed

MONAI_DEPTH = {"r3d_10": 10, "r3d_18": 18, "r3d_34": 34, "r3d_50": 50, "ct_s50": 50}
ALL_MODELS = ["r3d_18", "r3d_50", "r2plus1d_18", "ct_s50"]
ALL_INPUTS = ["1x1x40x128x128", "8x3x4x224x224"]
PEAK_SHAPE = (4, 64, 32, 64, 64)
#: Peak probe for bf16 on CPUs without native bf16, where the full probe would take minutes.
SMALL_PEAK_SHAPE = (1, 64, 8, 32, 32)

Step = Callable[[], None]


# --------------------------------------------------------------------------- machine
def machine_info() -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        import monai

        monai_version = monai.__version__
    except ImportError:
        monai_version = "not installed"
    return [
        f"platform: {platform.platform()}  python {platform.python_version()}  commit {commit()}",
        f"cpu: {cpu_name()}; os.cpu_count()={os.cpu_count()}, usable={usable}, torch threads={torch.get_num_threads()}, "
        f"load average {load:.1f}",
        f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), monai {monai_version}, "
        f"numpy {np.__version__}; native bf16 on this CPU: {speed.cpu_has_native_bf16()}",
        *(
            [f"gpu: {torch.cuda.get_device_name()}, cudnn {torch.backends.cudnn.version()}"]
            if torch.cuda.is_available()
            else []
        ),
    ]


# --------------------------------------------------------------------------- FLOPs
def _useful_pairs(n_in: int, n_out: int, k: int, s: int, p: int, dil: int) -> int:
    """(output position, kernel tap) pairs along one axis whose tap lands on real input, not padding."""
    return sum(1 for o in range(n_out) for t in range(k) if 0 <= o * s - p + t * dil < n_in)


def _useful_conv(x_shape: Any, w_shape: Any, _bias: Any, stride: Any, padding: Any, dilation: Any,
                 transposed: bool, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:  # fmt: skip
    if transposed or isinstance(padding, str):
        return 2 * math.prod(out_shape[2:]) * math.prod(w_shape) * x_shape[0]
    dims = len(x_shape) - 2
    pairs = math.prod(
        _useful_pairs(x_shape[2 + i], out_shape[2 + i], w_shape[2 + i], stride[i], padding[i], dilation[i])
        for i in range(dims)
    )
    return 2 * x_shape[0] * w_shape[0] * w_shape[1] * pairs


def _useful_conv_backward(grad_out_shape: Any, x_shape: Any, w_shape: Any, _bias: Any, stride: Any,
                          padding: Any, dilation: Any, transposed: bool, _output_padding: Any, _groups: Any,
                          output_mask: Any, out_shape: Any, **kwargs: Any) -> int:  # fmt: skip
    once = _useful_conv(
        x_shape, w_shape, None, stride, padding, dilation, transposed, out_shape=grad_out_shape
    )
    return once * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(step: Step) -> tuple[int, int]:
    """Nominal and useful FLOPs of one call of ``step``."""
    with FlopCounterMode(display=False) as nominal:
        step()
    aten = torch.ops.aten
    mapping = {aten.convolution: _useful_conv, aten._convolution: _useful_conv,
               aten.convolution_backward: _useful_conv_backward}  # fmt: skip
    with FlopCounterMode(display=False, custom_mapping=mapping) as useful:
        step()
    return nominal.get_total_flops(), useful.get_total_flops()


# --------------------------------------------------------------------------- models and steps
def monai_model(name: str, in_channels: int) -> nn.Module | None:
    if name not in MONAI_DEPTH:
        return None
    try:
        from monai.networks.nets import resnet
    except ImportError:
        return None
    depth = MONAI_DEPTH[name]
    return getattr(resnet, f"resnet{depth}")(
        spatial_dims=3,
        n_input_channels=in_channels,
        num_classes=3,
        shortcut_type="A" if depth in (10, 18, 34) else "B",
        conv1_t_size=7,
        conv1_t_stride=(1, 2, 2),
        bias_downsample=False,
    )


def make_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    fused: bool = False,
) -> Step:
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = model(x)
        loss_fn(logits.float(), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def peak_probes(
    bf16: bool = True, shape: tuple[int, ...] = PEAK_SHAPE, device: str = "cpu"
) -> dict[str, Step]:
    """Forward of one large 3x3x3 convolution per dtype and layout (the machine's conv3d peak)."""
    g = torch.Generator().manual_seed(1)
    probes: dict[str, Step] = {}
    dtypes = (("fp32", torch.float32), ("bf16", torch.bfloat16)) if bf16 else (("fp32", torch.float32),)
    for label, dtype in dtypes:
        for cl in (False, True):
            conv = nn.Conv3d(64, 64, 3, padding=1, bias=False).to(device, dtype)
            x = torch.randn(shape, generator=g).to(device, dtype)
            if cl:
                conv = conv.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
                x = x.contiguous(memory_format=torch.channels_last_3d)

            def run(conv: nn.Module = conv, x: torch.Tensor = x) -> None:
                with torch.no_grad():
                    conv(x)

            probes[f"{label}{' cl' if cl else ''}"] = run
    return probes


def peak_flops(shape: tuple[int, ...] = PEAK_SHAPE) -> int:
    conv = nn.Conv3d(64, 64, 3, padding=1, bias=False)
    x = torch.zeros(shape)

    def run() -> None:
        with torch.no_grad():
            conv(x)

    return count_flops(run)[1]


# --------------------------------------------------------------------------- timing
class Clock:
    def __init__(self, kind: str, cuda: bool = False) -> None:
        self.kind = kind
        self.cuda = cuda

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()  # the GPU's queued work belongs to the step being timed
        return time.thread_time() if self.kind == "cpu" else time.perf_counter()


def timed_rounds(steps: dict[str, Step], reps: int, clock: Clock, times: dict[str, list[float]]) -> None:
    names = list(steps)
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t0 = clock()
            steps[name]()
            times.setdefault(name, []).append(clock() - t0)


# --------------------------------------------------------------------------- one model x input
def bench_one(
    name: str, shape: tuple[int, ...], args: argparse.Namespace, clock: Clock, peaks: dict[str, list[float]]
) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    b, c, depth = shape[:3]
    dev = torch.device(args.device)
    x = torch.rand(shape).to(dev)
    y = torch.randint(0, 3, (b,)).to(dev)
    base = create_model(name, in_channels=c)
    n_params = sum(p.numel() for p in base.parameters())
    steps: dict[str, Step] = {}
    notes: list[str] = []
    theirs = monai_model(name, c)
    if theirs is not None:
        n_theirs = sum(p.numel() for p in theirs.parameters())
        if n_theirs != n_params:
            notes.append(f"MONAI model has {n_theirs} parameters, ours {n_params}")
        steps["monai fp32"] = make_step(theirs.to(dev), x, y)
    else:
        notes.append("no MONAI model of this architecture: speed-ups are against our fp32")
    inputs = speed.conv3d_inputs(base, shape)
    thin = fold.thin_convs(base, inputs)
    steps["fp32"] = make_step(copy.deepcopy(base).to(dev), x, y)
    raw = copy.deepcopy(base).to(dev)
    folded = copy.deepcopy(base)
    fold.fold_thin_convs(folded)
    folded = folded.to(dev)
    if thin:
        notes.append(f"{len(thin)} of {len(inputs)} 3D convolutions see inputs thinner than their kernel")
    if not args.bf16:
        notes.append("bf16 not timed: no native bf16 on this CPU (--bf16 on forces it)")
    else:
        if thin and (args.raw or dev.type == "cuda"):
            steps["bf16 raw"] = make_step(raw, x, y, dtype=torch.bfloat16)
        steps["bf16"] = make_step(folded, x, y, dtype=torch.bfloat16)
        if speed.channels_last_crash_case(dev, torch.bfloat16, c, depth):
            notes.append(
                "bf16+cl skipped: the known torch crash case (3+ channels, <= 4 slices); see --crash-demo"
            )
        else:
            steps["bf16+cl"] = make_step(
                copy.deepcopy(folded), x, y, dtype=torch.bfloat16, channels_last=True
            )
    tuned = copy.deepcopy(base).to(dev)
    plan = speed.plan_execution(
        tuned, dev, precision="auto", channels_last="auto", compile=False, shape=shape
    )
    steps["tuned"] = make_step(
        tuned, x, y, dtype=plan.autocast_dtype, channels_last=plan.channels_last, fused=plan.fused_optimizer
    )
    notes.append("tuned = " + "; ".join([*plan.notes, "fused Adam" if plan.fused_optimizer else "Adam"]))
    if args.compile:
        compiled = copy.deepcopy(base).to(dev)
        cplan = speed.plan_execution(
            compiled, dev, precision="auto", channels_last="auto", compile=True, shape=shape
        )
        compiled.compile()
        step = make_step(compiled, x, y, dtype=cplan.autocast_dtype, channels_last=cplan.channels_last,
                         fused=cplan.fused_optimizer)  # fmt: skip
        t0 = time.perf_counter()
        try:
            step()
            steps["compiled"] = step
            notes.append(f"torch.compile: first step (compiling) took {time.perf_counter() - t0:.0f} s wall")
        except Exception as e:
            notes.append(
                f"torch.compile failed after {time.perf_counter() - t0:.0f} s: {type(e).__name__}: {e}"
            )
    nominal, useful = count_flops(steps["fp32"])
    for step in steps.values():
        step()  # warm-up: oneDNN primitives, allocator
    probes = peak_probes(bf16=args.bf16, device=args.device)
    times: dict[str, list[float]] = {}
    reps = args.reps if useful < 1e12 else max(2, args.reps // 2)
    timed_rounds({**steps, **{f"peak {k}": v for k, v in probes.items()}}, reps, clock, times)
    for k, v in times.items():
        if k.startswith("peak "):
            peaks.setdefault(k[5:], []).extend(v)
    print(f"\n## {name} at input {'x'.join(map(str, shape))}: {n_params / 1e6:.1f}M parameters, "
          f"{nominal / 1e9:.1f} GFLOP nominal / {useful / 1e9:.1f} GFLOP useful per step, {reps} rounds")  # fmt: skip
    for note in notes:
        print(f"   {note}")
    return [
        {
            "model": name,
            "input": shape,
            "config": k,
            "best": min(v),
            "median": statistics.median(v),
            "useful": useful,
        }
        for k, v in times.items()
        if not k.startswith("peak ")
    ]


def report(rows: list[dict[str, Any]], peak: dict[str, float]) -> None:
    ref = next((r for r in rows if r["config"] == "monai fp32"), None) or next(
        r for r in rows if r["config"] == "fp32"
    )
    print(
        f"{'config':<12} {'best s':>8} {'median s':>9} {'speed-up':>9} {'GFLOP/s':>8} {'% bf16 pk':>9} {'% fp32 pk':>9}"
    )
    for r in rows:
        gflops = r["useful"] / r["best"] / 1e9
        print(
            f"{r['config']:<12} {r['best']:>8.3f} {r['median']:>9.3f} {ref['best'] / r['best']:>8.2f}x "
            f"{gflops:>8.0f} {100 * gflops / peak['bf16']:>8.0f}% {100 * gflops / peak['fp32']:>8.0f}%",
            flush=True,
        )


# --------------------------------------------------------------------------- extras
CRASH_SCRIPT = """
import sys, torch
from ctcovid.models import create_model
from ctcovid.train import fold, speed
model = create_model("r3d_10", in_channels=3)
if sys.argv[1] == "folded":
    fold.fold_thin_convs(model)
model = model.to(memory_format=torch.channels_last_3d)
x = torch.rand(2, 3, 4, 64, 64).contiguous(memory_format=torch.channels_last_3d)
opt = torch.optim.Adam(model.parameters())
for _ in range(3):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(1).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
print("finished")
"""


def crash_demo() -> None:
    print(
        "\n## known crash: r3d_10, channels_last_3d + bf16 autocast, input 2x3x4x64x64, 3 steps (subprocess)"
    )
    for mode in ("raw", "folded"):
        proc = subprocess.run(
            [sys.executable, "-c", CRASH_SCRIPT, mode], capture_output=True, text=True, timeout=600
        )
        last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        print(f"   {mode:<7} exit status {proc.returncode}: {last[0][:100]}")


CHECK_SCRIPT = """
import sys, torch
from ctcovid.models import create_model
from ctcovid.train import fold, speed
name, shape, folded = sys.argv[1], tuple(int(v) for v in sys.argv[2].split("x")), sys.argv[3] == "folded"
model = create_model(name, in_channels=shape[1])
if folded:
    fold.fold_thin_convs(model)
bad = speed.bf16_conv_mismatches(model, shape)
print(", ".join(f"{k} {v:.3g}" for k, v in bad.items()) or "none")
"""


def check(models: list[str], shapes: list[tuple[int, ...]]) -> None:
    print("\n## bf16 vs fp32, every 3D convolution at the shape it sees (batch 1, subprocess); relative "
          f"error > {speed.BF16_TOLERANCE} is wrong")  # fmt: skip
    for name in models:
        for shape in shapes:
            text = "x".join(map(str, shape))
            found = []
            for mode in ("raw", "folded"):
                proc = subprocess.run([sys.executable, "-c", CHECK_SCRIPT, name, text, mode], capture_output=True,
                                      text=True, timeout=1200)  # fmt: skip
                lines = proc.stdout.strip().splitlines()
                found.append(
                    lines[-1] if proc.returncode == 0 and lines else f"crashed (exit {proc.returncode})"
                )
            print(f"   {name} {text}: wrong raw: {found[0]}; wrong folded: {found[1]}", flush=True)


def parse_shape(text: str) -> tuple[int, ...]:
    shape = tuple(int(v) for v in text.lower().split("x"))
    if len(shape) != 5:
        raise argparse.ArgumentTypeError(f"input {text!r} must be BxCxDxHxW, e.g. 1x1x40x128x128")
    return shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(ALL_MODELS)}")
    ap.add_argument(
        "--inputs", nargs="+", type=parse_shape, default=None, help=f"default: {' '.join(ALL_INPUTS)}"
    )
    ap.add_argument("--reps", type=int, default=5, help="rounds (halved for steps over 1 TFLOP)")
    ap.add_argument("--quick", action="store_true", help="r3d_18 only, 3 rounds")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: one thread, timed by thread CPU time (robust on a shared machine)")  # fmt: skip
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads for --clock wall (0: torch default)"
    )
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                    help="time bf16 configurations (auto: where the CPU has native bf16)")  # fmt: skip
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes per model)")
    ap.add_argument("--crash-demo", action="store_true", help="run the known torch crash in a subprocess")
    ap.add_argument("--check", action="store_true", help="compare bf16 with fp32 for every convolution")
    ap.add_argument("--raw", action="store_true", help="also time bf16 without depth folding (may crash)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the steps run")
    args = ap.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            ap.error("--device cuda: CUDA is not available here")
        torch.backends.cudnn.benchmark = True  # as fit does on CUDA
    models = args.models or (["r3d_18"] if args.quick else ALL_MODELS)
    shapes = args.inputs or [parse_shape(s) for s in ALL_INPUTS]
    if args.quick:
        args.reps = min(args.reps, 3)
    native_bf16 = speed.native_bf16(torch.device(args.device))
    args.bf16 = args.bf16 == "on" or (args.bf16 == "auto" and native_bf16)
    if args.clock == "cpu":
        torch.set_num_threads(1)
    elif args.threads:
        torch.set_num_threads(args.threads)
    for line in machine_info():
        print(line)
    print(f"clock: {'thread CPU time, 1 thread' if args.clock == 'cpu' else 'wall'}; {args.reps} rounds")
    clock = Clock(args.clock, cuda=args.device == "cuda")
    peaks: dict[str, list[float]] = {}
    if not args.bf16:
        # bf16 is a scalar reference kernel here: one small probe, once, so the run still states it.
        probes = peak_probes(bf16=True, shape=SMALL_PEAK_SHAPE)
        t0 = clock()
        probes["bf16"]()
        scale = peak_flops() / peak_flops(SMALL_PEAK_SHAPE)  # as if the full probe ran at that rate
        peaks["bf16 (emulated)"] = [(clock() - t0) * scale]
    results = []
    for name in models:
        for shape in shapes:
            results.append(bench_one(name, shape, args, clock, peaks))
            peak = _peak(peaks)
            report(results[-1], peak)
    flops = peak_flops()
    print(f"\n## conv3d peak (3x3x3, {'x'.join(map(str, PEAK_SHAPE))} -> 64 channels, forward, best of "
          f"{len(peaks['fp32'])} rounds spread over the run)")  # fmt: skip
    for k, v in peaks.items():
        probe = "x".join(map(str, SMALL_PEAK_SHAPE)) if "emulated" in k else "the probe"
        print(f"   {k:<16} {flops / min(v) / 1e9:8.2f} GFLOP/s  (measured on {probe}, {len(v)} rounds)")
    peak = _peak(peaks)
    print("\n## summary (GFLOP/s against the final peaks)")
    for rows in results:
        print(f"\n{rows[0]['model']} {'x'.join(map(str, rows[0]['input']))}")
        report(rows, peak)
    if args.crash_demo:
        crash_demo()
    if args.check:
        check(models, shapes)


def _peak(peaks: dict[str, list[float]]) -> dict[str, float]:
    flops = peak_flops()
    best = {k: flops / min(v) / 1e9 for k, v in peaks.items()}
    return {p: max(v for k, v in best.items() if k.startswith(p)) for p in ("fp32", "bf16")}


if __name__ == "__main__":
    main()
