"""Ablation comparisons: run tables, schedules and compute, continuity, feature analysis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainage_core.analysis.compare import (
    analyse_features,
    collect_runs,
    feature_continuity,
    mean_predictor_verdict,
    summarise_methods,
    training_table,
    training_values,
    validation_curves,
)
from brainage_core.config import load_config
from brainage_core.train import train
from tests.conftest import write_tiny_cohort
from tests.test_train import tiny_overrides


def test_mean_predictor_verdict_names_the_runs_that_lose() -> None:
    runs = pd.DataFrame(
        {"method": ["rnc", "rnc", "mse"], "seed": [0, 1, 0], "mae": [5.0, 17.0, 6.0], "mean_predictor_mae": 16.0}
    )
    assert (
        mean_predictor_verdict(runs)
        == "2 of 3 runs beat the mean predictor (test MAE 16.00 years); not: RNC seed 1 (17.00)."
    )
    assert summarise_methods(runs, metrics=("mae",)).loc["rnc", "beats_mean_predictor"] == 1
    runs["mae"] = [5.0, 6.0, 7.0]
    assert mean_predictor_verdict(runs) == "All 3 runs beat the mean predictor (test MAE 16.00 years)."


def test_feature_continuity_reference_values() -> None:
    ages = np.linspace(20, 90, 40)
    assert feature_continuity(np.c_[ages, 2 * ages], ages) == pytest.approx(
        1.0, abs=1e-4
    )  # rounding among tied distances
    random = np.random.default_rng(0).normal(size=(40, 8))
    assert abs(feature_continuity(random, ages)) < 0.15


def test_collect_and_analyse_real_runs(tmp_path: Path) -> None:
    cohort = write_tiny_cohort(tmp_path / "cohort", n_subjects=30)
    run_dirs = {}
    for method in ("rnc", "mse"):
        for seed in (0, 1):
            overrides = [*tiny_overrides(tmp_path, cohort, method), f"seed={seed}"]
            run_dirs[(method, seed)] = train(load_config(None, overrides), tmp_path / f"{method}{seed}", progress=False)
    runs, errors = collect_runs(run_dirs)
    assert len(runs) == 4 and set(errors["method"]) == {"rnc", "mse"}
    manifest = pd.read_csv(cohort)
    n_test_controls = int(((manifest["split"] == "test") & (manifest["group"] == "CN")).sum())
    assert len(errors) == 4 * n_test_controls
    test_ages = manifest.loc[(manifest["split"] == "test") & (manifest["group"] == "CN"), "age"]
    train_mean = manifest.loc[(manifest["split"] == "train") & (manifest["group"] == "CN"), "age"].mean()
    assert runs["mean_predictor_mae"].tolist() == pytest.approx([(test_ages - train_mean).abs().mean()] * 4, rel=1e-4)
    assert summarise_methods(runs)["beats_mean_predictor"].between(0, 2).all()
    assert (runs["passes_per_epoch"] == runs["passes_per_epoch"].iloc[0]).all(), "matched compute"
    assert runs["probe_mae"].notna().all() and errors["probe_abs_error"].notna().all()
    assert (runs["last_epoch"] == 2).all() and (runs["max_epochs"] == 2).all() and not runs["stopped_early"].any()
    table = training_table(runs)
    assert table.loc["rnc", "runs"] == 2 and table.loc["rnc", "stopped_early"] == "0 / 2"
    values = training_values(runs)
    assert "equal for every method" in values["passes_sentence"]
    curves = validation_curves(run_dirs)
    assert len(curves) == 4 * 2 and curves.groupby(["method", "seed"])["selected"].sum().eq(1).all()
    analysis = analyse_features(run_dirs[("rnc", 0)], n_augmentations=3)
    assert len(analysis["pca"]) == n_test_controls and -1 <= analysis["continuity"] <= 1
    assert analysis["consistency"]["n_augmentations"] == 3 and analysis["consistency"]["mean_sd"] > 0
