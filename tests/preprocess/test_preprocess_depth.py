from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st

from ctcovid.errors import ConfigError
from ctcovid.preprocess.depth import (
    chunk_ranges,
    source_slices,
    stack_chunks,
    uniformize_depth,
    uniformized_spacing_z,
    zoom_matrix,
)


def _real_looking(phantom_factory, d: int) -> np.ndarray:
    vox = phantom_factory((d, 48, 40), spacing_mm=(2.0, 3.0, 3.0)).volume.voxels
    # A smooth superior-inferior trend on top of sharp tissue edges and noise.
    return vox + np.linspace(-60, 60, d, dtype=np.float32)[:, None, None]


@pytest.mark.parametrize("d", [57, 13, 40, 300])
def test_cubic_uniformization_matches_scipy_zoom_order_3_within_1_hu(phantom_factory, d: int) -> None:
    vol = _real_looking(phantom_factory, d)
    ours = uniformize_depth(vol, 40, order=3)
    ref = ndi.zoom(vol, (40 / d, 1, 1), order=3, mode="mirror")
    assert ours.shape == ref.shape == (40, 48, 40)
    assert ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1.0


@pytest.mark.parametrize("order", [0, 1])
def test_linear_and_nearest_uniformization_match_scipy(phantom_factory, order: int) -> None:
    vol = _real_looking(phantom_factory, 57)
    ours = uniformize_depth(vol, 40, order=order)
    ref = ndi.zoom(vol, (40 / 57, 1, 1), order=order, mode="mirror")
    assert ours.shape == (40, 48, 40)
    np.testing.assert_allclose(ours, ref, atol=1e-2)


def test_uniformization_of_a_row_cropped_view_equals_that_of_a_copy() -> None:
    vol = np.random.default_rng(0).normal(size=(30, 20, 16)).astype(np.float32)
    view = vol[:, 4:15, :]
    np.testing.assert_array_equal(uniformize_depth(view, 40), uniformize_depth(view.copy(), 40))


def test_single_slice_scan_is_replicated() -> None:
    vol = np.random.default_rng(0).normal(size=(1, 4, 4)).astype(np.float32)
    out = uniformize_depth(vol, 5)
    assert out.shape == (5, 4, 4)
    np.testing.assert_allclose(out, np.repeat(vol, 5, axis=0))


def test_zoom_matrix_rejects_unknown_order() -> None:
    with pytest.raises(ConfigError, match="0, 1, 3"):
        zoom_matrix(10, 40, order=2)


def test_uniformized_geometry_keeps_first_and_last_slice_positions() -> None:
    np.testing.assert_allclose(source_slices(79, 40)[[0, -1]], [0.0, 78.0])
    assert uniformized_spacing_z(1.0, 79, 40) == pytest.approx(2.0)


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64])
def test_chunks_cover_every_slice_with_shift_policy(n: int) -> None:
    ranges = chunk_ranges(100, n)
    assert all(stop - start == n for start, stop in ranges)
    assert ranges[0][0] == 0 and ranges[-1][1] == 100
    covered = np.zeros(100, bool)
    for start, stop in ranges:
        covered[start:stop] = True
    assert covered.all()
    assert len(ranges) == -(-100 // n)


def test_chunk_policies_for_the_last_partial_chunk() -> None:
    assert chunk_ranges(10, 4, last="shift") == [(0, 4), (4, 8), (6, 10)]
    assert chunk_ranges(10, 4, last="drop") == [(0, 4), (4, 8)]
    assert chunk_ranges(10, 4, last="pad") == [(0, 4), (4, 8), (8, 10)]
    assert chunk_ranges(8, 4, last="pad") == [(0, 4), (4, 8)]


@settings(max_examples=400, deadline=None)
@given(
    n=st.integers(0, 140),
    depth=st.integers(1, 64),
    stride=st.one_of(st.none(), st.integers(1, 80)),
    last=st.sampled_from(["shift", "drop", "pad"]),
    short=st.sampled_from(["pad", "drop"]),
)
def test_every_chunk_holds_real_slices_for_every_length_depth_stride_and_policy(
    n: int, depth: int, stride: int | None, last: str, short: str
) -> None:
    """Regression (issue 18.3): chunk_ranges(12, 10, 15, "pad") gave an empty chunk (15, 12)."""
    ranges = chunk_ranges(n, depth, stride, last, short)  # type: ignore[arg-type]
    for a, b in ranges:
        assert 0 <= a < b <= n and b - a <= depth, (a, b)
    assert len(set(ranges)) == len(ranges)
    if n >= depth and last != "pad":
        assert all(b - a == depth for a, b in ranges)
    if n >= 1 and (n >= depth or short == "pad"):
        assert ranges, "a scan with slices gives at least one chunk unless short scans are dropped"
    step = stride or depth
    if n >= 1 and step <= depth and last != "drop" and (n >= depth or short == "pad"):
        covered = set().union(*(range(a, b) for a, b in ranges))
        assert covered == set(range(n)), "no slice is skipped when chunks touch or overlap"
    # The chunks the network sees are always full-depth arrays with real data in them.
    array = np.arange(max(n, 1), dtype=np.float32)[None, :n, None, None]
    for c in stack_chunks(array, "s", depth, stride, last, short):  # type: ignore[arg-type]
        assert c.array.shape == (1, depth, 1, 1) and c.n_real >= 1


def test_a_stride_longer_than_the_chunk_gives_no_empty_pad_chunk() -> None:
    assert chunk_ranges(12, 10, 15, "pad") == [(0, 10)]
    assert chunk_ranges(16, 10, 15, "pad") == [(0, 10), (15, 16)]
    assert chunk_ranges(12, 10, 15, "shift") == [(0, 10), (2, 12)]


def test_chunk_stride_gives_overlapping_chunks() -> None:
    assert chunk_ranges(10, 4, stride=2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert chunk_ranges(11, 4, stride=2, last="pad") == [(0, 4), (2, 6), (4, 8), (6, 10), (8, 11)]


def test_short_scans_are_padded_or_dropped() -> None:
    assert chunk_ranges(3, 8) == [(0, 3)]
    assert chunk_ranges(3, 8, short="drop") == []
    assert chunk_ranges(0, 8) == []


def test_chunk_policies_are_validated() -> None:
    with pytest.raises(ConfigError, match="shift, drop, pad"):
        chunk_ranges(10, 4, last="wrap")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="stride"):
        chunk_ranges(10, 4, stride=0)


def test_stack_chunks_carry_scan_id_index_range_and_replicate_edges() -> None:
    arr = np.arange(1 * 10 * 2 * 2, dtype=np.float32).reshape(1, 10, 2, 2)
    chunks = stack_chunks(arr, "scan-7", 4, last="pad")
    assert [(c.scan_id, c.index, c.start, c.stop) for c in chunks] == [
        ("scan-7", 0, 0, 4),
        ("scan-7", 1, 4, 8),
        ("scan-7", 2, 8, 10),
    ]
    assert all(c.array.shape == (1, 4, 2, 2) for c in chunks)
    np.testing.assert_array_equal(chunks[1].array, arr[:, 4:8])
    last = chunks[2]
    assert last.n_real == 2
    np.testing.assert_array_equal(last.array[:, :2], arr[:, 8:10])
    np.testing.assert_array_equal(last.array[:, 2], arr[:, 9])
    np.testing.assert_array_equal(last.array[:, 3], arr[:, 9])


def test_short_scan_chunk_is_padded_to_depth() -> None:
    arr = np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)
    (chunk,) = stack_chunks(arr, "short", 8)
    assert chunk.array.shape == (2, 8, 4, 4) and (chunk.start, chunk.stop) == (0, 3)
    np.testing.assert_array_equal(chunk.array[:, 7], arr[:, 2])


@pytest.mark.realdata
def test_uniformization_matches_scipy_on_a_real_chest_ct(shared_data: Path) -> None:
    pytest.importorskip("ctcovid.io")
    from ctcovid.io import load_volume

    folder = shared_data / "chest-ct-dicom-jpegls"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    vox = load_volume(folder).voxels[:, ::8, ::8]  # every 8th row/column keeps scipy fast
    ours = uniformize_depth(vox, 40)
    ref = ndi.zoom(vox, (40 / vox.shape[0], 1, 1), order=3, mode="mirror")
    assert ours.shape == (40, 64, 64)
    assert np.abs(ours - ref).max() < 1.0


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("depth", [16, 24, 40, 64])
def test_uniformization_keeps_the_last_slice_for_every_scan_length(order: int, depth: int) -> None:
    """Regression: with scipy's default mode="constant" the last output slice was 0 (water) for
    some lengths (51 -> 40 slices, 48 -> 24) and 32 -> 16 raised IndexError."""
    for d in range(2, 300):
        m = zoom_matrix(d, depth, order)
        np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-5, err_msg=f"{d} -> {depth}")
        assert m[-1, -1] == pytest.approx(1.0, abs=1e-5) and m[0, 0] == pytest.approx(1.0, abs=1e-5)
    vol = np.random.default_rng(0).normal(-600, 300, (51, 4, 4)).astype(np.float32)
    out = uniformize_depth(vol, 40, order)
    np.testing.assert_allclose(out[-1], vol[-1], atol=1e-2)  # the apex slice is the apex, not water
