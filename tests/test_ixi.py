"""IXI import: file names, demographics tables, folds, and preprocessing of real scans to MNI.

Tests on real scans use the IXI subset (``ixi_dir`` fixture; skipped when it is absent) and
write only under pytest's temporary folders.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from nilearn.datasets import load_mni152_brain_mask
from nilearn.image import resample_to_img

from brainage_core.cohorts import ixi
from brainage_core.cohorts.ixi import ImportReport, assign_folds, import_ixi, parse_ixi_name, read_demographics
from brainage_core.manifest import read_manifest, validate_manifest
from brainage_core.prepare import PREPARATION
from brainage_core.prepare import jobs as prepare_jobs
from tests.conftest import IXI_DIR

SUBJECTS = ("IXI012-HH-1211", "IXI013-HH-1212", "IXI014-HH-1236")
SUBJECT_IDS = ("IXI012", "IXI013", "IXI014")
TRUNCATED = "IXI015-HH-1258"


def copy_scans(ixi_dir: Path, folder: Path, mrids: tuple[str, ...], with_seg: bool = True) -> tuple[Path, Path]:
    """Copy real T1 scans (and their DLMUSE segmentations) into ``folder/t1`` and ``folder/seg``."""
    (folder / "t1").mkdir(parents=True, exist_ok=True)
    (folder / "seg").mkdir(parents=True, exist_ok=True)
    for mrid in mrids:
        shutil.copy(ixi_dir / "t1" / f"{mrid}_T1.nii.gz", folder / "t1")
        if with_seg:
            shutil.copy(ixi_dir / "seg" / f"{mrid}_T1_DLMUSE.nii.gz", folder / "seg")
    return folder / "t1", folder / "seg"


def write_participants(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """Write a demographics table in the ``participants.csv`` format (MRID, Age, Sex)."""
    path.write_text("MRID,Age,Sex\n" + "".join(f"{mrid},{age},{sex}\n" for mrid, age, sex in rows))
    return path


# --------------------------------------------------------------------------- names, tables, folds


@pytest.mark.parametrize(
    ("name", "subject_id", "site", "mrid"),
    [
        ("IXI012-HH-1211_T1.nii.gz", "IXI012", "HH", "IXI012-HH-1211"),
        ("IXI002-Guys-0828_T1.nii.gz", "IXI002", "Guys", "IXI002-Guys-0828"),
        ("IXI7-IOP-0001_T1.nii", "IXI007", "IOP", "IXI7-IOP-0001"),
    ],
)
def test_parse_ixi_name(name: str, subject_id: str, site: str, mrid: str) -> None:
    scan = parse_ixi_name(Path("/data") / name)
    assert (scan.subject_id, scan.site, scan.mrid) == (subject_id, site, mrid)
    assert scan.path == Path("/data") / name


@pytest.mark.parametrize(
    "name", ["IXI012-XYZ-1211_T1.nii.gz", "IXI012-HH-1211_T2.nii.gz", "sub-01_T1w.nii.gz", "IXI012_T1.nii.gz"]
)
def test_parse_ixi_name_rejects_other_names(name: str) -> None:
    with pytest.raises(ValueError, match="IXI"):
        parse_ixi_name(name)


def test_participants_csv_duplicates_missing_and_invalid(tmp_path: Path) -> None:
    path = write_participants(
        tmp_path / "participants.csv",
        [
            ("IXI012-HH-1211", "38.78", "M"),
            ("IXI012-HH-1211", "38.78", "M"),  # identical duplicate: kept once
            ("IXI013-HH-1212", "46.71", "M"),
            ("IXI013-HH-1212", "47.50", "M"),  # disagrees on age: conflicting
            ("IXI014-HH-1236", "", "F"),  # no age
            ("IXI015-HH-1258", "24.28", "X"),  # invalid sex
            ("IXI016-Guys-0697", "150", "F"),  # impossible age
        ],
    )
    demographics = read_demographics(path)
    assert list(demographics.table.index) == ["IXI012", "IXI014"]
    assert demographics.table.loc["IXI012", "age"] == pytest.approx(38.78)
    assert demographics.table.loc["IXI012", "sex"] == "M"
    assert np.isnan(demographics.table.loc["IXI014", "age"])
    assert set(demographics.conflicting) == {"IXI013"}
    assert "46.71" in demographics.conflicting["IXI013"] and "47.5" in demographics.conflicting["IXI013"]
    assert set(demographics.invalid) == {"IXI015", "IXI016"}
    assert "line 7" in demographics.invalid["IXI015"] and "150" in demographics.invalid["IXI016"]


def test_participants_csv_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad_id = write_participants(tmp_path / "bad_id.csv", [("IXI012-HH-1211", "38", "M"), ("subject-12", "40", "F")])
    with pytest.raises(ValueError, match=r"bad_id\.csv: line 3: 'subject-12'"):
        read_demographics(bad_id)
    bad_age = write_participants(tmp_path / "bad_age.csv", [("IXI012-HH-1211", "old", "M")])
    with pytest.raises(ValueError, match=r"bad_age\.csv: line 2"):
        read_demographics(bad_age)
    no_age = tmp_path / "no_age.csv"
    no_age.write_text("MRID,Sex\nIXI012-HH-1211,M\n")
    with pytest.raises(ValueError, match=r"no_age\.csv: missing column\(s\) \['Age'\]"):
        read_demographics(no_age)
    other = tmp_path / "ages.txt"
    other.write_text("MRID,Age,Sex\n")
    with pytest.raises(ValueError, match="IXI.xls or a participants"):
        read_demographics(other)


def test_assign_folds_is_balanced_stratified_and_deterministic() -> None:
    rng = np.random.default_rng(1)
    ages = rng.uniform(20, 85, size=143)
    ids = [f"IXI{i:03d}" for i in range(143)]
    folds = assign_folds(ages, ids)
    assert sorted(set(folds)) == [0, 1, 2, 3, 4]
    counts = np.bincount(folds)
    assert counts.max() - counts.min() <= 1
    # Stratified: every fold spans the age range with nearly the same mean age.
    means = [ages[folds == fold].mean() for fold in range(5)]
    assert max(means) - min(means) < 4.0
    for fold in range(5):
        assert ages[folds == fold].min() < 25 and ages[folds == fold].max() > 80
    np.testing.assert_array_equal(folds, assign_folds(ages, ids))
    order = rng.permutation(143)  # the fold of a subject does not depend on the row order
    np.testing.assert_array_equal(assign_folds(ages[order], [ids[i] for i in order]), folds[order])


def test_ixi_xls_duplicates(ixi_dir: Path) -> None:
    xls = read_demographics(ixi_dir / "IXI.xls")
    # IXI219 and IXI328 appear twice with different ages: reported, never guessed.
    assert {"IXI219", "IXI328"} <= set(xls.conflicting)
    assert "IXI328" not in xls.table.index and "spreadsheet row" in xls.conflicting["IXI328"]
    # IXI237 appears twice with identical values: kept once.
    assert xls.table.loc["IXI237", "age"] == pytest.approx(78.20397)
    assert xls.table.loc["IXI012", "sex"] == "M" and xls.table.loc["IXI014", "sex"] == "F"
    assert not xls.table.index.duplicated().any()
    for subject_id in ("IXI637", "IXI638", "IXI643", "IXI661"):
        assert subject_id not in xls.table.index
    # The spreadsheet and participants.csv agree on every subject they share.
    csv = read_demographics(ixi_dir / "participants.csv")
    shared = csv.table.index.intersection(xls.table.index)
    assert len(shared) == len(csv.table) - 1  # all but the conflicting IXI328
    np.testing.assert_allclose(csv.table.loc[shared, "age"], xls.table.loc[shared, "age"], atol=0.006)
    assert (csv.table.loc[shared, "sex"] == xls.table.loc[shared, "sex"]).all()


# --------------------------------------------------------------------------- real scans


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ImportReport]:
    """Three real scans plus a truncated fourth (with its segmentation), imported with two workers.

    Module-scoped (one import for several tests), so it checks the data folder itself rather
    than through the function-scoped ``ixi_dir`` fixture.
    """
    if not (IXI_DIR / "t1").is_dir():
        pytest.skip(f"real IXI data not found at {IXI_DIR} (set BRAINAGE_IXI_DIR to the ixi_t1_2mm folder)")
    folder = tmp_path_factory.mktemp("ixi")
    t1_dir, seg_dir = copy_scans(IXI_DIR, folder, (*SUBJECTS, TRUNCATED))
    truncated = t1_dir / f"{TRUNCATED}_T1.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    out_dir = folder / "out"
    report = import_ixi(t1_dir, IXI_DIR / "participants.csv", out_dir, mask_dir=seg_dir, workers=2, progress=False)
    return out_dir, report


def test_corrupt_file_is_reported_and_the_rest_imported(imported: tuple[Path, ImportReport]) -> None:
    out_dir, report = imported
    assert len(report.corrupt) == 1
    assert f"{TRUNCATED}_T1.nii.gz" in report.corrupt[0] and "cannot read as NIfTI" in report.corrupt[0]
    assert report.n_images == 4 and report.n_processed == 3 and report.n_imported == 3
    manifest = pd.read_csv(out_dir / "manifest.csv")
    assert sorted(manifest["subject_id"]) == ["IXI012", "IXI013", "IXI014"]
    stored = json.loads((out_dir / "import_report.json").read_text())
    assert stored["corrupt"] == report.corrupt and stored["n_imported"] == 3
    assert len(stored["not_on_disk"]) == 145 - 4  # participants.csv rows without a scan in the folder


def test_outputs_are_ras_on_the_template_grid_inside_its_brain_region(imported: tuple[Path, ImportReport]) -> None:
    out_dir, _ = imported
    template = ixi.load_registration_template(2.0)
    grid_shape = template.brain.GetSize()
    manifest = read_manifest(out_dir / "manifest.csv")
    template_region = sitk.GetArrayFromImage(template.region).transpose(2, 1, 0) > 0  # [X, Y, Z] as nibabel
    assert manifest.columns.tolist() == [
        "subject_id", "image", "age", "sex", "group", "mask", "mask_source", "preparation", "site", "labels",
        "scan_id", "fold",
    ]  # fmt: skip
    assert (manifest["group"] == "CN").all() and (manifest["site"] == "HH").all()
    assert (manifest["preparation"] == PREPARATION).all() and (manifest["mask_source"] == "given").all()
    assert manifest.set_index("subject_id").loc["IXI014", "age"] == pytest.approx(34.24)
    for row in manifest.itertuples():
        assert row.labels == str(out_dir.resolve() / "labels" / f"{row.subject_id}_labels_mni.nii.gz")
        image, mask, labels = nib.load(row.image), nib.load(row.mask), nib.load(row.labels)
        for volume in (image, mask, labels):
            assert volume.shape == grid_shape
            assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
            np.testing.assert_allclose(volume.affine, image.affine, atol=1e-4)
        np.testing.assert_allclose(np.abs(np.diag(image.affine)[:3]), 2.0, atol=1e-6)
        assert image.get_data_dtype() == np.float32
        data, inside = image.get_fdata(), mask.get_fdata() > 0
        assert (data[~inside] == 0).all() and (data[inside] > 0).mean() > 0.99
        np.testing.assert_array_equal(inside, template_region)  # the models see the same region in every scan
        label_data = np.asarray(labels.dataobj)
        assert len(np.unique(label_data)) > 100  # the DLMUSE regions survive nearest-neighbour resampling
        assert ((label_data > 0) & inside).sum() / (label_data > 0).sum() > 0.99  # the region holds the brain


def test_qc_and_registration_overlap(imported: tuple[Path, ImportReport]) -> None:
    out_dir, _ = imported
    qc = pd.read_csv(out_dir / "qc.csv").set_index("subject_id")
    qc = qc.loc[[*SUBJECT_IDS, "IXI015"]]
    assert len(qc) == 4 and (qc.loc[list(SUBJECT_IDS), "status"] != "qc_failed").all()
    assert qc.loc["IXI015", "status"] == "error" and "cannot read as NIfTI" in qc.loc["IXI015", "message"]
    assert (qc.loc[list(SUBJECT_IDS), "reference_dice"] == 1.0).all()  # the labels are the mask
    qc = qc.loc[list(SUBJECT_IDS)]
    assert (qc["correlation"] >= ixi.QC_MIN_CORRELATION).all() and (qc["dice"] >= ixi.QC_MIN_DICE).all()
    assert qc["brain_volume_ml"].between(1200, 1800).all()
    # Dice of the registered DLMUSE brain with nilearn's own MNI152 brain mask, resampled onto our
    # grid: independent of the ixi package.
    manifest = read_manifest(out_dir / "manifest.csv")
    reference = resample_to_img(
        load_mni152_brain_mask(resolution=2),
        nib.load(manifest["mask"][0]),
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    template_mask = reference.get_fdata() > 0
    for row in manifest.itertuples():
        registered = nib.load(row.labels).get_fdata() > 0
        dice = 2 * (registered & template_mask).sum() / (registered.sum() + template_mask.sum())
        assert dice > 0.9, f"{row.subject_id}: Dice {dice:.3f} with the MNI brain mask"
        assert (out_dir / "qc" / f"{row.subject_id}.png").stat().st_size > 10_000
    assert validate_manifest(out_dir / "manifest.csv") == []


def test_qc_flags_a_misaligned_scan(imported: tuple[Path, ImportReport]) -> None:
    out_dir, _ = imported
    template = ixi.load_registration_template(2.0)
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(out_dir / "images" / "IXI012_T1w_mni.nii.gz")))  # [Z, Y, X]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out_dir / "labels" / "IXI012_labels_mni.nii.gz")))
    mask = (labels > 0).astype(np.uint8)  # the registered brain (its DLMUSE labels)
    aligned = ixi.qc_metrics(image, mask, template)
    stored = pd.read_csv(out_dir / "qc.csv").set_index("subject_id").loc["IXI012"]
    assert aligned["correlation"] == pytest.approx(stored["correlation"], abs=1e-4)
    assert aligned["dice"] == pytest.approx(stored["dice"], abs=0.01)  # the stored mask was resampled linearly
    assert ixi.passes_qc({**aligned, "brain_volume_ml": stored["brain_volume_ml"]})
    for axis in range(3):  # 10 mm off along any axis fails
        shifted = ixi.qc_metrics(np.roll(image, 5, axis=axis), np.roll(mask, 5, axis=axis), template)
        assert not ixi.passes_qc({**shifted, "brain_volume_ml": stored["brain_volume_ml"]}), (axis, shifted)
    assert not ixi.passes_qc({**aligned, "brain_volume_ml": 400.0})


def test_rerun_reuses_the_cache(imported: tuple[Path, ImportReport], monkeypatch: pytest.MonkeyPatch) -> None:
    out_dir, first = imported
    outputs = sorted((out_dir / "images").iterdir()) + sorted((out_dir / "masks").iterdir())
    mtimes = [path.stat().st_mtime_ns for path in outputs]

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached scan was registered again")

    for module in (prepare_jobs, ixi.registration):  # where the per-scan steps look them up
        monkeypatch.setattr(module, "register_to_template", forbidden)
        monkeypatch.setattr(module, "n4_bias_correction", forbidden)
    t1_dir = out_dir.parent / "t1"
    again = import_ixi(
        t1_dir, IXI_DIR / "participants.csv", out_dir, mask_dir=out_dir.parent / "seg", workers=2, progress=False
    )
    assert again.n_cached == 3 and again.n_processed == 0 and again.n_imported == 3
    assert again.corrupt == first.corrupt  # the truncated file is read again and reported again
    assert [path.stat().st_mtime_ns for path in outputs] == mtimes
    assert validate_manifest(out_dir / "manifest.csv") == []


def test_crafted_table_reports_every_mismatch(
    ixi_dir: Path, tmp_path: Path, imported: tuple[Path, ImportReport]
) -> None:
    t1_dir, seg_dir = copy_scans(ixi_dir, tmp_path, SUBJECTS)
    copy_scans(ixi_dir, tmp_path, (TRUNCATED,), with_seg=False)  # a complete copy here, with no segmentation
    (t1_dir / "notes_T1.nii.gz").write_bytes(b"not an IXI name")
    table = write_participants(
        tmp_path / "participants.csv",
        [
            ("IXI012-HH-1211", "38.78", "M"),  # imported
            ("IXI013-HH-1212", "", "M"),  # on disk, no age
            ("IXI015-HH-1258", "24.28", "M"),  # on disk, no segmentation
            ("IXI999-HH-9999", "50.0", "F"),  # in the table, not on disk
        ],  # IXI014 is on disk with no row
    )
    report = import_ixi(t1_dir, table, tmp_path / "out", mask_dir=seg_dir, workers=1, progress=False)
    assert report.not_on_disk == ["IXI999"]
    assert len(report.no_demographics) == 1 and report.no_demographics[0].startswith("IXI014-HH-1236: no row")
    assert len(report.missing_age) == 1 and report.missing_age[0].startswith("IXI013-HH-1212: no age")
    assert len(report.missing_mask) == 1 and "IXI015-HH-1258_T1_DLMUSE.nii.gz" in report.missing_mask[0]
    assert len(report.unrecognised_files) == 1 and "notes_T1.nii.gz" in report.unrecognised_files[0]
    assert report.n_imported == 1 and not report.corrupt and not report.failed
    manifest = read_manifest(tmp_path / "out" / "manifest.csv")
    assert manifest["subject_id"].tolist() == ["IXI012"] and manifest["sex"].tolist() == ["M"]
    # Deterministic: one worker here, two in the module import, identical volumes.
    np.testing.assert_array_equal(
        nib.load(manifest["image"][0]).get_fdata(),
        nib.load(imported[0] / "images" / "IXI012_T1w_mni.nii.gz").get_fdata(),
    )
    assert set(json.loads((tmp_path / "out" / "import_report.json").read_text())) >= {"missing_age", "no_demographics"}


@pytest.mark.slow
def test_import_without_masks_strips_the_skull_with_deepbet(
    ixi_dir: Path, tmp_path: Path, imported: tuple[Path, ImportReport]
) -> None:
    t1_dir, _ = copy_scans(ixi_dir, tmp_path, ("IXI012-HH-1211",), with_seg=False)
    report = import_ixi(t1_dir, ixi_dir / "participants.csv", tmp_path / "out", workers=1, progress=False)
    assert report.n_imported == 1 and not report.missing_mask
    manifest = read_manifest(tmp_path / "out" / "manifest.csv")
    assert "labels" not in manifest.columns and manifest["mask_source"].tolist() == ["deepbet"]
    sidecar = json.loads((tmp_path / "out" / "cache" / "IXI012.json").read_text())
    assert sidecar["parameters"]["mask_source"] == "deepbet"
    # What a model sees does not depend on the mask: the same region, nearly the same voxels.
    region = nib.load(manifest["mask"][0]).get_fdata() > 0
    np.testing.assert_array_equal(region, nib.load(imported[0] / "masks" / "IXI012_mask_mni.nii.gz").get_fdata() > 0)
    deepbet = nib.load(manifest["image"][0]).get_fdata()[region]
    dlmuse = nib.load(imported[0] / "images" / "IXI012_T1w_mni.nii.gz").get_fdata()[region]
    assert np.corrcoef(deepbet, dlmuse)[0, 1] > 0.98


def test_max_subjects_limits_the_import(ixi_dir: Path, tmp_path: Path) -> None:
    """Quick runs import the first subjects only; the folder's other IDs are not reported missing."""
    with pytest.raises(ValueError, match="max_subjects must be >= 1"):
        ixi.import_ixi(
            ixi_dir / "t1", ixi_dir / "participants.csv", tmp_path / "zero", mask_dir=ixi_dir / "seg", max_subjects=0
        )
    report = ixi.import_ixi(
        ixi_dir / "t1",
        ixi_dir / "participants.csv",
        tmp_path / "two",
        mask_dir=ixi_dir / "seg",
        max_subjects=2,
        workers=1,
        progress=False,
    )
    manifest = read_manifest(tmp_path / "two" / "manifest.csv")
    assert manifest["subject_id"].tolist() == ["IXI012", "IXI013"]
    assert report.not_on_disk == []
