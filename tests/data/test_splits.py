from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctcovid.cli import main
from ctcovid.data.manifest import ManifestRow, write_manifest
from ctcovid.data.splits import kfold_patients, leaking_patients, split_path, split_patients
from ctcovid.errors import ConfigError, ManifestError


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


@settings(max_examples=60, deadline=None)
@given(
    spec=st.lists(
        st.tuples(
            st.sampled_from(["NCP", "CP", "Normal"]),
            st.integers(1, 3),
            st.sampled_from(["", "", "", "train", "val", "test"]),
        ),
        min_size=1,
        max_size=30,
    ),
    seed=st.integers(0, 2**16),
)
def test_a_partial_split_in_the_manifest_is_kept_and_only_the_rest_is_assigned(
    spec: list[tuple[str, int, str]], seed: int
) -> None:
    """Regression (issue 18.1): 4 of 20 scans marked 'test' were spread over train/val/test."""
    rows = [
        ManifestRow(f"s{p}_{k}", f"p{p}", f"x{p}_{k}", label, split=split)
        for p, (label, n, split) in enumerate(spec)
        for k in range(n)
    ]
    assignment = split_patients(rows, val=0.2, test=0.2, seed=seed)
    assert set(assignment) == {r.scan_id for r in rows}
    for r in rows:
        if r.split:
            assert assignment[r.scan_id] == r.split, r
    assert leaking_patients(rows, assignment) == {}
    # The patients without a split are assigned exactly as if the others were not there.
    free = [r for r in rows if not r.split]
    alone = split_patients(free, val=0.2, test=0.2, seed=seed)
    assert {r.scan_id: assignment[r.scan_id] for r in free} == alone


def test_an_external_test_set_set_aside_in_the_manifest_stays_out_of_training() -> None:
    rows = _cohort([("NCP", 1)] * 10 + [("Normal", 1)] * 10)
    held = {"s0_0", "s1_0", "s10_0", "s11_0"}
    rows = [
        ManifestRow(r.scan_id, r.patient_id, r.path, r.label, split="test" if r.scan_id in held else "")
        for r in rows
    ]
    assignment = split_patients(rows, val=0.2, test=0.0, seed=0)
    assert {s for s, v in assignment.items() if v == "test"} == held
    assert "test" not in {assignment[r.scan_id] for r in rows if r.scan_id not in held}


@pytest.mark.parametrize(("first", "second"), [("test", ""), ("train", "test"), ("", "val")])
def test_a_patient_with_mixed_splits_is_an_error_naming_the_patient(first: str, second: str) -> None:
    rows = [
        ManifestRow("a1", "alice", "x", "NCP", split=first),
        ManifestRow("a2", "alice", "y", "NCP", split=second),
        ManifestRow("b1", "bob", "z", "CP"),
    ]
    with pytest.raises(ManifestError, match=r"patient 'alice' has scans in different splits .*a1.*a2|a2.*a1"):
        split_patients(rows)


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
