"""Brain-age metrics: reference values, bias correction and the run evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

from brainage_core.analysis.evaluation import evaluate_run
from brainage_core.analysis.metrics import (
    BiasCorrection,
    bootstrap_ci,
    corrected_predictions,
    fit_bias_correction,
    mae_by_age_band,
    metrics_with_ci,
    prediction_consistency,
    regression_metrics,
    select_correction_subjects,
)

# Hand-computed example: errors (2, -1, 0, 3); age deviations (-15, -5, 5, 15), SS 500;
# prediction deviations (-14, -7, 4, 17), SS 550; cross-products sum to 520.
AGE = np.array([20.0, 30.0, 40.0, 50.0])
PREDICTED = np.array([22.0, 29.0, 40.0, 53.0])


def test_regression_metrics_match_hand_computed_values() -> None:
    metrics = regression_metrics(AGE, PREDICTED)
    assert metrics["n"] == 4
    assert metrics["mae"] == pytest.approx(6 / 4)
    assert metrics["rmse"] == pytest.approx(np.sqrt(14 / 4))
    assert metrics["r2"] == pytest.approx(1 - 14 / 500)
    assert metrics["pearson_r"] == pytest.approx(520 / np.sqrt(500 * 550))
    # gap ranks (3, 1, 2, 4) vs age ranks (1, 2, 3, 4): sum d^2 = 6, rho = 1 - 6 * 6 / (4 * 15)
    assert metrics["spearman_gap_age"] == pytest.approx(0.4)
    assert metrics["mean_gap"] == pytest.approx(1.0)


def test_regression_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="equal length"):
        regression_metrics(AGE, PREDICTED[:3])
    with pytest.raises(ValueError, match="finite"):
        regression_metrics(AGE, [22.0, np.nan, 40.0, 53.0])


def _noisy_cohort(n: int = 80, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    return age, age + rng.normal(0, 5, n)


def test_bootstrap_ci_contains_estimate_and_is_deterministic() -> None:
    age, predicted = _noisy_cohort()
    value = regression_metrics(age, predicted)["mae"]
    low, high = bootstrap_ci(age, predicted, "mae", n_boot=500, seed=3)
    assert low < value < high
    assert bootstrap_ci(age, predicted, "mae", n_boot=500, seed=3) == (low, high)
    assert bootstrap_ci(age, predicted, "mae", n_boot=500, seed=4) != (low, high)
    narrow = bootstrap_ci(age, predicted, "mae", n_boot=500, seed=3, level=0.5)
    assert low < narrow[0] < narrow[1] < high


def test_vectorised_bootstrap_equals_per_resample_function() -> None:
    """A named metric (vectorised over resamples) and the same metric as a plain function agree."""
    age, predicted = _noisy_cohort()
    for name, function in [
        ("mae", lambda a, p: np.mean(np.abs(p - a))),
        ("r2", lambda a, p: 1 - np.sum((p - a) ** 2) / np.sum((a - a.mean()) ** 2)),
        ("spearman_gap_age", lambda a, p: st.spearmanr(p - a, a).statistic),
    ]:
        assert bootstrap_ci(age, predicted, name, n_boot=300) == pytest.approx(
            bootstrap_ci(age, predicted, function, n_boot=300)
        )


def test_metrics_with_ci_reports_every_metric() -> None:
    age, predicted = _noisy_cohort()
    table = metrics_with_ci(age, predicted, n_boot=200)
    assert set(table) == {"mae", "rmse", "r2", "pearson_r", "spearman_gap_age", "mean_gap"}
    for entry in table.values():
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(age, predicted, "mape")


@pytest.mark.parametrize(
    ("method", "slope", "intercept"),
    [("cole", 0.7, 15.0), ("beheshti", -0.3, 15.0)],  # predicted = 0.7 age + 15, i.e. gap = -0.3 age + 15
)
def test_bias_correction_recovers_known_line(method: str, slope: float, intercept: float) -> None:
    age = np.linspace(20, 80, 13)
    predicted = 0.7 * age + 15.0
    correction = fit_bias_correction(age, predicted, method)
    expected = BiasCorrection(method=method, slope=pytest.approx(slope), intercept=pytest.approx(intercept), n=13)
    assert correction == expected
    np.testing.assert_allclose(correction.apply(age, predicted), age)


@pytest.mark.parametrize("method", ["cole", "beheshti"])
def test_bias_correction_removes_age_bias_on_held_out_subjects(method: str) -> None:
    rng = np.random.default_rng(0)

    def cohort(n: int) -> tuple[np.ndarray, np.ndarray]:  # regression to the mean: slope 0.6
        age = rng.uniform(20, 85, n)
        return age, 0.6 * age + 20.0 + rng.normal(0, 4, n)

    fit_age, fit_predicted = cohort(400)
    age, predicted = cohort(400)
    correction = fit_bias_correction(fit_age, fit_predicted, method)
    raw_r = st.pearsonr(predicted - age, age).statistic
    corrected_r = st.pearsonr(correction.apply(age, predicted) - age, age).statistic
    assert raw_r < -0.8
    assert abs(corrected_r) < 0.1


def test_bias_correction_refuses_degenerate_fits() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        fit_bias_correction([30.0, 40.0], [31.0, 42.0])
    with pytest.raises(ValueError, match="age slope is undefined"):
        fit_bias_correction([50.0, 50.0, 50.0], [48.0, 51.0, 53.0])
    with pytest.raises(ValueError, match="method='beheshti'"):
        fit_bias_correction([20.0, 40.0, 60.0], [50.0, 45.0, 40.0], "cole")
    with pytest.raises(ValueError, match="unknown bias-correction method"):
        fit_bias_correction([20.0, 40.0, 60.0], [25.0, 40.0, 55.0], "linear")


def _predictions(seed: int = 0) -> pd.DataFrame:
    """CN train/val/test and AD/PD/MCI patients (patients in every split), with age bias."""
    rng = np.random.default_rng(seed)
    rows = []
    layout = [
        ("CN", "train", 60),
        ("CN", "val", 40),
        ("CN", "test", 50),
        ("AD", "train", 10),
        ("AD", "val", 10),
        ("AD", "test", 10),
        ("PD", "test", 15),
        ("MCI", "val", 8),
    ]
    for group, split, n in layout:
        for _ in range(n):
            age = rng.uniform(25, 85)
            predicted = 0.7 * age + 16 + rng.normal(0, 4) + (6.0 if group == "AD" else 0.0)
            rows.append(
                {
                    "subject_id": f"sub-{len(rows):04d}",
                    "split": split,
                    "group": group,
                    "sex": "MF"[len(rows) % 2],
                    "age": age,
                    "predicted_age": predicted,
                    "image": "x.nii.gz",
                }
            )
    return pd.DataFrame(rows)


def test_correction_is_fitted_on_cn_validation_rows_only() -> None:
    predictions = _predictions()
    reference = corrected_predictions(predictions)
    expected = select_correction_subjects(predictions)
    assert reference["used_for_correction"].equals(expected)
    assert reference.attrs["bias_correction"].n == 40

    # Scrambling every patient prediction and every CN train/test prediction changes nothing.
    scrambled = predictions.copy()
    others = ~expected
    scrambled.loc[others, "predicted_age"] = np.random.default_rng(9).uniform(0, 120, int(others.sum()))
    assert corrected_predictions(scrambled).attrs["bias_correction"] == reference.attrs["bias_correction"]

    # Changing the CN validation predictions does change the fit.
    shifted = predictions.copy()
    shifted.loc[expected, "predicted_age"] += np.linspace(0, 5, int(expected.sum()))
    assert corrected_predictions(shifted).attrs["bias_correction"] != reference.attrs["bias_correction"]


def test_correction_refuses_patients_test_rows_and_missing_validation() -> None:
    predictions = _predictions()
    cn_val = select_correction_subjects(predictions)
    with_patient = cn_val | (predictions["group"] == "AD") & (predictions["split"] == "val")
    with pytest.raises(ValueError, match="patients or test rows"):
        corrected_predictions(predictions, fit_mask=with_patient)
    with_test = cn_val | (predictions["group"] == "CN") & (predictions["split"] == "test")
    with pytest.raises(ValueError, match="patients or test rows"):
        corrected_predictions(predictions, fit_mask=with_test)
    with pytest.raises(ValueError, match="no rows to fit the age-bias correction on"):
        corrected_predictions(predictions[~cn_val])


def test_corrected_columns_are_consistent() -> None:
    corrected = corrected_predictions(_predictions(), method="beheshti")
    np.testing.assert_allclose(corrected["gap"], corrected["predicted_age"] - corrected["age"])
    np.testing.assert_allclose(corrected["gap_corrected"], corrected["predicted_age_corrected"] - corrected["age"])


def test_mae_by_age_band() -> None:
    age = np.array([25.0, 29.9, 30.0, 55.0, 91.0])
    predicted = age + np.array([2.0, -4.0, 1.0, -3.0, -6.0])
    table = mae_by_age_band(age, predicted)
    assert table["band"].tolist() == ["<20", "20-30", "30-40", "40-50", "50-60", "60-70", "70-80", "80-90", ">=90"]
    by_band = table.set_index("band")
    assert by_band["n"].tolist() == [0, 2, 1, 0, 1, 0, 0, 0, 1]
    assert by_band.loc["20-30", "mae"] == pytest.approx(3.0)
    assert by_band.loc["20-30", "mean_gap"] == pytest.approx(-1.0)
    assert by_band.loc["30-40", "mae"] == pytest.approx(1.0)  # 30 belongs to [30, 40)
    assert by_band.loc[">=90", "mean_gap"] == pytest.approx(-6.0)
    assert np.isnan(by_band.loc["<20", "mae"])
    with pytest.raises(ValueError, match="outside the band edges"):
        mae_by_age_band(age, predicted, edges=(20, 60, 90))


def test_prediction_consistency() -> None:
    result = prediction_consistency(np.array([[1.0, 3.0], [2.0, 2.0], [0.0, 4.0]]))
    assert result["n_subjects"] == 3 and result["n_augmentations"] == 2
    assert result["mean_sd"] == pytest.approx((np.sqrt(2) + 0 + np.sqrt(8)) / 3)
    assert result["median_sd"] == pytest.approx(np.sqrt(2))
    assert result["max_sd"] == pytest.approx(np.sqrt(8))
    with pytest.raises(ValueError, match="n_augmentations >= 2"):
        prediction_consistency(np.ones((3, 1)))


def _write_run(folder: Path, predictions: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    predictions.to_csv(folder / "predictions.csv", index=False)
    (folder / "config.yaml").write_text("data:\n  train_groups: [CN]\n")
    return folder


def test_evaluate_run_writes_metrics_and_corrected_predictions(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", _predictions())
    report = evaluate_run(run, n_boot=200)
    written = json.loads((run / "metrics.json").read_text())
    assert written == report
    assert report["test_set"] == {"group": "CN", "split": "test", "n_scans": 50, "n_subjects": 50}
    fitted = report["bias_correction"]
    assert fitted["n"] == 40
    assert fitted["fitted_on"]["groups"] == {"CN": 40} and fitted["fitted_on"]["splits"] == {"val": 40}
    assert fitted["slope"] == pytest.approx(0.7, abs=0.1)
    # The correction removes the age bias of the CN test set.
    assert report["raw"]["spearman_gap_age"]["value"] < -0.5
    assert abs(report["corrected"]["spearman_gap_age"]["value"]) < 0.3
    assert {entry["band"] for entry in report["age_bands"]["corrected"]} >= {"30-40", "70-80"}
    corrected = pd.read_csv(run / "predictions_corrected.csv")
    assert len(corrected) == len(_predictions())
    assert {"gap", "predicted_age_corrected", "gap_corrected", "used_for_correction"} <= set(corrected.columns)


def test_evaluate_run_with_controls_manifest(tmp_path: Path) -> None:
    predictions = _predictions()
    run = _write_run(tmp_path / "run", predictions)
    controls = predictions[(predictions["group"] == "CN") & (predictions["split"] != "test")].iloc[::2]
    manifest = tmp_path / "controls.csv"
    controls[["subject_id", "image", "age", "sex", "group"]].to_csv(manifest, index=False)
    report = evaluate_run(run, controls_manifest=manifest, n_boot=100)
    assert report["bias_correction"]["n"] == len(controls)
    assert report["bias_correction"]["fitted_on"]["source"] == str(manifest)

    test_rows = predictions[(predictions["group"] == "CN") & (predictions["split"] == "test")].head(3)
    test_rows[["subject_id", "image", "age", "sex", "group"]].to_csv(manifest, index=False)
    with pytest.raises(ValueError, match="patients or test rows"):
        evaluate_run(run, controls_manifest=manifest, n_boot=100)

    unknown = controls.head(3).assign(subject_id=["new-1", "new-2", "new-3"])
    unknown[["subject_id", "image", "age", "sex", "group"]].to_csv(manifest, index=False)
    with pytest.raises(ValueError, match="no prediction in the run"):
        evaluate_run(run, controls_manifest=manifest, n_boot=100)


def test_evaluate_run_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="predictions.csv"):
        evaluate_run(tmp_path)
