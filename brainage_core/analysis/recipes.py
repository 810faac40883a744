"""Choosing a training recipe by nested cross-validation: no fold's predictions come from a choice that saw it.

A *lever* is a named list of overrides (say ``long40``: ``train.epochs=40``,
``train.patience=null``). :func:`choose_recipes` trains every lever's cross-validation runs
(:func:`~brainage_core.analysis.crossval.cv_runs`) and then, for each method and each outer fold
``k``, keeps the lever whose fold-``k`` run has the lowest validation MAE. That run was trained
on the folds other than ``k`` and ``k + 1`` and selected its epoch on fold ``k + 1``, so the
choice for fold ``k`` never looks at fold ``k``: the out-of-fold predictions of the kept runs are
an honest estimate of the whole procedure, choice included (nested cross-validation). Only
``metrics.csv`` (validation MAE per epoch) is read to choose; test predictions are read later,
by whoever scores the kept runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from brainage_core.analysis.crossval import cv_runs
from brainage_core.config import RunConfig, with_overrides
from brainage_core.rundir import read_history

__all__ = ["RecipeChoice", "choose_recipes", "validation_table"]


def validation_table(runs: Mapping[tuple[str, int], str | os.PathLike[str]]) -> pd.DataFrame:
    """The validation record of each run: its best validation MAE, the epoch kept and the epochs run.

    Returns:
        Columns ``method``, ``fold``, ``val_mae``, ``epoch`` (kept), ``epochs`` (run), ``passes``
        (training samples seen over the run, views included).
    """
    rows = []
    for (method, fold), run_dir in runs.items():
        history = read_history(run_dir)
        best = history.loc[history["val_mae"].idxmin()]
        rows.append(
            {
                "method": method,
                "fold": fold,
                "val_mae": float(best["val_mae"]),
                "epoch": int(best["epoch"]),
                "epochs": len(history),
                "passes": int(history["passes"].iloc[-1]),
            }
        )
    return pd.DataFrame(rows)


@dataclass
class RecipeChoice:
    """The result of :func:`choose_recipes`.

    Attributes:
        table: every lever's runs: :func:`validation_table` with a ``lever`` column.
        chosen: one row per (``method``, ``fold``): the ``lever`` kept and its ``val_mae``.
        runs: ``{(method, fold): run_dir}`` of the kept runs, for out-of-fold scoring.
    """

    table: pd.DataFrame
    chosen: pd.DataFrame
    runs: dict[tuple[str, int], Path]

    def summary(self) -> pd.DataFrame:
        """Per lever and method: mean validation MAE over folds, folds that kept it, mean epochs and passes."""
        kept = self.chosen.groupby(["method", "lever"]).size().rename("folds_kept")
        table = self.table.groupby(["lever", "method"], sort=False)[["val_mae", "epochs", "passes"]].mean()
        return table.join(kept.swaplevel(), how="left").fillna({"folds_kept": 0}).reset_index()


def choose_recipes(
    config: RunConfig,
    losses: Sequence[str],
    levers: Mapping[str, Sequence[str]],
    runs_root: str | os.PathLike[str],
    progress: bool = False,
) -> RecipeChoice:
    """Train every lever's cross-validation and keep, per method and outer fold, the lever best on validation.

    Args:
        config: the base settings (``data.manifest`` with a ``fold`` column).
        losses: the methods; each chooses its own lever per fold by the same rule.
        levers: ``{name: overrides}`` applied on top of ``config`` (an empty list: ``config`` itself).
        runs_root: runs go to ``runs_root/<lever>/<loss>_fold<k>`` (existing finished runs are reused).
        progress: progress bars.

    Returns:
        The validation table, the choice per fold and the kept runs.

    Raises:
        ValueError: no levers; ConfigError: a lever's overrides do not make a valid config.
    """
    if not levers:
        raise ValueError("choose_recipes needs at least one lever (name -> overrides)")
    parts, runs = [], {}
    for lever, overrides in levers.items():
        lever_runs = cv_runs(
            with_overrides(config, overrides, f"lever {lever!r}"), losses, Path(runs_root) / lever, progress
        )
        runs[lever] = lever_runs
        parts.append(validation_table(lever_runs).assign(lever=lever))
    table = pd.concat(parts, ignore_index=True)
    best = table.loc[table.groupby(["method", "fold"])["val_mae"].idxmin()]
    chosen = best[["method", "fold", "lever", "val_mae"]].sort_values(["method", "fold"], ignore_index=True)
    kept = {(row.method, row.fold): runs[row.lever][(row.method, row.fold)] for row in chosen.itertuples()}
    return RecipeChoice(table=table, chosen=chosen, runs=kept)
