"""Manifest validation: every problem reported with its row and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainage_core.cli import main
from brainage_core.manifest import ManifestError, read_manifest, validate_manifest, write_manifest
from tests.conftest import brain_phantom, write_nifti

HEADER = "subject_id,image,age,sex,group,split,mmse,cdr,updrs3,hoehn_yahr"


@pytest.fixture
def images(tmp_path: Path) -> Path:
    for name in ("a", "b", "c", "d"):
        write_nifti(tmp_path / "img" / f"{name}.nii.gz", brain_phantom((8, 8, 8)))
    (tmp_path / "img" / "broken.nii.gz").write_bytes(b"not a nifti file")
    return tmp_path


def write_csv(folder: Path, rows: list[str], header: str = HEADER) -> Path:
    path = folder / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def problems_by_row(path: Path) -> dict[tuple[int | None, str | None], str]:
    return {(p.row, p.column): p.message for p in validate_manifest(path)}


def test_valid_manifest_reads_with_absolute_paths_and_types(images: Path) -> None:
    path = write_csv(images, ["s1,img/a.nii.gz,70.5,F,AD,train,22,1,,", "s2,img/b.nii.gz,64,M,PD,test,,,30,2"])
    assert validate_manifest(path) == []
    frame = read_manifest(path)
    assert frame["age"].tolist() == [70.5, 64.0]
    assert frame["cdr"].iloc[0] == 1.0 and np.isnan(frame["cdr"].iloc[1])
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in frame["image"])


def test_every_problem_is_reported_with_its_row(images: Path) -> None:
    rows = [
        "s1,img/a.nii.gz,70,F,AD,train,22,1,,",  # 1 valid
        "s2,img/missing.nii.gz,65,M,CN,train,,,,",  # 2 missing file
        "s3,img/b.nii.gz,,M,CN,train,,,,",  # 3 missing age
        "s4,img/c.nii.gz,130,X,XYZ,train,,,,",  # 4 age out of range, bad sex, unknown group
        "s1,img/a.nii.gz,70,F,AD,train,22,1,,",  # 5 duplicate of row 1
        "s5,img/d.nii.gz,60,F,CN,train,,,,",  # 6 subject s5 in train ...
        "s5,img/b.nii.gz,61,F,CN,test,,,,",  # 7 ... and in test (leakage)
        "s6,img/broken.nii.gz,50,M,AD,val,31,0.7,,",  # 8 unreadable, MMSE>30, CDR not allowed
        "s7,img/c.nii.gz,55,M,PD,val,,,140,6",  # 9 UPDRS-III>132, H&Y>5
        "s8,img/c.nii.gz,abc,M,PD,sideways,,,,",  # 10 age not a number, unknown split
    ]
    found = problems_by_row(write_csv(images, rows))
    expected = {
        (2, "image"): "file not found",
        (3, "age"): "age is missing",
        (4, "age"): "outside 0-120",
        (4, "sex"): "not one of M, F",
        (4, "group"): "unknown group",
        (5, "subject_id"): "duplicate of row 1",
        (6, "split"): "several splits",
        (7, "split"): "several splits",
        (8, "image"): "not a readable NIfTI",
        (8, "mmse"): "outside its range 0-30",
        (8, "cdr"): "is not one of 0, 0.5, 1, 2, 3",
        (9, "updrs3"): "outside its range 0-132",
        (9, "hoehn_yahr"): "outside its range 0-5",
        (10, "age"): "is not a number",
        (10, "split"): "unknown split",
    }
    for key, fragment in expected.items():
        assert key in found, f"problem {key} not reported; got {sorted(found)}"
        assert fragment in found[key]
    assert not any(row == 1 for row, _ in found), "the valid first row must not be flagged"


def test_missing_required_columns_are_reported(images: Path) -> None:
    path = write_csv(images, ["s1,img/a.nii.gz,70"], header="subject_id,image,age")
    problems = validate_manifest(path)
    assert {(p.row, p.column) for p in problems} == {(None, "sex"), (None, "group")}
    with pytest.raises(ManifestError, match="required column is missing"):
        read_manifest(path)


def test_write_manifest_round_trips_relative_paths(images: Path) -> None:
    frame = read_manifest(write_csv(images, ["s1,img/a.nii.gz,70,F,AD,train,22,1,,"]))
    out = write_manifest(frame, images / "copy.csv")
    assert pd.read_csv(out)["image"].tolist() == ["img/a.nii.gz"]
    assert read_manifest(out)["image"].tolist() == frame["image"].tolist()
    assert not list(images.glob(".tmp-*")), "atomic write left a temporary file"


def test_cli_validate_lists_the_four_problems_and_exits_2(images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        "s1,img/a.nii.gz,70,F,CN,train,,,,",
        "s1,img/a.nii.gz,70,F,CN,train,,,,",  # duplicate subject
        "s2,img/nowhere.nii.gz,60,M,CN,train,,,,",  # missing file
        "s3,img/b.nii.gz,NaN,M,CN,val,,,,",  # NaN age
        "s4,img/c.nii.gz,50,M,CN,train,,,,",
        "s4,img/d.nii.gz,51,M,CN,test,,,,",  # subject in two splits
    ]
    code = main(["validate", str(write_csv(images, rows))])
    err = capsys.readouterr().err
    assert code == 2
    assert "row 2 (line 3), column 'subject_id': duplicate of row 1" in err
    assert "row 3 (line 4), column 'image': file not found" in err
    assert (
        "row 4 (line 5), column 'age': 'NaN' is not a number" in err
        or "row 4 (line 5), column 'age': age is missing" in err
    )
    assert "row 5 (line 6), column 'split'" in err and "row 6 (line 7), column 'split'" in err


def test_cli_validate_accepts_a_valid_manifest(images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(write_csv(images, ["s1,img/a.nii.gz,70,F,CN,train,,,,"]))]) == 0
    assert "valid (1 scans)" in capsys.readouterr().out
