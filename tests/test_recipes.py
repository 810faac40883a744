"""Nested choice of a recipe: each outer fold keeps the lever best on its own validation fold, never reading a test fold."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from brainage_core import rundir
from brainage_core.analysis import crossval
from brainage_core.analysis.recipes import choose_recipes, validation_table
from brainage_core.config import ConfigError
from tests.conftest import write_tiny_cohort
from tests.test_crossval import tiny_config, with_region_labels


def test_each_fold_keeps_the_lever_with_its_lowest_validation_mae_without_reading_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = with_region_labels(write_tiny_cohort(tmp_path / "cohort", n_subjects=30))
    config = tiny_config(manifest, tmp_path)
    levers = {"one_epoch": [], "three_epochs": ["train.epochs=3", "train.patience=null"]}

    def no_test_predictions(*args: object, **kwargs: object) -> None:
        raise AssertionError("choosing a recipe read a run's predictions (its test fold)")

    with monkeypatch.context() as patched:
        patched.setattr(rundir, "read_predictions", no_test_predictions)
        patched.setattr(crossval, "read_predictions", no_test_predictions)
        choice = choose_recipes(config, ["mse"], levers, tmp_path / "runs")

    assert set(choice.table["lever"]) == set(levers) and len(choice.table) == 6
    for row in choice.chosen.itertuples():
        candidates = choice.table[(choice.table["method"] == row.method) & (choice.table["fold"] == row.fold)]
        assert row.val_mae == candidates["val_mae"].min()
        assert choice.runs[(row.method, row.fold)] == tmp_path / "runs" / row.lever / f"mse_fold{row.fold}"
    assert (choice.table.query("lever == 'three_epochs'")["epochs"] == 3).all()
    summary = choice.summary().set_index(["lever", "method"])
    assert summary["folds_kept"].sum() == 3
    assert summary.loc[("three_epochs", "mse"), "passes"] == 3 * summary.loc[("one_epoch", "mse"), "passes"]

    cv = crossval.cross_validate(config, ["mse"], tmp_path / "unused", tmp_path / "out", n_boot=50, runs=choice.runs)
    assert not (tmp_path / "unused").exists(), "the kept runs are scored, nothing is retrained"
    rows = cv.predictions[cv.predictions["method"] == "mse"]
    assert sorted(rows["subject_id"]) == sorted(pd.read_csv(manifest)["subject_id"])


def test_the_validation_table_reads_the_kept_epoch(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"epoch": [1, 2, 3], "val_mae": [9.0, 7.5, 8.0], "passes": [10, 20, 30]}).to_csv(
        run / "metrics.csv", index=False
    )
    table = validation_table({("rnc", 2): run})
    assert table.to_dict("records") == [
        {"method": "rnc", "fold": 2, "val_mae": 7.5, "epoch": 2, "epochs": 3, "passes": 30}
    ]


def test_a_bad_lever_is_named(tmp_path: Path) -> None:
    manifest = write_tiny_cohort(tmp_path / "cohort", n_subjects=6)
    with pytest.raises(ConfigError, match="lever 'fast'"):
        choose_recipes(tiny_config(manifest, tmp_path), ["mse"], {"fast": ["train.epochs=0"]}, tmp_path / "runs")
    with pytest.raises(ValueError, match="at least one lever"):
        choose_recipes(tiny_config(manifest, tmp_path), ["mse"], {}, tmp_path / "runs")
