"""The tuned settings file: what ``brainage tune`` chose, read back by runs and chapters.

``tuned.yml`` maps each method to the dotted overrides of its best trial (with its validation
MAE and number of trials); ``trials_<loss>.csv`` beside it lists every trial, and
``recipe_<loss>.csv`` the controlled recipe checks (``brainage recipe``). This module only
reads and writes those files, so applying tuned settings does not import Optuna
(:mod:`brainage_core.tuning` runs the studies).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from brainage_core.config import RunConfig, config_to_dict, load_config, with_overrides
from brainage_core.fileio import atomic_path

__all__ = ["TuningResult", "apply_tuned", "read_recipe", "read_tuning", "tuned_overrides", "write_tuned"]


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


def _tuned_methods(path: Path) -> dict[str, Any]:
    """The ``methods`` mapping of a file of :func:`write_tuned`, checked.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not such a file (names the file and what it lacks).
    """
    if not path.is_file():
        raise FileNotFoundError(f"tuned settings not found: {path}; make them with brainage tune, or pass none")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    methods = document.get("methods") if isinstance(document, dict) else None
    if not isinstance(methods, dict):
        raise ValueError(f"{path}: no 'methods' mapping; it is not a file written by brainage tune")
    return methods


def _method_overrides(path: Path, methods: dict[str, Any], loss: str) -> list[str]:
    """The overrides of ``loss`` in a checked ``methods`` mapping (none without an entry)."""
    entry = methods.get(loss) or {}
    overrides = entry.get("overrides", []) if isinstance(entry, dict) else None
    if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
        raise ValueError(f"{path}: methods.{loss}.overrides must be a list of section.key=value strings")
    return list(overrides)


def tuned_overrides(path: str | os.PathLike[str] | None, loss: str) -> list[str]:
    """The tuned overrides of ``loss`` in a file of :func:`write_tuned` (none without a file or entry).

    Raises:
        ValueError: the file is not such a file (names the file and what it lacks).
    """
    if not path:
        return []
    path = Path(path)
    return _method_overrides(path, _tuned_methods(path), loss)


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
    return with_overrides(config, kept, f"the tuned settings in {tuned}")


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
    methods = _tuned_methods(path)
    summary = pd.DataFrame(
        [
            {
                "method": method,
                "n_trials": entry.get("n_trials"),
                "best_val_mae": entry.get("best_val_mae"),
                "settings": ", ".join(_method_overrides(path, methods, method)),
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


def read_recipe(tuned: str | os.PathLike[str], loss: str) -> pd.DataFrame:
    """The recipe checks of ``loss`` beside a ``tuned.yml`` (empty when there are none).

    Returns:
        The table of :func:`~brainage_core.tuning.check_recipe`: ``choice``, ``setting``,
        ``tuned``, ``seed``, ``val_mae``, ``epochs``.
    """
    path = Path(tuned).parent / f"recipe_{loss}.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()
