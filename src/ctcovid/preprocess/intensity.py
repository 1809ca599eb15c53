"""Intensity: CT windows in Hounsfield units mapped to [0, 1], one channel per window.

A window ``(level_hu, width_hu)`` keeps ``[level - width/2, level + width/2]`` and maps it linearly
to ``[0, 1]``, clipping outside. The default is the lung window used by COVID-Net CT
(level -600 HU, width 1500 HU, i.e. -1350..150 HU). Several windows (e.g. lung + mediastinal
``(40, 400)``) give several channels of the same voxels.

Slice images (``Units.DISPLAY``, 8-bit PNG/JPG) were windowed by whoever exported them, with a
window we do not know, so they are *not* converted back to HU: they are only scaled by 1/255 to
[0, 1]. A multi-window config cannot be honoured on such data and raises instead of inventing
channels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctcovid.errors import ConfigError
from ctcovid.types import Units

LUNG_WINDOW_HU: tuple[float, float] = (-600.0, 1500.0)
MEDIASTINAL_WINDOW_HU: tuple[float, float] = (40.0, 400.0)

AIR_HU = -1000.0
DISPLAY_MAX = 255.0


def window_bounds_hu(level_hu: float, width_hu: float) -> tuple[float, float]:
    """The ``(low, high)`` HU range a window keeps."""
    return level_hu - width_hu / 2.0, level_hu + width_hu / 2.0


def apply_window(voxels_hu: np.ndarray, level_hu: float, width_hu: float) -> np.ndarray:
    """Clip ``voxels_hu`` to the window and map it linearly to float32 [0, 1].

    ``level - width/2`` maps to 0, ``level + width/2`` to 1; values outside are clipped.
    """
    if width_hu <= 0:
        raise ConfigError(f"window width_hu must be > 0, got {width_hu!r}")
    low, _ = window_bounds_hu(level_hu, width_hu)
    # One fused pass in float32: (x - low) / width, then clip in place (no float64 temporaries).
    out = np.subtract(voxels_hu, np.float32(low), dtype=np.float32)
    out *= np.float32(1.0 / width_hu)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def display_to_unit(voxels: np.ndarray) -> np.ndarray:
    """8-bit display values (0..255) to float32 [0, 1]: a plain /255, clipped; no HU involved."""
    out = np.multiply(voxels, np.float32(1.0 / DISPLAY_MAX), dtype=np.float32)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def to_channels(
    voxels: np.ndarray,
    units: Units,
    windows_hu: Sequence[tuple[float, float]] = (LUNG_WINDOW_HU,),
    in_channels: int | None = None,
) -> np.ndarray:
    """Turn ``(D, H, W)`` voxels into a float32 ``(C, D, H, W)`` array in [0, 1].

    HU voxels get one channel per window in ``windows_hu``; DISPLAY voxels get one channel (/255)
    and accept only a single window entry (its values are ignored: the image is already
    windowed). ``in_channels`` (default: the number of windows) may be larger than the number of
    windows only when there is exactly one, which is then replicated; this is how a 3-channel
    network pretrained on RGB (e.g. the 512x512x3 slices of the CC-CCII 3D ResNet paper) is fed.
    """
    if len(windows_hu) == 0:
        raise ConfigError("windows_hu is empty; give at least one (level_hu, width_hu), e.g. (-600, 1500)")
    n_windows = len(windows_hu)
    channels = n_windows if in_channels is None else in_channels
    if channels != n_windows and n_windows != 1:
        raise ConfigError(
            f"in_channels={channels} does not match {n_windows} windows; use one window per channel "
            "or a single window to replicate"
        )
    if units == Units.DISPLAY:
        if n_windows != 1:
            raise ConfigError(
                f"this scan holds 8-bit display values (already windowed), so the {n_windows} HU windows "
                f"{list(windows_hu)} cannot be applied; use a single-window config for slice images"
            )
        planes = [display_to_unit(voxels)]
    else:
        planes = [apply_window(voxels, level, width) for level, width in windows_hu]
    if channels != len(planes):
        # Replication shares no memory trick on purpose: callers may modify channels in place.
        planes = planes * channels
    return np.stack(planes, axis=0)


def air_value(units: Units) -> float:
    """The value that stands for air (outside the body, padding) in ``units``."""
    return AIR_HU if units == Units.HU else 0.0


# --------------------------------------------------------------------------- stored form
#: Integer steps of the stored [0, 1] values: 8-bit sources keep their 255 steps, HU windows 65535.
DISPLAY_STEPS = 255
HU_STEPS = 65535


@dataclass(frozen=True)
class Encoding:
    """How the model's input is stored compactly (the preprocessing cache) and decoded.

    ``planes`` hold one integer plane per *distinct* window (a channel that repeats a window is not
    stored twice): ``uint8`` steps of 1/255 for 8-bit display sources, ``uint16`` steps of 1/65535
    of each HU window. Channel ``c`` of the model's input is ``planes[channels[c]] / steps`` in
    float32. The pipeline itself goes through this form, so a decoded cache entry is bit-exact
    what training, evaluation and prediction compute; against a float path without it the values
    differ by at most half a step (8-bit sources: the sub-level values made by in-plane
    interpolation are rounded to the source's 8-bit grid; HU: 0.5/65535 of the window).
    """

    dtype: str  # "uint8" | "uint16"
    steps: int
    channels: tuple[int, ...]

    @property
    def n_planes(self) -> int:
        return max(self.channels) + 1

    @property
    def itemsize(self) -> int:
        return int(np.dtype(self.dtype).itemsize)

    def to_dict(self) -> dict[str, object]:
        return {"dtype": self.dtype, "steps": self.steps, "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Encoding:
        return cls(str(d["dtype"]), int(d["steps"]), tuple(int(c) for c in d["channels"]))

    def decode(self, planes: np.ndarray) -> np.ndarray:
        """Float32 ``(C, D, H, W)`` in [0, 1] from stored ``(P, D, H, W)`` planes (any depth range)."""
        out = np.empty((len(self.channels), *planes.shape[1:]), dtype=np.float32)
        done: dict[int, int] = {}
        for c, p in enumerate(self.channels):
            if p in done:
                out[c] = out[done[p]]
            else:
                np.divide(planes[p], np.float32(self.steps), out=out[c], dtype=np.float32)
                done[p] = c
        return out


def encoding_for(
    units: Units, windows_hu: Sequence[tuple[float, float]], in_channels: int | None = None
) -> Encoding:
    """The :class:`Encoding` of a scan in ``units`` under a window config (see :func:`to_channels`)."""
    windows = [tuple(map(float, w)) for w in windows_hu]
    if not windows:
        raise ConfigError("windows_hu is empty; give at least one (level_hu, width_hu), e.g. (-600, 1500)")
    channels = len(windows) if in_channels is None else in_channels
    if channels != len(windows) and len(windows) != 1:
        raise ConfigError(
            f"in_channels={channels} does not match {len(windows)} windows; use one window per channel "
            "or a single window to replicate"
        )
    if units == Units.DISPLAY:
        if len(windows) != 1:
            raise ConfigError(
                f"this scan holds 8-bit display values (already windowed), so the {len(windows)} HU windows "
                f"{list(windows_hu)} cannot be applied; use a single-window config for slice images"
            )
        return Encoding("uint8", DISPLAY_STEPS, (0,) * channels)
    distinct = _distinct(windows)
    per_channel = windows * channels if len(windows) == 1 else windows
    return Encoding("uint16", HU_STEPS, tuple(distinct.index(w) for w in per_channel))


def _distinct(windows_hu: Sequence[Sequence[float]]) -> list[tuple[float, ...]]:
    """The windows once each, in first-seen order: plane ``i`` of the stored form is window ``i``."""
    return list(dict.fromkeys(tuple(map(float, w)) for w in windows_hu))


def encode_channels(
    voxels: np.ndarray,
    units: Units,
    windows_hu: Sequence[tuple[float, float]] = (LUNG_WINDOW_HU,),
    in_channels: int | None = None,
) -> tuple[np.ndarray, Encoding]:
    """``(D, H, W)`` voxels -> the stored ``(P, D, H, W)`` integer planes and their :class:`Encoding`."""
    enc = encoding_for(units, windows_hu, in_channels)
    planes = np.empty((enc.n_planes, *voxels.shape), dtype=enc.dtype)
    if units == Units.DISPLAY:
        scaled = np.clip(voxels, 0.0, DISPLAY_MAX, dtype=np.float32)
        np.rint(scaled, out=scaled)
        planes[0] = scaled
        return planes, enc
    for p, (level, width) in enumerate(_distinct(windows_hu)):
        unit = apply_window(voxels, level, width)
        unit *= np.float32(HU_STEPS)
        np.rint(unit, out=unit)
        planes[p] = unit
    return planes, enc
