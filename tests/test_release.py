"""Release model: a fold ensemble whose bias correction and interval are fitted out of fold, and predict with it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainage_core.analysis.crossval import cv_runs
from brainage_core.analysis.metrics import fit_bias_correction
from brainage_core.cli import main
from brainage_core.prediction import predict_scans
from brainage_core.release import (
    RELEASE_FILE,
    build_release,
    conformal_half_width,
    cross_fold_coverage,
    read_release,
)
from tests.conftest import write_tiny_cohort
from tests.test_crossval import tiny_config


@pytest.fixture(scope="module")
def fold_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """Three fold runs of a tiny cross-validation (MSE, one epoch) and their manifest."""
    folder = tmp_path_factory.mktemp("release")
    manifest = write_tiny_cohort(folder / "cohort", n_subjects=30)
    config = tiny_config(manifest, folder)
    config.train.epochs = 8  # enough for predictions that rise with age (the bias correction needs it)
    runs = cv_runs(config, ["mse"], folder / "runs")
    return [runs[("mse", fold)] for fold in range(3)], manifest


def test_each_fold_is_covered_by_an_interval_fitted_on_the_other_folds() -> None:
    rng = np.random.default_rng(0)
    oof = pd.DataFrame({"fold": np.repeat(np.arange(5), 400), "age": rng.uniform(20, 80, 2000)})
    oof["predicted_age"] = oof["age"] + rng.normal(0, 5, len(oof))
    coverage = cross_fold_coverage(oof, level=0.9)
    assert list(coverage["fold"]) == list(range(5)) and (coverage["n"] == 400).all()
    assert coverage["coverage"].between(0.85, 0.95).all(), "Gaussian errors: about 90 % inside"
    others = (oof.loc[oof["fold"] != 2, "predicted_age"] - oof.loc[oof["fold"] != 2, "age"]).to_numpy()
    assert coverage.loc[2, "half_width"] == conformal_half_width(others, 0.9)
    moved = oof.copy()
    moved.loc[moved["fold"] == 2, "predicted_age"] += 100  # fold 2's own errors do not set its width
    assert cross_fold_coverage(moved, 0.9).loc[2, "half_width"] == coverage.loc[2, "half_width"]
    assert cross_fold_coverage(moved, 0.9).loc[2, "coverage"] == 0.0
    assert conformal_half_width(np.arange(1.0, 10.0), 0.9) == 9.0 and math.isinf(conformal_half_width(np.ones(5), 0.9))


def test_a_release_predicts_with_the_mean_of_its_fold_models(
    fold_runs: tuple[list[Path], Path], tmp_path: Path
) -> None:
    runs, manifest = fold_runs
    release = build_release(runs, tmp_path / "ixi_rnc")
    assert sorted(release.members) == [0, 1, 2]
    oof = pd.read_csv(tmp_path / "ixi_rnc" / "oof_predictions.csv")
    controls = pd.read_csv(manifest).query("group == 'CN'")
    assert sorted(oof["subject_id"]) == sorted(controls["subject_id"]), "every control once, out of fold"
    expected = fit_bias_correction(oof["age"], oof["predicted_age"])
    assert release.correction is not None and release.correction.slope == pytest.approx(expected.slope)
    errors = (oof["predicted_age"] - oof["age"]).to_numpy()
    assert release.interval.half_width == conformal_half_width(errors, 0.9)
    assert release.mae == pytest.approx(np.abs(errors).mean())

    result, interval = predict_scans(tmp_path / "ixi_rnc", manifest=manifest, device="cpu", progress=False)
    singles = [predict_scans(run, manifest=manifest, device="cpu", progress=False)[0] for run in runs]
    members = np.stack([single["predicted_age"].to_numpy() for single in singles])
    assert result["predicted_age"].to_numpy() == pytest.approx(members.mean(axis=0))
    assert result["member_sd"].to_numpy() == pytest.approx(members.std(axis=0, ddof=1))
    width = result["interval_high"] - result["interval_low"]
    assert width.to_numpy() == pytest.approx(2 * interval.half_width)
    corrected = release.correction.apply(result["age"], result["predicted_age"]) - result["age"]
    assert result["brain_age_gap_corrected"].to_numpy() == pytest.approx(corrected.to_numpy())
    assert "out-of-fold errors of 26 controls" in interval.describe()


def test_the_release_and_predict_commands(
    fold_runs: tuple[list[Path], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs, manifest = fold_runs
    out = tmp_path / "models" / "ixi_rnc"
    assert main(["release", *map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 fold models" in printed and "each fold calibrated on the others covers" in printed
    record = json.loads((out / RELEASE_FILE).read_text())
    assert len(record["coverage_by_fold"]) == 3 and record["interval"]["level"] == 0.9
    predictions = tmp_path / "predictions.csv"
    assert main(["predict", "--run", str(out), "--manifest", str(manifest), "--out", str(predictions), "--quiet"]) == 0
    written = pd.read_csv(predictions)
    assert {"predicted_age", "member_sd", "interval_low", "interval_high", "brain_age_gap_corrected"} <= set(written)
    assert len(written) == 30 and "conformal on the out-of-fold errors" in capsys.readouterr().out
    assert main(["release", *map(str, runs), "--out", str(out)]) == 0, "a release brainage wrote is replaced"


def test_bad_release_inputs_are_clear_errors(
    fold_runs: tuple[list[Path], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs, _ = fold_runs
    assert main(["release", str(runs[0]), str(runs[0]), "--out", str(tmp_path / "a")]) == 2
    assert "both hold out fold 0" in capsys.readouterr().err
    assert main(["release", str(runs[0]), "--out", str(tmp_path / "b")]) == 2
    assert "two or more folds" in capsys.readouterr().err
    planted = tmp_path / "c"
    planted.mkdir()
    (planted / "notes.txt").write_text("mine")
    assert main(["release", *map(str, runs), "--out", str(planted)]) == 2
    assert "notes.txt" in capsys.readouterr().err and (planted / "notes.txt").read_text() == "mine"
    assert not (planted / RELEASE_FILE).exists(), "nothing written"
    with pytest.raises(FileNotFoundError, match="no release.json"):
        read_release(tmp_path / "d")
    broken = tmp_path / "e"
    broken.mkdir()
    (broken / RELEASE_FILE).write_text("{not json")
    predictions = tmp_path / "p.csv"
    assert main(["predict", "--run", str(broken), "--manifest", str(fold_runs[1]), "--out", str(predictions)]) == 2
    assert "release.json is not a readable release record" in capsys.readouterr().err
    assert not predictions.exists()
