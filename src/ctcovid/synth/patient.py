"""Who the synthetic patient is and where they lie in the scanner (see :mod:`ctcovid.synth.phantom`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Patient:
    """Body habitus of one synthetic patient; every scan of the patient shares it."""

    age: int
    sex: int  # CNCB coding: 1 male, 2 female
    half_width_mm: float
    half_depth_mm: float
    fat_mm: float
    muscle_mm: float
    lung_height_mm: float  # lowest costophrenic recess to apex
    right_dome_mm: float  # the right hemidiaphragm sits higher than the left
    vertebra_mm: float  # vertebral body radius
    heart_scale: float
    lung_hu: float  # parenchyma of the non-dependent lung
    tree_seed: int  # vessel and airway trees: identical on every scan of the patient

    @classmethod
    def random(cls, rng: np.random.Generator) -> Patient:
        """Draw a plausible adult (sizes from typical chest CT measurements)."""
        sex = int(rng.integers(1, 3))
        male = sex == 1
        size = float(np.clip(rng.normal(), -2.0, 2.0))
        half_width = 160.0 + (8.0 if male else -8.0) + 11.0 * size
        half_depth = half_width * float(rng.uniform(0.62, 0.72))
        fat = rng.gamma(3.0, 4.0) + 3.0 * size + (0.0 if male else 3.0)
        return cls(
            age=int(rng.integers(18, 90)),
            sex=sex,
            half_width_mm=half_width,
            half_depth_mm=half_depth,
            fat_mm=float(np.clip(fat, 4.0, 0.2 * half_depth)),  # beyond this the lungs would vanish
            muscle_mm=float(rng.uniform(6.0, 11.0)),
            lung_height_mm=float(np.clip(rng.normal(250.0 if male else 232.0, 12.0), 200.0, 290.0)),
            right_dome_mm=float(rng.uniform(8.0, 22.0)),
            vertebra_mm=float(rng.uniform(15.0, 19.0)),
            heart_scale=float(rng.uniform(0.9, 1.1)),
            lung_hu=float(rng.uniform(-885.0, -855.0)),
            tree_seed=int(rng.integers(2**31)),
        )


@dataclass(frozen=True)
class Placement:
    """Where the patient lies in the field of view, in field mm (voxel ``(k, j, i)`` is centred at
    ``((k + 0.5) sz, (j + 0.5) sy, (i + 0.5) sx)``)."""

    center_x_mm: float
    center_y_mm: float
    lung_mid_z_mm: float
    table_gap_mm: float

    @classmethod
    def random(
        cls, rng: np.random.Generator, patient: Patient, field_mm: tuple[float, float, float]
    ) -> Placement:
        """Off-centre a little, keep the table in the field when it fits, centre the lungs along z."""
        fz, fy, fx = field_mm
        dx, dy, dz, gap = (
            rng.normal(0.0, 0.025),
            rng.uniform(-0.07, 0.03),
            rng.uniform(-1, 1),
            rng.uniform(4, 16),
        )
        b = patient.half_depth_mm
        cy = min(fy / 2 + dy * fy, fy - (b + gap + 46.0))  # room for cradle and plate below the back
        cy = max(cy, b + 2.0)
        margin = max(0.0, (fz - patient.lung_height_mm) / 2 - 10.0)
        return cls(fx / 2 + dx * fx, cy, fz / 2 + 0.4 * dz * margin, float(gap))
