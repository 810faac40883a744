"""Cross-validation: same folds for every method, out-of-fold predictions, region volumes."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage_core import engine
from brainage_core.analysis.crossval import (
    baseline_cv_predictions,
    corrected_out_of_fold,
    cross_validate,
    cv_learning_curve,
    cv_runs,
    cv_summary,
    gap_age_correlation,
    out_of_fold_predictions,
    region_volumes,
)
from brainage_core.analysis.method_tests import describe_differences
from brainage_core.config import RunConfig, load_config
from brainage_core.data import DataConfig
from brainage_core.engine import Trainer
from brainage_core.rundir import read_config
from tests.conftest import write_nifti, write_tiny_cohort


def test_region_volumes_count_labels_in_ml(tmp_path: Path) -> None:
    labels = np.zeros((10, 10, 10), dtype=np.int16)
    labels[:2] = 4  # 200 voxels
    labels[5, 5, 5] = 7  # 1 voxel
    path = write_nifti(tmp_path / "labels.nii.gz", labels, np.diag([2.0, 2.0, 2.0, 1.0]))  # 8 mm^3 voxels
    volumes = region_volumes([path, path], ["a", "b"])
    assert list(volumes.columns) == [4, 7]
    assert volumes.loc["a", 4] == pytest.approx(1.6) and volumes.loc["b", 7] == pytest.approx(0.008)


def test_baselines_predict_each_subject_once_on_the_given_folds() -> None:
    rng = np.random.default_rng(0)
    ages = pd.Series(rng.uniform(20, 80, 60), index=[f"s{i}" for i in range(60)])
    features = pd.DataFrame({"signal": ages + rng.normal(0, 3, 60), "noise": rng.normal(size=60)}, index=ages.index)
    folds = pd.Series(np.arange(60) % 5, index=ages.index)
    predictions = baseline_cv_predictions(features, ages, folds)
    for method, group in predictions.groupby("method"):
        assert sorted(group["subject_id"]) == sorted(ages.index), method
        assert (group.set_index("subject_id")["fold"].sort_index() == folds.sort_index()).all()
    summary = cv_summary(predictions, n_boot=200).set_index("method")
    assert summary.loc["ridge_regions", "mae"] < 0.3 * summary.loc["mean", "mae"]
    assert (
        summary.loc["ridge_regions", "mae_ci_low"]
        <= summary.loc["ridge_regions", "mae"]
        <= summary.loc["ridge_regions", "mae_ci_high"]
    )


def test_cv_runs_give_out_of_fold_predictions(tmp_path: Path) -> None:
    manifest = write_tiny_cohort(tmp_path / "cohort", n_subjects=30)
    config = tiny_config(manifest, tmp_path)
    runs = cv_runs(config, ["mse"], tmp_path / "runs")
    assert sorted(runs) == [("mse", 0), ("mse", 1), ("mse", 2)]
    predictions = out_of_fold_predictions(runs)
    frame = pd.read_csv(manifest)
    assert sorted(predictions["subject_id"]) == sorted(frame["subject_id"]), (
        "every subject predicted once, by the model that did not train on it"
    )
    merged = predictions.merge(frame[["subject_id", "fold"]], on="subject_id", suffixes=("", "_manifest"))
    assert (merged["fold"] == merged["fold_manifest"]).all()


def with_region_labels(manifest: Path) -> Path:
    """Add a ``labels`` column: per subject, label 1 where the phantom is dark (its 'ventricles'), 2 elsewhere."""
    frame = pd.read_csv(manifest)
    labels = []
    for image in frame["image"]:
        scan = nib.load(manifest.parent / image)
        data = np.asarray(scan.dataobj)
        regions = np.where(data > 50, 2, np.where(data > 0, 1, 0)).astype(np.int16)
        labels.append(write_nifti(manifest.parent / "labels" / Path(image).name, regions, scan.affine).name)
    frame["labels"] = [f"labels/{name}" for name in labels]
    frame.to_csv(manifest, index=False)
    return manifest


def tiny_config(manifest: Path, tmp_path: Path) -> RunConfig:
    return load_config(
        None,
        [
            f"data.manifest={manifest}",
            "data.shape=[16, 16, 16]",
            "model.width=0.125",
            "train.epochs=1",
            "train.batch_size=6",
            "device=cpu",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.train_groups=[CN, AD]",
        ],
    )


def test_cross_validate_compares_every_method_on_the_same_folds_and_writes_the_tables(tmp_path: Path) -> None:
    manifest = with_region_labels(write_tiny_cohort(tmp_path / "cohort", n_subjects=30))
    cv = cross_validate(tiny_config(manifest, tmp_path), ["mse"], tmp_path / "runs", tmp_path / "out", n_boot=50)
    assert sorted(cv.runs) == [("mse", 0), ("mse", 1), ("mse", 2)]
    frame = pd.read_csv(manifest)
    folds = frame.set_index("subject_id")["fold"]
    for method in ("mse", "ridge_regions", "mean"):
        rows = cv.predictions[cv.predictions["method"] == method].set_index("subject_id")
        assert sorted(rows.index) == sorted(frame["subject_id"]), method
        assert (rows["fold"] == folds.loc[rows.index]).all(), method
    assert set(cv.table["method"]) == {"mse", "ridge_regions", "mean"}
    assert cv.mae("ridge_regions") < cv.mae("mean"), "the region volumes carry the age signal"
    assert cv.best_method == cv.table.iloc[0]["method"] and math.isnan(cv.mae("rnc"))
    row = cv.table.set_index("method").loc["mean"]
    assert cv.mae_with_ci("mean") == f"{row.mae:.2f} (95% CI {row.mae_ci_low:.2f}-{row.mae_ci_high:.2f})"
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "cv_table.csv"), cv.table)
    written = pd.read_csv(tmp_path / "out" / "cv_predictions.csv")
    assert len(written) == len(cv.predictions) == 90
    assert written["predicted_age"].to_numpy() == pytest.approx(cv.predictions["predicted_age"].to_numpy())

    differences = cv.differences("ridge_regions", n_boot=200).set_index("method")
    assert differences.loc["mean", "difference"] == pytest.approx(cv.mae("mean") - cv.mae("ridge_regions"))
    assert differences.loc["mean", "difference_low"] > 0, "paired by subject: the mean predictor is clearly worse"
    verdicts = describe_differences(
        cv.differences("ridge_regions", n_boot=200), "ridge_regions", {"ridge_regions": "ridge", "mse": "MSE"}
    )
    assert set(verdicts) == {"mse", "mean"} and "Holm-corrected p" in verdicts["mse"]

    corrected = corrected_out_of_fold(cv.runs)
    controls = frame.loc[frame["group"] == "CN", "subject_id"]
    assert sorted(corrected["subject_id"]) == sorted(controls), "each control once, from the run that held it out"
    mse = cv.predictions.query("method == 'mse'").set_index("subject_id").loc[corrected["subject_id"]]
    assert corrected["gap"].to_numpy() == pytest.approx((mse["predicted_age"] - mse["age"]).to_numpy())
    correlation = gap_age_correlation(corrected)
    assert list(correlation["method"]) == ["mse"] and correlation.loc[0, "n"] == len(controls)
    assert correlation.loc[0, "r_gap_age"] == pytest.approx(np.corrcoef(corrected["age"], corrected["gap"])[0, 1])


def test_cross_validate_without_region_labels_names_the_manifest(tmp_path: Path) -> None:
    manifest = write_tiny_cohort(tmp_path / "cohort", n_subjects=6)
    with pytest.raises(ValueError, match=r"manifest\.csv.*'labels' column"):
        cross_validate(tiny_config(manifest, tmp_path), ["mse"], tmp_path / "runs", tmp_path / "out")
    assert not (tmp_path / "runs").exists(), "nothing is trained before the check"


def test_cross_validation_never_trains_or_selects_on_its_test_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each fold run opens its test fold's scans once, after training; the baseline never sees test ages."""
    manifest = write_tiny_cohort(tmp_path / "cohort", n_subjects=30)
    opened: list[tuple[int, str, set[str]]] = []  # (run's test fold, phase, subjects whose scans were opened)
    phase = {"now": "fit"}
    real_open, real_init, real_predict = engine.open_manifest_volumes, Trainer.__init__, Trainer.predict_every_row

    def spy_open(frame: pd.DataFrame, config: DataConfig, *args, **kwargs):
        opened.append((config.test_fold, phase["now"], set(frame["subject_id"])))
        return real_open(frame, config, *args, **kwargs)

    def spy_init(self: Trainer, *args, **kwargs) -> None:
        phase["now"] = "fit"
        real_init(self, *args, **kwargs)

    def spy_predict(self: Trainer):
        phase["now"] = "final"
        return real_predict(self)

    monkeypatch.setattr(engine, "open_manifest_volumes", spy_open)
    monkeypatch.setattr(Trainer, "__init__", spy_init)
    monkeypatch.setattr(Trainer, "predict_every_row", spy_predict)
    runs = cv_runs(tiny_config(manifest, tmp_path), ["mse"], tmp_path / "runs")

    frame = pd.read_csv(manifest)
    subjects = {fold: set(frame.loc[frame["fold"] == fold, "subject_id"]) for fold in range(3)}
    for fold in range(3):
        fitted = set().union(*(ids for test_fold, now, ids in opened if test_fold == fold and now == "fit"))
        assert fitted == subjects[(fold + 1) % 3] | subjects[(fold + 2) % 3], "trained and selected on the other folds"
        assert not fitted & subjects[fold], f"fold {fold}'s run read its test subjects before the final prediction"
        final = set().union(*(ids for test_fold, now, ids in opened if test_fold == fold and now == "final"))
        assert subjects[fold] <= final
        predictions = pd.read_csv(runs[("mse", fold)] / "predictions.csv")
        assert set(predictions.loc[predictions["split"] == "test", "subject_id"]) == subjects[fold]
        assert set(predictions.loc[predictions["split"] == "val", "subject_id"]) == subjects[(fold + 1) % 3]

    ages = frame.set_index("subject_id")["age"]
    features = pd.DataFrame({"signal": ages + np.linspace(-2, 2, len(ages))}, index=ages.index)
    folds = frame.set_index("subject_id")["fold"]
    honest = baseline_cv_predictions(features, ages, folds)
    scrambled_ages = ages.where(folds != 0, 1000.0)  # fold 0's ages changed: its own predictions must not move
    scrambled = baseline_cv_predictions(features, scrambled_ages, folds)
    in_fold0 = honest["fold"] == 0
    assert scrambled.loc[in_fold0, "predicted_age"].to_numpy() == pytest.approx(
        honest.loc[in_fold0, "predicted_age"].to_numpy()
    )
    assert not np.allclose(scrambled.loc[~in_fold0, "predicted_age"], honest.loc[~in_fold0, "predicted_age"])


def test_the_learning_curve_trains_each_fold_on_fewer_subjects_with_the_full_steps(tmp_path: Path) -> None:
    manifest = with_region_labels(write_tiny_cohort(tmp_path / "cohort", n_subjects=30))
    config = tiny_config(manifest, tmp_path)
    curve = cv_learning_curve(config, ["mse"], [5], tmp_path / "curve", n_boot=50)
    points = curve.set_index(["method", "n_train"])
    assert sorted(points.index) == [("mse", 5), ("mse", 10), ("ridge_regions", 5), ("ridge_regions", 20)]
    assert (curve["mae_low"] <= curve["mae"]).all() and (curve["mae"] <= curve["mae_high"]).all()
    sized = read_config(tmp_path / "curve" / "n5" / "mse_fold1")
    assert sized.data.train_subjects == 5 and sized.train.epoch_size == 10, "5 subjects, the full set's steps"
    assert sized.data.test_fold == 1
    predictions = pd.read_csv(tmp_path / "curve" / "n5" / "mse_fold1" / "predictions.csv")
    assert (predictions.loc[predictions["split"] == "val", "subject_id"].str[-3:].astype(int) % 3 == 2).all()

    ages = pd.read_csv(manifest).set_index("subject_id")["age"]
    folds = pd.read_csv(manifest).set_index("subject_id")["fold"]
    features = pd.DataFrame({"signal": ages + np.linspace(-3, 3, len(ages))}, index=ages.index)
    few = baseline_cv_predictions(features, ages, folds, train_subjects=4)
    everyone = baseline_cv_predictions(features, ages, folds)
    assert sorted(few["subject_id"]) == sorted(everyone["subject_id"])
    assert not np.allclose(few["predicted_age"], everyone["predicted_age"]), "fitted on 4 subjects, not 20"
