"""Ablation comparisons: summaries, paired tests, continuity, feature analysis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainage_core.analysis.compare import (
    analyse_features,
    collect_runs,
    describe_comparison,
    feature_continuity,
    mean_predictor_verdict,
    paired_tests,
    summarise_methods,
)
from brainage_core.config import load_config
from brainage_core.train import train
from tests.conftest import write_tiny_cohort
from tests.test_train import tiny_overrides


def crafted(offset: float, seeds: int = 3, subjects: int = 30) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Method 'b' has every absolute error larger than method 'a' by ``offset`` years."""
    rng = np.random.default_rng(0)
    base = rng.uniform(1, 5, subjects)
    runs, errors = [], []
    for seed in range(seeds):
        for method, shift in (("a", 0.0), ("b", offset)):
            error = base + shift + rng.normal(0, 0.05, subjects)
            runs.append({"method": method, "seed": seed, "mae": error.mean(), "r2": 0.5, "pearson_r": 0.7})
            errors.append(
                pd.DataFrame({"subject_id": range(subjects), "method": method, "seed": seed, "abs_error": error})
            )
    return pd.DataFrame(runs), pd.concat(errors)


def test_paired_tests_find_a_consistent_difference() -> None:
    runs, errors = crafted(offset=1.0)
    table = paired_tests(runs, errors, reference="a").set_index("method")
    assert table.loc["b", "mae_difference"] == pytest.approx(1.0, abs=0.05)
    assert table.loc["b", "p_subjects"] < 1e-5 and table.loc["b", "reference_better_fraction"] == 1.0
    assert table.loc["b", "n_seeds"] == 3 and table.loc["b", "n_subjects"] == 30
    summary = summarise_methods(runs)
    assert list(summary.index) == ["a", "b"] and summary.loc["b", "mae_mean"] == pytest.approx(
        summary.loc["a", "mae_mean"] + 1, abs=0.05
    )


def test_describe_comparison_says_who_wins_and_whether_it_is_significant() -> None:
    runs, errors = crafted(offset=1.0)
    clear = describe_comparison(paired_tests(runs, errors, reference="a"), "a", "b")
    assert clear.startswith("A has a 1.0") and "a significant difference" in clear
    runs, errors = crafted(offset=0.0)
    runs.loc[runs["method"] == "a", "mae"] += 0.01  # a tiny, noisy edge for b
    tied = describe_comparison(paired_tests(runs, errors, reference="a"), "a", "b")
    assert tied.startswith("B has a") and "not significant" in tied


def test_paired_tests_refuse_an_unknown_reference() -> None:
    runs, errors = crafted(offset=0.5)
    with pytest.raises(ValueError, match="reference method 'rnc' has no runs"):
        paired_tests(runs, errors)


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
    analysis = analyse_features(run_dirs[("rnc", 0)], n_augmentations=3)
    assert len(analysis["pca"]) == n_test_controls and -1 <= analysis["continuity"] <= 1
    assert analysis["consistency"]["n_augmentations"] == 3 and analysis["consistency"]["mean_sd"] > 0
