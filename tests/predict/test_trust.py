"""The trust fields of a prediction: quality, ood_score, uncertainty, refer (the output contract)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctcovid.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from ctcovid.cli import main
from ctcovid.errors import CtcovidError
from ctcovid.io import load_volume
from ctcovid.metrics.reliability import temper
from ctcovid.models import create_model
from ctcovid.predict import Predictor
from ctcovid.preprocess import PreprocessConfig
from ctcovid.synth.cohort import SynthCase

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _with_reliability(src: Path, dst: Path, **reliability: object) -> Path:
    ck = load_checkpoint(src)
    ck["reliability"] = {"format": 1, "temperature": 1.0, "ood": {}, **reliability}
    return save_checkpoint(ck, dst)


def test_predict_json_gives_every_scan_the_trust_fields(
    make_ckpt, scan_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "p.json"
    assert (
        main(["predict", str(scan_files["nifti"]), "--checkpoint", str(make_ckpt()), "--json", str(out)]) == 0
    )
    (pred,) = json.loads(out.read_text())["predictions"]
    assert isinstance(pred["quality"]["ok"], bool) and isinstance(pred["quality"]["problems"], list)
    assert pred["ood_score"] is None  # this checkpoint carries no reliability data
    assert 0.0 <= pred["uncertainty"] <= 1.0
    assert isinstance(pred["refer"], bool)


def test_the_checkpoint_temperature_scales_the_probabilities(
    make_ckpt, case: SynthCase, tmp_path: Path
) -> None:
    plain = Predictor.from_checkpoint(make_ckpt()).predict(case.volume)
    hot = Predictor.from_checkpoint(_with_reliability(make_ckpt(), tmp_path / "t.pt", temperature=4.0))
    warm = hot.predict(case.volume)
    expected = temper(np.array([list(plain.probs.values())]), 4.0)[0]
    np.testing.assert_allclose(list(warm.probs.values()), expected, atol=1e-5)
    assert warm.label == plain.label and warm.uncertainty > plain.uncertainty


def test_an_out_of_distribution_score_above_one_refers_the_scan(
    make_ckpt, case: SynthCase, tmp_path: Path
) -> None:
    # Energy of this scan's logits, placed beyond a threshold chosen so the scan is "unusual".
    base = Predictor.from_checkpoint(make_ckpt())
    _, chunks = base.prepare(case.volume)
    with torch.no_grad():
        z = base.model(torch.from_numpy(np.stack([c.array for c in chunks]))).numpy()
    energy = float(-np.log(np.exp(z).sum(1)).mean())
    ood = {"energy": {"median": energy - 10.0, "threshold": energy - 5.0}}  # the scan scores 2.0
    ckpt = _with_reliability(make_ckpt(), tmp_path / "o.pt", ood=ood, ood_method="energy")
    pred = Predictor.from_checkpoint(ckpt).predict(case.volume)
    assert pred.ood_score == pytest.approx(2.0, abs=1e-3)
    assert pred.refer and any("out of distribution" in r for r in pred.refer_reasons)
    inside = {"energy": {"median": energy - 1.0, "threshold": energy + 1.0}}  # scores 0.5
    ok = Predictor.from_checkpoint(
        _with_reliability(make_ckpt(), tmp_path / "i.pt", ood=inside, ood_method="energy")
    )
    assert ok.predict(case.volume).ood_score == pytest.approx(0.5, abs=1e-3)


def test_an_uncertain_answer_is_referred_and_a_certain_one_is_not(make_ckpt, case: SynthCase) -> None:
    strict = Predictor.from_checkpoint(make_ckpt(), refer_uncertainty=1e-9).predict(case.volume)
    assert strict.refer and strict.refer_reasons[0].startswith("uncertain")
    lax = Predictor.from_checkpoint(make_ckpt(), refer_uncertainty=1.0).predict(case.volume)
    assert lax.refer_reasons == [] or all(not r.startswith("uncertain") for r in lax.refer_reasons)


def _ckpt(tmp_path: Path, seed: int, dropout: float = 0.0, depth: int = 8) -> Path:
    torch.manual_seed(seed)
    model = create_model("r3d_10", num_classes=3, dropout=dropout)
    pre = PreprocessConfig(depth_mode="uniformize", depth=depth, size_hw=(32, 32))
    ck = make_checkpoint(
        model,
        name="r3d_10",
        kwargs={"num_classes": 3, "dropout": dropout},
        labels=["NCP", "CP", "Normal"],
        task="diagnosis",
        preprocess=pre.to_dict(),
    )
    return save_checkpoint(ck, tmp_path / f"m{seed}-{dropout}-{depth}.pt")


def test_an_ensemble_answers_the_mean_of_its_members(tmp_path: Path, case: SynthCase) -> None:
    a, b = _ckpt(tmp_path, 1), _ckpt(tmp_path, 2)
    pa = Predictor.from_checkpoint(a).predict(case.volume)
    pb = Predictor.from_checkpoint(b).predict(case.volume)
    both = Predictor.from_checkpoints([a, b]).predict(case.volume)
    mean = (np.array(list(pa.probs.values())) + np.array(list(pb.probs.values()))) / 2
    np.testing.assert_allclose(list(both.probs.values()), mean, atol=1e-6)
    assert both.reliability["members"] == 2 and "mutual_information" in both.reliability


def test_ensemble_members_must_share_their_preprocessing(tmp_path: Path) -> None:
    with pytest.raises(CtcovidError, match="differ in preprocess"):
        Predictor.from_checkpoints([_ckpt(tmp_path, 1), _ckpt(tmp_path, 2, depth=12)])


def test_mc_dropout_draws_differ_and_their_mean_is_the_answer(tmp_path: Path, case: SynthCase) -> None:
    p = Predictor.from_checkpoint(_ckpt(tmp_path, 3, dropout=0.5), mc_samples=6)
    _, chunks = p.prepare(case.volume)
    out = p.forward([c.array for c in chunks])
    assert out.samples.shape == (1, 6, 3)
    assert np.ptp(out.samples[0], axis=0).max() > 1e-4  # dropout is on: the draws differ
    np.testing.assert_allclose(out.probs, out.samples.mean(1))
    assert not any(m.training for m in p.model.modules())  # switched off again afterwards


def test_mc_dropout_on_a_model_without_dropout_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(CtcovidError, match="has none"):
        Predictor.from_checkpoint(_ckpt(tmp_path, 4), mc_samples=4)


@pytest.mark.skipif(not (SHARED / "abdomen-ct.nii.gz").is_file(), reason="needs ../shared/data")
def test_a_scan_without_a_chest_is_not_assessable_and_gets_no_label(make_ckpt, tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    path = SHARED / "abdomen-ct.nii.gz"
    rc = main(["predict", str(path), "--checkpoint", str(make_ckpt()), "--json", str(out)])
    assert rc == 0  # not an error: an answer that says so
    (pred,) = json.loads(out.read_text())["predictions"]
    assert pred["label"] is None and pred["probs"] == {} and pred["refer"] is True
    assert pred["quality"]["ok"] is False and any("lung" in p for p in pred["quality"]["problems"])
    assert pred["ood_score"] is None and pred["uncertainty"] is None
    # The same scan, checks switched off, is answered (the behaviour this guards against).
    forced = Predictor.from_checkpoint(make_ckpt(), quality_checks=False).predict(load_volume(path))
    assert forced.label is not None and forced.quality is None


def test_an_ordinal_head_is_read_by_its_median_not_its_argmax(tmp_path: Path, case: SynthCase) -> None:
    from ctcovid.metrics.metrics import decide

    torch.manual_seed(5)
    model = create_model("r3d_10", num_classes=3, head="corn")
    pre = PreprocessConfig(depth_mode="uniformize", depth=8, size_hw=(32, 32))
    ck = make_checkpoint(
        model,
        name="r3d_10",
        kwargs={"num_classes": 3, "head": "corn"},
        labels=["low", "medium", "high"],
        task="severity",
        preprocess=pre.to_dict(),
    )
    p = Predictor.from_checkpoint(save_checkpoint(ck, tmp_path / "corn.pt"))
    assert p.decision == "median"
    pred = p.predict(case.volume)
    probs = np.array([list(pred.probs.values())])
    assert pred.label == p.labels[int(decide(probs, "median")[0])]
    assert probs.sum() == pytest.approx(1.0)


def test_a_fitted_uncertainty_threshold_of_zero_refers_every_answer(
    make_ckpt, case: SynthCase, tmp_path: Path
) -> None:
    p = Predictor.from_checkpoint(_with_reliability(make_ckpt(), tmp_path / "z.pt", refer_uncertainty=0.0))
    assert p.refer_uncertainty == 0.0
    pred = p.predict(case.volume)
    assert pred.refer and pred.refer_reasons[-1].startswith("uncertain")
