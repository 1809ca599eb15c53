from __future__ import annotations

import json

import numpy as np
import pytest

from ctcovid.errors import ConfigError
from ctcovid.preprocess import AugmentConfig, PreprocessConfig, build_pipeline
from ctcovid.preprocess.intensity import apply_window
from ctcovid.types import Units, Volume

SMALL = {"size_hw": (64, 64), "depth": 12}
AIR_IN_LUNG_WINDOW = (-1000.0 + 1350.0) / 1500.0
DENSE_IN_LUNG_WINDOW = (-500.0 + 1350.0) / 1500.0


def test_default_pipeline_gives_the_covidnet_ct_s_input(phantom) -> None:
    out = build_pipeline()(phantom.volume)
    assert out.shape == (1, 40, 256, 256)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_pipeline_is_deterministic(phantom) -> None:
    pipeline = build_pipeline(PreprocessConfig(**SMALL))
    np.testing.assert_array_equal(pipeline(phantom.volume), pipeline(phantom.volume))


def test_pipeline_removes_the_table_and_keeps_the_body(phantom) -> None:
    result = build_pipeline(PreprocessConfig(**SMALL)).process(phantom.volume)
    box, out = result.box, result.array[0]
    assert result.body_found and result.warnings == ()
    # The lowest body row of the input, mapped to output rows (pixel-centre convention).
    lowest = int(np.flatnonzero(phantom.body.any(axis=(0, 2)))[-1])
    lowest_out = (lowest - box.y0 + 0.5) * 64 / (box.y1 - box.y0) - 0.5
    below = out[:, int(np.ceil(lowest_out)) + 1 :, :]
    assert below.size > 0
    assert below.max() < DENSE_IN_LUNG_WINDOW
    # The body is inside the crop, and soft tissue (40 HU) shows at the image centre.
    z, y, x = np.nonzero(phantom.body)
    assert box.contains(z, y, x)
    assert out[:, 10:54, 30:34].max() > DENSE_IN_LUNG_WINDOW


def test_pad_fit_keeps_proportions_and_pads_with_air(phantom) -> None:
    result = build_pipeline(PreprocessConfig(**SMALL)).process(phantom.volume)
    box = result.box
    assert box.y1 - box.y0 == box.x1 - box.x0  # the 64x64 output is square
    assert result.spacing_mm[1] == pytest.approx(result.spacing_mm[2])
    np.testing.assert_allclose(result.array[0, :, 0, :], AIR_IN_LUNG_WINDOW, atol=0.02)


def test_output_geometry_is_reported(phantom) -> None:
    vol = phantom.volume
    result = build_pipeline(PreprocessConfig(**SMALL, fit="stretch")).process(vol)
    box = result.box
    assert result.spacing_mm[0] == pytest.approx(vol.spacing_mm[0] * (vol.shape[0] - 1) / 11)
    assert result.spacing_mm[1] == pytest.approx(vol.spacing_mm[1] * (box.y1 - box.y0) / 64)
    first = (0.0, box.y0 + 0.5 * (box.y1 - box.y0) / 64 - 0.5, box.x0 + 0.5 * (box.x1 - box.x0) / 64 - 0.5)
    np.testing.assert_allclose(result.origin_mm, vol.index_to_lps(first))


def test_several_windows_and_replicated_channels(phantom) -> None:
    two = build_pipeline(PreprocessConfig(**SMALL, windows_hu=((-600, 1500), (40, 400)), in_channels=2))
    three = build_pipeline(PreprocessConfig(**SMALL, in_channels=3))
    assert two(phantom.volume).shape == (2, 12, 64, 64)
    rgb = three(phantom.volume)
    assert rgb.shape == (3, 12, 64, 64)
    np.testing.assert_array_equal(rgb[0], rgb[2])


def test_stack_mode_keeps_every_slice_and_cuts_chunks(phantom) -> None:
    pipeline = build_pipeline(PreprocessConfig(size_hw=(32, 32), depth_mode="stack", chunk_depth=8))
    out = pipeline(phantom.volume)
    assert out.shape == (1, 20, 32, 32)
    chunks = pipeline.chunks(out, "p1-s1")
    assert [(c.start, c.stop) for c in chunks] == [(0, 8), (8, 16), (12, 20)]
    assert all(c.scan_id == "p1-s1" and c.array.shape == (1, 8, 32, 32) for c in chunks)


def test_uniformize_mode_gives_one_chunk(phantom) -> None:
    pipeline = build_pipeline(PreprocessConfig(**SMALL))
    out = pipeline(phantom.volume)
    (chunk,) = pipeline.chunks(out, "s")
    assert chunk.array is out and (chunk.start, chunk.stop) == (0, 12)


def test_display_units_are_scaled_not_windowed(phantom) -> None:
    display = np.round(apply_window(phantom.volume.voxels, -600.0, 1500.0) * 255.0)
    vol = Volume(display, units=Units.DISPLAY, spacing_known=False)
    cfg = PreprocessConfig(size_hw=(96, 96), depth_mode="keep", fit="stretch", body_crop=False)
    np.testing.assert_allclose(build_pipeline(cfg)(vol)[0], display / 255.0, atol=1e-6)
    out = build_pipeline(PreprocessConfig(**SMALL))(vol)
    assert out.shape == (1, 12, 64, 64) and out.min() >= 0.0 and out.max() <= 1.0


def test_all_air_scan_is_kept_whole_with_a_warning() -> None:
    air = Volume(np.full((5, 40, 40), -1000.0, np.float32))
    result = build_pipeline(PreprocessConfig(**SMALL)).process(air)
    assert not result.body_found
    assert result.warnings and "no body found" in result.warnings[0]
    np.testing.assert_allclose(result.array, AIR_IN_LUNG_WINDOW, atol=0.5 / 65535 + 1e-7)  # stored in 16 bits


@pytest.mark.parametrize(
    ("kwargs", "field", "hint"),
    [
        ({"depth_mode": "resample"}, "depth_mode", "uniformize, stack, keep"),
        ({"depth_order": 2}, "depth_order", "0, 1, 3"),
        ({"depth": 0}, "depth", "integer >= 1"),
        ({"fit": "crop"}, "fit", "pad, stretch"),
        ({"inplane_mode": "cubic"}, "inplane_mode", "linear, nearest"),
        ({"chunk_last": "wrap"}, "chunk_last", "shift, drop, pad"),
        ({"chunk_short": "repeat"}, "chunk_short", "pad, drop"),
        ({"chunk_stride": 0}, "chunk_stride", "integer >= 1"),
        ({"size_hw": (256,)}, "size_hw", "height, width"),
        ({"size_hw": (0, 256)}, r"size_hw\[0\]", "integer >= 1"),
        ({"windows_hu": ((-600, 0),)}, "windows_hu", "width_hu > 0"),
        (
            {"windows_hu": ((-600, 1500), (40, 400)), "in_channels": 3},
            "in_channels=3",
            "one window per channel",
        ),
        ({"body_margin_mm": -1}, "body_margin_mm", ">= 0"),
    ],
)
def test_invalid_config_names_the_field_and_the_options(
    kwargs: dict[str, object], field: str, hint: str
) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        PreprocessConfig(**kwargs)  # type: ignore[arg-type]
    assert hint in str(info.value)


def test_config_round_trips_through_a_json_dict() -> None:
    cfg = PreprocessConfig(
        windows_hu=((-600, 1500), (40, 400)),
        in_channels=2,
        size_hw=(128, 96),
        depth_mode="stack",
        chunk_depth=16,
        chunk_stride=8,
        augment=AugmentConfig(flip_axes=("x", "z"), rotate_deg=5.0),
    )
    plain = json.loads(json.dumps(cfg.to_dict()))
    assert PreprocessConfig.from_dict(plain) == cfg
    assert PreprocessConfig.from_dict(PreprocessConfig().to_dict()) == PreprocessConfig()


def test_config_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="unknown preprocess key.*'window'"):
        PreprocessConfig.from_dict({"window": [-600, 1500]})


def test_reading_only_the_body_box_changes_nothing(phantom, monkeypatch: pytest.MonkeyPatch) -> None:
    # With masking the pipeline skips voxels outside the body's box; reading the whole crop box
    # (as an unmasked pipeline would) must give the same output.
    import dataclasses

    import ctcovid.preprocess.pipeline as pipeline_module

    cfg = PreprocessConfig(**SMALL)
    fast = build_pipeline(cfg)(phantom.volume)
    find_body = pipeline_module.find_body

    def whole_box(*args, **kwargs):
        body = find_body(*args, **kwargs)
        return dataclasses.replace(body, body_box=body.box)

    monkeypatch.setattr(pipeline_module, "find_body", whole_box)
    np.testing.assert_array_equal(build_pipeline(cfg)(phantom.volume), fast)


def test_non_finite_voxels_become_air_with_a_warning() -> None:
    vol = np.full((6, 40, 40), -1000.0, np.float32)
    vol[2, 10:20, 10:20] = np.nan
    vol[3, 5, 5] = np.inf
    result = build_pipeline(PreprocessConfig(**{**SMALL, "body_crop": False})).process(Volume(vol))
    assert np.isfinite(result.array).all()
    np.testing.assert_allclose(result.array, AIR_IN_LUNG_WINDOW, atol=0.5 / 65535 + 1e-7)
    assert any("not finite" in w for w in result.warnings)
