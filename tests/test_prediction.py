"""brainage predict: the preparation check, raw scans prepared first, gaps, conformal intervals, agreement."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainage_core.analysis.preparation_agreement import compare_preparations
from brainage_core.book.bids_demo import bids_from_ixi
from brainage_core.cli import main
from brainage_core.config import load_config
from brainage_core.prediction import PreparationMismatchError, conformal_interval, predict_scans
from brainage_core.prepare import PREPARATION, read_bids
from brainage_core.train import train
from tests.conftest import IXI_DIR, write_tiny_cohort
from tests.test_train import tiny_overrides


def with_preparation(manifest: Path, value: str | None, name: str) -> Path:
    """A copy of ``manifest`` (beside it) whose rows say they were prepared as ``value`` (None: no column)."""
    frame = pd.read_csv(manifest)
    if value is not None:
        frame["preparation"] = value
    path = manifest.with_name(name)
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny run trained on rows marked as prepared by brainage prepare, and its manifest."""
    folder = tmp_path_factory.mktemp("prediction")
    manifest = with_preparation(write_tiny_cohort(folder, n_subjects=30), PREPARATION, "prepared.csv")
    run = train(load_config(None, tiny_overrides(folder, manifest, "mse")), folder / "run", progress=False)
    return run, manifest


def test_the_conformal_interval_is_the_right_order_statistic_of_validation_errors() -> None:
    errors = np.arange(1.0, 10.0)  # 9 validation controls with absolute errors 1..9
    rows = [
        {"group": "CN", "split": "val", "age": 50.0, "predicted_age": 50.0 + e * (-1) ** i}
        for i, e in enumerate(errors)
    ]
    rows += [{"group": "CN", "split": "test", "age": 40.0, "predicted_age": 40.0 + e} for e in (2.0, 8.5, 9.5, 30.0)]
    rows += [{"group": "AD", "split": "val", "age": 70.0, "predicted_age": 99.0}]  # patients never calibrate
    interval = conformal_interval(pd.DataFrame(rows), level=0.9)
    assert interval.half_width == 9.0  # ceil((9 + 1) * 0.9) = 9th smallest
    assert (interval.n_calibration, interval.n_test, interval.test_coverage) == (9, 4, 0.5)
    assert conformal_interval(pd.DataFrame(rows), level=0.8).half_width == 8.0
    assert math.isinf(conformal_interval(pd.DataFrame(rows), level=0.95).half_width)  # 9 rows cannot give 95 %
    with pytest.raises(ValueError, match="between 0 and 1"):
        conformal_interval(pd.DataFrame(rows), level=1.0)


def test_predictions_carry_the_interval_and_the_bias_corrected_gap(prepared_run: tuple[Path, Path]) -> None:
    run, manifest = prepared_run
    result, interval = predict_scans(run, manifest, device="cpu", progress=False)
    stored = pd.read_csv(run / "predictions.csv")
    assert (stored["preparation"] == PREPARATION).all()  # the run records how its images were made
    np.testing.assert_allclose(result["predicted_age"], stored["predicted_age"], atol=1e-3)
    np.testing.assert_allclose(result["interval_high"] - result["predicted_age"], interval.half_width)
    np.testing.assert_allclose(result["brain_age_gap"], result["predicted_age"] - result["age"])
    correction = result.attrs["bias_correction"]
    expected = correction.apply(result["age"], result["predicted_age"]) - result["age"]
    np.testing.assert_allclose(result["brain_age_gap_corrected"], expected)
    assert interval == conformal_interval(stored)


def test_scans_prepared_otherwise_are_refused(
    prepared_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, manifest = prepared_run
    phantom = with_preparation(manifest, "synthetic-phantom", "phantom.csv")
    with pytest.raises(PreparationMismatchError, match=r"prepared as \['synthetic-phantom'\]"):
        predict_scans(run, phantom, device="cpu", progress=False)
    code = main(["predict", "--quiet", "--run", str(run), "--manifest", str(phantom), "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "brainage-prepare" in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


def test_a_phantom_run_refuses_scans_of_unrecorded_preparation(tmp_path: Path) -> None:
    manifest = with_preparation(write_tiny_cohort(tmp_path, n_subjects=20), "synthetic-phantom", "phantom.csv")
    run = train(
        load_config(None, tiny_overrides(tmp_path, manifest, "mse", epochs=1)), tmp_path / "run", progress=False
    )
    raw = tmp_path / "manifest.csv"  # the tiny cohort's own manifest: no preparation column
    with pytest.raises(PreparationMismatchError, match="no 'preparation' column"):
        predict_scans(run, raw, device="cpu", progress=False)
    with pytest.raises(PreparationMismatchError, match="single scans are prepared"):
        predict_scans(run, scans=[tmp_path / "img" / "sub-000.nii.gz"], device="cpu", progress=False)


@pytest.mark.slow
def test_a_raw_scan_is_prepared_then_predicted_in_one_line(
    prepared_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scan = IXI_DIR / "t1" / "IXI012-HH-1211_T1.nii.gz"
    if not scan.is_file():
        pytest.skip(f"real IXI data not found at {IXI_DIR} (set BRAINAGE_IXI_DIR to the ixi_t1_2mm folder)")
    raw = shutil.copy(scan, tmp_path / "my_scan.nii.gz")  # a raw T1 with skull, as a user has it
    run, _ = prepared_run
    cache = tmp_path / "prepared"
    command = ["predict", "--quiet", "--run", str(run), str(raw), "--age", "38.78", "--prepared-dir", str(cache)]
    assert main(command) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("my_scan: brain age ") and "interval" in lines[0] and "bias-corrected gap" in lines[0]
    assert "interval: predicted age +-" in lines[1]
    (prepared,) = cache.iterdir()
    assert "deepbet" in (prepared / "manifest.csv").read_text()
    assert main(command) == 0  # the rerun takes the prepared scan from the cache
    assert capsys.readouterr().out.splitlines()[0] == lines[0]
    assert (prepared / "prepare_report.json").read_text().count('"n_cached": 1') == 1


def test_two_preparations_of_the_same_scans_agree_exactly(prepared_run: tuple[Path, Path]) -> None:
    run, manifest = prepared_run
    agreement = compare_preparations(run, manifest, manifest, device="cpu", n_boot=200)
    assert agreement.summary["n_subjects"] == len(pd.read_csv(manifest))
    assert agreement.summary["max_abs_difference"] < 1e-4 and abs(agreement.summary["mae_change"]) < 1e-4
    assert set(agreement.table["split"]) == {"train", "val", "test"}


def test_a_bids_demo_from_ixi_holds_the_scans_and_the_missing_age(tmp_path: Path) -> None:
    if not (IXI_DIR / "t1").is_dir():
        pytest.skip(f"real IXI data not found at {IXI_DIR} (set BRAINAGE_IXI_DIR to the ixi_t1_2mm folder)")
    root = bids_from_ixi(IXI_DIR, tmp_path / "bids", ["IXI012", "IXI013"], without_age=["IXI013"])
    found = read_bids(root)
    assert [row["subject_id"] for row in found.rows] == ["sub-IXI012"] and float(found.rows[0]["age"]) == 38.78
    assert len(found.problems) == 1 and "sub-IXI013" in found.problems[0] and "age" in found.problems[0]
    copied = root / "sub-IXI012/anat/sub-IXI012_T1w.nii.gz"
    assert copied.read_bytes() == (IXI_DIR / "t1" / "IXI012-HH-1211_T1.nii.gz").read_bytes()


def test_a_run_whose_bias_correction_cannot_be_fitted_still_predicts(
    prepared_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, manifest = prepared_run
    broken = Path(shutil.copytree(run, tmp_path / "run"))
    stored = pd.read_csv(broken / "predictions.csv")
    val = stored["split"] == "val"
    stored.loc[val, "predicted_age"] = 100.0 - stored.loc[val, "age"]  # predictions that fall with age
    stored.to_csv(broken / "predictions.csv", index=False)
    result, _ = predict_scans(broken, manifest, device="cpu", progress=False)
    assert result["brain_age_gap_corrected"].isna().all() and result["brain_age_gap"].notna().all()
    assert "no bias-corrected gap" in result.attrs["notes"][0] and "slope" in result.attrs["notes"][0]
    out = tmp_path / "p.csv"
    assert main(["predict", "--quiet", "--run", str(broken), "--manifest", str(manifest), "--out", str(out)]) == 0
    assert "note: no bias-corrected gap" in capsys.readouterr().out
