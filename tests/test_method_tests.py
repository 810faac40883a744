"""Hierarchical bootstrap of MAE differences with Holm correction, and the verdict sentences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainage_core.analysis.method_tests import describe_difference, method_differences
from brainage_core.data import training_subset


def errors_table(per_method: dict[str, np.ndarray]) -> pd.DataFrame:
    """Long errors table from ``{method: [runs, subjects]}`` absolute errors."""
    rows = [
        {"method": method, "seed": run, "subject_id": f"s{subject:03d}", "abs_error": float(value)}
        for method, matrix in per_method.items()
        for (run, subject), value in np.ndenumerate(matrix)
    ]
    return pd.DataFrame(rows)


def test_a_clear_difference_is_significant_and_said_so() -> None:
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 2.0, size=(3, 60))
    errors = errors_table({"rnc": base, "mse": base + 2.0, "mean": base[:1] + 8.0})
    table = method_differences(errors, "rnc", n_boot=1000)
    row = table.set_index("method").loc["mse"]
    assert row["difference"] == pytest.approx(2.0)
    assert row["difference_low"] > 0 and row["significant"]
    assert (table["p_holm"].dropna() >= table["p"].dropna()).all(), "Holm never lowers a p-value"
    sentence = describe_difference(table, "rnc", "mse")
    assert "RNC beats MSE" in sentence and "Holm-corrected p" in sentence and "not significant" not in sentence


def test_identical_methods_are_not_significant() -> None:
    base = np.random.default_rng(1).gamma(2.0, 2.0, size=(3, 40))
    table = method_differences(errors_table({"rnc": base, "ntxent": base.copy()}), "rnc", n_boot=500)
    row = table.set_index("method").loc["ntxent"]
    assert row["difference"] == 0 and row["p"] == 1.0 and not row["significant"]
    assert "not significant" in describe_difference(table, "rnc", "ntxent")


def test_run_to_run_variance_widens_the_interval() -> None:
    rng = np.random.default_rng(2)
    subjects = rng.gamma(2.0, 2.0, size=50)
    stable = np.tile(subjects, (5, 1))
    unstable = stable + np.array([-3.0, -1.5, 0.0, 1.5, 3.0])[:, None]  # the same mean, spread runs
    width = {}
    for name, matrix in {"stable": stable, "unstable": unstable}.items():
        table = method_differences(errors_table({"ref": stable, "other": matrix}), "ref", n_boot=1000)
        row = table.set_index("method").loc["other"]
        width[name] = row["difference_high"] - row["difference_low"]
    assert width["unstable"] > 5 * max(width["stable"], 1e-9), "resampling runs must show their spread"


def test_methods_are_compared_on_shared_subjects_only() -> None:
    errors = errors_table({"rnc": np.ones((2, 10)), "mse": np.full((2, 12), 2.0)})
    table = method_differences(errors, "rnc", n_boot=100)
    assert set(table["n_subjects"]) == {10}
    with pytest.raises(ValueError, match="reference method 'l1'"):
        method_differences(errors, "l1", n_boot=10)


def test_training_subset_spans_the_age_range_and_is_fixed() -> None:
    ages = np.random.default_rng(3).uniform(20, 90, size=100)
    chosen = training_subset(ages, 10)
    assert len(chosen) == 10 and len(set(chosen)) == 10
    assert ages[chosen].min() == ages.min() and ages[chosen].max() == ages.max()
    assert (training_subset(ages, 10) == chosen).all()
    assert (training_subset(ages, None) == np.arange(100)).all()
    with pytest.raises(ValueError, match="data.train_subjects=101"):
        training_subset(ages, 101)
