"""Differences in test MAE between methods: hierarchical bootstrap over subjects and runs, Holm-corrected.

A method's test MAE varies for two reasons: which subjects happen to be in the test split and
which training run (seed) produced the model. Runs of the same code differ by more than one
might expect (seed, and floating-point differences between CPUs amplified by training), so a
comparison that averages seeds away and resamples only subjects is too confident. Here each
bootstrap resample draws the test subjects with replacement (the same draw for every method:
the comparison stays paired by subject) and, independently for each method, its runs with
replacement; the method's MAE is the mean absolute error over the drawn runs and subjects.
Baselines without seeds (ridge, the mean predictor) are methods with one run.

:func:`method_differences` gives every method's MAE and the difference to a reference with
percentile intervals and two-sided bootstrap p-values, Holm-corrected over all comparisons
(:func:`statsmodels.stats.multitest.multipletests`); :func:`describe_difference` turns one row
into the sentence the book prints (:func:`describe_differences`: every row).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from brainage_core.analysis.metrics import N_BOOT

__all__ = ["describe_difference", "describe_differences", "error_matrices", "method_differences"]

ALPHA = 0.05


def error_matrices(errors: pd.DataFrame) -> tuple[dict[str, np.ndarray], list[str]]:
    """Absolute errors as one ``[runs, subjects]`` matrix per method, on the subjects all methods share.

    Args:
        errors: one row per (``method``, ``seed``, ``subject_id``) with ``abs_error``.

    Returns:
        ``{method: [R_m, S]}`` and the ``S`` subject ids (sorted).

    Raises:
        ValueError: a required column is missing, or the methods share no subject.
    """
    missing = {"method", "seed", "subject_id", "abs_error"} - set(errors.columns)
    if missing:
        raise ValueError(f"errors table lacks column(s) {sorted(missing)}")
    shared = set.intersection(*(set(group["subject_id"]) for _, group in errors.groupby("method")))
    if not shared:
        raise ValueError("the methods share no test subject; compare runs on the same test split")
    subjects = sorted(shared)
    matrices = {
        str(method): group.pivot_table(index="seed", columns="subject_id", values="abs_error")[subjects].to_numpy()
        for method, group in errors.groupby("method")
    }
    return matrices, subjects


def _resampled_mae(matrix: np.ndarray, subject_weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap MAEs ``[B]`` of a ``[R, S]`` error matrix under subject weights ``[B, S]`` (rows sum to 1)."""
    n_runs = matrix.shape[0]
    run_mae = subject_weights @ matrix.T  # run_mae: [B, R]
    run_weights = rng.multinomial(n_runs, np.full(n_runs, 1.0 / n_runs), size=len(subject_weights)) / n_runs
    return (run_mae * run_weights).sum(axis=1)


def method_differences(
    errors: pd.DataFrame,
    reference: str,
    order: Sequence[str] | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Every method's test MAE and its difference to ``reference``, hierarchical bootstrap.

    Args:
        errors: one row per (``method``, ``seed``, ``subject_id``) with ``abs_error``; a method
            with one seed (a baseline) counts as one run.
        reference: the method the others are compared with.
        order: row order (default: by MAE).
        n_boot: bootstrap resamples.
        seed: seed of the resampling.
        level: confidence level of the intervals.

    Returns:
        One row per method: ``method``, ``n_runs``, ``n_subjects``, ``mae`` (mean over runs and
        subjects), ``mae_low``/``mae_high``, and against the reference (NaN on its own row)
        ``difference`` (method minus reference, years: positive means the reference is
        better), ``difference_low``/``difference_high``, ``p`` (two-sided bootstrap),
        ``p_holm`` (Holm-corrected over all compared methods) and ``significant`` (``p_holm`` <
        0.05).
    """
    matrices, subjects = error_matrices(errors)
    if reference not in matrices:
        raise ValueError(f"reference method {reference!r} has no errors; methods: {sorted(matrices)}")
    rng = np.random.default_rng(seed)
    n_subjects = len(subjects)
    subject_weights = rng.multinomial(n_subjects, np.full(n_subjects, 1.0 / n_subjects), size=n_boot) / n_subjects
    boot = {method: _resampled_mae(matrix, subject_weights, rng) for method, matrix in matrices.items()}
    tail = (1.0 - level) / 2.0
    rows = []
    for method, matrix in matrices.items():
        row = {
            "method": method,
            "n_runs": matrix.shape[0],
            "n_subjects": n_subjects,
            "mae": float(matrix.mean()),
            "mae_low": float(np.quantile(boot[method], tail)),
            "mae_high": float(np.quantile(boot[method], 1.0 - tail)),
        }
        if method != reference:
            difference = boot[method] - boot[reference]
            extreme = min((difference <= 0).sum(), (difference >= 0).sum())
            row |= {
                "difference": float(matrix.mean() - matrices[reference].mean()),
                "difference_low": float(np.quantile(difference, tail)),
                "difference_high": float(np.quantile(difference, 1.0 - tail)),
                "p": min(1.0, 2.0 * (extreme + 1) / (n_boot + 1)),
            }
        rows.append(row)
    table = pd.DataFrame(rows)
    compared = table["method"] != reference
    table.loc[compared, "p_holm"] = multipletests(table.loc[compared, "p"], method="holm")[1]
    table["significant"] = (table["p_holm"] < ALPHA).astype("boolean")
    table.loc[~compared, "significant"] = pd.NA
    if order is not None:
        return table.set_index("method").loc[[m for m in order if m in matrices]].reset_index()
    return table.sort_values("mae", ignore_index=True)


def describe_difference(table: pd.DataFrame, reference: str, method: str, names: dict[str, str] | None = None) -> str:
    """One sentence on ``reference`` vs ``method`` from :func:`method_differences`, as measured.

    It gives the direction and size of the MAE difference, its interval and the Holm-corrected
    p-value, and says "not significant" whenever the corrected p-value is not below 0.05.
    """
    names = names or {}
    row = table.set_index("method").loc[method]
    ref_name, other_name = names.get(reference, reference.upper()), names.get(method, method.upper())
    difference = float(row["difference"])
    better, worse = (ref_name, other_name) if difference > 0 else (other_name, ref_name)
    interval = (
        f"95 % CI of {other_name} minus {ref_name}: {row['difference_low']:+.2f} to {row['difference_high']:+.2f} y"
    )
    tested = f"Holm-corrected p = {row['p_holm']:.2g}"
    if row["p_holm"] < ALPHA:
        verdict = f"{better} beats {worse}"
    else:
        verdict = f"not significant: {ref_name} and {other_name} cannot be told apart on these data"
    return (
        f"{better} has a {abs(difference):.2f} y lower test MAE than {worse} ({row['mae']:.2f} vs "
        f"{table.set_index('method').loc[reference, 'mae']:.2f} y for {other_name} vs {ref_name}; {interval}; "
        f"{tested}): {verdict}."
    )


def describe_differences(table: pd.DataFrame, reference: str, names: dict[str, str] | None = None) -> dict[str, str]:
    """:func:`describe_difference` for every method of ``table`` but ``reference``, in table order."""
    return {
        method: describe_difference(table, reference, method, names)
        for method in table["method"]
        if method != reference
    }
