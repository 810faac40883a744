"""Training engine: run directory, determinism, resume after kill, model selection, predict."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainage_core.cli import main
from brainage_core.config import load_config
from brainage_core.data import load_volumes
from brainage_core.imaging import VolumeCache
from brainage_core.inference import predict_ages
from brainage_core.manifest import read_manifest
from brainage_core.rundir import RUN_FILES, load_model
from brainage_core.train import train
from tests.conftest import write_tiny_cohort

ROOT = Path(__file__).resolve().parents[1]


def tiny_overrides(folder: Path, manifest: Path, loss: str = "mse", epochs: int = 2) -> list[str]:
    return [
        f"data.manifest={manifest}",
        "data.spacing=4",
        "data.shape=[16,16,16]",
        f"data.cache_dir={folder / 'cache'}",
        "model.width=0.125",
        f"train.epochs={epochs}",
        "train.batch_size=6",
        f"loss.name={loss}",
        "probe.steps=50",
        "num_threads=1",
    ]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("cohort"), n_subjects=30)


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("loss", ["rnc", "mse"])
def test_run_directory_holds_the_contract(cohort: Path, tmp_path: Path, loss: str) -> None:
    run = train(load_config(None, tiny_overrides(tmp_path, cohort, loss)), tmp_path / "run", progress=False)
    assert all((run / name).is_file() for name in RUN_FILES)
    predictions = pd.read_csv(run / "predictions.csv")
    manifest = pd.read_csv(cohort)
    assert len(predictions) == len(manifest), "every manifest row, patients included, gets a prediction"
    assert {"subject_id", "split", "group", "age", "predicted_age"} <= set(predictions.columns)
    assert predictions["predicted_age"].notna().all()
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2] and {"train_loss", "val_mae"} <= set(metrics.columns)
    assert load_config(run / "config.yaml") == load_config(None, tiny_overrides(tmp_path, cohort, loss))


def test_same_config_twice_gives_identical_metrics_and_weights(cohort: Path, tmp_path: Path) -> None:
    config = load_config(None, tiny_overrides(tmp_path, cohort, "rnc"))
    first, second = train(config, tmp_path / "a", progress=False), train(config, tmp_path / "b", progress=False)
    columns = ["epoch", "train_loss", "train_mae", "val_mae", "lr"]
    pd.testing.assert_frame_equal(
        pd.read_csv(first / "metrics.csv")[columns], pd.read_csv(second / "metrics.csv")[columns]
    )
    assert state_dicts_equal(
        torch.load(first / "model.pt", weights_only=True), torch.load(second / "model.pt", weights_only=True)
    )


def test_augmenting_on_the_training_device_makes_the_same_views(cohort: Path, tmp_path: Path) -> None:
    """augment.on_device moves augmentation after the batch transfer; each view keeps its seed, so on CPU
    the run is identical to augmenting in the DataLoader."""
    histories = []
    for on_device in ("false", "true"):
        overrides = [*tiny_overrides(tmp_path, cohort, "rnc"), f"augment.on_device={on_device}"]
        run = train(load_config(None, overrides), tmp_path / f"on_device_{on_device}", progress=False)
        histories.append(pd.read_csv(run / "metrics.csv").drop(columns="seconds"))
    pd.testing.assert_frame_equal(*histories)


def test_selected_model_is_the_best_validation_epoch(cohort: Path, tmp_path: Path) -> None:
    run = train(load_config(None, tiny_overrides(tmp_path, cohort, "mse", epochs=4)), tmp_path / "run", progress=False)
    metrics = pd.read_csv(run / "metrics.csv")
    predictions = pd.read_csv(run / "predictions.csv")
    val = predictions[(predictions["split"] == "val") & (predictions["group"] == "CN")]
    val_mae = (val["predicted_age"] - val["age"]).abs().mean()
    assert val_mae == pytest.approx(metrics["val_mae"].min(), abs=1e-3)


def test_resume_after_kill_ends_with_the_same_weights(cohort: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(tmp_path, cohort, "rnc", epochs=8)
    reference = train(load_config(None, overrides), tmp_path / "reference", progress=False)
    run_dir = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "brainage_core.cli",
        "train",
        "--quiet",
        "--run-dir",
        str(run_dir),
        "--set",
        *overrides,
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoint.pt").exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / "model.pt").exists(), "the run finished before it could be killed"
    killed_at = torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"]
    assert killed_at < 7
    assert (
        main(["train", "--quiet", "--resume", "--run-dir", str(run_dir)]) == 0
    )  # the README form: the run's own config
    assert state_dicts_equal(
        torch.load(run_dir / "model.pt", weights_only=True), torch.load(reference / "model.pt", weights_only=True)
    )
    columns = ["epoch", "train_loss", "val_mae"]
    pd.testing.assert_frame_equal(
        pd.read_csv(run_dir / "metrics.csv")[columns], pd.read_csv(reference / "metrics.csv")[columns]
    )


def test_predict_reproduces_the_run_predictions(cohort: Path, tmp_path: Path) -> None:
    run = train(load_config(None, tiny_overrides(tmp_path, cohort, "l1")), tmp_path / "run", progress=False)
    out = tmp_path / "preds.csv"
    assert main(["predict", "--quiet", "--run", str(run), "--manifest", str(cohort), "--out", str(out)]) == 0
    predicted = pd.read_csv(out)
    expected = pd.read_csv(run / "predictions.csv")
    pd.testing.assert_series_equal(predicted["predicted_age"], expected["predicted_age"], atol=1e-4, check_exact=False)
    assert (predicted["brain_age_gap"] - (predicted["predicted_age"] - predicted["age"])).abs().max() < 1e-4
    model, config = load_model(run)
    frame = read_manifest(cohort)
    volumes, _ = load_volumes(
        frame["image"],
        [None] * len(frame),
        config.data.preprocess_config(),
        VolumeCache(tmp_path / "cache"),
        progress=False,
    )
    torch.testing.assert_close(
        predict_ages(model, volumes, torch.device("cpu")),
        torch.tensor(expected["predicted_age"].values, dtype=torch.float32),
        atol=1e-3,
        rtol=0,
    )


def test_contrastive_loss_on_encoder_features_without_projection_head(cohort: Path, tmp_path: Path) -> None:
    """``model.projection_dim=0``: the loss sees the pooled encoder features (the RNC reference setup)."""
    config = load_config(None, [*tiny_overrides(tmp_path, cohort, "rnc"), "model.projection_dim=0"])
    run = train(config, tmp_path / "run", progress=False)
    model, _ = load_model(run)
    assert not any(name.startswith("projector.") for name in model.state_dict())
    volumes = torch.rand(3, 1, 16, 16, 16)
    torch.testing.assert_close(model.project(volumes), model.features(volumes))
    assert pd.read_csv(run / "predictions.csv")["predicted_age"].notna().all()
    with pytest.raises(ValueError, match="projection_dim must be >= 0"):
        load_config(None, ["model.projection_dim=-1"])


def test_epoch_size_cycles_a_small_training_set_with_fresh_views(cohort: Path, tmp_path: Path) -> None:
    """``train.epoch_size``: a subset gets the full set's steps per epoch, each repeat a new augmentation."""
    from brainage_core.engine import Trainer

    base = [*tiny_overrides(tmp_path, cohort, "rnc"), "train.batch_size=4"]
    full = Trainer(load_config(None, base), progress=False)
    n_all = len(full.train_idx)
    small = Trainer(load_config(None, [*base, "data.train_subjects=5", f"train.epoch_size={n_all}"]), progress=False)
    assert len(small.train_idx) == 5
    assert (small.steps_per_epoch, small.passes_per_epoch) == (full.steps_per_epoch, full.passes_per_epoch)
    drawn = np.concatenate(small._batches(0))
    assert len(drawn) == n_all and len(set(drawn.tolist())) == n_all, "every draw is its own dataset index"
    shown = pd.Series(drawn % len(small.dataset)).value_counts()
    assert set(shown.index) == set(small.train_idx.tolist()) and shown.max() - shown.min() <= 1
    subject = int(small.train_idx[0])
    first, again = small.dataset[subject], small.dataset[subject + len(small.dataset)]
    assert first[1] == again[1] and not torch.equal(first[0], again[0]), "same subject, fresh views"
    with pytest.raises(ValueError, match="train.epoch_size"):
        load_config(None, ["train.epoch_size=0"])


def test_bad_configs_fail_clearly(cohort: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"train.epoch: unknown key in section 'train'"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ValueError, match="train.epochs: must be an integer"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(ValueError, match="loss.name: unknown loss 'hinge'"):
        load_config(None, tiny_overrides(tmp_path, cohort, "hinge"))
    run = train(load_config(None, tiny_overrides(tmp_path, cohort, "mse")), tmp_path / "done", progress=False)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(load_config(None, tiny_overrides(tmp_path, cohort, "mse")), run, progress=False)


def test_linear_probe_does_not_interpolate_when_features_outnumber_subjects() -> None:
    """126 subjects, 128 feature dims, age in 3 noisy dims: the CV-chosen penalty must generalise."""
    from brainage_core.config import ProbeConfig
    from brainage_core.train import fit_linear_probe

    generator = torch.Generator().manual_seed(0)
    ages = 20 + 70 * torch.rand(252, generator=generator)
    features = torch.randn(252, 128, generator=generator)
    features[:, :3] += (ages[:, None] - 55) / 20

    def held_out_mae(config: ProbeConfig) -> float:
        weight, bias = fit_linear_probe(features[:126], ages[:126], 55.0, 20.0, config)
        predicted = (features[126:] @ weight.T + bias).squeeze(1) * 20 + 55
        return float((predicted - ages[126:]).abs().mean())

    cross_validated, unpenalised = held_out_mae(ProbeConfig()), held_out_mae(ProbeConfig(ridge=1e-6))
    assert cross_validated < 15.0, cross_validated  # the noise floor of this problem is about 9 years
    assert unpenalised > 2 * cross_validated


def test_torchrun_two_process_training_completes(cohort: Path, tmp_path: Path) -> None:
    """DDP on CPU (gloo): 2 processes train a contrastive model; only rank 0 writes the run."""
    run_dir = tmp_path / "ddp"
    command = [
        str(Path(sys.executable).parent / "torchrun"),
        "--nproc_per_node=2",
        "-m",
        "brainage_core.cli",
        "train",
        "--quiet",
        "--run-dir",
        str(run_dir),
        "--set",
        *tiny_overrides(tmp_path, cohort, "rnc"),
    ]
    completed = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert all((run_dir / name).is_file() for name in RUN_FILES)
    assert pd.read_csv(run_dir / "metrics.csv")["epoch"].tolist() == [1, 2]
