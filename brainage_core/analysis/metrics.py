"""Brain-age accuracy: metrics with bootstrap intervals and the age-bias correction.

A brain-age model regresses towards the mean age of its training set: the young are predicted
older and the old younger, so the raw brain-age gap (``predicted - age``) correlates negatively
with age. Two standard linear corrections remove that bias:

* ``cole`` (de Lange & Cole 2020): fit ``predicted = a * age + b``; corrected
  ``predicted' = (predicted - b) / a``.
* ``beheshti`` (Beheshti et al. 2019): fit ``gap = a * age + b``; corrected
  ``gap' = gap - (a * age + b)``, i.e. ``predicted' = predicted - (a * age + b)``.

Both use the chronological age, so they are fitted on **healthy validation subjects only**
(group CN, split ``val``: never seen in training, not the test set) and applied to everyone.
:func:`corrected_predictions` is the single place that chooses the fit rows and it refuses
patients and test rows. :func:`brainage_core.analysis.evaluation.evaluate_run` applies all of
this to a run.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats as st
from numpy.typing import ArrayLike
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

from brainage_core.manifest import read_manifest
from brainage_core.rundir import PREDICTION_COLUMNS

__all__ = [
    "DEFAULT_AGE_EDGES",
    "HEALTHY_GROUP",
    "METRICS",
    "BiasCorrection",
    "bootstrap_ci",
    "controls_from_manifest",
    "corrected_predictions",
    "fit_bias_correction",
    "healthy_test_rows",
    "mae_by_age_band",
    "metrics_with_ci",
    "prediction_consistency",
    "regression_metrics",
    "select_correction_subjects",
]

HEALTHY_GROUP = "CN"
METHODS: tuple[str, ...] = ("cole", "beheshti")
DEFAULT_AGE_EDGES: tuple[float, ...] = (-math.inf, 20, 30, 40, 50, 60, 70, 80, 90, math.inf)
N_BOOT = 2000  # bootstrap resamples of every confidence interval
BIAS_CORRECTION = "cole"  # age-bias correction: cole (de Lange & Cole 2020) or beheshti
BOOTSTRAP_BATCH = 500  # resamples evaluated at once: bounds memory to 500 x n values per array


def _rowwise(score: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Turn a scikit-learn ``score(y_true, y_pred, multioutput=...)`` into a row-wise metric."""

    def metric(age: np.ndarray, predicted: np.ndarray, axis: int = -1) -> np.ndarray:
        age, predicted = np.moveaxis(age, axis, -1), np.moveaxis(predicted, axis, -1)
        columns = score(
            age.reshape(-1, age.shape[-1]).T, predicted.reshape(-1, age.shape[-1]).T, multioutput="raw_values"
        )
        return columns.reshape(age.shape[:-1])

    return metric


def _pearson_r(age: np.ndarray, predicted: np.ndarray, axis: int = -1) -> np.ndarray:
    return st.pearsonr(age, predicted, axis=axis).statistic


def _spearman_gap_age(age: np.ndarray, predicted: np.ndarray, axis: int = -1) -> np.ndarray:
    # Spearman's rho is Pearson's r of the (average) ranks; ranking along ``axis`` vectorises it.
    ranks_gap = st.rankdata(predicted - age, axis=axis)
    return st.pearsonr(ranks_gap, st.rankdata(age, axis=axis), axis=axis).statistic


def _mean_gap(age: np.ndarray, predicted: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(predicted - age, axis=axis)


# Every metric takes (age, predicted, axis) and reduces along ``axis``, so the bootstrap
# evaluates a whole batch of resamples in one call.
METRICS: dict[str, Callable[..., np.ndarray]] = {
    "mae": _rowwise(mean_absolute_error),
    "rmse": _rowwise(root_mean_squared_error),
    "r2": _rowwise(r2_score),
    "pearson_r": _pearson_r,
    "spearman_gap_age": _spearman_gap_age,  # age bias: negative when the model regresses to the mean
    "mean_gap": _mean_gap,
}


def _as_pair(age: ArrayLike, predicted: ArrayLike, minimum: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Validate two equal-length, finite 1-D arrays of at least ``minimum`` values."""
    age, predicted = np.asarray(age, dtype=float), np.asarray(predicted, dtype=float)
    if age.ndim != 1 or age.shape != predicted.shape:
        raise ValueError(
            f"age and predicted must be 1-D arrays of equal length; got shapes {age.shape} and {predicted.shape}"
        )
    if age.size < minimum:
        raise ValueError(f"need at least {minimum} subjects; got {age.size}")
    if not (np.isfinite(age).all() and np.isfinite(predicted).all()):
        raise ValueError("age and predicted must be finite: drop rows with missing ages or predictions first")
    return age, predicted


def regression_metrics(age: ArrayLike, predicted: ArrayLike) -> dict[str, float]:
    """Accuracy of predicted ages.

    Args:
        age: chronological ages.
        predicted: predicted (brain) ages, same order.

    Returns:
        ``n``; ``mae``, ``rmse`` and ``r2`` (scikit-learn); ``pearson_r`` between age and
        prediction; ``spearman_gap_age``, Spearman's rho between the gap (predicted - age) and
        age, which exposes the age bias; ``mean_gap``.
    """
    age, predicted = _as_pair(age, predicted)
    return {"n": int(age.size), **{name: float(metric(age, predicted)) for name, metric in METRICS.items()}}


def bootstrap_ci(
    age: ArrayLike,
    predicted: ArrayLike,
    metric: str | Callable[[np.ndarray, np.ndarray], float] = "mae",
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of a metric, resampling subjects.

    Subjects (pairs of age and prediction) are drawn with replacement with
    :func:`scipy.stats.bootstrap`; each array element counts as one subject.

    Args:
        age: chronological ages.
        predicted: predicted ages.
        metric: a key of :data:`METRICS` (evaluated vectorised over resamples) or a function
            ``f(age, predicted) -> float`` (evaluated once per resample).
        n_boot: number of resamples.
        seed: seed of the resampling; the same seed gives the same interval, and every metric
            bootstrapped with the same seed and data sees the same resamples.
        level: confidence level.

    Returns:
        ``(low, high)``.
    """
    age, predicted = _as_pair(age, predicted)
    statistic: Callable[..., np.ndarray | float]
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)} or pass a function")
        statistic, vectorized = METRICS[metric], True
    else:
        statistic, vectorized = metric, False
    result = st.bootstrap(
        (age, predicted),
        statistic,
        n_resamples=n_boot,
        batch=BOOTSTRAP_BATCH,
        vectorized=vectorized,
        paired=True,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def metrics_with_ci(
    age: ArrayLike,
    predicted: ArrayLike,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
    metrics: Sequence[str] = tuple(METRICS),
) -> dict[str, dict[str, float]]:
    """Each metric's value with its percentile-bootstrap interval (see :func:`bootstrap_ci`).

    All metrics are bootstrapped with the same seed, hence on the same resamples.

    Returns:
        ``{name: {"value": ..., "ci_low": ..., "ci_high": ...}}`` for each name in ``metrics``.
    """
    values = regression_metrics(age, predicted)
    table = {}
    for name in metrics:
        low, high = bootstrap_ci(age, predicted, name, n_boot=n_boot, seed=seed, level=level)
        table[name] = {"value": values[name], "ci_low": low, "ci_high": high}
    return table


@dataclass(frozen=True)
class BiasCorrection:
    """A fitted linear age-bias correction.

    Attributes:
        method: ``cole`` (slope/intercept of predicted on age) or ``beheshti`` (of gap on age).
        slope: fitted slope ``a``.
        intercept: fitted intercept ``b``.
        n: number of subjects it was fitted on.
    """

    method: str
    slope: float
    intercept: float
    n: int

    def apply(self, age: ArrayLike, predicted: ArrayLike) -> np.ndarray:
        """Return bias-corrected predicted ages (subtract ``age`` for the corrected gap)."""
        age, predicted = np.asarray(age, dtype=float), np.asarray(predicted, dtype=float)
        if self.method == "cole":
            return (predicted - self.intercept) / self.slope
        return predicted - (self.slope * age + self.intercept)


def fit_bias_correction(age: ArrayLike, predicted: ArrayLike, method: str = BIAS_CORRECTION) -> BiasCorrection:
    """Fit an age-bias correction by least squares (:func:`scipy.stats.linregress`).

    Pass healthy subjects that the model was not trained on (normally CN validation rows; see
    :func:`corrected_predictions`, which chooses them for a run).

    Args:
        age: chronological ages.
        predicted: predicted ages.
        method: ``cole`` or ``beheshti`` (see the module docstring).

    Raises:
        ValueError: unknown method, fewer than 3 subjects, non-finite values, all ages equal, or
            (``cole``) a non-positive slope, which the division cannot undo.
    """
    if method not in METHODS:
        raise ValueError(f"unknown bias-correction method {method!r}; choose one of {list(METHODS)}")
    age, predicted = _as_pair(age, predicted, minimum=3)
    if np.ptp(age) == 0:
        raise ValueError(f"all {age.size} bias-correction subjects have age {age[0]:g}: the age slope is undefined")
    target = predicted if method == "cole" else predicted - age
    fit = st.linregress(age, target)
    if method == "cole" and fit.slope <= 0:
        raise ValueError(
            f"predicted age does not increase with age on the correction subjects (slope {fit.slope:.3g}): "
            "the 'cole' correction would divide by it; check the model or use method='beheshti'"
        )
    return BiasCorrection(method=method, slope=float(fit.slope), intercept=float(fit.intercept), n=int(age.size))


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; present: {list(frame.columns)}")


def select_correction_subjects(
    predictions: pd.DataFrame, groups: Sequence[str] = (HEALTHY_GROUP,), split: str = "val"
) -> pd.Series:
    """Boolean mask of the rows a bias correction is fitted on: ``group`` in ``groups`` and ``split``."""
    _require_columns(predictions, ("group", "split"), "predictions")
    return predictions["group"].isin(list(groups)) & (predictions["split"] == split)


def healthy_test_rows(predictions: pd.DataFrame) -> pd.DataFrame:
    """Rows of healthy controls in the test split."""
    return predictions[(predictions["group"] == HEALTHY_GROUP) & (predictions["split"] == "test")]


def controls_from_manifest(predictions: pd.DataFrame, manifest: str | os.PathLike[str]) -> pd.Series:
    """Mask of the prediction rows whose subject is a CN row of another manifest.

    The manifest is validated like any manifest (images are not opened). Only its ``group ==
    "CN"`` rows count; each of their subject IDs must appear in ``predictions``. Rows of those
    subjects in any split are selected; :func:`corrected_predictions` then refuses the mask if it
    reaches a patient or a test row. Rows of the ``train`` split are allowed, but the network
    fitted them: they usually show less age bias than unseen subjects, so the correction
    under-corrects. Prefer controls the model never trained on.

    Raises:
        ValueError: the manifest has no CN rows, or lists CN subjects absent from ``predictions``.
    """
    frame = read_manifest(manifest, check_images="none")
    subjects = set(frame.loc[frame["group"] == HEALTHY_GROUP, "subject_id"])
    if not subjects:
        raise ValueError(
            f"{manifest}: no rows with group {HEALTHY_GROUP}; the controls manifest defines the correction set"
        )
    missing = sorted(subjects - set(predictions["subject_id"].astype(str)))
    if missing:
        raise ValueError(
            f"{manifest}: {len(missing)} CN subject(s) have no prediction in the run (e.g. {missing[:5]}); "
            "the correction subjects must be in the run's manifest"
        )
    return predictions["subject_id"].astype(str).isin(subjects)


def corrected_predictions(
    predictions: pd.DataFrame, method: str = BIAS_CORRECTION, fit_mask: pd.Series | np.ndarray | None = None
) -> pd.DataFrame:
    """Fit the age-bias correction on healthy non-test rows and apply it to every row.

    Args:
        predictions: a run's ``predictions.csv`` as read by :func:`read_predictions`.
        method: ``cole`` or ``beheshti``.
        fit_mask: rows to fit on; default :func:`select_correction_subjects` (CN and ``val``).
            Any mask reaching a non-CN row or a ``test`` row is refused.

    Returns:
        A copy with ``gap`` (predicted - age), ``predicted_age_corrected``, ``gap_corrected`` and
        ``used_for_correction`` columns; ``attrs["bias_correction"]`` holds the
        :class:`BiasCorrection`.

    Raises:
        ValueError: no fit rows, fit rows that are patients or test rows, or a failed fit.
    """
    _require_columns(predictions, PREDICTION_COLUMNS, "predictions")
    if fit_mask is None:
        fit_mask = select_correction_subjects(predictions)
    if isinstance(fit_mask, pd.Series):
        fit_mask = fit_mask.reindex(predictions.index, fill_value=False).astype(bool)
    else:
        fit_mask = pd.Series(np.asarray(fit_mask, dtype=bool), index=predictions.index)
    forbidden = fit_mask & ((predictions["group"] != HEALTHY_GROUP) | (predictions["split"] == "test"))
    if forbidden.any():
        examples = predictions.loc[forbidden, ["subject_id", "group", "split"]].head(5).to_dict("records")
        raise ValueError(
            f"the bias correction may only be fitted on {HEALTHY_GROUP} rows outside the test split; "
            f"{int(forbidden.sum())} selected row(s) are patients or test rows, e.g. {examples}"
        )
    if not fit_mask.any():
        raise ValueError(
            f"predictions: no rows to fit the age-bias correction on (by default the {HEALTHY_GROUP} rows of the "
            "'val' split); give the manifest a validation split or pass a controls manifest"
        )
    fit_rows = predictions[fit_mask]
    correction = fit_bias_correction(fit_rows["age"], fit_rows["predicted_age"], method)
    result = predictions.copy()
    result["gap"] = result["predicted_age"] - result["age"]
    result["predicted_age_corrected"] = correction.apply(result["age"], result["predicted_age"])
    result["gap_corrected"] = result["predicted_age_corrected"] - result["age"]
    result["used_for_correction"] = fit_mask
    result.attrs["bias_correction"] = correction
    return result


def mae_by_age_band(
    age: ArrayLike,
    predicted: ArrayLike,
    edges: Sequence[float] = DEFAULT_AGE_EDGES,
) -> pd.DataFrame:
    """MAE and mean gap per age band: regression to the mean shows as positive then negative gaps.

    Args:
        age: chronological ages.
        predicted: predicted ages.
        edges: increasing band edges; bands are ``[lower, upper)``. The default adds open bands
            below 20 and from 90 up.

    Returns:
        One row per band (empty bands kept with ``n = 0``): ``band`` (e.g. ``"60-70"``,
        ``"<20"``, ``">=90"``), ``n``, ``mae``, ``mean_gap``.

    Raises:
        ValueError: edges not increasing, or ages outside ``[edges[0], edges[-1])``.
    """
    age, predicted = _as_pair(age, predicted, minimum=1)
    edges = [float(edge) for edge in edges]
    if len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"age-band edges must be at least two strictly increasing values; got {edges}")
    labels = [
        f"<{upper:g}" if lower == -math.inf else f">={lower:g}" if upper == math.inf else f"{lower:g}-{upper:g}"
        for lower, upper in itertools.pairwise(edges)
    ]
    bands = pd.cut(age, edges, right=False, labels=labels)
    outside = int(pd.isna(bands).sum())
    if outside:
        raise ValueError(f"{outside} age(s) fall outside the band edges [{edges[0]:g}, {edges[-1]:g}); widen the edges")
    gap = predicted - age
    frame = pd.DataFrame({"band": bands, "abs_error": np.abs(gap), "gap": gap})
    table = frame.groupby("band", observed=False).agg(
        n=("gap", "size"), mae=("abs_error", "mean"), mean_gap=("gap", "mean")
    )
    table = table.reset_index()
    table["band"] = table["band"].astype(str)
    return table


def prediction_consistency(predictions_per_augmentation: np.ndarray) -> dict[str, float]:
    """How much a scan's predicted age moves under test-time augmentation.

    Args:
        predictions_per_augmentation: array ``[n_subjects, n_augmentations]`` of predicted ages,
            one row per scan, one column per augmented copy of it.

    Returns:
        ``n_subjects``, ``n_augmentations`` and the ``mean_sd``, ``median_sd`` and ``max_sd``
        (years) of the per-subject standard deviations (``ddof=1``).
    """
    values = np.asarray(predictions_per_augmentation, dtype=float)
    if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 2:
        raise ValueError(f"need an array [n_subjects >= 1, n_augmentations >= 2]; got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("augmented predictions must be finite")
    spread = np.std(values, axis=1, ddof=1)
    return {
        "n_subjects": int(values.shape[0]),
        "n_augmentations": int(values.shape[1]),
        "mean_sd": float(np.mean(spread)),
        "median_sd": float(np.median(spread)),
        "max_sd": float(np.max(spread)),
    }
