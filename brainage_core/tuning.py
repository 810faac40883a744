"""Hyperparameter tuning on validation data only: one Optuna study per method.

Every method gets the same number of trials over its own search space (:func:`suggest_overrides`):
learning rate, weight decay, batch size and augmentation strength for all; for contrastive
losses also the temperature and whether the loss reads a projection head or the encoder
features. Optuna's TPE sampler proposes the settings (after a few random trials), and a trial is
a training run (:class:`~brainage_core.engine.Trainer`) with the run's early
stopping; its objective is the best validation MAE, reported every epoch so that Optuna's median
pruner can stop trials that trail the others. A trial builds its trainer, which loads only the
training and validation scans of the training groups, and never predicts: no file of the test
split is read while tuning (a test checks this).

The study lives in an SQLite file (any SQLAlchemy URL works), so an interrupted tuning resumes
and several processes can share one study. The result, :func:`write_tuned`, is a small YAML file
of per-method overrides that runs and book chapters apply before their own
(:func:`apply_tuned`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml

from brainage_core.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_problems,
    config_to_dict,
    dataclass_from_dict,
    load_config,
)
from brainage_core.engine import Trainer
from brainage_core.fileio import atomic_path
from brainage_core.imaging import AugmentConfig
from brainage_core.losses import CONTRASTIVE_LOSSES

__all__ = [
    "AUGMENT_STRENGTHS",
    "TuningResult",
    "apply_tuned",
    "read_tuning",
    "suggest_overrides",
    "trials_table",
    "tune",
    "tuned_overrides",
    "write_tuned",
]

AUGMENT_STRENGTHS = (0.0, 0.5, 1.0, 2.0)  # multiples of the default augmentation's magnitudes
AUGMENT_SCALED = ("rotate_deg", "intensity_shift", "intensity_scale", "bias_field", "noise_std")
TEMPERATURE_RANGES = {"rnc": (0.5, 5.0)}  # the RNC paper uses 2; the InfoNCE losses below
INFONCE_TEMPERATURES = (0.05, 0.5)
SAMPLER_STARTUP_TRIALS = 4  # random trials before TPE models the results (Optuna's default, 10, exceeds small studies)
PRUNER_STARTUP_TRIALS = 3  # trials run to the end before the median pruner stops any
PRUNER_WARMUP_EPOCHS = 5  # epochs every trial runs before it may be pruned


@dataclasses.dataclass
class TuningResult:
    """One method's study: the chosen overrides and what they reached on validation.

    Attributes:
        loss: the method (``loss.name``).
        overrides: dotted overrides of the best trial.
        best_val_mae: its best validation MAE (years).
        n_trials: trials in the study (finished and pruned).
        trials: one row per trial (parameters, validation MAE, state, epochs).
    """

    loss: str
    overrides: list[str]
    best_val_mae: float
    n_trials: int
    trials: pd.DataFrame


def suggest_overrides(trial: optuna.Trial, loss: str) -> list[str]:
    """Draw one trial's settings of the search space of ``loss`` as dotted overrides."""
    overrides = [
        f"train.lr={trial.suggest_float('lr', 1e-4, 3e-3, log=True)}",
        f"train.weight_decay={trial.suggest_float('weight_decay', 1e-6, 1e-2, log=True)}",
        f"train.batch_size={trial.suggest_categorical('batch_size', [16, 32])}",
    ]
    strength = trial.suggest_categorical("augment_strength", list(AUGMENT_STRENGTHS))
    default = AugmentConfig()
    overrides += [f"augment.{name}={getattr(default, name) * strength}" for name in AUGMENT_SCALED]
    if loss in CONTRASTIVE_LOSSES:
        low, high = TEMPERATURE_RANGES.get(loss, INFONCE_TEMPERATURES)
        overrides.append(f"loss.params.temperature={trial.suggest_float('temperature', low, high, log=True)}")
        overrides.append(f"model.projection_dim={trial.suggest_categorical('projection_dim', [0, 128])}")
    return overrides


def _objective(base: Sequence[str], loss: str, config_path: str | os.PathLike[str] | None) -> Any:
    def objective(trial: optuna.Trial) -> float:
        overrides = [*base, f"loss.name={loss}", *suggest_overrides(trial, loss)]
        trial.set_user_attr("overrides", overrides)
        trainer = Trainer(load_config(config_path, overrides))
        for epoch in range(trainer.config.train.epochs):
            row, stop = trainer.fit_epoch(epoch)
            trial.report(row["val_mae"], epoch)
            trial.set_user_attr("epochs", epoch + 1)
            if not math.isfinite(row["val_mae"]):
                raise optuna.TrialPruned(f"validation MAE {row['val_mae']} at epoch {epoch + 1}")
            if stop:
                break
            if trial.should_prune():
                raise optuna.TrialPruned()
        return trainer.best_mae

    return objective


def tune(
    loss: str,
    out_dir: str | os.PathLike[str],
    n_trials: int,
    overrides: Sequence[str] = (),
    config_path: str | os.PathLike[str] | None = None,
    seed: int = 0,
    storage: str | None = None,
) -> TuningResult:
    """Run (or resume) the study of one method until it holds ``n_trials`` trials.

    Args:
        loss: the method, ``loss.name``.
        out_dir: folder of the study (``study.db``, ``trials_<loss>.csv``).
        n_trials: trials the study must hold (existing ones count: a rerun only adds the rest).
        overrides: base settings of every trial (``data.manifest`` must be among them or in the
            config file); the search space's settings are applied after them.
        config_path: a YAML run config, or ``None`` for the defaults.
        seed: seeds the TPE sampler; the runs themselves use the config's seed.
        storage: an SQLAlchemy URL; default ``sqlite:///<out_dir>/study.db``.

    Returns:
        The study's result.
    """
    if n_trials < 1:
        raise ValueError(f"--trials must be >= 1, got {n_trials}")
    load_config(config_path, [*overrides, f"loss.name={loss}"])  # every problem before any training
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    study = optuna.create_study(
        study_name=f"brainage-{loss}",
        storage=storage,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=SAMPLER_STARTUP_TRIALS),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_EPOCHS),
        load_if_exists=True,
    )
    remaining = n_trials - len(study.trials)
    if remaining > 0:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(_objective(overrides, loss, config_path), n_trials=remaining, catch=(FloatingPointError,))
    trials = trials_table(study)
    with atomic_path(out_dir / f"trials_{loss}.csv", suffix=".csv") as temp:
        trials.to_csv(temp, index=False)
    best = study.best_trial
    return TuningResult(
        loss=loss,
        overrides=[
            item for item in best.user_attrs["overrides"] if item not in overrides and not item.startswith("loss.name=")
        ],
        best_val_mae=float(study.best_value),
        n_trials=len(study.trials),
        trials=trials,
    )


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, validation MAE, epochs trained, parameters."""
    rows = [
        {
            "trial": trial.number,
            "state": trial.state.name.lower(),
            "val_mae": trial.value
            if trial.value is not None
            else min(trial.intermediate_values.values(), default=math.nan),
            "epochs": trial.user_attrs.get("epochs", 0),
            **trial.params,
        }
        for trial in study.trials
    ]
    return pd.DataFrame(rows)


def write_tuned(path: str | os.PathLike[str], results: Sequence[TuningResult], note: str = "") -> Path:
    """Write the chosen overrides of each method as YAML (read back by :func:`tuned_overrides`)."""
    document = {
        "note": note,
        "methods": {
            result.loss: {
                "overrides": result.overrides,
                "best_val_mae": round(result.best_val_mae, 3),
                "n_trials": result.n_trials,
            }
            for result in results
        },
    }
    path = Path(path)
    with atomic_path(path, suffix=".yml") as temp:
        temp.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def tuned_overrides(path: str | os.PathLike[str] | None, loss: str) -> list[str]:
    """The tuned overrides of ``loss`` in a file of :func:`write_tuned` (none without a file or entry).

    Raises:
        ValueError: the file is not such a file (names the file and what it lacks).
    """
    if not path:
        return []
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tuned settings not found: {path}; make them with brainage tune, or pass none")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    methods = document.get("methods") if isinstance(document, dict) else None
    if not isinstance(methods, dict):
        raise ValueError(f"{path}: no 'methods' mapping; it is not a file written by brainage tune")
    entry = methods.get(loss) or {}
    overrides = entry.get("overrides", []) if isinstance(entry, dict) else None
    if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
        raise ValueError(f"{path}: methods.{loss}.overrides must be a list of section.key=value strings")
    return list(overrides)


def apply_tuned(config: RunConfig, tuned: str | os.PathLike[str] | None) -> RunConfig:
    """``config`` with the tuned settings of its loss wherever it still has the default value.

    A setting given explicitly (one that differs from the default) wins over the tuned value, so
    a profile or a user can still pin, say, ``train.epochs``. Without a file, ``config`` itself.

    Raises:
        ConfigError: the tuned settings do not fit the config (e.g. a parameter of another loss).
    """
    items = tuned_overrides(tuned, config.loss.name)
    if not items:
        return config
    values = config_to_dict(config)
    defaults = config_to_dict(load_config(None, [f"loss.name={config.loss.name}"]))
    kept = [item for item in items if _lookup(values, item) == _lookup(defaults, item)]
    problems: list[str] = []
    tuned_config = dataclass_from_dict(RunConfig, apply_overrides(values, kept), problems)
    problems += config_problems(tuned_config)
    if problems:
        raise ConfigError(problems, f"the tuned settings in {tuned}")
    return tuned_config


def _lookup(values: dict[str, Any], item: str) -> Any:
    """The value at the dotted key of ``section.key=value`` in nested ``values`` (None if absent)."""
    target: Any = values
    for key in item.split("=", 1)[0].strip().split("."):
        if not isinstance(target, dict) or key not in target:
            return None
        target = target[key]
    return target


def read_tuning(tuned: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What a tuning chose and tried: the ``tuned.yml`` and the ``trials_<loss>.csv`` beside it.

    Returns:
        ``summary``: one row per method (``method``, ``n_trials``, ``best_val_mae``, ``settings``:
        the chosen overrides, joined); ``trials``: every trial of every method (``method``
        column added; empty when the trials tables are missing).
    """
    path = Path(tuned)
    if not path.is_file():
        raise FileNotFoundError(f"tuned settings not found: {path}; make them with brainage tune")
    methods = (yaml.safe_load(path.read_text()) or {}).get("methods") or {}
    summary = pd.DataFrame(
        [
            {
                "method": method,
                "n_trials": entry.get("n_trials"),
                "best_val_mae": entry.get("best_val_mae"),
                "settings": ", ".join(tuned_overrides(path, method)),
            }
            for method, entry in methods.items()
        ]
    )
    tables = [
        pd.read_csv(path.parent / f"trials_{method}.csv").assign(method=method)
        for method in methods
        if (path.parent / f"trials_{method}.csv").is_file()
    ]
    return summary, pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
