from __future__ import annotations

import numpy as np
import pytest

from ctcovid.errors import ConfigError
from ctcovid.preprocess.augment import AugmentConfig, build_augment, rotate_scale_inplane


def _sample() -> np.ndarray:
    return np.random.default_rng(0).random((2, 6, 24, 20), dtype=np.float32)


def test_same_seed_gives_the_same_augmentation() -> None:
    augment = build_augment(AugmentConfig())
    x = _sample()
    a = augment(x, np.random.default_rng(42))
    b = augment(x, np.random.default_rng(42))
    np.testing.assert_array_equal(a, b)


def test_another_seed_gives_another_augmentation() -> None:
    augment = build_augment(AugmentConfig())
    x = _sample()
    assert not np.allclose(augment(x, np.random.default_rng(1)), augment(x, np.random.default_rng(2)))


def test_augmentation_keeps_shape_dtype_and_leaves_the_input_alone() -> None:
    x = _sample()
    before = x.copy()
    out = build_augment(AugmentConfig(flip_p=1.0))(x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_array_equal(x, before)


def test_flip_only_mirrors_the_chosen_axis() -> None:
    cfg = AugmentConfig(
        flip_axes=("x",), flip_p=1.0, rotate_deg=0, scale=0, intensity_scale=0, intensity_shift=0, noise_std=0
    )
    x = _sample()
    np.testing.assert_array_equal(build_augment(cfg)(x, np.random.default_rng(0)), x[..., ::-1])


def test_all_strengths_zero_is_the_identity() -> None:
    cfg = AugmentConfig(
        flip_axes=(), rotate_deg=0, scale=0, intensity_scale=0, intensity_shift=0, noise_std=0
    )
    x = _sample()
    np.testing.assert_array_equal(build_augment(cfg)(x, np.random.default_rng(0)), x)


def test_rotation_by_90_degrees_turns_the_plane() -> None:
    x = np.random.default_rng(3).random((1, 2, 16, 16), dtype=np.float32)
    out = rotate_scale_inplane(x, 90.0, 1.0)
    turned = [np.rot90(x, k, axes=(2, 3)) for k in (1, 3)]
    assert min(np.abs(out - t).max() for t in turned) < 1e-4


def test_rotation_keeps_pixel_proportions_on_non_square_planes() -> None:
    # A centred disc stays a disc under any rotation, whatever the plane's aspect ratio.
    yy, xx = np.mgrid[0:32, 0:64]
    disc = (((yy - 15.5) ** 2 + (xx - 31.5) ** 2) <= 100).astype(np.float32)[None, None]
    out = rotate_scale_inplane(disc, 37.0, 1.0)
    assert np.abs(out - disc).mean() < 0.02


def test_scale_above_one_enlarges() -> None:
    yy, xx = np.mgrid[0:32, 0:32]
    disc = (((yy - 15.5) ** 2 + (xx - 15.5) ** 2) <= 64).astype(np.float32)[None, None]
    assert rotate_scale_inplane(disc, 0.0, 1.5).sum() > 1.8 * disc.sum()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"flip_axes": ("w",)}, "augment.flip_axes"),
        ({"flip_p": 1.5}, "augment.flip_p"),
        ({"rotate_deg": -1}, "augment.rotate_deg"),
        ({"noise_std": "a"}, "augment.noise_std"),
    ],
)
def test_invalid_augment_config_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        AugmentConfig(**kwargs)  # type: ignore[arg-type]


def test_augment_config_round_trips_through_a_dict() -> None:
    cfg = AugmentConfig(flip_axes=("x", "z"), noise_std=0.02)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown augment key"):
        AugmentConfig.from_dict({"flips": 1})
