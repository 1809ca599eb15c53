from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctcovid.cli import main
from ctcovid.data.manifest import ManifestRow, write_manifest
from ctcovid.data.splits import kfold_patients, leaking_patients, split_path, split_patients
from ctcovid.errors import ConfigError


def _cohort(spec: list[tuple[str, int]]) -> list[ManifestRow]:
    """spec: one (label, n_scans) per patient."""
    return [
        ManifestRow(f"s{p}_{k}", f"p{p}", f"x{p}_{k}", label)
        for p, (label, n) in enumerate(spec)
        for k in range(n)
    ]


@settings(max_examples=60, deadline=None)
@given(
    spec=st.lists(
        st.tuples(st.sampled_from(["NCP", "CP", "Normal"]), st.integers(1, 4)), min_size=1, max_size=40
    ),
    val=st.floats(0, 0.45),
    test=st.floats(0, 0.45),
    seed=st.integers(0, 2**16),
)
def test_split_never_leaks_a_patient(spec: list[tuple[str, int]], val: float, test: float, seed: int) -> None:
    rows = _cohort(spec)
    assignment = split_patients(rows, val=val, test=test, seed=seed)
    assert set(assignment) == {r.scan_id for r in rows}
    assert leaking_patients(rows, assignment) == {}
    folds = kfold_patients(rows, k=3, seed=seed)
    per_patient = {(r.patient_id, folds[r.scan_id]) for r in rows}
    assert len(per_patient) == len({r.patient_id for r in rows})


def test_split_is_stratified_reproducible_and_seed_dependent() -> None:
    rows = _cohort([("NCP", 2)] * 50 + [("Normal", 1)] * 50)
    a = split_patients(rows, val=0.2, test=0.2, seed=0)
    assert a == split_patients(rows, val=0.2, test=0.2, seed=0)
    assert a != split_patients(rows, val=0.2, test=0.2, seed=1)
    for label in ("NCP", "Normal"):
        pats = {r.patient_id: a[r.scan_id] for r in rows if r.label == label}
        counts = {s: sum(1 for v in pats.values() if v == s) for s in ("train", "val", "test")}
        assert counts == {"train": 30, "val": 10, "test": 10}


def test_official_split_is_kept() -> None:
    rows = [ManifestRow("a", "a", "x", "0", split="test"), ManifestRow("b", "b", "x", "1", split="train")]
    assert split_patients(rows, seed=3) == {"a": "test", "b": "train"}


def test_bad_fractions_are_rejected() -> None:
    with pytest.raises(ConfigError, match="val=0.6, test=0.5"):
        split_patients([], val=0.6, test=0.5)


def test_cli_split_writes_next_to_manifest_and_check_catches_leaks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _cohort([("NCP", 3)] * 10 + [("CP", 1)] * 10)
    m = write_manifest(rows, tmp_path / "cohort.csv")
    assert main(["split", str(m), "--val", "0.2", "--test", "0.2", "--folds", "5"]) == 0
    assert split_path(m) == tmp_path / "cohort.split.csv" and split_path(m).is_file()
    assert main(["split", str(m), "--check"]) == 0
    lines = split_path(m).read_text().splitlines()
    # Move one scan of a patient into another split: the check must fail with exit 1 and name it.
    first = lines[1].split(",")
    other = next(s for s in ("train", "val", "test") if s != first[3])
    lines[1] = ",".join([*first[:3], other, first[4]])
    split_path(m).write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["split", str(m), "--check"]) == 1
    assert f"patient {first[1]} is in" in capsys.readouterr().out
