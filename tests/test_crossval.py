"""Cross-validation: same folds for every method, out-of-fold predictions, region volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainage_core.analysis.crossval import (
    baseline_cv_predictions,
    cv_runs,
    cv_summary,
    out_of_fold_predictions,
    region_volumes,
)
from brainage_core.config import load_config
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
    config = load_config(
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
    runs = cv_runs(config, ["mse"], tmp_path / "runs")
    assert sorted(runs) == [("mse", 0), ("mse", 1), ("mse", 2)]
    predictions = out_of_fold_predictions(runs)
    frame = pd.read_csv(manifest)
    assert sorted(predictions["subject_id"]) == sorted(frame["subject_id"]), (
        "every subject predicted once, by the model that did not train on it"
    )
    merged = predictions.merge(frame[["subject_id", "fold"]], on="subject_id", suffixes=("", "_manifest"))
    assert (merged["fold"] == merged["fold_manifest"]).all()
