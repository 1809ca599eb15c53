"""Depth handling: uniformize every scan to a fixed number of slices, or cut it into chunks.

Uniformization (COVID-Net CT-S, Tuinstra et al. 2021, after Zunair et al. 2020) resamples a scan
of ``D`` slices to ``depth`` slices (default 40) by spline interpolation along z only: the result
is ``scipy.ndimage.zoom(vol, (depth / D, 1, 1), order=order, mode="mirror")`` (``grid_mode=False``:
the first and last slices map onto the first and last output slices). Inside the scan that is
exactly scipy's default ``mode="constant"`` (its spline prefilter mirrors too); at the last slice
the default is wrong for some lengths: the last output position, ``(depth - 1) * (D - 1) /
(depth - 1)``, rounds to a hair above ``D - 1``, counts as outside the scan and gets ``cval`` = 0.
With ``order=3`` to 40 slices that zeroes the last slice of scans of 26, 51, 56, 101, 106, ...
slices (29 lengths below 600; 36 for 24 slices; 16 slices failed outright): a slice of water
(0 HU) at the lung apex. ``mirror`` folds the hair back inside.

Because the operation acts on z alone it is a linear map ``R^D -> R^depth``: we obtain its
``(depth, D)`` matrix once per ``(D, depth, order)`` by letting scipy zoom the identity (prefilter
included), then apply it to all ``H * W`` columns with float32 matrix products (one per block of
output slices, reading only the input slices whose weights are not negligible). Same numbers as
scipy (to float32 rounding), without the 3D prefilter and per-voxel spline evaluation.

Stacking (CC-CCII 3D ResNet, depth-n study) cuts a scan into consecutive sub-volumes of ``n``
slices. See :func:`chunk_ranges` for the policies at the end of a scan and for short scans.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import scipy.ndimage as ndi

from ctcovid.errors import ConfigError

SPLINE_ORDERS: tuple[int, ...] = (0, 1, 3)
LastPolicy = Literal["shift", "drop", "pad"]
ShortPolicy = Literal["pad", "drop"]
LAST_POLICIES: tuple[str, ...] = ("shift", "drop", "pad")
SHORT_POLICIES: tuple[str, ...] = ("pad", "drop")


# Output rows are computed in blocks of about this many; each block only reads the input
# slices its weights reach (the spline prefilter's weights decay as 0.268**distance).
_ROWS_PER_BLOCK = 5
_NEGLIGIBLE_WEIGHT = 1e-8  # dropped weights sum to < 1e-6: far below float32 HU rounding


@lru_cache(maxsize=64)
def _zoom_operator(
    d_in: int, d_out: int, order: int
) -> tuple[np.ndarray, tuple[tuple[int, int, int, int], ...]]:
    if d_in == 1:
        # scipy cannot place one sample on a corner-aligned grid; every output slice is the input.
        return np.ones((d_out, 1), dtype=np.float32), ((0, d_out, 0, 1),)
    eye = np.eye(d_in, dtype=np.float64)
    # Column j of the operator is the response to a unit impulse at slice j. Zooming the
    # identity with factor 1 on its second axis leaves that axis untouched (grid_mode=False maps
    # integer positions onto themselves and a spline reproduces its samples there).
    matrix = ndi.zoom(eye, (d_out / d_in, 1.0), order=order, mode="mirror", grid_mode=False)
    assert matrix.shape == (d_out, d_in), matrix.shape
    # The cubic operator is dense (the prefilter is an IIR filter) but numerically banded: a
    # block of output rows needs only the input slices within ~14 slices of its positions.
    # Multiplying per block skips the zeros: ~4x fewer flops for 300 -> 40 slices.
    blocks = []
    for r0 in range(0, d_out, _ROWS_PER_BLOCK):
        r1 = min(r0 + _ROWS_PER_BLOCK, d_out)
        used = np.flatnonzero(np.abs(matrix[r0:r1]).max(axis=0) > _NEGLIGIBLE_WEIGHT)
        blocks.append((r0, r1, int(used[0]), int(used[-1]) + 1))
    out = matrix.astype(np.float32)
    out.flags.writeable = False  # shared by the cache
    return out, tuple(blocks)


def zoom_matrix(d_in: int, d_out: int, order: int = 3) -> np.ndarray:
    """The float32 ``(d_out, d_in)`` matrix of scipy's z-only zoom (see the module docstring)."""
    _check_zoom_args(d_in, d_out, order)
    return _zoom_operator(int(d_in), int(d_out), int(order))[0]


def _check_zoom_args(d_in: int, d_out: int, order: int) -> None:
    if order not in SPLINE_ORDERS:
        raise ConfigError(f"unknown spline order {order!r} for depth resampling; valid: {SPLINE_ORDERS}")
    if d_in < 1 or d_out < 1:
        raise ValueError(f"depths must be >= 1, got d_in={d_in}, d_out={d_out}")


def uniformize_depth(array: np.ndarray, depth: int = 40, order: int = 3) -> np.ndarray:
    """Resample axis 0 of a ``(D, H, W)`` array to ``depth`` slices; float32 out.

    ``order`` is the spline order: 3 (cubic B-spline, the paper's choice), 1 (linear) or 0
    (nearest). Equals ``scipy.ndimage.zoom(array, (depth / D, 1, 1), order=order, mode="mirror")``. The array
    may be a view cropped along axis 1 (rows); cropping columns forces a copy, so crop columns
    after this call when speed matters.
    """
    if array.ndim != 3:
        raise ValueError(f"uniformize_depth expects (D, H, W), got shape {array.shape}")
    d, h, w = array.shape
    _check_zoom_args(d, depth, order)
    matrix, blocks = _zoom_operator(int(d), int(depth), int(order))
    src = np.asarray(array, dtype=np.float32)
    # A row-cropped (D, h, W) view of a contiguous volume reshapes to a strided 2D matrix
    # without a copy and BLAS reads it in place; this avoids copying a 300-slice volume. (Other
    # views are copied by reshape.)
    columns = src.reshape(d, h * w)
    out = np.empty((depth, h * w), dtype=np.float32)
    for r0, r1, c0, c1 in blocks:
        np.matmul(matrix[r0:r1, c0:c1], columns[c0:c1], out=out[r0:r1])
    return out.reshape(depth, h, w)


def uniformized_spacing_z(spacing_z_mm: float, d_in: int, d_out: int) -> float:
    """z spacing after uniformization (corner-aligned: first and last slice positions kept)."""
    if d_in == 1 or d_out == 1:
        return spacing_z_mm
    return spacing_z_mm * (d_in - 1) / (d_out - 1)


def source_slices(d_in: int, d_out: int) -> np.ndarray:
    """Input z positions the ``d_out`` uniformized slices correspond to (corner-aligned)."""
    if d_out == 1 or d_in == 1:
        return np.zeros(d_out, dtype=np.float64)
    return np.arange(d_out, dtype=np.float64) * ((d_in - 1) / (d_out - 1))


@dataclass(frozen=True)
class Chunk:
    """``n`` consecutive slices of one scan, fed to the network as one sample.

    ``start:stop`` are the real slices of the (preprocessed) scan it holds; ``array`` is
    ``(C, n, H, W)``. When the chunk was padded (a short scan, or the ``"pad"`` policy),
    ``stop - start < n`` and the last real slice is repeated to fill ``n``. ``index`` counts the
    scan's chunks from 0, so per-chunk predictions can be grouped by ``scan_id`` (and then by
    patient) and averaged.
    """

    scan_id: str
    index: int
    start: int
    stop: int
    array: np.ndarray

    @property
    def n_real(self) -> int:
        return self.stop - self.start


def chunk_ranges(
    n_slices: int,
    depth: int,
    stride: int | None = None,
    last: LastPolicy = "shift",
    short: ShortPolicy = "pad",
) -> list[tuple[int, int]]:
    """The ``[start, stop)`` slice ranges of a scan of ``n_slices`` cut into chunks of ``depth``.

    Chunks start at ``0, stride, 2*stride, ...`` (``stride`` defaults to ``depth``: no overlap).
    When the scan does not end on a chunk boundary, ``last`` decides the tail:

    * ``"shift"`` (default): one more chunk ending at the last slice, ``[n - depth, n)``,
      overlapping its predecessor, so every slice is seen and every chunk is real data;
    * ``"drop"``: the tail slices are not used;
    * ``"pad"``: a chunk ``[start, n)`` shorter than ``depth``, padded by repeating its last slice
      (none when the next start lies beyond the scan, which a ``stride > depth`` allows).

    Every range holds at least one real slice and at most ``depth``.

    A scan shorter than ``depth`` gives one range ``[0, n)`` to be padded by edge replication
    (``short="pad"``, default) or no chunk at all (``short="drop"``).
    """
    if depth < 1:
        raise ConfigError(f"chunk depth must be >= 1, got {depth!r}")
    step = depth if stride is None else stride
    if step < 1:
        raise ConfigError(f"chunk stride must be >= 1, got {stride!r}")
    if last not in LAST_POLICIES:
        raise ConfigError(f"unknown last-chunk policy {last!r}; valid: {', '.join(LAST_POLICIES)}")
    if short not in SHORT_POLICIES:
        raise ConfigError(f"unknown short-scan policy {short!r}; valid: {', '.join(SHORT_POLICIES)}")
    if n_slices <= 0:
        return []
    if n_slices < depth:
        return [(0, n_slices)] if short == "pad" else []
    ranges = [(s, s + depth) for s in range(0, n_slices - depth + 1, step)]
    covered = ranges[-1][1]
    if covered < n_slices:
        if last == "shift":
            ranges.append((n_slices - depth, n_slices))
        elif last == "pad":
            # The first start whose full chunk would overrun the scan; with a stride longer than
            # the chunk it can lie beyond the scan (the tail is in a gap the stride skips anyway):
            # then there is no tail chunk, never an empty one.
            start = ranges[-1][0] + step
            if start < n_slices:
                ranges.append((start, n_slices))
    return ranges


def stack_chunks(
    array: np.ndarray,
    scan_id: str,
    depth: int,
    stride: int | None = None,
    last: LastPolicy = "shift",
    short: ShortPolicy = "pad",
) -> list[Chunk]:
    """Cut a ``(C, D, H, W)`` array into :class:`Chunk` s of ``depth`` slices (see :func:`chunk_ranges`)."""
    if array.ndim != 4:
        raise ValueError(f"stack_chunks expects (C, D, H, W), got shape {array.shape}")
    chunks = []
    for index, (start, stop) in enumerate(chunk_ranges(array.shape[1], depth, stride, last, short)):
        part = array[:, start:stop]
        if stop - start < depth:
            # Edge replication: repeat the last real slice, which keeps values realistic.
            pad = np.repeat(part[:, -1:], depth - (stop - start), axis=1)
            part = np.concatenate([part, pad], axis=1)
        chunks.append(Chunk(scan_id=scan_id, index=index, start=start, stop=stop, array=part))
    return chunks
