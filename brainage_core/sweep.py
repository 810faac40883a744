"""Sweeps: an Optuna study over a search space written in YAML, shared by any number of processes.

``brainage tune`` searches a fixed space per loss (:mod:`brainage_core.tuning`); a sweep searches
the space a YAML file declares (``book/sweep.yml`` is an example):

.. code-block:: yaml

    name: rnc-lr-temperature      # the study's name in the storage
    trials: 8                     # the study stops when it holds this many finished trials
    fixed: [loss.name=rnc]        # settings of every trial
    space:
      train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      train.batch_size: {type: categorical, choices: [16, 32]}

Each trial trains with early stopping and is scored by its best validation MAE, reported every
epoch for Optuna's median pruner; no test scan is read. The study lives in SQLite by default;
with any SQLAlchemy URL (``--storage postgresql://...``) processes on many machines share it:
each process draws trials until the study holds ``trials`` finished ones
(:class:`optuna.study.MaxTrialsCallback`), and a trial that would exceed the budget (processes
starting at the same moment) is stopped before it trains, so more processes finish sooner
without running more trials. The sampler is not seeded: processes sharing a study must not
propose the same settings. At the end, the best trials are trained once more into complete run directories
(:func:`~brainage_core.train.ensure_run`: reused when they already exist).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml
from filelock import FileLock
from optuna.trial import TrialState

from brainage_core.config import load_config
from brainage_core.fileio import atomic_path
from brainage_core.tuning import (
    PRUNER_STARTUP_TRIALS,
    PRUNER_WARMUP_EPOCHS,
    SAMPLER_STARTUP_TRIALS,
    trials_table,
    validation_objective,
)

__all__ = ["SweepResult", "SweepSpace", "read_space", "sweep"]

SPACE_TYPES = ("float", "int", "categorical")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class SweepSpace:
    """A search space read from YAML (:func:`read_space`).

    Attributes:
        name: the study's name (``brainage-sweep-<name>`` in the storage).
        trials: finished trials (complete or pruned) the study must hold.
        fixed: dotted overrides of every trial.
        space: ``{dotted key: {type, low, high, log} or {type: categorical, choices}}``.
    """

    name: str
    trials: int
    fixed: list[str]
    space: dict[str, dict[str, Any]]


@dataclass
class SweepResult:
    """What a sweep found: every trial, and the run directories of the best ones."""

    trials: pd.DataFrame
    best: pd.DataFrame
    run_dirs: list[Path]


class _OverBudget(Exception):
    """A trial started after the study's budget was taken by other processes (not run)."""


def read_space(path: str | os.PathLike[str], config_path: str | os.PathLike[str] | None = None) -> SweepSpace:
    """Read and check a sweep's YAML file: every problem is listed, naming the file and the key.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a valid search space (the message lists every problem).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search space not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    problems = []
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must be a mapping with name, trials, fixed and space")
    unknown = sorted(set(data) - {"name", "trials", "fixed", "space"})
    if unknown:
        problems.append(f"unknown key(s) {unknown}; allowed: name, trials, fixed, space")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append("name: a non-empty string is required")
    trials = data.get("trials", 8)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        problems.append(f"trials: a positive integer is required, got {trials!r}")
    fixed = data.get("fixed") or []
    if not isinstance(fixed, list) or not all(isinstance(item, str) for item in fixed):
        problems.append("fixed: a list of section.key=value strings is required")
        fixed = []
    space = data.get("space")
    if not isinstance(space, dict) or not space:
        problems.append("space: a mapping of at least one dotted setting is required")
        space = {}
    for key, spec in space.items():
        problems += [f"space.{key}: {problem}" for problem in _spec_problems(spec)]
        if not _spec_problems(spec):
            example = spec["choices"][0] if spec["type"] == "categorical" else spec["low"]
            try:
                load_config(config_path, [*fixed, f"{key}={example}"])
            except ValueError as error:
                problems.append(f"space.{key}: not a setting of the run config ({error})")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return SweepSpace(name=str(name), trials=int(trials), fixed=list(fixed), space=dict(space))


def _spec_problems(spec: Any) -> list[str]:
    if not isinstance(spec, dict) or spec.get("type") not in SPACE_TYPES:
        return [f"needs type: one of {list(SPACE_TYPES)}"]
    if spec["type"] == "categorical":
        choices = spec.get("choices")
        return [] if isinstance(choices, list) and choices else ["categorical needs a non-empty list of choices"]
    low, high = spec.get("low"), spec.get("high")
    if (
        isinstance(low, bool)
        or isinstance(high, bool)
        or not isinstance(low, (int, float))
        or not isinstance(high, (int, float))
        or not low < high
    ):
        return [f"{spec['type']} needs numbers low < high, got low={low!r}, high={high!r}"]
    if spec.get("log") and low <= 0:
        return [f"log scale needs low > 0, got {low}"]
    return []


def _suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> list[str]:
    overrides = []
    for key, spec in space.items():
        if spec["type"] == "categorical":
            value = trial.suggest_categorical(key, spec["choices"])
        elif spec["type"] == "int":
            value = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)))
        else:
            value = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))
        overrides.append(f"{key}={value}")
    return overrides


def sweep(
    space_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    config_path: str | os.PathLike[str] | None = None,
    storage: str | None = None,
    top: int = 1,
    progress: bool = False,
) -> SweepResult:
    """Run (or join) a sweep's study until it holds its trials, then write the best trials' runs.

    Args:
        space_path: the YAML search space (:func:`read_space`).
        out_dir: ``study.db`` (default storage), ``trials.csv``, ``best.csv`` and the run
            directories ``best_<rank>/``.
        overrides: base settings of every trial (``data.manifest`` among them or in the config);
            the space's ``fixed`` settings and the trial's values come after them.
        config_path: a YAML run config, or ``None`` for the defaults.
        storage: an SQLAlchemy URL shared by every process of the sweep; default
            ``sqlite:///<out_dir>/study.db``.
        top: how many of the best trials get a complete run directory (0: none).
        progress: progress bars while training the best runs.

    Returns:
        Every trial, the best ``top`` of them (``rank``, ``trial``, ``val_mae``, ``overrides``)
        and their run directories.
    """
    from brainage_core.train import ensure_run

    space = read_space(space_path, config_path)
    base = [*overrides, *space.fixed]
    load_config(config_path, base)  # every problem before any training
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    # SQLite: wait for a writer instead of failing ("database is locked"), and let one process at
    # a time create the tables and the study (processes on one machine share out_dir).
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with FileLock(out_dir / ".study.lock"):
        study = optuna.create_study(
            study_name=f"brainage-sweep-{space.name}",
            storage=optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs),
            direction="minimize",
            sampler=optuna.samplers.TPESampler(n_startup_trials=SAMPLER_STARTUP_TRIALS),
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_EPOCHS
            ),
            load_if_exists=True,
        )

    objective = validation_objective(base, config_path, lambda trial: _suggest(trial, space.space))

    def within_budget(trial: optuna.Trial) -> float:
        # Processes sharing the study may start trials at the same moment: a trial runs only if
        # fewer than `trials` earlier-numbered trials are finished or running, so the study never
        # holds more than its budget (trial numbers are unique across processes).
        earlier = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        if sum(other.number < trial.number for other in earlier) >= space.trials:
            trial.set_user_attr("over_budget", True)
            trial.study.stop()
            raise _OverBudget
        return objective(trial)

    if sum(trial.state in FINISHED for trial in study.trials) < space.trials:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(
            within_budget,
            callbacks=[optuna.study.MaxTrialsCallback(space.trials, states=FINISHED)],
            catch=(FloatingPointError, _OverBudget),
        )
    counted = [t.number for t in study.trials if not t.user_attrs.get("over_budget")]
    trials = trials_table(study)
    trials = trials[trials["trial"].isin(counted)].reset_index(drop=True)
    complete = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: float(t.value or 0.0))
    best = pd.DataFrame(
        [
            {"rank": rank, "trial": t.number, "val_mae": t.value, "overrides": " ".join(t.user_attrs["overrides"])}
            for rank, t in enumerate(complete[:top], start=1)
        ],
        columns=["rank", "trial", "val_mae", "overrides"],
    )
    for name, table in (("trials.csv", trials), ("best.csv", best)):
        with atomic_path(out_dir / name, suffix=".csv") as temp:
            table.to_csv(temp, index=False)
    run_dirs = [
        ensure_run(
            load_config(config_path, [*base, *t.user_attrs["overrides"]]), out_dir / f"best_{rank}", progress=progress
        )
        for rank, t in enumerate(complete[:top], start=1)
    ]
    return SweepResult(trials=trials, best=best, run_dirs=run_dirs)
