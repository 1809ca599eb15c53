"""Depth folding: a 3D convolution whose input is thinner than its kernel, computed as one 2D convolution.

Exact up to rounding (the same sums of products), with the same parameters and state dict. Why
(measured, see :mod:`ctcovid.train.speed` and ``bench/RESULTS.md``): torch 2.13's CPU bf16
``conv3d`` returns wrong gradients for such inputs, and in fp32 oneDNN spends time on the kernel
taps that fall on depth padding, which the folded 2D convolution skips (1.04-4.75x per
convolution on an AVX2 core).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fold_depth_conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, stride, padding, dilation, groups)`` computed with one ``F.conv2d``.

    Two exact rewritings, whichever moves less memory:

    * **weights fold** (large activations, small weights: stems, early stages): depth moves into
      the channels of both sides. Input channel ``(c, j)`` is channel ``c`` of slice ``j``, output
      channel ``(o, d)`` is channel ``o`` of output slice ``d``, and the 2D weight holds the 3D
      weight's tap ``t`` at ``(o, d), (c, j)`` when ``j = d * stride - padding + t * dilation``
      (zero elsewhere). Only taps that meet real slices are computed.
    * **input unfold** (small activations, large weights: late stages): each output slice becomes a
      batch item whose channels are the ``k`` input slices under the kernel (zero-padded), and the
      weight is used as it is, viewed as ``(O, C * k, kh, kw)``.
    """
    b, c, depth, h, w = x.shape
    out_c, c_per_group, k, kh, kw = weight.shape
    sd, pd, dd = stride[0], padding[0], dilation[0]
    out_depth = (depth + 2 * pd - dd * (k - 1) - 1) // sd + 1
    folded_weight = weight.numel() * out_depth * depth // k
    unfolded_input = x.numel() * k * out_depth // depth
    if folded_weight > weight.numel() + unfolded_input:
        xp = F.pad(x, (0, 0, 0, 0, pd, pd))
        slices = [d * sd + t * dd for d in range(out_depth) for t in range(k)]
        xa = xp.index_select(2, torch.tensor(slices, device=x.device)).view(b, c, out_depth, k, h, w)
        xa = xa.transpose(1, 2).reshape(b * out_depth, c * k, h, w)  # channels (c, tap)
        y = F.conv2d(xa, weight.reshape(out_c, c_per_group * k, kh, kw), None, stride[1:], padding[1:],
                     dilation[1:], groups)  # fmt: skip
        y = y.view(b, out_depth, out_c, *y.shape[-2:]).transpose(1, 2)  # (B, O, out_depth, H', W')
    else:
        taps, valid = [], []
        for d in range(out_depth):
            for j in range(depth):
                offset = j - d * sd + pd  # = tap * dilation when output slice d reads input slice j
                tap = offset // dd
                ok = offset % dd == 0 and 0 <= tap < k
                taps.append(tap if ok else 0)
                valid.append(ok)
        # One gather of the taps (its backward is one scatter-add), zeroing pairs no tap links.
        w2 = weight.index_select(
            2, torch.tensor(taps, device=weight.device)
        )  # (O, C/g, out_depth * depth, kh, kw)
        if not all(valid):
            w2 = w2 * torch.tensor(valid, dtype=w2.dtype, device=w2.device).view(1, 1, -1, 1, 1)
        w2 = w2.view(groups, out_c // groups, c_per_group, out_depth, depth, kh, kw)
        w2 = w2.permute(0, 1, 3, 2, 4, 5, 6).reshape(out_c * out_depth, c_per_group * depth, kh, kw)
        y = F.conv2d(x.reshape(b, c * depth, h, w), w2, None, stride[1:], padding[1:], dilation[1:], groups)
        y = y.reshape(b, out_c, out_depth, *y.shape[-2:])  # (B, O, out_depth, H', W')
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1, 1)
    return y


def _bf16_autocast_on_cpu() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


class DepthFoldedConv3d(nn.Conv3d):
    """An ``nn.Conv3d`` that, on CPU, folds inputs thinner than its kernel into a 2D convolution.

    Same parameters and state dict as ``nn.Conv3d``; other inputs and devices take the usual path.
    See the module docstring for the torch bug this avoids in bf16 and the speed it gains in fp32.
    """

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if (
            self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and input.dim() == 5
            and input.shape[2] < self.kernel_size[0]
            and input.device.type == "cpu"
        ):
            if _bf16_autocast_on_cpu():
                # Autocast does not see inside this function's ops as one conv3d; cast as it would.
                input, weight = input.to(torch.bfloat16), weight.to(torch.bfloat16)
                bias = bias.to(torch.bfloat16) if bias is not None else None
            return fold_depth_conv3d(
                input,
                weight,
                bias,
                tuple(self.stride),
                tuple(self.padding),  # type: ignore[arg-type]
                tuple(self.dilation),
                self.groups,
            )
        return super()._conv_forward(input, weight, bias)


def fold_thin_convs(model: nn.Module) -> list[str]:
    """Make every ``nn.Conv3d`` with a kernel deeper than 1 a :class:`DepthFoldedConv3d`, in place.

    The modules keep their identity, parameters, hooks and state-dict keys (only the class
    changes, which adds no state), so optimizers, DDP and checkpoints are unaffected. Returns the
    names of the modules changed.
    """
    names = []
    for name, module in model.named_modules():
        if type(module) is nn.Conv3d and module.kernel_size[0] > 1:
            module.__class__ = DepthFoldedConv3d
            names.append(name)
    return names


def thin_convs(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Names of the 3D convolutions whose input (``shapes``, from :func:`conv3d_inputs`) is thinner than the kernel."""
    modules = dict(model.named_modules())
    return [n for n, s in shapes.items() if s[2] < modules[n].kernel_size[0]]  # type: ignore[index]
