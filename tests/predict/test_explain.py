from __future__ import annotations

import argparse
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from ctcovid.cli import main
from ctcovid.cli.predict_cmds import _add_explain
from ctcovid.errors import CtcovidError
from ctcovid.io import load_volume, write_nifti
from ctcovid.predict import Predictor, explain, to_input_grid
from ctcovid.predict.cam import cam_maps, resolve_layers
from ctcovid.predict.explain import attribution_maps
from ctcovid.predict.heatmap import clear_lungs, restriction_mask
from ctcovid.preprocess import CropBox, PreprocessConfig, build_pipeline
from ctcovid.preprocess.intensity import to_channels
from ctcovid.synth.cohort import SynthCase, synth_case
from ctcovid.synth.phantom import LUNG_TISSUES, Tissue
from ctcovid.types import Units, Volume


def _phantom(shape=(30, 80, 60), spacing=(2.5, 0.7, 0.9)) -> tuple[Volume, np.ndarray]:
    """A body (soft tissue) off-centre in air, holding a bone-dense cube: returns volume and cube mask."""
    d, h, w = shape
    z, y, x = np.mgrid[:d, :h, :w]
    vox = np.full(shape, -1000.0, dtype=np.float32)
    body = ((y - 45) / 28.0) ** 2 + ((x - 26) / 22.0) ** 2 < 1
    vox[body] = 40.0
    cube = (z >= 8) & (z < 17) & (y >= 50) & (y < 62) & (x >= 15) & (x < 26)
    vox[cube] = 1000.0
    vol = Volume(vox, spacing_mm=spacing, origin_mm=(-20.0, 35.0, 100.0))
    return vol, cube


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize(
    "config",
    [
        {"depth_mode": "uniformize", "depth": 12, "size_hw": (40, 40)},  # z resampled, box padded square
        {"depth_mode": "stack", "size_hw": (24, 48), "crop_z": True},  # anisotropic resize, z cropped
        {"depth_mode": "keep", "size_hw": (64, 64), "fit": "stretch"},
    ],
)
def test_a_known_activation_maps_back_onto_its_place_in_the_input(config: dict) -> None:
    # The pipeline itself puts the cube on its grid (window 400..800 HU: cube 1, all else 0);
    # taking that array as the "activation" and mapping it back must land on the cube.
    vol, cube = _phantom()
    cfg = PreprocessConfig(windows_hu=((600.0, 400.0),), body_crop=True, **config)
    pre = build_pipeline(cfg).process(vol)
    assert pre.box != CropBox.full(vol.shape)  # the crop is really exercised
    back = to_input_grid(pre.array[0], pre, vol)
    assert back.shape == vol.shape
    assert _dice(back > 0.5, cube) > 0.8
    np.testing.assert_allclose(np.argwhere(back > 0.5).mean(0), np.argwhere(cube).mean(0), atol=0.75)


def test_without_crop_or_resize_the_mapping_is_the_identity() -> None:
    vol, _ = _phantom(shape=(10, 32, 32), spacing=(1.0, 1.0, 1.0))
    cfg = PreprocessConfig(depth_mode="uniformize", depth=10, size_hw=(32, 32), body_crop=False)
    pre = build_pipeline(cfg).process(vol)
    heat = np.random.default_rng(0).random((10, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(to_input_grid(heat, pre, vol), heat, atol=1e-6)


class _Toy(nn.Module):
    """layer4 = a fixed 1x1x1 conv with two channels; logits = their spatial means."""

    def __init__(self) -> None:
        super().__init__()
        self.layer4 = nn.Conv3d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.layer4.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(x).mean(dim=(2, 3, 4))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_cam_is_the_class_evidence_of_a_model_with_a_known_answer(method: str) -> None:
    x = torch.zeros(1, 1, 4, 6, 6)
    x[0, 0, 1, 2, 3] = 5.0
    cam = cam_maps(_Toy(), x, target=0, layer="layer4", method=method)
    assert cam.shape == (1, 4, 6, 6)
    assert tuple(np.argwhere(cam[0].numpy() == cam.max().item())[0]) == (1, 2, 3)
    # Class 1 reads the negated channel: no positive evidence anywhere.
    assert cam_maps(_Toy(), x, target=1, layer="layer4", method=method).max() == 0


class _Linear(nn.Module):
    """logits = (sum(w * x), -sum(w * x)): integrated gradients must return (x - b) * w exactly."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.w * x).sum(dim=(1, 2, 3, 4))
        return torch.stack([y, -y], dim=1)


@pytest.mark.parametrize("method", ["ig", "gradxinput"])
def test_attribution_of_a_linear_model_is_its_evidence_against_the_baseline(method: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x, w = torch.rand(2, 1, 3, 4, 5, generator=gen), torch.randn(1, 1, 3, 4, 5, generator=gen)
    got = attribution_maps(_Linear(w), x, target=0, method=method, steps=4, baseline=0.25)
    np.testing.assert_allclose(
        got.numpy(), torch.relu((x - 0.25) * w).sum(dim=1).numpy(), rtol=1e-5, atol=1e-6
    )
    assert attribution_maps(_Linear(w), x, target=1, method=method, baseline=x).max() == 0  # no evidence
    signed = attribution_maps(_Linear(w), x, target=1, method=method, steps=4, baseline=0.25, positive=False)
    np.testing.assert_allclose(signed.numpy(), (-(x - 0.25) * w).sum(dim=1).numpy(), rtol=1e-5, atol=1e-6)


class _Stages(nn.Module):
    """The grid geometry of a 3D ResNet (stem /2 in z, /4 in-plane; each later stage /2), for pennies."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv3d(1, 2, 3, stride=(2, 4, 4), padding=1)
        self.layer1 = nn.Conv3d(2, 2, 3, padding=1)
        self.layer2, self.layer3, self.layer4 = (nn.Conv3d(2, 2, 3, stride=2, padding=1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return x.mean(dim=(2, 3, 4))


def test_the_automatic_layer_is_the_deepest_with_a_fine_enough_grid() -> None:
    predictor = Predictor(_Stages(), labels=["a", "b"], preprocess=PreprocessConfig())
    # AUTO_MIN_GRID is 4 x 8 x 8, capped at a quarter of the input (depth-4 chunks: 1 cell in z).
    assert resolve_layers(predictor, None, (1, 8, 32, 32)) == ["layer1"]  # layer1: 4 x 8 x 8
    assert resolve_layers(predictor, "auto", (1, 24, 96, 96)) == ["layer2"]  # 6 x 12 x 12; layer3: 3 x 6 x 6
    assert resolve_layers(predictor, None, (1, 32, 128, 128)) == ["layer3"]
    assert resolve_layers(predictor, None, (1, 4, 64, 64)) == ["layer2"]  # 1 x 8 x 8
    assert resolve_layers(predictor, None, (1, 2, 8, 8)) == ["layer1"]  # nothing fits: the shallowest
    assert resolve_layers(predictor, "layer2 + layer3", (1, 8, 32, 32)) == ["layer2", "layer3"]


def test_the_lung_field_holds_the_lungs_and_a_consolidated_lobe_but_little_else() -> None:
    c = synth_case("CP", rng=np.random.default_rng(3), shape=(24, 80, 80))
    field = restriction_mask(c.volume, PreprocessConfig(), "lungs")
    body = restriction_mask(c.volume, PreprocessConfig(), "body")
    assert field is not None and body is not None and (field <= body).all()
    lungs = np.isin(c.tissue, [int(t) for t in LUNG_TISSUES]) | c.lesion_mask
    assert (field & c.lesion_mask).sum() > 0.9 * c.lesion_mask.sum()  # as dense as the heart, yet inside
    assert (field & lungs).sum() > 0.95 * lungs.sum()
    assert field.sum() < 0.6 * body.sum()


def test_gas_under_the_diaphragm_is_not_lung() -> None:
    c = synth_case("CP", rng=np.random.default_rng(3), shape=(24, 80, 80))
    lungs = np.isin(c.tissue, [int(t) for t in LUNG_TISSUES])
    # The abdomen under the lung bases, a slice of diaphragm left between (11 mm slices here).
    below = slice(0, int(np.flatnonzero(lungs.any(axis=(1, 2)))[0]) - 1)
    soft = (c.tissue[below] == Tissue.SOFT).all(axis=0)
    depth = ndimage.distance_transform_edt(soft)
    yc, xc = np.unravel_index(np.argmax(depth), depth.shape)
    yy, xx = np.ogrid[: soft.shape[0], : soft.shape[1]]
    bubble = np.zeros(c.volume.shape, dtype=bool)
    bubble[below] = (yy - yc) ** 2 + (xx - xc) ** 2 <= min(3.0, depth.max() - 1) ** 2  # a stomach bubble
    assert bubble.sum() >= 20 and (c.tissue[bubble] == Tissue.SOFT).all()
    vox = c.volume.voxels.copy()
    vox[bubble] = -1000.0
    gas = Volume(vox, spacing_mm=c.volume.spacing_mm, origin_mm=c.volume.origin_mm)
    field = restriction_mask(gas, PreprocessConfig(), "lungs")
    assert field is not None and (field & lungs).sum() > 0.95 * lungs.sum()
    assert not (field & bubble).any()


def test_clear_lungs_turns_the_lesions_into_clear_lung_and_leaves_the_rest_alone() -> None:
    c = synth_case("CP", rng=np.random.default_rng(3), shape=(24, 80, 80))
    cfg = PreprocessConfig(depth_mode="uniformize", depth=24, size_hw=(80, 80))
    pre = build_pipeline(cfg).process(c.volume)
    clear = clear_lungs(c.volume, pre, cfg)
    assert clear is not None and clear.shape == pre.array.shape
    changed = (clear != pre.array)[0]
    values = np.unique(clear[0][changed])
    assert values.size == 1  # one value: the scan's clear lung, in the lung window
    parenchyma = c.volume.voxels[np.isin(c.tissue, [int(t) for t in LUNG_TISSUES]) & ~c.lesion_mask]
    expected = to_channels(np.full((1, 1, 1), np.median(parenchyma), np.float32), Units.HU, cfg.windows_hu)
    assert abs(values[0] - expected.item()) * 1500.0 < 20.0  # within 20 HU
    back = to_input_grid(changed.astype(np.float32), pre, c.volume) > 0.5
    lungs = np.isin(c.tissue, [int(t) for t in LUNG_TISSUES]) | c.lesion_mask
    assert (back & c.lesion_mask).sum() > 0.8 * c.lesion_mask.sum()  # the consolidation is cleared
    assert (back & lungs).sum() > 0.8 * back.sum()  # and little else: a rim of the heart at most
    assert (back & (c.tissue == Tissue.BONE)).sum() < 0.01 * back.sum()  # ribs: a few edge voxels
    no_lungs, _ = _phantom()
    cfg2 = PreprocessConfig(size_hw=(40, 40))
    assert clear_lungs(no_lungs, build_pipeline(cfg2).process(no_lungs), cfg2) is None


class _Density(nn.Module):
    """Class 0's logit is the mean input: everything denser than air is evidence for it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(1, 2, 3, 4))
        return torch.stack([y, -y], dim=1)


def test_against_clear_lungs_the_heart_chest_wall_and_bones_are_no_evidence() -> None:
    c = synth_case("CP", rng=np.random.default_rng(3), shape=(24, 80, 80))
    cfg = PreprocessConfig(depth_mode="uniformize", depth=24, size_hw=(80, 80))
    predictor = Predictor(_Density(), labels=["CP", "Normal"], preprocess=cfg)
    kw = {"method": "gradxinput", "target": "CP", "restrict": "none"}
    air, healthy = explain(predictor, c.volume, baseline="air", **kw), explain(predictor, c.volume, **kw)
    assert (air.baseline, healthy.baseline) == ("air", "healthy")
    field = restriction_mask(c.volume, cfg, "lungs")
    far = ndimage.distance_transform_edt(~field, sampling=c.volume.spacing_mm) > 20.0  # beyond the smoothing
    body = c.tissue != Tissue.AIR
    assert air.heat[far & body].mean() > 0.3  # from air, all the body is evidence
    assert healthy.heat[far].max() < 1e-6  # from clear lungs, only what differs from clear lung
    assert (healthy.heat * c.lesion_mask).sum() / healthy.heat.sum() > 0.5  # the consolidation
    no_lungs, _ = _phantom()
    # Quality checks off: this phantom has no lungs on purpose (predict would call it not assessable).
    p = Predictor(_Density(), labels=["CP", "Normal"], preprocess=PreprocessConfig(size_hw=(40, 40)),
                  quality_checks=False)  # fmt: skip
    e = explain(p, no_lungs, **kw)
    assert e.baseline == "air (no lung field found)" and e.heat.max() == 1.0


class _GroundGlassDetector(nn.Module):
    """A model with a known answer: class 0's logit is the mean of a bump over the ground-glass band.

    ``layer1`` is a 1x1x1 conv + ReLU giving ``relu(x - a)``, ``relu(x - m)``, ``relu(x - b)`` for
    the lung-window values ``a < m < b`` of -700, -550, -400 HU; the logit is the spatial mean of
    ``c0 - 2 c1 + c2``, a triangle that is 0 for aerated lung (~ -850 HU), soft tissue and air and
    peaks on ground glass. Class 1 is its negation. The evidence is the lesions, nowhere else.
    """

    def __init__(self, cfg: PreprocessConfig) -> None:
        super().__init__()
        hu = np.array([-700.0, -550.0, -400.0], dtype=np.float32).reshape(3, 1, 1)
        a, m, b = (float(v) for v in to_channels(hu, Units.HU, cfg.windows_hu, 1)[0, :, 0, 0])
        self.layer1 = nn.Sequential(nn.Conv3d(1, 3, 1), nn.ReLU())
        with torch.no_grad():
            self.layer1[0].weight.fill_(1.0 / (m - a))  # the bump peaks at 1
            self.layer1[0].bias.copy_(torch.tensor([-a, -m, -b]) / (m - a))
        self.register_buffer("mix", torch.tensor([1.0, -2.0, 1.0]).view(1, 3, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.layer1(x) * self.mix).sum(dim=1).mean(dim=(1, 2, 3))
        return torch.stack([y, -y], dim=1)


@pytest.mark.parametrize("method", ["ig", "gradxinput", "gradcam"])
def test_the_heat_falls_on_the_lesions_that_drive_a_known_model(case: SynthCase, method: str) -> None:
    # The whole path - preprocessing (crop, resize, z resampling), attribution or CAM, smoothing,
    # mapping back onto the input grid and the lung-field restriction - must keep the heat where
    # the model's evidence is: on the ground-glass lesions the generator painted (4 % of the scan).
    # (Grad-CAM++ is left out by design: it keeps only positive gradients, so it drops the bump's
    # negative channel and lights everything denser than ground glass on this model.)
    cfg = PreprocessConfig(depth_mode="uniformize", depth=16, size_hw=(48, 48))
    predictor = Predictor(_GroundGlassDetector(cfg), labels=["NCP", "Normal"], preprocess=cfg)
    layer = "layer1" if method.startswith("gradcam") else None
    e = explain(predictor, case.volume, method=method, layer=layer, target="NCP")
    assert e.prediction.label == "NCP" and e.heat.shape == case.volume.shape
    near = ndimage.binary_dilation(case.lesion_mask)  # one voxel: 6 mm in-plane, 16 mm in z
    hot = e.heat >= 0.5
    assert (e.heat * case.lesion_mask).sum() / e.heat.sum() > 0.55  # most of the heat on the lesions
    assert near[hot].mean() > 0.8  # what a reader sees (IG's 8 steps blur a bump this sharp a little)
    assert near[np.unravel_index(np.argmax(e.heat), e.heat.shape)]


def test_heat_stays_inside_the_lung_field(make_ckpt, case: SynthCase) -> None:
    predictor = Predictor.from_checkpoint(make_ckpt())
    e = explain(predictor, case.volume, method="gradxinput")  # restrict="lungs" by default
    inside = restriction_mask(case.volume, predictor.preprocess_config, "lungs")
    assert inside is not None and e.heat.max() == 1.0 and e.layer == "input"
    assert not e.heat[~inside].any()


def test_explain_stitches_chunks_and_writes_a_heatmap_that_overlays_the_input(
    make_ckpt, case: SynthCase, scan_files: dict[str, Path], tmp_path: Path
) -> None:
    predictor = Predictor.from_checkpoint(make_ckpt("stack", size_hw=(64, 64)))
    volume = load_volume(scan_files["nifti"])
    e = explain(predictor, volume, scan_id="p/s 1", method="gradcam++", target="CP")
    assert e.target == "CP" and e.heat.shape == volume.shape and e.heat.dtype == np.float32
    assert e.heat_preprocessed.shape[0] == volume.shape[0]  # stack mode: every slice, chunks stitched
    assert e.heat.min() >= 0.0 and e.heat.max() <= 1.0 and e.heat.max() > 0
    files = e.save(tmp_path)
    assert sorted(f.name for f in files.values()) == [
        "p__s_1_explain.json",
        "p__s_1_heatmap.nii.gz",
        "p__s_1_montage.png",
    ]
    heat_img, scan_img = nib.load(files["heatmap"]), nib.load(scan_files["nifti"])
    np.testing.assert_allclose(heat_img.affine, scan_img.affine, atol=1e-4)
    assert heat_img.shape == scan_img.shape and heat_img.get_data_dtype() == np.float32
    assert files["montage"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(e.top_slices(6)) == 6


def test_explain_refuses_an_unknown_class_or_layer(make_ckpt, case: SynthCase) -> None:
    predictor = Predictor.from_checkpoint(make_ckpt())
    with pytest.raises(CtcovidError, match="unknown target class 'COVID'"):
        explain(predictor, case.volume, target="COVID")
    with pytest.raises(CtcovidError, match="layer 'layer9' not found"):
        explain(predictor, case.volume, method="gradcam", layer="layer9")
    with pytest.raises(CtcovidError, match="unknown explanation method 'shap'; valid: ig, gradxinput"):
        explain(predictor, case.volume, method="shap")
    with pytest.raises(CtcovidError, match="applies to gradcam and gradcam\\+\\+ only"):
        explain(predictor, case.volume, method="ig", layer="layer3")
    with pytest.raises(CtcovidError, match="unknown restriction 'liver'; valid: lungs, body, none"):
        explain(predictor, case.volume, restrict="liver")


def test_explaining_does_not_disturb_a_concurrent_prediction(make_ckpt, case: SynthCase) -> None:
    predictor = Predictor.from_checkpoint(make_ckpt())
    ref = predictor.predict(case.volume).probs
    results: list[dict[str, float]] = []

    def predict_many() -> None:
        for _ in range(4):
            results.append(predictor.predict(case.volume).probs)

    t = threading.Thread(target=predict_many)
    t.start()
    for _ in range(2):
        explain(predictor, case.volume, method="gradcam", layer="layer2+layer3")  # hooks on two layers
    t.join()
    for r in results:
        np.testing.assert_allclose(list(r.values()), list(ref.values()), atol=1e-6)


def test_the_cli_offers_every_method_and_the_same_defaults_as_the_api() -> None:
    import inspect

    from ctcovid.cli.predict_cmds import EXPLAIN_METHODS
    from ctcovid.predict.explain import BASELINES, METHODS, RESTRICTIONS

    assert list(METHODS) == EXPLAIN_METHODS
    parser = argparse.ArgumentParser()
    _add_explain(parser)
    args = parser.parse_args(["scan.nii.gz", "--checkpoint", "c.pt", "--out", "o"])
    defaults = inspect.signature(explain).parameters
    assert args.method == defaults["method"].default == "ig"
    assert args.restrict == defaults["restrict"].default == "lungs"
    assert args.layer is defaults["layer"].default is None
    assert args.baseline == defaults["baseline"].default == "healthy"
    baseline = next(a for a in parser._actions if a.dest == "baseline")
    assert list(baseline.choices) == list(BASELINES)
    restrict = next(a for a in parser._actions if a.dest == "restrict")
    assert list(restrict.choices) == list(RESTRICTIONS)


def test_explain_cli_writes_heatmap_montage_and_json(
    make_ckpt, case: SynthCase, tmp_path: Path, capsys
) -> None:
    scan = write_nifti(case.volume, tmp_path / "in" / "case.nii.gz")
    code = main(
        [
            "explain",
            str(scan),
            "--checkpoint",
            str(make_ckpt()),
            "--out",
            str(tmp_path / "out"),
            "--method",
            "gradcam",
        ]
    )
    assert code == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "case_heatmap.nii.gz",
        "case_montage.png",
        "case_explain.json",
    }
    assert "hottest slices" in capsys.readouterr().out
