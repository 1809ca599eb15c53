"""Anatomy of the synthetic chest CT phantom, defined in physical millimetres.

The phantom lives in a patient frame ``(w, v, u)`` in mm, in the axis order of the voxel array
``(z, y, x)``: ``w`` runs inferior -> superior with 0 at mid lung height, ``v`` anterior -> posterior
with 0 at the body's centre, ``u`` patient right -> left with 0 on the midline (see
:mod:`ctcovid.types`). Every structure is a function of these coordinates, or a tube between two
points in them, so a scan sampled at 5 mm slices and one at 1 mm slices show the same patient.

Structures and their HU (unenhanced CT):

=====================  ============  ===========================================================
structure              HU            geometry
=====================  ============  ===========================================================
air                    -1000         outside the body; trachea, bronchi (lumen)
subcutaneous fat       -100          outer layer of a super-ellipse body (flatter at the back)
soft tissue            40 .. 60      chest wall muscle, heart, great vessels, paraspinal muscle,
                                     liver (58) and upper abdomen under the diaphragm
mediastinal fat        -85           band between the lungs; epicardial fat rim
bone                   250 .. 950    ribs (oblique arcs), sternum, vertebrae (discs between them),
                                     posterior arch, scapulae; the cortex brighter than marrow
lung                   -875 .. -800  two lungs in the rib cage, domed apex and diaphragm, denser
                                     posteriorly (dependent); vessels (+40) as space-filling trees
table                  220 / -920    curved cradle (two skins, foam core), a thin plate below it
=====================  ============  ===========================================================
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from ctcovid.synth.patient import Patient, Placement
from ctcovid.synth.procedural import Grid, Lattice, Tubes, rasterize_tubes, space_filling_tree


class Tissue(IntEnum):
    """Codes of the tissue map rendered with every phantom."""

    AIR = 0
    FAT = 1
    SOFT = 2
    BONE = 3
    LUNG_RIGHT = 4
    LUNG_LEFT = 5
    AIRWAY = 6  # trachea and main bronchi lumen (intrapulmonary bronchi stay LUNG_*)
    TABLE = 7


LUNG_TISSUES = (Tissue.LUNG_RIGHT, Tissue.LUNG_LEFT)
VESSEL_HU = 40.0
_RIB_MM = 9.0  # radial thickness of the rib ring


class _Geo:
    """Outlines at heights ``w`` (any array shape): semi-axes of nested super-ellipses, landmarks."""

    def __init__(self, p: Patient, w: np.ndarray) -> None:
        L = p.lung_height_mm
        self.tz = np.clip((np.asarray(w) + L / 2) / L, 0.0, 1.0)  # 0 at the lung base, 1 at the apex
        t3 = self.tz**3
        self.a = p.half_width_mm * (1 - 0.04 * self.tz)
        self.b = p.half_depth_mm * (1 - 0.05 * self.tz)
        self.a_fat, self.b_fat = self.a - p.fat_mm, self.b - 0.8 * p.fat_mm  # supine: thinner at the back
        # Shoulder-girdle muscle thickens upwards, so the bony cage narrows towards the apex.
        self.a_ring = self.a_fat - p.muscle_mm - 0.15 * p.half_width_mm * t3
        self.b_ring = self.b_fat - p.muscle_mm - 0.1 * p.half_depth_mm * t3
        self.a_cav, self.b_cav = self.a_ring - _RIB_MM, self.b_ring - _RIB_MM
        R = p.vertebra_mm
        self.v_vert = self.b_cav - 1.7 * R  # vertebral body centre
        self.v_canal = self.v_vert + 1.45 * R
        self.v_trachea = self.v_vert - R - 15.0


def _q(u: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Super-ellipse level (<= 1 inside): an ellipse in front, boxier at the back (lying on the table).

    Integer exponents (2 and 3) on purpose: fractional powers cost most of the render time.
    """
    x, y = np.abs(u / a), np.abs(v / b)
    return np.where(v > 0, x * x * x + y * y * y, x * x + y * y)


def _spine(u: np.ndarray, v: np.ndarray, g: _Geo, R: float) -> np.ndarray:
    """Vertebral body (round front the lungs wrap around) and paraspinal muscle behind it."""
    return (u**2 + (v - g.v_vert) ** 2 < (R + 5.0) ** 2) | ((np.abs(u) < 1.4 * R + 8.0) & (v > g.v_vert))


def _lungs(
    p: Patient, g: _Geo, u: np.ndarray, v: np.ndarray, w: np.ndarray, q_cav: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Lung membership and the landmarks around it, for grids or point lists alike."""
    L, R = p.lung_height_mm, p.vertebra_mm
    side = np.where(u < 0, -1.0, 1.0)
    half = 0.5 * g.a_cav
    r2 = ((u - side * half) / half) ** 2 + ((v - 0.05 * g.b_cav) / g.b_cav) ** 2  # lung's own ellipse
    dome = 0.26 * L + np.where(side < 0, p.right_dome_mm, 0.0)
    above_dia = w > -L / 2 + dome * np.clip(1.0 - r2, 0.0, 1.0)
    below_apex = r2 < (L / 2 - w) / (0.16 * L)  # domed apex over the top sixth
    s = p.heart_scale
    heart_q = (
        ((u - 0.2 * g.a_cav) / (0.45 * s * g.a_cav)) ** 2
        + ((v + 0.2 * g.b_cav) / (0.5 * s * g.b_cav)) ** 2
        + ((w + 0.15 * L) / (0.24 * s * L)) ** 2
    )
    spine = _spine(u, v, g, R)
    aorta = ((u - R - 17.0) ** 2 + (v - g.v_vert + 0.4 * R) ** 2 < 196.0) & (w < 0.22 * L)
    cav = (_q(u, v, g.a_cav, g.b_cav) if q_cav is None else q_cav) <= 1
    # Mediastinum: narrow where the lungs meet in front (anterior junction), wider around the
    # trachea, oesophagus and aorta, widening upwards for the great vessels.
    band = 9.0 + (14.0 + 6.0 * g.tz) * np.exp(-(((v - 0.1 * g.b_cav) / (0.45 * g.b_cav)) ** 2))
    lung = cav & (np.abs(u) > band) & above_dia & below_apex & (heart_q >= 1) & ~spine & ~aorta
    return dict(
        lung=lung, side=side, r2=r2, above_dia=above_dia, heart_q=heart_q, cav=cav, band=band, spine=spine
    )


def lung_periphery(patient: Patient, w: np.ndarray, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Radius in the rib cage: 0 on the body axis, 1 on the costal pleura, where COVID-19 starts."""
    g = _Geo(patient, w)
    q = _q(u, v, g.a_cav, g.b_cav)
    return np.where(v > 0, np.cbrt(q), np.sqrt(q))  # undo the super-ellipse exponent: a radius


def sample_lung_points(
    patient: Patient, rng: np.random.Generator, side: int, n: int, *, periphery_power: float = 0.0
) -> np.ndarray:
    """``n`` points ``(w, v, u)`` inside one lung (side -1 right, +1 left), weighted by periphery**power."""
    L = patient.lung_height_mm
    lo = np.array([-L / 2, -patient.half_depth_mm, 0.0 if side > 0 else -patient.half_width_mm])
    hi = np.array([L / 2, patient.half_depth_mm, patient.half_width_mm if side > 0 else 0.0])
    found: list[np.ndarray] = []
    total = 0
    while total < n:
        c = rng.uniform(lo, hi, size=(max(4 * n, 64), 3))
        keep = _lungs(patient, _Geo(patient, c[:, 0]), c[:, 2], c[:, 1], c[:, 0])
        ok = keep["lung"]
        if periphery_power:
            per = lung_periphery(patient, c[:, 0], c[:, 1], c[:, 2])
            ok &= rng.uniform(size=len(c)) < np.clip(per, 0, 1) ** periphery_power
        found.append(c[ok])
        total += int(ok.sum())
    return np.concatenate(found)[:n]


def _central_tubes(p: Patient) -> dict[str, Tubes]:
    """Great vessels, oesophagus and central airways as polylines (w, v, u) with radii."""
    L, R = p.lung_height_mm, p.vertebra_mm
    g0, gt = _Geo(p, np.array(0.0)), _Geo(p, np.array(L / 2 + 60))
    bc, vv, vt = float(g0.b_cav), float(g0.v_vert), float(g0.v_trachea)
    car = 0.12 * L  # carina height
    desc = (0.2 * L, vv - 0.4 * R, R + 17.0)
    segs = [  # (start, end, radius)
        ((-0.02 * L, -0.25 * bc, -10.0), (0.2 * L, -0.15 * bc, -8.0), 14.0),  # ascending aorta
        ((0.2 * L, -0.15 * bc, -8.0), (0.25 * L, 0.1 * bc, 5.0), 12.0),  # arch
        ((0.25 * L, 0.1 * bc, 5.0), desc, 12.0),
        (desc, (-0.7 * L, desc[1], desc[2]), 11.5),  # descending aorta
        ((0.6 * L, -0.12 * bc, -28.0), (0.0, -0.15 * bc, -26.0), 9.0),  # superior vena cava
        ((-0.05 * L, -0.3 * bc, 18.0), (0.06 * L, -0.12 * bc, 12.0), 13.0),  # pulmonary trunk
        ((0.06 * L, -0.12 * bc, 12.0), (0.08 * L, 0.05 * bc, 42.0), 10.0),  # left pulmonary artery
        ((0.06 * L, -0.12 * bc, 12.0), (0.05 * L, -0.02 * bc, -40.0), 10.0),  # right pulmonary artery
        ((0.7 * L, float(gt.v_vert) - R - 5, 4.0), (-0.6 * L, vv - R - 3, 12.0), 7.0),  # oesophagus
    ]
    airways = [
        ((L / 2 + 60, float(gt.v_trachea), -2.0), (car, vt + 3, -1.0), 8.5),  # trachea
        ((car, vt + 3, -1.0), (car - 22, vt + 8, -36.0), 6.5),  # right main bronchus
        ((car, vt + 3, -1.0), (car - 38, vt + 10, 40.0), 6.0),  # left main bronchus
    ]

    def arr(s: list) -> Tubes:
        return np.array([x[0] for x in s]), np.array([x[1] for x in s]), np.array([x[2] for x in s], float)

    return {"vessels": arr(segs), "airways": arr(airways)}


@functools.lru_cache(maxsize=16)  # follow-up scans of a patient reuse its trees
def _lung_trees(p: Patient) -> dict[str, Tubes]:
    """Pulmonary arteries, veins and bronchi of both lungs (deterministic per patient)."""
    rng = np.random.default_rng(p.tree_seed)
    L, R = p.lung_height_mm, p.vertebra_mm
    g0 = _Geo(p, np.array(0.0))
    bc, vt, car = float(g0.b_cav), float(g0.v_trachea), 0.12 * L
    roots = {  # side -> (artery root, vein root, bronchus root)
        -1: (
            (0.05 * L, -0.02 * bc, -40.0),
            (-0.05 * L, float(g0.v_vert) - R - 22, -24.0),
            (car - 22, vt + 8, -36.0),
        ),
        1: (
            (0.08 * L, 0.05 * bc, 42.0),
            (-0.05 * L, float(g0.v_vert) - R - 22, 26.0),
            (car - 38, vt + 10, 40.0),
        ),
    }
    parts: dict[str, list[Tubes]] = {"vessels": [], "airways": []}
    for side, (art, vein, bron) in roots.items():
        parts["vessels"].append(
            space_filling_tree(rng, np.array(art), sample_lung_points(p, rng, side, 128), 8.0)
        )
        parts["vessels"].append(
            space_filling_tree(rng, np.array(vein), sample_lung_points(p, rng, side, 64), 7.0)
        )
        parts["airways"].append(
            space_filling_tree(rng, np.array(bron), sample_lung_points(p, rng, side, 64), 5.5, 0.33)
        )
    return {k: _concat(v) for k, v in parts.items()}


def _concat(tubes: list[Tubes]) -> Tubes:
    p0, p1, r = zip(*tubes, strict=True)
    return np.concatenate(p0), np.concatenate(p1), np.concatenate(r)


@dataclass
class Anatomy:
    """A rendered phantom before disease and noise.

    ``hu`` holds the background tissue (lung parenchyma without its vessels and airways, so disease
    can be painted on the parenchyma); :meth:`composite` adds vessels and airways on top.
    """

    hu: np.ndarray  # float32 (D, H, W)
    tissue: np.ndarray  # uint8 Tissue codes
    vessel: np.ndarray  # float32 vessel volume fraction
    lumen: np.ndarray  # float32 airway lumen fraction
    airway: np.ndarray  # float32 airway lumen + wall fraction
    grid: Grid
    patient: Patient
    placement: Placement

    def lung_mask(self, side: int | None = None) -> np.ndarray:
        """Bool mask of both lungs, or of the right (-1) or left (+1) lung."""
        if side is None:
            return np.isin(self.tissue, LUNG_TISSUES)
        return self.tissue == (Tissue.LUNG_RIGHT if side < 0 else Tissue.LUNG_LEFT)

    def composite(self, hu: np.ndarray | None = None) -> np.ndarray:
        """``hu`` (default the background) with vessels and airways blended in, as float32."""
        out = (self.hu if hu is None else hu).copy()
        # Vessels show in lung and in mediastinal fat (hila); in solid tissue they change nothing.
        where = np.isin(self.tissue, (*LUNG_TISSUES, Tissue.FAT)) & (self.vessel > 0)
        out[where] += self.vessel[where] * (VESSEL_HU - out[where])
        a = self.airway > 0
        wall = self.airway[a] - np.minimum(self.lumen[a], self.airway[a])
        out[a] = (
            out[a] * (1 - self.airway[a])
            + VESSEL_HU * wall
            - 1000.0 * np.minimum(self.lumen[a], self.airway[a])
        )
        return out


def render_anatomy(
    patient: Patient,
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    placement: Placement,
    rng: np.random.Generator,
    *,
    slab_voxels: int = 2_000_000,
) -> Anatomy:
    """Render the patient on a ``shape`` grid of ``spacing_mm`` voxels, placed by ``placement``.

    ``rng`` draws only the tissue texture; the anatomy itself comes from ``patient``. Slabs of about
    ``slab_voxels`` voxels are rendered at a time to bound memory on 512 x 512 x 300 grids.
    """
    grid = Grid.make(
        shape, spacing_mm, (placement.lung_mid_z_mm, placement.center_y_mm, placement.center_x_mm)
    )
    texture = Lattice(rng, cell_mm=14.0)
    hu = np.empty(shape, np.float32)
    tissue = np.empty(shape, np.uint8)
    central = np.zeros(shape, np.float32)
    tubes = _central_tubes(patient)
    rasterize_tubes(grid, *tubes["vessels"], out=central)
    chunk = max(1, slab_voxels // (shape[1] * shape[2]))
    for k0 in range(0, shape[0], chunk):
        sl = slice(k0, min(k0 + chunk, shape[0]))
        w = grid.w[sl, None, None]
        tex = texture.grid(grid.w[sl], grid.v, grid.u)
        hu[sl], tissue[sl] = _render_slab(
            patient,
            w,
            grid.v[None, :, None],
            grid.u[None, None, :],
            tex,
            central[sl],
            placement.table_gap_mm,
            spacing_mm[1],
        )
    vessel, lumen, airway = (np.zeros(shape, np.float32) for _ in range(3))
    trees = _lung_trees(patient)
    rasterize_tubes(grid, *trees["vessels"], out=vessel)
    for p0, p1, r in (tubes["airways"], trees["airways"]):
        rasterize_tubes(grid, p0, p1, r, out=lumen, wall_mm=0.2 * r + 0.4, out_wall=airway)
    tissue[(lumen > 0.5) & ~np.isin(tissue, LUNG_TISSUES)] = Tissue.AIRWAY
    return Anatomy(hu, tissue, vessel, lumen, airway, grid, patient, placement)


def _overlap(x: np.ndarray, lo: np.ndarray | float, hi: np.ndarray | float, step: float) -> np.ndarray:
    """Share of the pixel ``[x - step/2, x + step/2]`` inside the band ``[lo, hi]``."""
    return np.clip(np.minimum(x + step / 2, hi) - np.maximum(x - step / 2, lo), 0.0, None) / step


def _render_slab(
    p: Patient,
    w: np.ndarray,
    v: np.ndarray,
    u: np.ndarray,
    tex: np.ndarray,
    central: np.ndarray,
    gap: float,
    dy: float,
) -> tuple[np.ndarray, np.ndarray]:
    """HU and tissue of a slab; ``w`` is (d,1,1), ``v`` (1,H,1), ``u`` (1,1,W), ``dy`` the row spacing."""
    L, R = p.lung_height_mm, p.vertebra_mm
    w, v, u = (x.astype(np.float32) for x in (w, v, u))  # float32 halves the time of every operation
    g = _Geo(p, w)
    shape = tex.shape
    hu = np.full(shape, -1000.0, np.float32)
    tis = np.zeros(shape, np.uint8)

    def put(mask: np.ndarray, value: np.ndarray | float, code: Tissue) -> None:
        np.copyto(hu, np.broadcast_to(value, shape), where=mask, casting="unsafe")
        np.copyto(tis, np.uint8(code), where=mask)

    body = _q(u, v, g.a, g.b) <= 1
    q_ring, q_cav = _q(u, v, g.a_ring, g.b_ring), _q(u, v, g.a_cav, g.b_cav)
    q_fat = _q(u, v, g.a_fat, g.b_fat)
    put(body, 48 + 5 * tex, Tissue.SOFT)
    put(body & (q_fat > 1), -100 + 8 * tex, Tissue.FAT)
    phi = np.arctan2(np.abs(u), v)  # 0 at the back, pi at the front

    # Scapulae: plates in the posterolateral muscle of the upper chest.
    t_m = (1 - q_fat) / np.maximum((1 - q_fat) + (q_ring - 1), 1e-6)
    put(
        (q_fat <= 1)
        & (q_ring > 1)
        & (np.abs(t_m - 0.4) < 0.12)
        & (phi > 0.15 * np.pi)
        & (phi < 0.4 * np.pi)
        & (g.tz > 0.5),
        450.0,
        Tissue.BONE,
    )

    # Ribs descend from back to front, so an axial slice cuts each one as an oblique arc.
    ring = (q_ring <= 1) & (q_cav > 1)
    pitch, duty = L / 9.0, 0.38
    phase = np.mod((w + 3.0 * pitch * phi / np.pi) / pitch, 1.0)
    t_r = (1 - q_ring) / np.maximum((1 - q_ring) + (q_cav - 1), 1e-6)
    edge = np.minimum(1 - np.abs(2 * t_r - 1), 1 - np.abs(2 * phase / duty - 1))
    in_rib = ring & (phase < duty) & (np.abs(u) > 1.5 * R)
    put(in_rib & (phi < 0.8 * np.pi), 300 + 650 * (1 - np.clip(edge, 0, 1)) ** 2, Tissue.BONE)
    put(in_rib & (phi >= 0.8 * np.pi) & (np.abs(u) > 14), 120.0, Tissue.SOFT)  # costal cartilage
    q_st = (u / 13.0) ** 2 + ((v + g.b_ring - 2.0) / 6.5) ** 2
    put((q_st < 1) & (w > -0.3 * L), 300 + 600 * q_st**3, Tissue.BONE)  # sternum

    # Thoracic cavity: abdomen under the diaphragm, mediastinum, heart, great vessels, lungs.
    reg = _lungs(p, g, u, v, w, q_cav)
    cav, above = reg["cav"], reg["above_dia"]
    put(cav, 42 + 4 * tex, Tissue.SOFT)
    put(
        cav & ~above, np.where(u < 0.25 * g.a_cav, 58.0, 44.0) + 5 * tex, Tissue.SOFT
    )  # liver | spleen, stomach
    put(cav & above & (np.abs(u) <= reg["band"]), -85 + 10 * tex, Tissue.FAT)
    hq = reg["heart_q"]
    put(cav & above & (hq < 1), 40 + 4 * tex, Tissue.SOFT)
    put(cav & above & (hq < 1) & (hq > 0.8) & (v < -0.1 * g.b_cav), -90.0, Tissue.FAT)  # epicardial fat
    m = np.where(cav & above, central, 0.0)
    np.copyto(hu, hu * (1 - m) + 42.0 * m, where=m > 0, casting="unsafe")
    np.copyto(tis, np.uint8(Tissue.SOFT), where=m > 0.5)
    lung = reg["lung"] & (central < 0.5)
    dependent = 35.0 * np.clip((v + g.b_cav) / (2 * g.b_cav), 0, 1)  # gravity: denser at the back
    code = np.where(reg["side"] < 0, np.uint8(Tissue.LUNG_RIGHT), np.uint8(Tissue.LUNG_LEFT))
    np.copyto(hu, p.lung_hu + dependent + 12 * tex, where=lung, casting="unsafe")
    np.copyto(tis, np.broadcast_to(code, shape), where=lung)

    # Spine: paraspinal muscle, vertebral body (discs between), canal, arch, processes.
    block = body & (q_fat <= 1) & reg["spine"]
    put(block, 48 + 5 * tex, Tissue.SOFT)
    r_vb = np.sqrt(u**2 + (v - g.v_vert) ** 2) / R
    disc = np.mod(w / (0.1 * L) + 0.3, 1.0) < 0.2
    put((r_vb < 1) & ~disc, 260 + 650 * r_vb**8, Tissue.BONE)
    put((r_vb < 1) & disc, 85.0, Tissue.SOFT)
    r_c = np.sqrt(u**2 + (v - g.v_canal) ** 2) / R
    put((r_c >= 0.5) & (r_c < 0.85) & (v > g.v_canal - 0.2 * R), 650.0, Tissue.BONE)  # arch
    put((np.abs(u) < 3.5) & (v > g.v_canal + 0.8 * R) & (v < g.v_canal + 2.4 * R) & body, 600.0, Tissue.BONE)
    proc = g.v_canal - 0.1 * R + 0.6 * (np.abs(u) - 0.5 * R)  # transverse processes point back and out
    put((np.abs(v - proc) < 3.5) & (np.abs(u) > 0.5 * R) & (np.abs(u) < 1.9 * R), 550.0, Tissue.BONE)
    put(r_c < 0.5, 20.0, Tissue.SOFT)  # spinal canal

    # Table: a carbon-fibre cradle (skins around a foam core) curving up at the sides, a plate
    # below. Its layers are thinner than a coarse pixel, so each voxel gets the share of the
    # layers it overlaps (point sampling would break the thin skins into dashes).
    top = p.half_depth_mm + gap - 4e-4 * u**2 + 0.0 * w
    flat = p.half_depth_mm + gap + 38.0
    layers = ((top, 2.5, 220.0), (top + 2.5, 13.5, -920.0), (top + 16.0, 3.0, 220.0))
    share = sum(_overlap(v, lo, lo + t, dy) * (value + 1000) for lo, t, value in layers) * (np.abs(u) < 200)
    share = share + _overlap(v, flat, flat + 2.0, dy) * (np.abs(u) < 170) * 1120.0
    put(~body & (share > 0), -1000.0 + share, Tissue.TABLE)
    return hu, tis
