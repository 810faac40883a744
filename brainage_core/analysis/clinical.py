"""The brain-age gap as a clinical biomarker: group differences and disease severity.

All analyses use the bias-corrected gap of :func:`brainage_core.analysis.metrics.corrected_predictions`
on the **analysis sample** (:func:`analysis_sample`): healthy controls of the test split, the
only held-out CN subjects (CN validation rows selected the model and fitted the correction),
plus patients from every split. Patients are never trained on nor used for model selection
(training uses the run's ``data.train_groups``, CN by default), so every patient prediction is
out of sample; a group listed in ``train_groups`` contributes its test rows only.

* :func:`gap_by_group`: OLS ``gap ~ C(group, Treatment('CN')) + age + C(sex)``; each patient
  group's difference from CN with its 95% CI and p, Cohen's d, and group summaries.
* :func:`severity_associations`: within AD (MMSE, CDR) and PD (MDS-UPDRS III, Hoehn & Yahr),
  partial Spearman correlation of gap and score controlling for age and sex, and the OLS slope
  of ``gap ~ score + age + C(sex)``; Benjamini-Hochberg FDR over all scores tested.
* :func:`true_gap_recovery`: on the synthetic cohort, how well the predicted gap recovers the
  latent gap the images were generated with.

:func:`clinical_report` runs all of them for a run folder and writes tables and figures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.stats as st
import seaborn as sns
import statsmodels.api as sm
import statsmodels.formula.api as smf
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from statsmodels.stats.multitest import multipletests

from brainage_core.analysis.metrics import (
    BIAS_CORRECTION,
    HEALTHY_GROUP,
    controls_from_manifest,
    corrected_predictions,
)
from brainage_core.fileio import atomic_path, write_json
from brainage_core.manifest import KNOWN_GROUPS
from brainage_core.ownership import claim
from brainage_core.rundir import read_config, read_predictions

__all__ = [
    "MIN_ASSOCIATION_N",
    "SCORE_LABELS",
    "SEVERITY_SCORES",
    "analysis_sample",
    "clinical_report",
    "gap_by_group",
    "partial_spearman",
    "plot_gap_by_group",
    "plot_gap_vs_score",
    "run_train_groups",
    "severity_associations",
    "true_gap_recovery",
]

SEVERITY_SCORES: dict[str, tuple[str, ...]] = {"AD": ("mmse", "cdr"), "PD": ("updrs3", "hoehn_yahr")}
SCORE_LABELS: dict[str, str] = {
    "mmse": "MMSE",
    "cdr": "CDR (global)",
    "updrs3": "MDS-UPDRS III",
    "hoehn_yahr": "Hoehn & Yahr",
}
MIN_ASSOCIATION_N = 10  # fewer complete cases: the association is reported with NaN statistics, not tested
GROUP_COLUMNS = ["group", "n", "mean_gap", "sd_gap", "difference", "ci_low", "ci_high", "p", "cohen_d"]
SEVERITY_COLUMNS = [
    "group",
    "score",
    "n",
    "partial_spearman",
    "p",
    "p_fdr",
    "ols_slope",
    "ols_ci_low",
    "ols_ci_high",
    "ols_p",
]
CORRELATION_KEYS = ("pearson_r", "pearson_p", "spearman_rho", "spearman_p")
GROUP_TERM = f"C(group, Treatment('{HEALTHY_GROUP}'))"
GAP_LABELS: dict[str, str] = {"gap": "brain-age gap (years)", "gap_corrected": "brain-age gap, bias-corrected (years)"}


def run_train_groups(run_dir: str | os.PathLike[str]) -> tuple[str, ...]:
    """The groups a run was trained and selected on (``data.train_groups`` of ``config.yaml``)."""
    return tuple(read_config(run_dir).data.train_groups)


def analysis_sample(predictions: pd.DataFrame, train_groups: Sequence[str] = (HEALTHY_GROUP,)) -> pd.DataFrame:
    """Rows of held-out subjects: test rows of the training groups and all rows of other groups."""
    in_training_groups = predictions["group"].isin(list(train_groups))
    return predictions[~in_training_groups | (predictions["split"] == "test")]


def _group_order(groups: pd.Series) -> list[str]:
    """CN first, then the known groups present, then any others alphabetically."""
    present = set(groups)
    known = [HEALTHY_GROUP] + [group for group in KNOWN_GROUPS if group != HEALTHY_GROUP]
    ordered = [group for group in known if group in present]
    return ordered + sorted(present - set(ordered))


def _cohen_d(values: np.ndarray, reference: np.ndarray) -> float:
    """Cohen's d of ``values`` against ``reference`` with the pooled standard deviation."""
    n1, n2 = len(values), len(reference)
    pooled = np.sqrt(((n1 - 1) * np.var(values, ddof=1) + (n2 - 1) * np.var(reference, ddof=1)) / (n1 + n2 - 2))
    return float((np.mean(values) - np.mean(reference)) / pooled)


def gap_by_group(
    predictions: pd.DataFrame, gap_column: str = "gap_corrected", train_groups: Sequence[str] = (HEALTHY_GROUP,)
) -> pd.DataFrame:
    """Brain-age gap of each group against CN, adjusted for age and sex.

    Fits ``gap ~ C(group, Treatment('CN')) + age + C(sex)`` by OLS on :func:`analysis_sample`
    (rows missing the gap, age or sex are dropped).

    Args:
        predictions: output of :func:`brainage_core.analysis.metrics.corrected_predictions`.
        gap_column: the gap to analyse (``gap_corrected`` or the raw ``gap``).
        train_groups: the run's training groups (see :func:`analysis_sample`).

    Returns:
        One row per group, CN first: ``group``, ``n``, ``mean_gap``, ``sd_gap``, and for patient
        groups ``difference`` (adjusted difference from CN, years), ``ci_low``, ``ci_high``
        (95%), ``p`` and ``cohen_d`` (unadjusted, pooled SD). ``attrs["formula"]`` is the model.

    Raises:
        ValueError: no CN test rows or no patient rows.
    """
    sample = analysis_sample(predictions, train_groups)[["group", "age", "sex", gap_column]].dropna()
    sample = sample.rename(columns={gap_column: "gap"})
    order = _group_order(sample["group"])
    if HEALTHY_GROUP not in order or len(order) < 2:
        raise ValueError(
            f"predictions: comparing groups needs {HEALTHY_GROUP} test rows and patient rows; found groups {order}"
        )
    formula = f"gap ~ {GROUP_TERM} + age + C(sex)"
    fit = smf.ols(formula, data=sample).fit()
    intervals = fit.conf_int(alpha=0.05)
    reference = sample.loc[sample["group"] == HEALTHY_GROUP, "gap"].to_numpy()
    rows = []
    for group in order:
        values = sample.loc[sample["group"] == group, "gap"].to_numpy()
        row: dict[str, Any] = {
            "group": group,
            "n": len(values),
            "mean_gap": float(np.mean(values)),
            "sd_gap": float(np.std(values, ddof=1)) if len(values) > 1 else np.nan,
        }
        if group != HEALTHY_GROUP:
            term = f"{GROUP_TERM}[T.{group}]"
            row.update(
                difference=float(fit.params[term]),
                ci_low=float(intervals.loc[term, 0]),
                ci_high=float(intervals.loc[term, 1]),
                p=float(fit.pvalues[term]),
                cohen_d=_cohen_d(values, reference) if len(values) > 1 else np.nan,
            )
        rows.append(row)
    table = pd.DataFrame(rows, columns=GROUP_COLUMNS)
    table.attrs["formula"] = formula
    return table


def partial_spearman(x: ArrayLike, y: ArrayLike, covariates: ArrayLike | None = None) -> tuple[float, float]:
    """Spearman correlation of ``x`` and ``y`` controlling for covariates.

    Every variable is rank-transformed; the ranks of ``x`` and ``y`` are regressed on the ranks of
    the covariates (OLS with intercept) and the residuals correlated (Pearson). The p-value is
    two-sided from Student's t with ``n - 2 - k`` degrees of freedom, ``k`` the number of
    covariates; constant covariate columns are dropped first. Without covariates this is
    :func:`scipy.stats.spearmanr`.

    Args:
        x: first variable.
        y: second variable.
        covariates: array ``[n]`` or ``[n, k]``, numeric (code categories as numbers).

    Returns:
        ``(rho, p)``.

    Raises:
        ValueError: unequal lengths, non-finite values, constant ``x`` or ``y``, or too few
            subjects (``n - 2 - k < 1``).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = x.size
    covariates = np.empty((n, 0)) if covariates is None else np.asarray(covariates, dtype=float).reshape(n, -1)
    if y.shape != x.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D arrays of equal length; got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all() and np.isfinite(covariates).all()):
        raise ValueError("partial_spearman: drop rows with missing values first")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise ValueError("partial_spearman: x or y is constant; the correlation is undefined")
    covariates = covariates[:, np.ptp(covariates, axis=0) > 0]
    df = n - 2 - covariates.shape[1]
    if df < 1:
        raise ValueError(f"partial_spearman: {n} subjects are too few for {covariates.shape[1]} covariate(s)")
    design = sm.add_constant(st.rankdata(covariates, axis=0), has_constant="add")
    residual_x = sm.OLS(st.rankdata(x), design).fit().resid
    residual_y = sm.OLS(st.rankdata(y), design).fit().resid
    rho = float(st.pearsonr(residual_x, residual_y).statistic)
    with np.errstate(divide="ignore"):  # |rho| = 1 gives t = inf and p = 0
        t = rho * np.sqrt(df / (1.0 - rho**2))
    return rho, float(2 * st.t.sf(abs(t), df))


def severity_associations(
    predictions: pd.DataFrame,
    gap_column: str = "gap_corrected",
    scores: Mapping[str, Sequence[str]] = SEVERITY_SCORES,
    train_groups: Sequence[str] = (HEALTHY_GROUP,),
) -> pd.DataFrame:
    """Association of the gap with disease severity within each patient group.

    For each ``group -> score`` of ``scores`` whose group has rows in :func:`analysis_sample`:
    :func:`partial_spearman` of gap and score controlling for age and sex (coded 0/1), and the
    OLS ``gap ~ score + age + C(sex)`` slope (years of gap per score point) with its 95% CI.
    Pairs with fewer than :data:`MIN_ASSOCIATION_N` complete cases, or a constant score, keep a
    row with NaN statistics and are not tested. ``p_fdr`` is the Benjamini-Hochberg adjustment
    of the partial-Spearman p over all pairs tested.

    Returns:
        Columns ``group, score, n, partial_spearman, p, p_fdr, ols_slope, ols_ci_low,
        ols_ci_high, ols_p``.
    """
    sample = analysis_sample(predictions, train_groups)
    rows = []
    for group, group_scores in scores.items():
        in_group = sample[sample["group"] == group]
        if in_group.empty:
            continue
        for score in group_scores:
            row: dict[str, Any] = {"group": group, "score": score, "n": 0}
            if score in in_group.columns:
                data = in_group[[gap_column, score, "age", "sex"]].dropna()
                data = data.rename(columns={gap_column: "gap", score: "score"})
                row["n"] = len(data)
                if len(data) >= MIN_ASSOCIATION_N and data["score"].nunique() > 1:
                    covariates = np.column_stack([data["age"], (data["sex"] == "M").astype(float)])
                    row["partial_spearman"], row["p"] = partial_spearman(data["gap"], data["score"], covariates)
                    fit = smf.ols("gap ~ score + age + C(sex)", data=data).fit()
                    low, high = fit.conf_int(alpha=0.05).loc["score"]
                    row.update(
                        ols_slope=float(fit.params["score"]),
                        ols_ci_low=float(low),
                        ols_ci_high=float(high),
                        ols_p=float(fit.pvalues["score"]),
                    )
            rows.append(row)
    table = pd.DataFrame(rows, columns=SEVERITY_COLUMNS)
    tested = table["p"].notna()
    if tested.any():
        table.loc[tested, "p_fdr"] = multipletests(table.loc[tested, "p"].to_numpy(), method="fdr_bh")[1]
    return table


def _correlations(x: pd.Series, y: pd.Series) -> dict[str, float | None]:
    """Pearson and Spearman correlations with p-values; ``None`` when n < 3 or a variable is constant."""
    result: dict[str, float | None] = {"n": len(x), **dict.fromkeys(CORRELATION_KEYS)}
    if len(x) >= 3 and x.nunique() > 1 and y.nunique() > 1:
        pearson, spearman = st.pearsonr(x, y), st.spearmanr(x, y)
        result.update(
            pearson_r=float(pearson.statistic),
            pearson_p=float(pearson.pvalue),
            spearman_rho=float(spearman.statistic),
            spearman_p=float(spearman.pvalue),
        )
    return result


def true_gap_recovery(
    predictions: pd.DataFrame, gap_column: str = "gap_corrected", train_groups: Sequence[str] = (HEALTHY_GROUP,)
) -> dict[str, Any]:
    """Correlation of the predicted gap with the latent ``true_gap`` (synthetic cohort only).

    Computed on :func:`analysis_sample`, overall and per group. Within a group whose true gap is
    constant (e.g. CN simulated with no gap) the correlations are ``None`` (undefined).

    Returns:
        ``{"gap_column", "overall": {...}, "by_group": {group: {...}}}``, each ``{...}`` with
        ``n``, ``pearson_r``, ``pearson_p``, ``spearman_rho``, ``spearman_p``.

    Raises:
        ValueError: there is no ``true_gap`` column or it is empty.
    """
    if "true_gap" not in predictions.columns or predictions["true_gap"].isna().all():
        raise ValueError("predictions: no 'true_gap' values; only the synthetic cohort (brainage synth) has them")
    sample = analysis_sample(predictions, train_groups)[["group", "true_gap", gap_column]].dropna()
    return {
        "gap_column": gap_column,
        "overall": _correlations(sample[gap_column], sample["true_gap"]),
        "by_group": {
            group: _correlations(rows[gap_column], rows["true_gap"]) for group, rows in sample.groupby("group")
        },
    }


def plot_gap_by_group(
    predictions: pd.DataFrame,
    gap_column: str = "gap_corrected",
    train_groups: Sequence[str] = (HEALTHY_GROUP,),
    ax: Axes | None = None,
) -> Axes:
    """Box and strip plot of the gap per group on :func:`analysis_sample`, with each group's n."""
    sample = analysis_sample(predictions, train_groups).dropna(subset=[gap_column])
    order = _group_order(sample["group"])
    if ax is None:
        _, ax = plt.subplots(figsize=(2 + 1.4 * len(order), 4))
    sns.boxplot(data=sample, x="group", y=gap_column, order=order, color="white", showfliers=False, ax=ax)
    sns.stripplot(data=sample, x="group", y=gap_column, order=order, color="black", alpha=0.5, size=3, ax=ax)
    ax.axhline(0.0, color="grey", linestyle="--", linewidth=1)
    counts = sample["group"].value_counts()
    ax.set_xticks(range(len(order)), [f"{group}\n(n={counts[group]})" for group in order])
    ax.set_xlabel("")
    ax.set_ylabel(GAP_LABELS.get(gap_column, gap_column))
    return ax


def plot_gap_vs_score(
    predictions: pd.DataFrame,
    group: str,
    score: str,
    gap_column: str = "gap_corrected",
    train_groups: Sequence[str] = (HEALTHY_GROUP,),
    ax: Axes | None = None,
) -> Axes:
    """Scatter of gap against a clinical score within one group, with the OLS line and its 95% band.

    The line is the unadjusted fit ``gap ~ score`` (:func:`seaborn.regplot`); the age- and
    sex-adjusted statistics are in :func:`severity_associations`. Discrete scores (6 values or
    fewer) are jittered horizontally for display only.

    Raises:
        ValueError: fewer than 3 rows of ``group`` have both the gap and the score.
    """
    if score not in predictions.columns:
        raise ValueError(f"predictions: no column '{score}'")
    sample = analysis_sample(predictions, train_groups)
    data = sample.loc[sample["group"] == group, [score, gap_column]].dropna()
    if len(data) < 3:
        raise ValueError(f"predictions: {len(data)} {group} row(s) have both '{score}' and '{gap_column}'; need 3")
    values = np.unique(data[score])
    jitter = 0.15 * float(np.min(np.diff(values))) if 1 < len(values) <= 6 else 0.0
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    sns.regplot(
        data=data,
        x=score,
        y=gap_column,
        x_jitter=jitter,
        seed=0,
        ax=ax,
        scatter_kws={"s": 12, "alpha": 0.6},
        line_kws={"color": "C3"},
    )
    ax.axhline(0.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(SCORE_LABELS.get(score, score))
    ax.set_ylabel(GAP_LABELS.get(gap_column, gap_column))
    ax.set_title(f"{group} (n={len(data)})")
    return ax


def _save_figure(figure: Figure, destination: Path) -> None:
    claim(destination.parent, [destination.name])
    with atomic_path(destination, suffix=destination.suffix) as temp:
        figure.savefig(temp, dpi=150, bbox_inches="tight")
    plt.close(figure)


def _write_csv(table: pd.DataFrame, destination: Path) -> None:
    claim(destination.parent, [destination.name])
    with atomic_path(destination, suffix=".csv") as temp:
        table.to_csv(temp, index=False)


def clinical_report(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    method: str = BIAS_CORRECTION,
    controls_manifest: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run the clinical analyses of a run on its bias-corrected gap and write tables and figures.

    The correction is that of :func:`brainage_core.analysis.metrics.evaluate_run` with the same
    ``method`` and ``controls_manifest``. Writes into ``out_dir`` (default ``RUN_DIR/clinical``):
    ``gap_by_group.csv``, ``severity_associations.csv``, ``gap_by_group.png``, one
    ``gap_vs_<score>.png`` per tested score, and ``true_gap_recovery.json`` (corrected and raw
    gap) when the predictions have ``true_gap``.

    Returns:
        ``out_dir``, ``files`` (names written), ``train_groups``, ``bias_correction``,
        ``formula``, the two tables as records, and ``true_gap_recovery`` (or ``None``).
    """
    run_dir = Path(run_dir)
    out_dir = run_dir / "clinical" if out_dir is None else Path(out_dir)
    predictions = read_predictions(run_dir)
    fit_mask = None if controls_manifest is None else controls_from_manifest(predictions, controls_manifest)
    corrected = corrected_predictions(predictions, method=method, fit_mask=fit_mask)
    train_groups = run_train_groups(run_dir)

    groups = gap_by_group(corrected, train_groups=train_groups)
    severity = severity_associations(corrected, train_groups=train_groups)
    _write_csv(groups, out_dir / "gap_by_group.csv")
    _write_csv(severity, out_dir / "severity_associations.csv")
    files = ["gap_by_group.csv", "severity_associations.csv"]

    recovery = None
    if "true_gap" in corrected.columns and corrected["true_gap"].notna().any():
        recovery = {column: true_gap_recovery(corrected, column, train_groups) for column in ("gap_corrected", "gap")}
        claim(out_dir, ["true_gap_recovery.json"])
        write_json(out_dir / "true_gap_recovery.json", recovery)
        files.append("true_gap_recovery.json")

    _save_figure(plot_gap_by_group(corrected, train_groups=train_groups).figure, out_dir / "gap_by_group.png")
    files.append("gap_by_group.png")
    for row in severity[severity["partial_spearman"].notna()].itertuples():
        name = f"gap_vs_{row.score}.png"
        ax = plot_gap_vs_score(corrected, row.group, row.score, train_groups=train_groups)
        _save_figure(ax.figure, out_dir / name)
        files.append(name)
    return {
        "out_dir": str(out_dir),
        "files": files,
        "train_groups": list(train_groups),
        "bias_correction": asdict(corrected.attrs["bias_correction"]),
        "formula": groups.attrs["formula"],
        "gap_by_group": groups.to_dict("records"),
        "severity_associations": severity.to_dict("records"),
        "true_gap_recovery": recovery,
    }
