"""brainage prepare: BIDS and manifest input, errors named with their files, the QC report, the cache, real scans."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from brainage_core.cli import main
from brainage_core.cohorts.ixi.registration import CorruptImageError, load_registration_template, read_nifti_canonical
from brainage_core.manifest import ManifestError, validate_manifest
from brainage_core.ownership import claim
from brainage_core.prepare import BidsError, deepbet_mask, manifest_rows, prepare_scans, qc_status, read_bids
from brainage_core.prepare.pipeline import _plan
from brainage_core.prepare.report import ScanResult, write_qc_html
from tests.conftest import IXI_DIR

GOOD_QC = {"correlation": 0.6, "dice": 0.96, "mattes_mi": -0.7, "brain_volume_ml": 1500.0, "affine_scale": 1.0}


def write_volume(path: Path, shape: tuple[int, ...] = (12, 12, 12), seed: int = 0) -> Path:
    """A small random NIfTI volume (any shape, 2 mm voxels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).uniform(0, 100, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


def write_corrupt(path: Path) -> Path:
    """A truncated ``.nii.gz``."""
    write_volume(path, (20, 20, 20))
    path.write_bytes(path.read_bytes()[:200])
    return path


def make_bids(root: Path) -> Path:
    """sub-01: two sessions (one run-labelled, its age in sessions.tsv); sub-02: no age; sub-03: no participants row."""
    root.mkdir(parents=True)
    (root / "participants.tsv").write_text(
        "participant_id\tage\tsex\tgroup\tmmse\nsub-01\t70.5\tF\tn/a\t28\nsub-02\tn/a\tmale\tCN\tn/a\n"
    )
    write_volume(root / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz")
    (root / "sub-01/sub-01_sessions.tsv").write_text("session_id\tage\nses-1\tn/a\nses-2\t72.5\n")
    write_volume(root / "sub-01/ses-2/anat/sub-01_ses-2_run-1_T1w.nii.gz", seed=1)
    write_volume(root / "sub-02/anat/sub-02_T1w.nii.gz", seed=2)
    write_volume(root / "sub-03/anat/sub-03_T1w.nii", seed=3)
    return root


def test_read_bids_lists_every_session_and_names_each_problem(tmp_path: Path) -> None:
    found = read_bids(make_bids(tmp_path / "bids"))
    assert [(row["subject_id"], row["session"], row["run"], row["scan_id"]) for row in found.rows] == [
        ("sub-01", "1", "", "sub-01_ses-1"),
        ("sub-01", "2", "1", "sub-01_ses-2_run-1"),
    ]
    assert [row["age"] for row in found.rows] == [70.5, 72.5]  # sessions.tsv wins where it has an age
    assert all(row["sex"] == "F" and row["group"] == "CN" for row in found.rows)
    assert found.rows[0]["mmse"] == "28"
    assert len(found.problems) == 2
    assert "participants.tsv row 2 (sub-02)" in found.problems[0] and "age" in found.problems[0]
    assert "sub-03_T1w.nii" in found.problems[1] and "no row in" in found.problems[1]
    with pytest.raises(ValueError, match="is the BIDS dataset itself"):
        prepare_scans(found, tmp_path / "bids", progress=False)


def test_read_bids_without_participants_says_what_to_add(tmp_path: Path) -> None:
    root = make_bids(tmp_path / "bids")
    (root / "participants.tsv").unlink()
    with pytest.raises(BidsError, match=r"participants\.tsv is missing.*participant_id, age and sex"):
        read_bids(root)


def test_manifest_rows_drop_bad_rows_with_their_row_and_keep_the_rest(tmp_path: Path) -> None:
    write_volume(tmp_path / "raw/a.nii.gz")
    write_volume(tmp_path / "raw/b.nii.gz", seed=1)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "subject_id,image,age,sex,group,mask\n"
        "s1,raw/a.nii.gz,50,F,CN,raw/a_mask.nii.gz\n"
        "s1,raw/b.nii.gz,51,F,CN,\n"
        "s2,raw/missing.nii.gz,60,M,CN,\n"
        "s3,raw/a.nii.gz,,M,CN,\n"
    )
    write_volume(tmp_path / "raw/a_mask.nii.gz")
    rows, problems = manifest_rows(manifest)
    assert [row["scan_id"] for row in rows] == ["s1_row1", "s1_row2"]
    assert rows[0]["image"] == str((tmp_path / "raw/a.nii.gz").resolve())
    assert any("row 3" in p and "image" in p for p in problems)
    assert any("row 4" in p and "age is missing" in p for p in problems)
    given, found = _plan(rows, tmp_path / "out", 2.0)  # the user's mask wins over deepbet
    assert (given.mask_source, found.mask_source) == ("given", "deepbet")
    assert given.mask == (tmp_path / "raw/a_mask.nii.gz").resolve() and "deepbet" not in given.parameters()
    (tmp_path / "bad.csv").write_text("subject_id,image,age\ns1,raw/a.nii.gz,50\n")
    with pytest.raises(ManifestError, match="required column is missing"):
        manifest_rows(tmp_path / "bad.csv")


def test_a_4d_file_with_one_volume_is_read_and_two_volumes_are_refused(tmp_path: Path) -> None:
    one = read_nifti_canonical(write_volume(tmp_path / "one.nii.gz", (10, 11, 12, 1)))
    assert one.shape == (10, 11, 12)
    with pytest.raises(CorruptImageError, match=r"two\.nii\.gz.*4-D file with one volume.*\(10, 11, 12, 2\)"):
        read_nifti_canonical(write_volume(tmp_path / "two.nii.gz", (10, 11, 12, 2)))


def test_qc_html_is_self_contained_and_lists_failures_first(tmp_path: Path) -> None:
    figure = tmp_path / "fig.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    results = [
        ScanResult("ok_scan", "raw/ok.nii.gz", qc_status(GOOD_QC), qc=GOOD_QC, figure=figure),
        ScanResult("edge_scan", "raw/edge.nii.gz", qc_status({**GOOD_QC, "dice": 0.935}), qc=GOOD_QC),
        ScanResult("bad_qc", "raw/bad.nii.gz", qc_status({**GOOD_QC, "dice": 0.80}), qc=GOOD_QC),
        ScanResult("broken", "raw/broken.nii.gz", "error", message="raw/broken.nii.gz: cannot read as NIfTI"),
    ]
    assert [r.status for r in results] == ["ok", "borderline", "qc_failed", "error"]
    page = write_qc_html(results, tmp_path / "qc.html", "test").read_text()
    assert "http://" not in page and "https://" not in page and 'src="//' not in page
    assert "data:image/png;base64," in page
    positions = [page.index(name) for name in ("broken", "bad_qc", "edge_scan", "ok_scan")]
    assert positions == sorted(positions)


def test_a_rerun_with_unchanged_inputs_does_no_work_and_a_changed_input_is_redone(tmp_path: Path) -> None:
    image = write_volume(tmp_path / "raw/a.nii.gz")
    rows = [{"subject_id": "s1", "image": str(image), "age": 50.0, "sex": "F", "group": "CN", "scan_id": "s1"}]
    out = tmp_path / "out"
    (job,) = _plan(rows, out, 2.0)
    write_volume(job.outputs["image"])  # outputs of an earlier run
    write_volume(job.outputs["mask"])
    job.outputs["qc_figure"].parent.mkdir(parents=True)
    job.outputs["qc_figure"].write_bytes(b"png")
    qc = {"subject_id": "s1", "mrid": "s1", **GOOD_QC}
    job.sidecar.parent.mkdir(parents=True)
    job.sidecar.write_text(json.dumps({"inputs": job.inputs, "parameters": job.parameters(), "qc": qc}))
    before = {path: path.stat().st_mtime_ns for path in job.outputs.values()}
    with pytest.raises(FileExistsError, match="would overwrite files brainage did not write"):
        prepare_scans(rows, out, workers=1, progress=False)  # not yet recorded as brainage's own
    claim(out, [*job.outputs.values(), job.sidecar])

    report = prepare_scans(rows, out, workers=1, progress=False)
    assert (report.n_cached, report.n_processed, report.problems()) == (1, 0, [])
    assert {path: path.stat().st_mtime_ns for path in job.outputs.values()} == before
    assert "mask_source" in (out / "manifest.csv").read_text().splitlines()[0]
    assert validate_manifest(out / "manifest.csv", check_images="exists") == []
    write_corrupt(image)  # the input changed: processed again, fails, and the old manifest goes
    report = prepare_scans(rows, out, workers=1, progress=False)
    assert (report.n_cached, report.n_prepared, len(report.corrupt)) == (0, 0, 1)
    assert not (out / "manifest.csv").exists()


def test_unreadable_scans_are_reported_with_their_files(tmp_path: Path) -> None:
    root = make_bids(tmp_path / "bids")
    corrupt = write_corrupt(root / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz")
    two = write_volume(root / "sub-01/ses-2/anat/sub-01_ses-2_run-1_T1w.nii.gz", (10, 10, 10, 2))
    report = prepare_scans(read_bids(root), tmp_path / "out", workers=1, progress=False)
    assert len(report.corrupt) == 2 and report.n_prepared == 0 and report.manifest == ""
    assert any(str(corrupt) in p and "cannot read as NIfTI" in p for p in report.corrupt)
    assert any(str(two) in p and "one volume" in p for p in report.corrupt)
    assert len(report.input_problems) == 2  # sub-02 without age, sub-03 without a row
    assert json.loads((tmp_path / "out/dataset_description.json").read_text())["DatasetType"] == "derivative"
    page = (tmp_path / "out/qc.html").read_text()
    assert str(corrupt) in page and "2 error" in page


def test_cli_prepare_exits_2_naming_the_bad_scan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_corrupt(tmp_path / "raw/bad.nii.gz")
    (tmp_path / "m.csv").write_text("subject_id,image,age,sex,group\ns1,raw/bad.nii.gz,50,F,CN\n")
    code = main(["prepare", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "bad.nii.gz" in err and "cannot read as NIfTI" in err and "Traceback" not in err
    assert main(["prepare", "--bids", str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")]) == 2
    assert "BIDS folder not found" in capsys.readouterr().err


@pytest.fixture
def ixi_scan() -> tuple[Path, Path]:
    """One shared IXI T1 (with skull) and its DLMUSE parcellation."""
    scan = IXI_DIR / "t1" / "IXI012-HH-1211_T1.nii.gz"
    if not scan.is_file():
        pytest.skip(f"real IXI data not found at {IXI_DIR} (set BRAINAGE_IXI_DIR to the ixi_t1_2mm folder)")
    return scan, IXI_DIR / "seg" / "IXI012-HH-1211_T1_DLMUSE.nii.gz"


def test_deepbet_mask_matches_the_dlmuse_brain(ixi_scan: tuple[Path, Path]) -> None:
    scan, seg = ixi_scan
    image = read_nifti_canonical(scan)
    mask = np.asarray(deepbet_mask(image).dataobj) > 0
    reference = np.asarray(nib.as_closest_canonical(nib.load(seg)).dataobj) > 0
    dice = 2 * (mask & reference).sum() / (mask.sum() + reference.sum())
    assert dice >= 0.9, f"deepbet vs DLMUSE brain mask Dice {dice:.3f}"


@pytest.mark.slow
def test_a_real_bids_scan_is_prepared_onto_the_template_grid_and_cached(
    ixi_scan: tuple[Path, Path], tmp_path: Path
) -> None:
    root = tmp_path / "bids"
    anat = root / "sub-012/ses-01/anat"
    anat.mkdir(parents=True)
    (anat / "sub-012_ses-01_T1w.nii.gz").write_bytes(ixi_scan[0].read_bytes())
    (root / "participants.tsv").write_text("participant_id\tage\tsex\nsub-012\t38.78\tM\n")
    corrupt = write_corrupt(root / "sub-012/ses-02/anat/sub-012_ses-02_T1w.nii.gz")
    out = tmp_path / "out"
    report = prepare_scans(read_bids(root), out, workers=2, progress=False)
    assert (report.n_processed, report.n_prepared, len(report.corrupt)) == (1, 1, 1)  # the good scan went on
    assert str(corrupt) in report.corrupt[0]
    page = (out / "qc.html").read_text()
    assert page.index("sub-012_ses-02") < page.index("sub-012_ses-01")  # the failure comes first
    prepared = out / "sub-012/ses-01/anat/sub-012_ses-01_space-MNI152NLin2009aSym_desc-brain_T1w.nii.gz"
    template = load_registration_template(2.0).brain
    image = sitk.ReadImage(str(prepared))
    assert image.GetSize() == template.GetSize()
    assert np.allclose(image.GetOrigin(), template.GetOrigin()) and np.allclose(image.GetSpacing(), 2.0)
    assert prepared.with_name(prepared.name.replace("_T1w", "_mask")).is_file()
    assert validate_manifest(out / "manifest.csv") == []
    assert "deepbet" in (out / "manifest.csv").read_text()
    again = prepare_scans(read_bids(root), out, workers=1, progress=False)
    assert (again.n_cached, again.n_processed, again.n_prepared) == (1, 0, 1)


@pytest.mark.slow
def test_a_given_mask_is_used_instead_of_deepbet(ixi_scan: tuple[Path, Path], tmp_path: Path) -> None:
    scan, seg = ixi_scan  # DLMUSE labels as the user's mask: voxels > 0 are brain
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"subject_id,image,age,sex,group,mask\nIXI012,{scan},38.78,M,CN,{seg}\n")
    report = prepare_scans(manifest, tmp_path / "out", workers=1, progress=False)
    assert (report.n_prepared, report.problems()) == (1, [])
    assert "mask_source" in (text := (tmp_path / "out/manifest.csv").read_text()) and ",given," in text
    assert json.loads((tmp_path / "out/cache/IXI012.json").read_text())["parameters"]["mask_source"] == "given"
