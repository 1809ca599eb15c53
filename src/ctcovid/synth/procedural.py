"""Procedural primitives of the phantom: smooth random fields, tubes on a voxel grid, vessel trees.

All work in millimetres in a frame whose axis order matches the voxel array ``(z, y, x)``, so
what they draw does not depend on the voxel size; only its sampling does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Tubes = tuple[np.ndarray, np.ndarray, np.ndarray]  # (p0 (n, 3), p1 (n, 3), radius (n,)) in mm


class Lattice:
    """Smooth Gaussian random field (unit variance, ~3 cell correlation) on a lattice in the patient frame.

    Anchored in mm, not in voxels, so every sampling of a patient sees the same texture.
    """

    def __init__(self, rng: np.random.Generator, cell_mm: float = 12.0) -> None:
        self.cell = cell_mm
        self.lo = np.array([-260.0, -260.0, -300.0])
        shape = tuple(int(-2 * x / cell_mm) + 2 for x in self.lo)
        g = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0, mode="wrap")
        self.values = g / g.std()

    def _hat(self, x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """Lower lattice index and linear weight of the upper neighbour for coordinates ``x``."""
        n = self.values.shape[axis]
        f = np.clip((np.asarray(x, dtype=np.float64) - self.lo[axis]) / self.cell, 0.0, n - 1.0001)
        i = np.floor(f).astype(np.intp)
        return i, (f - i).astype(np.float32)

    def grid(self, w: np.ndarray, v: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Field on the grid of axis coordinates ``w, v, u`` (1D each): trilinear, done separably.

        Gathers, not matrix products: BLAS threads crawl on a busy machine for products this small.
        """
        (iw, fw), (iv, fv), (iu, fu) = self._hat(w, 0), self._hat(v, 1), self._hat(u, 2)
        vals = self.values.astype(np.float32)
        t = vals[iw] * (1 - fw)[:, None, None] + vals[iw + 1] * fw[:, None, None]  # (D, n1, n2)
        t = t[:, iv] * (1 - fv)[None, :, None] + t[:, iv + 1] * fv[None, :, None]  # (D, H, n2)
        return t[:, :, iu] * (1 - fu) + t[:, :, iu + 1] * fu  # (D, H, W)

    def points(self, pts: np.ndarray) -> np.ndarray:
        """Field at points ``(m, 3)`` given as ``(w, v, u)``."""
        idx = ((np.asarray(pts) - self.lo) / self.cell).T
        return ndimage.map_coordinates(self.values, idx, order=1, mode="nearest").astype(np.float32)


@dataclass
class Grid:
    """Patient-frame coordinates (mm) of the voxel centres along each array axis."""

    w: np.ndarray
    v: np.ndarray
    u: np.ndarray
    spacing_mm: tuple[float, float, float]

    @classmethod
    def make(
        cls,
        shape: tuple[int, int, int],
        spacing_mm: tuple[float, float, float],
        centre_mm: tuple[float, float, float],
    ) -> Grid:
        """Voxel ``(k, j, i)`` sits at ``((k+.5)sz, (j+.5)sy, (i+.5)sx)`` in the field, minus ``centre_mm``."""
        axes = [(np.arange(n) + 0.5) * s - c for n, s, c in zip(shape, spacing_mm, centre_mm, strict=True)]
        return cls(axes[0], axes[1], axes[2], spacing_mm)

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.w), len(self.v), len(self.u)


def rasterize_tubes(
    grid: Grid,
    p0: np.ndarray,
    p1: np.ndarray,
    radius: np.ndarray,
    out: np.ndarray,
    wall_mm: np.ndarray | None = None,
    out_wall: np.ndarray | None = None,
) -> None:
    """Raise ``out`` to the volume fraction of each tube ``p0 -> p1`` (rows ``(w, v, u)``) in every voxel.

    Partial volume is approximated from the distance to the tube axis and the voxel extent across
    the tube, so a 1 mm vessel in a 6 mm voxel shows as a faint dot instead of vanishing or filling
    the voxel. With ``wall_mm`` the tube plus its wall goes to ``out_wall`` (airways). Tubes are
    processed in batches of similar bounding-box size: one numpy pass per batch, not per tube.
    """
    step = np.asarray(grid.spacing_mm)
    first = np.array([grid.w[0], grid.v[0], grid.u[0]])
    shape = np.array(grid.shape)
    d = p1 - p0
    l2 = np.einsum("ij,ij->i", d, d) + 1e-9
    pv = np.sqrt(0.5 * np.sum(step**2 * (1.0 - d * d / l2[:, None]), axis=1))  # voxel extent across
    wall = np.zeros(len(radius)) if wall_mm is None else np.broadcast_to(wall_mm, radius.shape)
    reach = (radius + wall + pv)[:, None]
    i0 = np.maximum(np.ceil((np.minimum(p0, p1) - reach - first) / step), 0).astype(np.intp)
    i1 = np.minimum(np.floor((np.maximum(p0, p1) + reach - first) / step) + 1, shape).astype(np.intp)
    ext = i1 - i0
    keep = np.all(ext > 0, axis=1) & ((2 * radius / pv) ** 2 > 0.03)  # thinner ones are invisible here
    order = np.flatnonzero(keep)[np.argsort(np.prod(ext[keep], axis=1), kind="stable")]
    axes = (grid.w, grid.v, grid.u)
    for batch in np.array_split(order, max(1, len(order) // 48)):
        if not len(batch):
            continue
        k = ext[batch].max(axis=0)
        idx = [np.minimum(i0[batch, a, None] + np.arange(k[a]), shape[a] - 1) for a in range(3)]  # (m, k_a)
        ok = [i0[batch, a, None] + np.arange(k[a]) < i1[batch, a, None] for a in range(3)]
        rel = [axes[a][idx[a]] - p0[batch, a, None] for a in range(3)]
        zz, yy, xx = rel[0][:, :, None, None], rel[1][:, None, :, None], rel[2][:, None, None, :]
        db = d[batch]
        dz, dy, dx = (db[:, a, None, None, None] for a in range(3))
        t = np.clip((zz * dz + yy * dy + xx * dx) / l2[batch, None, None, None], 0.0, 1.0)
        dist = np.sqrt((zz - t * dz) ** 2 + (yy - t * dy) ** 2 + (xx - t * dx) ** 2)
        valid = ok[0][:, :, None, None] & ok[1][:, None, :, None] & ok[2][:, None, None, :]
        flat = (idx[0][:, :, None, None] * shape[1] + idx[1][:, None, :, None]) * shape[2] + idx[2][
            :, None, None, :
        ]
        flat = np.broadcast_to(flat, valid.shape)[valid]
        for r, target in ((radius[batch], out), (radius[batch] + wall[batch], out_wall)):
            if target is None or (target is out_wall and wall_mm is None):
                continue
            rr, pvb = r[:, None, None, None], pv[batch, None, None, None]
            cov = np.clip((rr - dist) / pvb + 0.5, 0.0, 1.0) * np.minimum(1.0, (2 * rr / pvb) ** 2)
            np.maximum.at(target.reshape(-1), flat, cov[valid].astype(target.dtype))


def space_filling_tree(
    rng: np.random.Generator, root: np.ndarray, pts: np.ndarray, r_root: float, exponent: float = 0.4
) -> Tubes:
    """Space-filling tree from ``root`` to every point (count a power of 2): segments (p0, p1, radius).

    Each node heads part way to the centroid of the points it serves, then splits them in two
    halves along their widest axis (a k-d split), so branches fan out to fill the lung and thin
    towards the periphery (radius ~ served points ** ``exponent``; Murray's law gives 1/3).
    """
    groups, starts, total = pts[None], root[None], len(pts)
    p0, p1, rad = [], [], []
    while True:
        g, n, _ = groups.shape
        if n == 1:
            ends = groups[:, 0]
        else:
            ends = starts + rng.uniform(0.3, 0.6, size=(g, 1)) * (groups.mean(axis=1) - starts)
        p0.append(starts)
        p1.append(ends)
        rad.append(np.full(g, r_root * (n / total) ** exponent))
        if n == 1:
            break
        axis = np.argmax(np.ptp(groups, axis=1), axis=1)
        keys = groups[np.arange(g)[:, None], np.arange(n)[None, :], axis[:, None]]
        order = np.argsort(keys, axis=1)
        groups = np.take_along_axis(groups, order[:, :, None], axis=1).reshape(2 * g, n // 2, 3)
        starts = np.repeat(ends, 2, axis=0)
    return np.concatenate(p0), np.concatenate(p1), np.concatenate(rad)
