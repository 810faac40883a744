"""brainage sweep: a YAML search space, an Optuna study shared by processes, the best trials' runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest

from brainage_core.cli import main
from brainage_core.rundir import is_finished_run
from brainage_core.sweep import read_space, sweep
from tests.conftest import write_tiny_cohort
from tests.test_train import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("cohort"), n_subjects=30)


def write_space(path: Path, name: str, trials: int) -> Path:
    path.write_text(
        f"name: {name}\ntrials: {trials}\nfixed: [loss.name=mse]\n"
        "space:\n  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    )
    return path


def test_the_book_space_is_valid() -> None:
    space = read_space(ROOT / "book" / "sweep.yml")
    assert space.trials >= 1 and "train.lr" in space.space


def test_a_bad_space_lists_every_problem_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "space.yml"
    path.write_text(
        "name: ''\ntrials: 0\nextra: 1\nspace:\n"
        "  train.lr: {type: float, low: 1, high: 0.1}\n"
        "  train.nope: {type: float, low: 0.1, high: 1}\n"
        "  train.batch_size: {type: categorical, choices: []}\n"
        "  train.weight_decay: {type: float, low: 0, high: 1, log: true}\n"
    )
    with pytest.raises(ValueError) as error:
        read_space(path)
    for part in (
        "unknown key(s) ['extra']",
        "name: a non-empty string",
        "trials: a positive integer",
        "space.train.lr: float needs numbers low < high",
        "space.train.nope: not a setting of the run config",
        "space.train.batch_size: categorical needs a non-empty list",
        "space.train.weight_decay: log scale needs low > 0",
    ):
        assert part in str(error.value), part
    assert main(["sweep", "--space", str(path), "--out", str(tmp_path / "out")]) == 2
    assert main(["sweep", "--space", str(tmp_path / "none.yml"), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sweep_reports_the_best_trial_and_writes_its_run(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = write_space(tmp_path / "space.yml", "tiny", trials=2)
    base = tiny_overrides(tmp_path, cohort, "mse")
    assert main(["sweep", "--space", str(space), "--out", str(tmp_path / "sweep"), "--set", *base]) == 0
    printed = capsys.readouterr().out
    assert "2 finished trials" in printed and "best 1: trial" in printed
    best = pd.read_csv(tmp_path / "sweep" / "best.csv")
    trials = pd.read_csv(tmp_path / "sweep" / "trials.csv")
    assert len(best) == 1 and best["val_mae"].iloc[0] == trials["val_mae"].min()
    assert is_finished_run(tmp_path / "sweep" / "best_1")
    again = sweep(space, tmp_path / "sweep", base)
    assert len(again.trials) == 2, "a finished study runs no more trials"


@pytest.mark.slow
def test_two_processes_sharing_a_study_run_its_budget_once(cohort: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yml", "shared", trials=3)
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "brainage_core.cli", "sweep", "--space", str(space), "--out", str(out)]
    command += ["--top", "0", "--set", *tiny_overrides(tmp_path, cohort, "mse")]
    out.mkdir()
    processes = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)
    ]
    outputs = [process.communicate(timeout=600)[0].decode() for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    study = optuna.load_study(study_name="brainage-sweep-shared", storage=f"sqlite:///{out / 'study.db'}")
    finished = [
        t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert len(finished) == 3, [t.state for t in study.trials]
    assert len({t.params["train.lr"] for t in finished}) == 3, "no setting was tried twice"
    assert len(pd.read_csv(out / "trials.csv")) == 3
