"""Subject-level k-fold cross-validation: deep models and classical baselines on the same folds.

Every method is evaluated on out-of-fold predictions: for fold ``k`` a model is fitted on the
other folds and predicts fold ``k``. The deep models use the manifest's ``fold`` column through
``data.test_fold`` (fold ``k`` test, fold ``k + 1`` validation, the rest training); the ridge
baseline on region volumes and the mean predictor are fitted on the same training subjects
(training and validation folds) and predict the same test fold. :func:`cross_validate` runs the
whole comparison and writes its tables.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainage_core.analysis.method_tests import method_differences
from brainage_core.analysis.metrics import (
    BIAS_CORRECTION,
    N_BOOT,
    corrected_predictions,
    healthy_test_rows,
    metrics_with_ci,
)
from brainage_core.cohorts.calibration import region_volumes, volume_ridge
from brainage_core.config import RunConfig
from brainage_core.data import assign_splits, training_subset
from brainage_core.fileio import atomic_path
from brainage_core.manifest import read_manifest
from brainage_core.rundir import read_predictions
from brainage_core.train import ensure_run

__all__ = [
    "CrossValidation",
    "baseline_cv_predictions",
    "corrected_out_of_fold",
    "cross_validate",
    "cv_learning_curve",
    "cv_runs",
    "cv_summary",
    "gap_age_correlation",
    "out_of_fold_predictions",
    "region_volumes",
]


def cv_runs(
    config: RunConfig, losses: Sequence[str], runs_root: str | os.PathLike[str], progress: bool = False
) -> dict[tuple[str, int], Path]:
    """Train (or reuse) one run per loss and fold into ``runs_root/<loss>_fold<k>``.

    Args:
        config: the run settings; ``data.manifest`` must have a ``fold`` column. Each run is this
            config with its loss and ``data.test_fold`` set.
        losses: loss names (see :mod:`brainage_core.losses`).
        runs_root: folder of the run directories.
        progress: show progress bars.

    Returns:
        ``{(loss, fold): run_dir}``.
    """
    manifest = config.data.manifest
    frame = read_manifest(manifest, check_images="none")
    if "fold" not in frame.columns or frame["fold"].isna().any():
        raise ValueError(f"{manifest}: cross-validation needs a 'fold' value on every row")
    runs = {}
    for loss in losses:
        for fold in sorted(int(f) for f in frame["fold"].unique()):
            run_config = copy.deepcopy(config)
            if loss != run_config.loss.name:
                run_config.loss.name, run_config.loss.params = loss, {}
            run_config.data.test_fold = fold
            runs[(loss, fold)] = ensure_run(run_config, Path(runs_root) / f"{loss}_fold{fold}", progress=progress)
    return runs


def out_of_fold_predictions(runs: Mapping[tuple[str, int], str | os.PathLike[str]]) -> pd.DataFrame:
    """The test-fold rows of each run, stacked: one prediction per (method, subject).

    Returns:
        Columns ``method``, ``fold``, ``subject_id``, ``age``, ``predicted_age``.

    Raises:
        ValueError: a subject is predicted twice for one method (folds overlap).
    """
    parts = []
    for (method, fold), run_dir in runs.items():
        predictions = read_predictions(run_dir)
        test = predictions[predictions["split"] == "test"]
        parts.append(
            pd.DataFrame(
                {
                    "method": method,
                    "fold": fold,
                    "subject_id": test["subject_id"],
                    "age": test["age"],
                    "predicted_age": test["predicted_age"],
                }
            )
        )
    table = pd.concat(parts, ignore_index=True)
    duplicated = table.duplicated(["method", "subject_id"])
    if duplicated.any():
        raise ValueError(f"subjects predicted more than once: {table.loc[duplicated, 'subject_id'].tolist()[:10]}")
    return table


def corrected_out_of_fold(
    runs: Mapping[tuple[str, int], str | os.PathLike[str]], method: str = BIAS_CORRECTION
) -> pd.DataFrame:
    """Out-of-fold brain-age gaps of the controls before and after the age-bias correction.

    Each fold run's correction is fitted on its own validation controls (never its test fold,
    :func:`~brainage_core.analysis.metrics.corrected_predictions`) and applied to its test fold.
    A run whose correction cannot be fitted (predictions that do not rise with age) gets NaN
    corrected gaps.

    Returns:
        Columns ``method``, ``fold``, ``subject_id``, ``age``, ``gap`` and ``gap_corrected``.
    """
    parts = []
    for (name, fold), run_dir in runs.items():
        predictions = read_predictions(run_dir)
        try:
            corrected = corrected_predictions(predictions, method=method)
        except ValueError:
            corrected = predictions.assign(
                gap=predictions["predicted_age"] - predictions["age"], gap_corrected=math.nan
            )
        test = healthy_test_rows(corrected)
        parts.append(
            test.assign(method=name, fold=fold)[["method", "fold", "subject_id", "age", "gap", "gap_corrected"]]
        )
    return pd.concat(parts, ignore_index=True)


def gap_age_correlation(corrected: pd.DataFrame) -> pd.DataFrame:
    """Pearson r of the gap with age, before and after the correction, per method.

    Args:
        corrected: :func:`corrected_out_of_fold`.

    Returns:
        One row per method: ``method``, ``n``, ``r_gap_age``, ``r_corrected_gap_age`` (NaN when
        some fold's correction could not be fitted).
    """
    rows = []
    for name, group in corrected.groupby("method", sort=False):
        after = group["gap_corrected"]
        rows.append(
            {
                "method": name,
                "n": len(group),
                "r_gap_age": float(np.corrcoef(group["age"], group["gap"])[0, 1]),
                "r_corrected_gap_age": float(np.corrcoef(group["age"], after)[0, 1])
                if after.notna().all()
                else math.nan,
            }
        )
    return pd.DataFrame(rows)


def baseline_cv_predictions(
    features: pd.DataFrame, ages: pd.Series, folds: pd.Series, train_subjects: int | None = None
) -> pd.DataFrame:
    """Out-of-fold predictions of ridge regression on ``features`` and of the mean predictor.

    Ridge: standardised features, penalty chosen by leave-one-out inside the training folds
    (scikit-learn ``RidgeCV``). Both are fitted on all non-test folds.

    Args:
        features: one row per subject (index subject_id).
        ages, folds: aligned with ``features``' index.
        train_subjects: fit on this many of the non-test subjects, spread over their ages
            (:func:`~brainage_core.data.training_subset`); ``None``: all.

    Returns:
        Columns ``method`` (``ridge_regions``, ``mean``), ``fold``, ``subject_id``, ``age``, ``predicted_age``.
    """
    parts = []
    for fold in sorted(folds.unique()):
        test, train = (folds == fold).to_numpy(), (folds != fold).to_numpy()
        if train_subjects is not None:
            positions = np.flatnonzero(train)
            train = np.zeros_like(train)
            train[positions[training_subset(ages.to_numpy()[positions], train_subjects)]] = True
        model = volume_ridge().fit(features[train], ages[train])
        for method, predicted in (
            ("ridge_regions", model.predict(features[test])),
            ("mean", np.full(test.sum(), ages[train].mean())),
        ):
            parts.append(
                pd.DataFrame(
                    {
                        "method": method,
                        "fold": fold,
                        "subject_id": features.index[test],
                        "age": ages[test].to_numpy(),
                        "predicted_age": predicted,
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)


def cv_learning_curve(
    config: RunConfig,
    losses: Sequence[str],
    sizes: Sequence[int],
    runs_root: str | os.PathLike[str],
    n_boot: int = N_BOOT,
    progress: bool = False,
    full_runs: Mapping[tuple[str, int], Path] | None = None,
    volumes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Out-of-fold MAE against the number of training subjects: the deep methods and ridge on region volumes.

    For each size ``n`` below the smallest training set of a fold, every fold run trains on ``n``
    of its training subjects spread over their ages (``data.train_subjects``) and selects its
    epoch on its full validation fold; the schedule is step-matched (``train.epoch_size``: an
    epoch cycles the ``n`` subjects up to the smallest full training set), so a small set gets the
    steps of the full one. Ridge is fitted on ``n`` of its non-test subjects the same way. The
    points with every training subject (deep: three folds; ridge: four) are added.

    Args:
        config: the run settings (``data.manifest`` with ``fold`` and ``labels`` columns).
        losses: deep methods ([] for ridge alone).
        sizes: numbers of training subjects.
        runs_root: runs go to ``runs_root/n<size>/<loss>_fold<k>``.
        n_boot: bootstrap resamples for the 95 % intervals (over subjects).
        progress: progress bars.
        full_runs: the full-size runs of every deep method to show (e.g. ``CrossValidation.runs``,
            whose methods may be more than ``losses``); ``None``: :func:`cv_runs` of ``losses``
            with ``config`` into ``runs_root/all`` (reused when they exist).
        volumes: the subjects' region volumes (``CrossValidation.volumes``); ``None``: read from
            the label images (:func:`region_volumes`).

    Returns:
        One row per (method, size): ``method``, ``n_train``, ``mae``, ``mae_low``, ``mae_high``.
    """
    frame = read_manifest(config.data.manifest, check_images="none")
    in_groups = frame["group"].isin(list(config.data.train_groups))
    folds = sorted(int(fold) for fold in frame["fold"].unique())
    n_deep = min(int(((assign_splits(frame, fold) == "train") & in_groups).sum()) for fold in folds)
    n_ridge = min(int(((frame["fold"] != fold) & in_groups).sum()) for fold in folds)
    if volumes is None:
        volumes = region_volumes(list(frame["labels"]), frame["subject_id"])
    indexed = frame.set_index("subject_id").loc[volumes.index]
    parts = []
    for size in sorted({int(size) for size in sizes if int(size) < n_ridge} | {n_ridge}):
        ridge = baseline_cv_predictions(
            volumes, indexed["age"], indexed["fold"], train_subjects=size if size < n_ridge else None
        )
        parts.append(ridge[ridge["method"] == "ridge_regions"].assign(n_train=size))
    for size in sorted({int(size) for size in sizes if int(size) < n_deep} | {n_deep}):
        sized = copy.deepcopy(config)
        if size < n_deep:
            sized.data.train_subjects, sized.train.epoch_size = size, n_deep
        if size == n_deep and full_runs is not None:
            runs = dict(full_runs)
        else:
            runs = cv_runs(sized, losses, Path(runs_root) / (f"n{size}" if size < n_deep else "all"), progress)
        if runs:
            parts.append(out_of_fold_predictions(runs).assign(n_train=size))
    rows = []
    for (method, size), group in pd.concat(parts, ignore_index=True).groupby(["method", "n_train"]):
        result = metrics_with_ci(group["age"], group["predicted_age"], n_boot=n_boot, metrics=("mae",))["mae"]
        rows.append(
            {
                "method": method,
                "n_train": size,
                "mae": result["value"],
                "mae_low": result["ci_low"],
                "mae_high": result["ci_high"],
            }
        )
    return pd.DataFrame(rows)


def cv_summary(predictions: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """MAE, R2 and Pearson r with bootstrap 95% CIs per method, on out-of-fold predictions."""
    rows = []
    for method, group in predictions.groupby("method", sort=False):
        result = metrics_with_ci(
            group["age"].to_numpy(),
            group["predicted_age"].to_numpy(),
            n_boot=n_boot,
            seed=seed,
            metrics=("mae", "r2", "pearson_r"),
        )
        row: dict[str, Any] = {"method": method, "n": len(group)}
        for name, values in result.items():
            row[name] = values["value"]
            row[f"{name}_ci_low"] = values["ci_low"]
            row[f"{name}_ci_high"] = values["ci_high"]
        rows.append(row)
    return pd.DataFrame(rows).sort_values("mae").reset_index(drop=True)


@dataclass
class CrossValidation:
    """The result of :func:`cross_validate`.

    Attributes:
        runs: ``{(loss, fold): run_dir}`` of the deep models.
        predictions: out-of-fold predictions of every method (columns ``method``, ``fold``,
            ``subject_id``, ``age``, ``predicted_age``).
        table: :func:`cv_summary` of ``predictions``, lowest MAE first.
        volumes: the region volumes the ridge baseline was fitted on (:func:`region_volumes`).
    """

    runs: dict[tuple[str, int], Path]
    predictions: pd.DataFrame
    table: pd.DataFrame
    volumes: pd.DataFrame

    @property
    def best_method(self) -> str:
        """The method with the lowest cross-validated MAE."""
        return str(self.table.iloc[0]["method"])

    def mae(self, method: str) -> float:
        """Cross-validated MAE of ``method``; NaN when it was not compared."""
        rows = self.table[self.table["method"] == method]
        return float(rows["mae"].iloc[0]) if len(rows) else math.nan

    def mae_with_ci(self, method: str) -> str:
        """``"MAE (95% CI low-high)"`` of ``method``, in years with two decimals."""
        row = self.table[self.table["method"] == method].iloc[0]
        return f"{row['mae']:.2f} (95% CI {row['mae_ci_low']:.2f}-{row['mae_ci_high']:.2f})"

    def differences(self, reference: str, n_boot: int = N_BOOT) -> pd.DataFrame:
        """Every method's MAE minus ``reference``'s, paired by subject, with 95 % CIs and Holm-corrected p.

        See :func:`~brainage_core.analysis.method_tests.method_differences` (here each method is one
        run: its out-of-fold predictions).
        """
        errors = self.predictions.assign(
            seed=0, abs_error=(self.predictions["predicted_age"] - self.predictions["age"]).abs()
        )
        return method_differences(errors, reference, n_boot=n_boot)


def cross_validate(
    config: RunConfig,
    losses: Sequence[str],
    runs_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    n_boot: int = N_BOOT,
    progress: bool = False,
    runs: Mapping[tuple[str, int], Path] | None = None,
) -> CrossValidation:
    """Deep models and classical baselines on the same folds, summarised and written to ``out_dir``.

    The deep models (:func:`cv_runs`, one per loss and fold, trained only where missing) give
    their out-of-fold predictions; ridge regression on the region volumes of each subject's label
    image (:func:`region_volumes`) and the mean predictor are fitted on the same folds
    (:func:`baseline_cv_predictions`). Writes ``cv_table.csv`` (:func:`cv_summary`) and
    ``cv_predictions.csv`` into ``out_dir``.

    Args:
        config: the run settings; ``data.manifest`` needs ``fold`` and ``labels`` columns.
        losses: deep losses to compare.
        runs_root: folder of the run directories.
        out_dir: where the two tables are written (created).
        n_boot: bootstrap resamples for the confidence intervals.
        progress: show progress bars.
        runs: the deep models' runs when they were chosen elsewhere (e.g. per fold by
            :func:`~brainage_core.analysis.recipes.choose_recipes`); ``losses`` and ``runs_root``
            are then not used to train.

    Returns:
        The runs, the out-of-fold predictions and the summary table.

    Raises:
        ValueError: the manifest has no ``labels`` column (the ridge baseline needs region labels).
    """
    frame = read_manifest(config.data.manifest, check_images="none")
    if "labels" not in frame.columns:
        raise ValueError(
            f"{config.data.manifest}: the ridge baseline needs a 'labels' column of region label images "
            "(import IXI with its seg/ folder)"
        )
    runs = dict(runs) if runs is not None else cv_runs(config, losses, runs_root, progress=progress)
    deep = out_of_fold_predictions(runs)
    volumes = region_volumes(list(frame["labels"]), frame["subject_id"])
    indexed = frame.set_index("subject_id")
    classical = baseline_cv_predictions(volumes, indexed.loc[volumes.index, "age"], indexed.loc[volumes.index, "fold"])
    predictions = pd.concat([deep, classical], ignore_index=True)
    table = cv_summary(predictions, n_boot=n_boot)
    out = Path(out_dir)
    for name, written in (("cv_table.csv", table), ("cv_predictions.csv", predictions)):
        with atomic_path(out / name, suffix=".csv") as temp:
            written.to_csv(temp, index=False)
    return CrossValidation(runs=runs, predictions=predictions, table=table, volumes=volumes)
