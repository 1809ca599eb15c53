"""Benchmark: choosing the MetaImage/NRRD reader, side by side in one run.

Candidates: SimpleITK (what ``ctcovid.io.load_volume`` uses), pynrrd (NRRD only) and a minimal
MetaImage reader of our own (header parse + ``numpy.fromfile``/``zlib``, prototyped here only).

1. Orientation: a marked voxel in a 6x7x8 volume with a flipped, permuted and oblique direction
   matrix, written by SimpleITK as .mha and .nrrd (LPS) and by hand as a RAS .nhdr; each reader's
   geometry must put the mark at its true LPS position.
2. Speed: a synthetic 300x512x512 int16 chest written as .mha, .mhd+.raw, zlib .mha (STOIC-like),
   .nrrd and gzip .nrrd; warm reads (best of ``--repeats`` after one untimed read). Times the raw
   library read (array + header) and ``load_volume`` (read + canonical reorientation + float32).
3. Install weight: installed size of each library.

Run: ``python bench/bench_metaimage.py [--slices 300] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from _machine import commit, cpu_name
from _timing import best_of
from ctcovid.io import load_volume, write_nifti
from ctcovid.types import Volume

Geometry = tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray
]  # voxels (z,y,x), spacing, origin, direction (LPS)


# ---------------------------------------------------------------- candidate readers (raw geometry)
def sitk_read(path: Path) -> Geometry:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    return (
        sitk.GetArrayViewFromImage(img),
        np.asarray(img.GetSpacing()),
        np.asarray(img.GetOrigin()),
        direction,
    )


_MET_TYPES = {"MET_SHORT": "<i2", "MET_USHORT": "<u2", "MET_UCHAR": "u1", "MET_CHAR": "i1",
              "MET_INT": "<i4", "MET_UINT": "<u4", "MET_FLOAT": "<f4", "MET_DOUBLE": "<f8"}  # fmt: skip


def own_metaimage_read(path: Path) -> Geometry:
    """The smallest honest MetaImage reader: no LIST/pattern data files, no big-endian, 3D only."""
    fields: dict[str, str] = {}
    with path.open("rb") as f:
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f"{path}: no ElementDataFile")
            key, _, value = line.decode("latin-1").partition("=")
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
        offset = f.tell()
    size = [int(s) for s in fields["DimSize"].split()]
    dtype = np.dtype(_MET_TYPES[fields["ElementType"]])
    local = fields["ElementDataFile"] == "LOCAL"
    data_path = path if local else path.parent / fields["ElementDataFile"]
    if fields.get("CompressedData", "False") == "True":
        raw = data_path.read_bytes()[offset if local else 0 :]
        data = np.frombuffer(zlib.decompress(raw), dtype=dtype)
    else:
        data = np.fromfile(data_path, dtype=dtype, count=int(np.prod(size)), offset=offset if local else 0)
    # TransformMatrix lists the direction column by column (first 3 numbers: the x index axis).
    matrix = np.array([float(x) for x in fields.get("TransformMatrix", "1 0 0 0 1 0 0 0 1").split()])
    direction = matrix.reshape(3, 3).T
    spacing = np.array([float(x) for x in fields["ElementSpacing"].split()])
    origin = np.array([float(x) for x in fields.get("Offset", fields.get("Origin", "0 0 0")).split()])
    return data.reshape(size[::-1]), spacing, origin, direction


def pynrrd_read(path: Path) -> Geometry:
    import nrrd

    data, header = nrrd.read(str(path), index_order="C")  # array (z, y, x); header axes (x, y, z)
    steps = np.asarray(header["space directions"], dtype=np.float64)  # row i: world step of axis i
    origin = np.asarray(header["space origin"], dtype=np.float64)
    space = header.get("space", "left-posterior-superior")
    if space in ("right-anterior-superior", "RAS"):  # pynrrd returns the file's space as is
        flip = np.array([-1.0, -1.0, 1.0])
        steps, origin = steps * flip, origin * flip
    elif space not in ("left-posterior-superior", "LPS"):
        raise ValueError(f"space {space!r} not handled by this prototype")
    spacing = np.linalg.norm(steps, axis=1)
    return data, spacing, origin, (steps / spacing[:, None]).T


# ---------------------------------------------------------------- 1. orientation correctness
def _oblique_direction() -> np.ndarray:
    a = np.deg2rad(20.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    # columns (ITK index axes x, y, z) point to -S, patient right (-L) and +P: flipped and permuted
    flip_permute = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
    return rot @ flip_permute


def _write_ras_nhdr(folder: Path, array_zyx: np.ndarray, spacing: np.ndarray, origin: np.ndarray,
                    direction: np.ndarray) -> Path:  # fmt: skip
    flip = np.array([-1.0, -1.0, 1.0])
    steps = (direction * spacing).T * flip  # row i: RAS step of index axis i
    fmt = lambda v: "(" + ",".join(f"{x:.17g}" for x in v) + ")"  # noqa: E731
    (folder / "ras.raw").write_bytes(array_zyx.astype("<i2").tobytes())
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nspace: right-anterior-superior\n"
        f"sizes: {' '.join(str(s) for s in array_zyx.shape[::-1])}\n"
        f"space directions: {' '.join(fmt(r) for r in steps)}\n"
        f"kinds: domain domain domain\nendian: little\nencoding: raw\nspace origin: {fmt(origin * flip)}\n"
        "data file: ras.raw\n"
    )
    path = folder / "ras.nhdr"
    path.write_text(header)
    return path


def orientation_check(folder: Path) -> None:
    import SimpleITK as sitk

    rng = np.random.default_rng(1)
    arr = rng.integers(-1000, 0, size=(6, 7, 8)).astype(np.int16)
    mark = (4, 1, 6)  # (z, y, x) array index = ITK index (6, 1, 4)
    arr[mark] = 3000
    spacing = np.array([0.7, 0.8, 2.5])
    origin = np.array([-12.0, 30.0, 101.5])
    direction = _oblique_direction()
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(origin.tolist())
    img.SetDirection(direction.ravel().tolist())
    truth = np.asarray(img.TransformIndexToPhysicalPoint(tuple(int(i) for i in mark[::-1])))
    files = {"mha": folder / "o.mha", "nrrd": folder / "o.nrrd"}
    for p in files.values():
        sitk.WriteImage(img, str(p))
    files["nhdr (RAS)"] = _write_ras_nhdr(folder, arr, spacing, origin, direction)

    def error_mm(read: Callable[[Path], Geometry], path: Path) -> float:
        data, sp, org, dirn = read(path)
        zyx = np.argwhere(np.asarray(data) == 3000)[0]
        return float(np.linalg.norm(org + dirn @ (sp * zyx[::-1]) - truth))

    def canonical_error_mm(path: Path) -> float:
        vol = load_volume(path)
        return float(np.linalg.norm(vol.index_to_lps(tuple(np.argwhere(vol.voxels == 3000)[0])) - truth))

    print("orientation (flipped + permuted + 20 deg oblique): LPS error of the marked voxel, mm")
    for name, path in files.items():
        row = [f"load_volume {canonical_error_mm(path):.1e}", f"SimpleITK {error_mm(sitk_read, path):.1e}"]
        if name == "mha":
            row.append(f"own {error_mm(own_metaimage_read, path):.1e}")
        elif _has("nrrd"):
            row.append(f"pynrrd {error_mm(pynrrd_read, path):.1e}")
        print(f"  {name:<11} " + " | ".join(row))


# ---------------------------------------------------------------- 2. speed
def chest(slices: int) -> np.ndarray:
    """A compressible int16 chest-like volume (air, body, two lungs, noise), like real CT."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[-256:256, -256:256]
    body = (x / 220.0) ** 2 + (y / 170.0) ** 2 < 1
    lungs = ((np.abs(x) - 95) / 70.0) ** 2 + (y / 110.0) ** 2 < 1
    plane = np.where(body, 40, -1000).astype(np.int16)
    plane[lungs] = -850
    vol = np.broadcast_to(plane, (slices, 512, 512)).copy()
    vol += rng.integers(-25, 25, size=vol.shape, dtype=np.int16)
    return vol


def speed(folder: Path, slices: int, repeats: int) -> None:
    import SimpleITK as sitk

    vox = chest(slices)
    img = sitk.GetImageFromArray(vox)
    img.SetSpacing((0.7, 0.7, 1.25))
    paths = {
        ".mha": (folder / "s.mha", False),
        ".mhd + .raw": (folder / "s.mhd", False),
        ".mha zlib (STOIC-like)": (folder / "z.mha", True),
        ".nrrd": (folder / "s.nrrd", False),
        ".nrrd gzip": (folder / "z.nrrd", True),
    }
    for path, compress in paths.values():
        sitk.WriteImage(img, str(path), useCompression=compress)
    print(f"\nspeed: {slices}x512x512 int16, warm, best of {repeats} (s); ratios > 1: SimpleITK is faster")
    for name, (path, _) in paths.items():
        other: tuple[str, Callable[[Path], Geometry]] | None = None
        if path.suffix in (".mha", ".mhd"):
            other = ("own", own_metaimage_read)
        elif _has("nrrd"):
            other = ("pynrrd", pynrrd_read)
        # identity ITK direction is already canonical (x -> L, y -> P, z -> S): no reorientation
        assert np.array_equal(load_volume(path).voxels, vox), f"load_volume misread {path.name}"
        t_sitk = best_of(lambda p=path: sitk_read(p), repeats)
        t_load = best_of(lambda p=path: load_volume(p), repeats)
        row = f"  {name:<24} SimpleITK {t_sitk:6.3f} | load_volume {t_load:6.3f} ({t_load / t_sitk:4.2f}x the raw read)"
        if other is not None:
            assert np.array_equal(np.asarray(other[1](path)[0]), vox), f"{other[0]} misread {path.name}"
            t_other = best_of(lambda p=path, f=other[1]: f(p), repeats)
            row += f" | {other[0]} {t_other:6.3f} | {other[0]}/SimpleITK {t_other / t_sitk:5.2f}x"
        print(row)
    nii = write_nifti(Volume(vox, spacing_mm=(1.25, 0.7, 0.7)), folder / "s.nii")
    t_nii = best_of(lambda: load_volume(nii), repeats)
    print(f"  {'reference: .nii':<24} load_volume {t_nii:6.3f} (ctcovid's NIfTI reader, same volume)")


# ---------------------------------------------------------------- 3. install weight
def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def installed_mib(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return "not installed"
    root = Path(next(iter(spec.submodule_search_locations)))
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return f"{size / 2**20:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import SimpleITK as sitk

    pynrrd = "absent (pip install pynrrd to compare)"
    if _has("nrrd"):
        import nrrd

        pynrrd = nrrd.__version__
    print(f"cpu {cpu_name()} x {os.cpu_count()} | python {platform.python_version()} | numpy {np.__version__} "
          f"| SimpleITK {sitk.__version__} | pynrrd {pynrrd} | git {commit()}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        orientation_check(Path(tmp))
        speed(Path(tmp), args.slices, args.repeats)
    print(
        f"\ninstalled size: SimpleITK {installed_mib('SimpleITK')} | pynrrd {installed_mib('nrrd')} | own 0"
    )


if __name__ == "__main__":
    main()
