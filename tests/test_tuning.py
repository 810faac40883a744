"""Tuning on validation only, the test split read once at the end, matched compute, the probe readout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from brainage_core import tuning
from brainage_core.cli import main
from brainage_core.config import load_config
from brainage_core.manifest import read_manifest
from brainage_core.train import train
from brainage_core.tuned import apply_tuned, read_recipe, tuned_overrides
from brainage_core.tuning import check_recipe, tune
from tests.conftest import write_tiny_cohort
from tests.test_train import tiny_overrides


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("cohort"), n_subjects=30)


def split_images(cohort: Path, split: str) -> set[str]:
    frame = read_manifest(cohort, check_images="none")
    return {str(Path(path).resolve()) for path in frame.loc[frame["split"] == split, "image"]}


def test_training_reads_the_test_split_once_after_the_last_epoch(
    cohort: Path, tmp_path: Path, reads: list[tuple[str, str]]
) -> None:
    train(load_config(None, tiny_overrides(tmp_path, cohort, "rnc")), tmp_path / "run", progress=False)
    test = split_images(cohort, "test")
    assert test, "the fixture cohort has a test split"
    phases = [phase for path, phase in reads if path in test]
    assert sorted(phases) == ["final"] * len(test), "each test scan is read exactly once, after selection"
    assert {phase for path, phase in reads if path not in test} <= {"setup", "final"}


def test_tuning_never_reads_a_test_scan(cohort: Path, tmp_path: Path, reads: list[tuple[str, str]]) -> None:
    base = tiny_overrides(tmp_path, cohort, "mse", epochs=2)
    result = tune("mse", tmp_path / "tune", n_trials=2, overrides=base)
    read = {path for path, _ in reads}
    assert read and not read & split_images(cohort, "test"), "tuning read a test-split scan"
    assert read & split_images(cohort, "val"), "tuning is scored on the validation scans"
    assert result.n_trials == 2 and len(result.trials) == 2
    assert all(not item.startswith(("data.", "loss.name")) for item in result.overrides)
    assert {"train.lr", "train.batch_size", "augment.rotate_deg"} <= {item.split("=")[0] for item in result.overrides}
    # a rerun resumes the stored study and only adds what is missing
    assert tune("mse", tmp_path / "tune", n_trials=2, overrides=base).n_trials == 2
    assert (tmp_path / "tune" / "trials_mse.csv").is_file()


def test_contrastive_search_space_includes_temperature_and_head(cohort: Path, tmp_path: Path) -> None:
    result = tune("rnc", tmp_path / "tune", n_trials=1, overrides=tiny_overrides(tmp_path, cohort, "rnc", epochs=1))
    keys = {item.split("=")[0] for item in result.overrides}
    assert {"loss.params.temperature", "model.projection_dim"} <= keys


def test_tuned_settings_apply_where_the_config_keeps_the_default(tmp_path: Path) -> None:
    tuned = tmp_path / "tuned.yml"
    tuned.write_text(yaml.safe_dump({"methods": {"mse": {"overrides": ["train.lr=0.0005", "train.batch_size=32"]}}}))
    config = apply_tuned(load_config(None, ["loss.name=mse", "train.batch_size=8"]), tuned)
    assert config.train.lr == 0.0005, "a default setting takes the tuned value"
    assert config.train.batch_size == 8, "an explicit setting wins"
    rnc = load_config(None, ["loss.name=rnc"])
    assert apply_tuned(rnc, tuned) == rnc, "a method without an entry keeps its settings"
    assert apply_tuned(rnc, None) == rnc and tuned_overrides(None, "mse") == []
    tuned.write_text(yaml.safe_dump({"methods": {"mse": {"overrides": ["loss.params.temperature=2"]}}}))
    with pytest.raises(ValueError, match=r"loss.params.temperature"):
        apply_tuned(load_config(None, ["loss.name=mse"]), tuned)
    tuned.write_text("methods: [1, 2]\n")
    with pytest.raises(ValueError, match=r"tuned.yml: no 'methods' mapping"):
        tuned_overrides(tuned, "mse")


def test_every_method_gets_the_same_passes_and_a_probe_readout(cohort: Path, tmp_path: Path) -> None:
    passes = {}
    for loss in ("rnc", "mse"):
        run = train(load_config(None, tiny_overrides(tmp_path, cohort, loss)), tmp_path / loss, progress=False)
        passes[loss] = pd.read_csv(run / "metrics.csv")["passes"].tolist()
        predictions = pd.read_csv(run / "predictions.csv")
        assert predictions["predicted_age_probe"].notna().all()
        if loss == "rnc":  # the contrastive head is the probe
            assert (predictions["predicted_age_probe"] == predictions["predicted_age"]).all()
    assert passes["rnc"] == passes["mse"] and passes["mse"][0] > 0
    smaller = [*tiny_overrides(tmp_path, cohort, "mse"), "train.batch_size=4"]
    run = train(load_config(None, smaller), tmp_path / "mse_b4", progress=False)
    assert pd.read_csv(run / "metrics.csv")["passes"].tolist() == passes["mse"], "passes do not depend on batch size"
    n_train = int(((pd.read_csv(cohort)["split"] == "train") & (pd.read_csv(cohort)["group"] == "CN")).sum())
    assert passes["mse"][0] == 2 * n_train, "every training subject, two views, once per epoch"


def test_tune_cli_rejects_bad_settings_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["tune", "--loss", "mse", "--out", str(tmp_path / "t"), "--set", "train.lr=-1"])
    assert code == 2
    error = capsys.readouterr().err
    assert "train.lr" in error and "Traceback" not in error
    assert not (tmp_path / "t").exists(), "nothing is written for a refused tuning"


def test_early_stopping_can_be_switched_off() -> None:
    assert load_config(None, []).train.patience == 6
    assert load_config(None, ["train.patience=null"]).train.patience is None, "null replaces a default"


@pytest.mark.slow
def test_recipe_checks_change_one_choice_at_a_time_on_validation(
    cohort: Path, tmp_path: Path, reads: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = [*tiny_overrides(tmp_path, cohort, "rnc", epochs=2), "loss.params.temperature=2.0"]
    choices = {"batch size": ("train.batch_size", (4, None)), "temperature": ("loss.params.temperature", (None, 1.0))}
    runs = check_recipe("rnc", tmp_path / "recipe", base, seeds=(0,), choices=choices)
    assert runs[["choice", "setting", "tuned"]].values.tolist() == [
        ["batch size", 4, False],
        ["batch size", 6, True],
        ["temperature", 2.0, True],
        ["temperature", 1.0, False],
    ]
    assert runs["val_mae"].notna().all() and (runs["epochs"] >= 1).all()
    assert runs.loc[1, "val_mae"] == runs.loc[2, "val_mae"], "the starting point is one run, shared"
    stored = pd.read_csv(tmp_path / "recipe" / "recipe_rnc_runs.csv")
    assert len(stored) == 3, "three distinct runs: two changes and the starting point"
    pd.testing.assert_frame_equal(read_recipe(tmp_path / "recipe" / "tuned.yml", "rnc"), runs, check_dtype=False)
    read = {path for path, _ in reads}
    assert read and not read & split_images(cohort, "test"), "recipe checks read a test-split scan"

    assert main(["recipe", "--out", str(tmp_path / "bad"), "--set", f"data.manifest={tmp_path / 'none.csv'}"]) == 2
    assert not (tmp_path / "bad").exists(), "a refused check leaves nothing on disk"

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(tuning, "_train_on_validation", no_training)
    again = check_recipe("rnc", tmp_path / "recipe", base, seeds=(0,), choices=choices)
    pd.testing.assert_frame_equal(again, runs)
    with pytest.raises(ValueError, match="loss.params.margin: not set"):
        check_recipe("rnc", tmp_path / "recipe", base, seeds=(0,), choices={"m": ("loss.params.margin", (None,))})
