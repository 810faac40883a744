"""Tests of the realism measures (brainage_core.cohorts.calibration) and of the phantom against them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainage_core.analysis.cohort import phantom_realism
from brainage_core.cohorts import calibration
from brainage_core.cohorts import synthetic as synth
from brainage_core.cohorts.synthetic import SynthConfig
from tests.conftest import write_nifti


def _volumes(ratios: dict[str, np.ndarray], total: float = 1000.0) -> pd.DataFrame:
    frame = pd.DataFrame({name: ratio * total for name, ratio in ratios.items()})
    frame["total_brain"] = total
    return frame


def test_calibration_table_recovers_a_known_trend_and_spread() -> None:
    ages = np.repeat([25.0, 30.0, 40.0, 45.0, 55.0, 60.0, 70.0, 75.0], 10)
    wobble = np.tile([0.9, 1.1], 40)  # +-10 % around the trend in every band
    ratios = {
        "ventricles": 0.01 + 0.0002 * ages,  # exact trend: R2 = 1, no spread within an age
        "hippocampus": 0.005 * wobble,  # no trend: R2 = 0
        "gm": 0.55 - 0.001 * ages,
        "wm": 0.45 + 0.001 * ages,
        "csf": 0.1 * wobble,
    }
    table = calibration.calibration_table(_volumes(ratios), ages)
    assert list(table.index) == list(calibration.STRUCTURES)
    assert table.loc["ventricles", "r2_age"] == pytest.approx(1.0)
    assert table.loc["hippocampus", "r2_age"] == pytest.approx(0.0, abs=1e-9)
    expected_cv = 100 * np.std(0.1 * wobble[:20], ddof=1) / 0.1  # the 20-35 band holds ages 25 and 30
    assert table.loc["csf", "cv_20_35"] == pytest.approx(expected_cv)
    assert table.loc["csf", "cv_65_80"] == pytest.approx(expected_cv)
    with pytest.raises(ValueError, match="lack the column"):
        calibration.calibration_table(_volumes(ratios).drop(columns="csf"), ages)
    few = calibration.calibration_table(_volumes(ratios).iloc[:12], ages[:12])
    assert np.isnan(few.loc["csf", "cv_50_65"])  # an empty band gets no CV


def test_dlmuse_labels_make_the_structures() -> None:
    labels = {1: 100.0, 4: 2.0, 51: 10.0, 47: 4.0, 48: 4.0, 35: 20.0, 81: 300.0, 95: 10.0, 190: 50.0, 59: 8.0}
    volumes = calibration.dlmuse_structure_volumes(pd.DataFrame([labels], index=["s1"]))
    row = volumes.loc["s1"]
    assert row["ventricles"] == 12.0 and row["hippocampus"] == 8.0 and row["csf"] == 100.0
    assert row["wm"] == 310.0
    assert row["gm"] == 50.0 + 8.0 + 8.0  # cortex, thalamus, hippocampus; not the brainstem
    assert row["total_brain"] == row["gm"] + row["wm"]


def test_comparison_flags_each_measure_against_its_target() -> None:
    phantom = pd.DataFrame({"r2_age": [0.50, 0.30], "cv_20_35": [40.0, 5.0], "n": 100}, index=["ventricles", "gm"])
    reference = pd.DataFrame({"r2_age": [0.45, 0.60], "cv_20_35": [55.0, 6.0], "n": 145}, index=["ventricles", "gm"])
    table = calibration.compare_calibration(phantom, reference).set_index(["structure", "measure"])
    assert table.loc[("ventricles", "r2_age"), "within"]  # 0.05 <= 0.10
    assert not table.loc[("gm", "r2_age"), "within"]  # 0.30 > 0.10
    assert not table.loc[("ventricles", "cv_20_35"), "within"]  # 15 pp > 10 pp
    assert table.loc[("gm", "cv_20_35"), "difference"] == pytest.approx(-1.0)


def test_ridge_on_volumes_is_scored_out_of_fold() -> None:
    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 80, 200)
    informative = pd.DataFrame({"a": ages + rng.normal(0, 2, 200), "b": rng.normal(0, 1, 200)})
    noise = pd.DataFrame({"a": rng.normal(0, 1, 200), "b": rng.normal(0, 1, 200)})
    assert calibration.volume_ridge_mae(informative, ages) < 2.5
    assert calibration.volume_ridge_mae(noise, ages) > 12.0  # no signal: about the mean predictor's error


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 controls at 3 mm (the patients do not enter the calibration)."""
    config = SynthConfig()
    config.groups["CN"].fraction, config.groups["AD"].fraction, config.groups["PD"].fraction = 1.0, 0.0, 0.0
    root = tmp_path_factory.mktemp("calibration")
    return synth.generate_cohort(
        root / "cohort", 40, seed=0, spacing=3.0, config=config, progress=False, workers=2
    ).parent


def test_the_phantom_reports_its_calibration_and_has_individual_anatomy(small_cohort: Path) -> None:
    meta = json.loads((small_cohort / "cohort.json").read_text())["calibration"]
    assert meta["age_range"] == list(calibration.CALIBRATION_AGE_RANGE) and meta["n_controls"] >= 30
    assert set(meta["structures"]) == set(calibration.STRUCTURES)
    structures = meta["structures"]
    # Individual anatomy: brains of the same age differ (the old phantom: ventricular CV 10-20 %).
    assert np.nanmean([structures["ventricles"][band] for band in ("cv_20_35", "cv_35_50", "cv_50_65")]) > 25.0
    # Regional aging at individual rates: no structure is a deterministic function of age.
    assert all(structures[name]["r2_age"] < 0.85 for name in calibration.STRUCTURES)
    assert 3.0 < meta["ridge_true_volumes_mae"] < 15.0
    # Shapes differ, as much as affinely registered real brains (IXI: mask Dice 0.973, SD 0.003).
    assert 0.96 < meta["mask_overlap"]["mean"] < 0.99 and meta["mask_overlap"]["sd"] > 0.001


def test_mask_overlap_is_one_for_identical_masks_and_falls_with_shifts(tmp_path: Path) -> None:
    cube = np.zeros((20, 20, 20), np.uint8)
    cube[5:15, 5:15, 5:15] = 1
    paths = [write_nifti(tmp_path / f"m{index}.nii.gz", cube) for index in range(3)]
    assert np.allclose(calibration.mask_overlap(paths), 1.0)
    shifted = write_nifti(tmp_path / "shifted.nii.gz", np.roll(cube, 2, axis=0))
    overlaps = calibration.mask_overlap([*paths, shifted])
    assert np.allclose(overlaps[:3], 1.0) and overlaps[3] == pytest.approx(0.8)  # 8 of 10 slices shared
    other_grid = write_nifti(tmp_path / "small.nii.gz", cube[:10])
    with pytest.raises(ValueError, match="small.nii.gz: grid"):
        calibration.mask_overlap([*paths, other_grid])


def test_side_by_side_with_the_ixi_scans(small_cohort: Path, ixi_dir: Path) -> None:
    """The data chapter's table on a small phantom: every structure and measure, both cohorts."""
    real = calibration.read_labelled_cohort(ixi_dir)
    assert len(real) == 145  # the subjects with an age and a label image
    realism = phantom_realism(pd.read_csv(small_cohort / "ground_truth.csv"), ixi_dir)
    reference, table = realism.tables["IXI"], realism.comparison
    assert table is not None and "phantom" in realism.tables
    assert len(table) == len(calibration.STRUCTURES) * (1 + len(calibration.AGE_BANDS))
    ixi = reference["r2_age"]
    assert ixi["hippocampus"] < 0.2 < ixi["ventricles"] < 0.7  # the real scans: hippocampus / brain barely ages
    ventricles = table[(table["structure"] == "ventricles") & (table["measure"] == "cv_50_65")].iloc[0]
    assert ventricles["reference"] > 30.0 and abs(ventricles["difference"]) < 25.0


def test_a_folder_without_labels_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="participants.csv not found"):
        calibration.read_labelled_cohort(tmp_path)
    (tmp_path / "participants.csv").write_text("MRID,Age,Sex\nIXI001,30,F\n")
    with pytest.raises(FileNotFoundError, match="no <MRID>_T1_DLMUSE.nii.gz"):
        calibration.read_labelled_cohort(tmp_path)


def test_the_data_chapter_realism_with_and_without_real_scans(small_cohort: Path, ixi_dir: Path) -> None:
    from brainage_core.analysis.cohort import phantom_realism

    truth = pd.read_csv(small_cohort / "ground_truth.csv")
    alone = phantom_realism(truth, None)
    assert list(alone.cohorts) == ["phantom"] and alone.comparison is None and alone.misses() == []
    assert alone.compared().empty and alone.ridge_mae["phantom"] > 0
    both = phantom_realism(truth, ixi_dir)
    assert list(both.cohorts) == ["phantom", "IXI"] and both.comparison is not None
    compared = both.compared()
    assert compared[["phantom", "reference"]].notna().all().all()
    assert len(both.misses()) == int((~compared["within"]).sum())
    assert 5.0 < both.ridge_mae["IXI"] < 8.0  # ridge on six DLMUSE structure volumes, 5-fold


def test_brainage_synth_prints_the_realism_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from brainage_core.cli import main

    code = main(
        ["synth", "--out", str(tmp_path / "c"), "--n-subjects", "16", "--spacing", "6", "--workers", "1", "--quiet"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "R2 of volume / total brain on age: ventricles" in out, out
    assert "brain masks vs their majority mask: Dice 0." in out, out
    assert json.loads((tmp_path / "c" / "cohort.json").read_text())["calibration"]["n_controls"] >= 4


def test_a_volume_model_trained_on_controls_measures_the_patients_gap() -> None:
    """Volumes that follow biological age exactly: the measured difference is the latent one."""
    from brainage_core.analysis.clinical import gap_by_group
    from brainage_core.analysis.metrics import corrected_predictions

    rng = np.random.default_rng(0)
    n = 400
    group = rng.choice(["CN", "CN", "AD"], n)
    truth = pd.DataFrame(
        {
            "subject_id": [f"s{i}" for i in range(n)],
            "group": group,
            "split": rng.choice(["train", "val", "test"], n, p=[0.6, 0.2, 0.2]),
            "age": rng.uniform(40, 90, n),
            "sex": rng.choice(["F", "M"], n),
            "true_gap": np.where(group == "AD", 6.0, 0.0) + rng.normal(0, 2, n),
        }
    )
    biological = truth["age"] + truth["true_gap"]
    truth["gm_ml"] = 900 - 3 * biological + rng.normal(0, 1, n)
    truth["csf_ml"] = 100 + 2 * biological + rng.normal(0, 1, n)
    predictions = calibration.volume_model_predictions(truth)
    assert predictions["predicted_age"].notna().all()
    corrected = corrected_predictions(predictions, method="cole")
    measured = gap_by_group(corrected).set_index("group").loc["AD", "difference"]
    latent = gap_by_group(corrected, gap_column="true_gap").set_index("group").loc["AD", "difference"]
    assert measured == pytest.approx(latent, abs=1.0) and latent == pytest.approx(6.0, abs=1.0)
    from brainage_core.analysis.cohort import volume_model_gaps

    table = volume_model_gaps(truth)  # the data chapter's table: the same numbers
    assert list(table.index) == ["AD"] and table.loc["AD", "measured"] == pytest.approx(measured)
    assert table.loc["AD", "latent"] == pytest.approx(latent)
    with pytest.raises(ValueError, match="at least 10 healthy training subjects"):
        calibration.volume_model_predictions(truth[truth["group"] == "AD"])
