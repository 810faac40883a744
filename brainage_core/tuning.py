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
and several processes can share one study. The result, :func:`~brainage_core.tuned.write_tuned`, is a small YAML
file of per-method overrides that runs and book chapters apply
(:func:`~brainage_core.tuned.apply_tuned`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from brainage_core.config import load_config
from brainage_core.engine import Trainer
from brainage_core.fileio import atomic_path
from brainage_core.imaging import AugmentConfig
from brainage_core.losses import CONTRASTIVE_LOSSES
from brainage_core.tuned import TuningResult

__all__ = [
    "AUGMENT_STRENGTHS",
    "RECIPE_CHOICES",
    "check_recipe",
    "suggest_overrides",
    "trials_table",
    "tune",
    "validation_objective",
]

AUGMENT_STRENGTHS = (0.0, 0.5, 1.0, 2.0)  # multiples of the default augmentation's magnitudes
AUGMENT_SCALED = ("rotate_deg", "intensity_shift", "intensity_scale", "bias_field", "noise_std")
TEMPERATURE_RANGES = {"rnc": (0.5, 5.0)}  # the RNC paper uses 2; the InfoNCE losses below
INFONCE_TEMPERATURES = (0.05, 0.5)
SAMPLER_STARTUP_TRIALS = 4  # random trials before TPE models the results (Optuna's default, 10, exceeds small studies)
PRUNER_STARTUP_TRIALS = 3  # trials run to the end before the median pruner stops any
PRUNER_WARMUP_EPOCHS = 5  # epochs every trial runs before it may be pruned
# The RNC recipe's departures, each checked one at a time around the tuned settings: batch size
# (the paper trains at 256), the loss on the encoder features or a 128-d projection head, and the
# temperature (the paper's 2). ``None`` stands for the tuned value itself.
RECIPE_CHOICES: dict[str, tuple[str, tuple[Any, ...]]] = {
    "batch size": ("train.batch_size", (16, 32, 64)),
    "projection dim (0: none)": ("model.projection_dim", (0, 128)),
    "temperature": ("loss.params.temperature", (1.0, 2.0, None)),
}


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


def validation_objective(
    base: Sequence[str], config_path: str | os.PathLike[str] | None, suggest: Callable[[optuna.Trial], list[str]]
) -> Callable[[optuna.Trial], float]:
    """The objective of a study: train ``base`` + the trial's overrides, scored on validation.

    The trial's overrides (``suggest``) are stored in its ``overrides`` attribute; it trains
    with the run's early stopping, reports the validation MAE every epoch (so the pruner can
    stop it), and returns the best one. Its trainer never predicts: no test scan is read.
    """

    def objective(trial: optuna.Trial) -> float:
        searched = suggest(trial)
        trial.set_user_attr("overrides", searched)
        trainer = Trainer(load_config(config_path, [*base, *searched]))
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
        objective = validation_objective(
            [*overrides, f"loss.name={loss}"], config_path, lambda trial: suggest_overrides(trial, loss)
        )
        study.optimize(objective, n_trials=remaining, catch=(FloatingPointError,))
    trials = trials_table(study)
    with atomic_path(out_dir / f"trials_{loss}.csv", suffix=".csv") as temp:
        trials.to_csv(temp, index=False)
    return TuningResult(
        loss=loss,
        overrides=list(study.best_trial.user_attrs["overrides"]),
        best_val_mae=float(study.best_value),
        n_trials=len(study.trials),
        trials=trials,
    )


def _setting(config: Any, key: str) -> Any:
    """The value of a dotted key (``loss.params.temperature``) in a run config."""
    value = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
    if value is None:
        raise ValueError(f"{key}: not set in the starting settings; give its value (--set {key}=...)")
    return value


def _train_on_validation(config_path: str | os.PathLike[str] | None, overrides: Sequence[str]) -> tuple[float, int]:
    """Train with early stopping, never predicting; the best validation MAE and the epochs run."""
    trainer = Trainer(load_config(config_path, list(overrides)))
    epochs = 0
    for epoch in range(trainer.config.train.epochs):
        _, stop = trainer.fit_epoch(epoch)
        epochs = epoch + 1
        if stop:
            break
    return trainer.best_mae, epochs


def check_recipe(
    loss: str,
    out_dir: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    config_path: str | os.PathLike[str] | None = None,
    tuned: str | os.PathLike[str] | None = None,
    seeds: Sequence[int] = (0, 1),
    choices: dict[str, tuple[str, tuple[Any, ...]]] | None = None,
) -> pd.DataFrame:
    """Controlled checks of a method's recipe on validation: one choice changed at a time.

    Every run starts from the same settings (``overrides``, then the tuned ones of ``tuned``)
    and changes one key to one value; the tuned setting itself is one shared run per seed. Runs
    stop early as usual and are scored by their best validation MAE; like :func:`tune`, they
    read no test scan. Finished runs are kept in ``out_dir/recipe_<loss>_runs.csv`` (``override``,
    ``seed``, ``val_mae``, ``epochs``; an empty override is the starting point), rewritten after
    each run, so an interrupted check resumes where it stopped; the result table is written to
    ``out_dir/recipe_<loss>.csv`` at the end (:func:`~brainage_core.tuned.read_recipe`).

    Args:
        loss: the method, ``loss.name``.
        out_dir: folder of ``recipe_<loss>.csv``.
        overrides: base settings (``data.manifest`` among them or in the config file).
        config_path: a YAML run config, or ``None`` for the defaults.
        tuned: a ``tuned.yml`` (:func:`~brainage_core.tuned.write_tuned`) whose settings for
            ``loss`` are the starting point, or ``None``.
        seeds: run seeds of every setting.
        choices: ``{label: (key, values)}``; a value ``None`` is the starting point's own value
            (default :data:`RECIPE_CHOICES`).

    Returns:
        One row per run: ``choice``, ``setting``, ``tuned`` (the setting is the starting
        point's), ``seed``, ``val_mae``, ``epochs``.
    """
    from brainage_core.tuned import tuned_overrides

    base = [*overrides, *tuned_overrides(tuned, loss), f"loss.name={loss}"]
    start = load_config(config_path, base)  # every problem before any training
    out_dir = Path(out_dir)
    runs_path = out_dir / f"recipe_{loss}_runs.csv"
    done = pd.read_csv(runs_path) if runs_path.is_file() else pd.DataFrame()
    scores: dict[tuple[str, int], tuple[float, int]] = {
        (str(row.override) if isinstance(row.override, str) else "", int(row.seed)): (
            float(row.val_mae),
            int(row.epochs),
        )
        for row in done.itertuples()
    }
    rows = []
    for label, (key, values) in (choices or RECIPE_CHOICES).items():
        current = _setting(start, key)
        for value in values:
            setting = current if value is None else value
            override = "" if setting == current else f"{key}={setting}"  # "": the starting point, one run for all
            for seed in seeds:
                if (override, seed) not in scores:
                    extra = [override] if override else []
                    scores[(override, seed)] = _train_on_validation(config_path, [*base, *extra, f"seed={seed}"])
                    table = pd.DataFrame(
                        [{"override": o, "seed": s, "val_mae": m, "epochs": e} for (o, s), (m, e) in scores.items()]
                    )
                    out_dir.mkdir(parents=True, exist_ok=True)
                    with atomic_path(runs_path, suffix=".csv") as temp:
                        table.to_csv(temp, index=False)
                val_mae, epochs = scores[(override, seed)]
                rows.append(
                    {
                        "choice": label,
                        "setting": setting,
                        "tuned": setting == current,
                        "seed": seed,
                        "val_mae": val_mae,
                        "epochs": epochs,
                    }
                )
    result = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / f"recipe_{loss}.csv", suffix=".csv") as temp:
        result.to_csv(temp, index=False)
    return result


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
