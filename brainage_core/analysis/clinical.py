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
  partial Spearman correlation (:mod:`~brainage_core.analysis.correlation`) of gap and score
  controlling for age and sex, and the OLS slope of ``gap ~ score + age + C(sex)``;
  Benjamini-Hochberg FDR over all scores tested.
* :func:`true_gap_recovery`: on the synthetic cohort, how well the predicted gap recovers the
  latent gap the images were generated with, overall and within each group;
  :func:`measured_and_latent_gaps` sets each group's measured difference beside the latent one.

:func:`clinical_report` runs all of them for a run folder, writes tables and figures and returns
them; :func:`accuracy_table` and :func:`clinical_values` condense reports for display.
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
import seaborn as sns
import statsmodels.formula.api as smf
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from statsmodels.stats.multitest import multipletests

from brainage_core.analysis.correlation import correlations, partial_spearman
from brainage_core.analysis.evaluation import evaluate_run
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
    "accuracy_table",
    "analysis_sample",
    "clinical_report",
    "clinical_values",
    "gap_by_group",
    "measured_and_latent_gaps",
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
ACCURACY_METRICS = ("mae", "r2", "pearson_r", "spearman_gap_age")  # the rows of accuracy_table, per model
VALUE_WITH_CI = "{value:.3f} [{ci_low:.3f}, {ci_high:.3f}]"
GROUP_COLUMNS = ["group", "n", "mean_gap", "sd_gap", "difference", "ci_low", "ci_high", "p", "cohen_d"]
ASSOCIATION_COLUMNS = ["group", "score", "n", "partial_spearman", "p", "p_fdr"]
SEVERITY_COLUMNS = [*ASSOCIATION_COLUMNS, "ols_slope", "ols_ci_low", "ols_ci_high", "ols_p"]
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
    """Cohen's d of ``values`` against ``reference`` with the pooled standard deviation (NaN
    without two degrees of freedom, e.g. a single age-matched control)."""
    n1, n2 = len(values), len(reference)
    if n1 == 0 or n2 == 0 or n1 + n2 < 3:
        return float("nan")
    squares = float(((values - values.mean()) ** 2).sum() + ((reference - reference.mean()) ** 2).sum())
    pooled = np.sqrt(squares / (n1 + n2 - 2))
    return float((values.mean() - reference.mean()) / pooled) if pooled > 0 else float("nan")


def _group_comparison_sample(predictions: pd.DataFrame, gap_column: str, train_groups: Sequence[str]) -> pd.DataFrame:
    """The rows groups are compared on: :func:`analysis_sample` rows with a group, age, sex and gap
    (only those columns), controls outside the patients' age range dropped. A corrected gap keeps
    some nonlinear age bias, which a linear age term cannot remove when controls span ages no
    patient has."""
    sample = analysis_sample(predictions, train_groups)[["group", "age", "sex", gap_column]].dropna()
    patients = sample[sample["group"] != HEALTHY_GROUP]
    if patients.empty:
        return sample
    low, high = patients["age"].min(), patients["age"].max()
    return sample[(sample["group"] != HEALTHY_GROUP) | sample["age"].between(low, high)]


def gap_by_group(
    predictions: pd.DataFrame, gap_column: str = "gap_corrected", train_groups: Sequence[str] = (HEALTHY_GROUP,)
) -> pd.DataFrame:
    """Brain-age gap of each group against CN, adjusted for age and sex.

    Fits ``gap ~ C(group, Treatment('CN')) + age + C(sex)`` by OLS on :func:`analysis_sample`
    (rows missing the gap, age or sex are dropped), with the controls restricted to the patients'
    age range (age-matched: controls younger than every patient carry a different residual age
    bias).

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
    sample = _group_comparison_sample(predictions, gap_column, train_groups).rename(columns={gap_column: "gap"})
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
        "overall": correlations(sample[gap_column], sample["true_gap"]),
        "by_group": {
            group: correlations(rows[gap_column], rows["true_gap"]) for group, rows in sample.groupby("group")
        },
    }


def plot_gap_by_group(
    predictions: pd.DataFrame,
    gap_column: str = "gap_corrected",
    train_groups: Sequence[str] = (HEALTHY_GROUP,),
    ax: Axes | None = None,
) -> Axes:
    """Box and strip plot of the gap per group, with each group's n: the sample :func:`gap_by_group`
    compares (controls restricted to the patients' age range)."""
    sample = _group_comparison_sample(predictions, gap_column, train_groups)
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


def _save_figure(axes: Axes, destination: Path) -> None:
    """Save the figure holding ``axes`` as a file the project owns, then close it."""
    figure = axes.get_figure(root=True)
    if not isinstance(figure, Figure):
        raise ValueError(f"{destination.name}: the plot is not on a figure")
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
    n_boot: int | None = None,
) -> dict[str, Any]:
    """Run the clinical analyses of a run on its bias-corrected gap and write tables and figures.

    The correction is that of :func:`brainage_core.analysis.evaluation.evaluate_run` with the same
    ``method`` and ``controls_manifest``. Writes into ``out_dir`` (default ``RUN_DIR/clinical``):
    ``gap_by_group.csv``, ``severity_associations.csv``, ``gap_by_group.png``, one
    ``gap_vs_<score>.png`` per tested score, and ``true_gap_recovery.json`` (corrected and raw
    gap) and ``true_gap_by_group.csv`` (:func:`gap_by_group` of the latent gap on the same sample:
    the truth the measured differences are set beside) when the predictions have ``true_gap``.
    With ``n_boot``, it also runs
    :func:`~brainage_core.analysis.evaluation.evaluate_run` with that many bootstrap resamples (which
    writes ``RUN_DIR/metrics.json`` and ``RUN_DIR/predictions_corrected.csv``).

    Returns:
        ``out_dir``, ``files`` (names written), ``train_groups``, ``bias_correction``,
        ``formula``, ``predictions`` (the corrected predictions analysed), the tables
        ``gap_by_group`` and ``severity_associations`` (DataFrames, as written),
        ``true_gap_recovery`` (``{"gap_corrected": ..., "gap": ...}`` of
        :func:`true_gap_recovery`, or ``None``), ``true_gap_by_group`` (or ``None``) and ``evaluation`` (the report of ``evaluate_run``
        with ``n_boot``, else ``None``; :func:`accuracy_table` formats it).
    """
    run_dir = Path(run_dir)
    out_dir = run_dir / "clinical" if out_dir is None else Path(out_dir)
    evaluation = None
    if n_boot is not None:
        evaluation = evaluate_run(run_dir, controls_manifest=controls_manifest, method=method, n_boot=n_boot)
    predictions = read_predictions(run_dir)
    fit_mask = None if controls_manifest is None else controls_from_manifest(predictions, controls_manifest)
    corrected = corrected_predictions(predictions, method=method, fit_mask=fit_mask)
    train_groups = run_train_groups(run_dir)

    groups = gap_by_group(corrected, train_groups=train_groups)
    severity = severity_associations(corrected, train_groups=train_groups)
    _write_csv(groups, out_dir / "gap_by_group.csv")
    _write_csv(severity, out_dir / "severity_associations.csv")
    files = ["gap_by_group.csv", "severity_associations.csv"]

    recovery = latent = None
    if "true_gap" in corrected.columns and corrected["true_gap"].notna().any():
        recovery = {column: true_gap_recovery(corrected, column, train_groups) for column in ("gap_corrected", "gap")}
        latent = gap_by_group(corrected, gap_column="true_gap", train_groups=train_groups)
        claim(out_dir, ["true_gap_recovery.json", "true_gap_by_group.csv"])
        write_json(out_dir / "true_gap_recovery.json", recovery)
        _write_csv(latent, out_dir / "true_gap_by_group.csv")
        files += ["true_gap_recovery.json", "true_gap_by_group.csv"]

    _save_figure(plot_gap_by_group(corrected, train_groups=train_groups), out_dir / "gap_by_group.png")
    files.append("gap_by_group.png")
    for row in severity[severity["partial_spearman"].notna()].itertuples():
        name = f"gap_vs_{row.score}.png"
        ax = plot_gap_vs_score(corrected, row.group, row.score, train_groups=train_groups)
        _save_figure(ax, out_dir / name)
        files.append(name)
    return {
        "out_dir": str(out_dir),
        "files": files,
        "train_groups": list(train_groups),
        "bias_correction": asdict(corrected.attrs["bias_correction"]),
        "formula": groups.attrs["formula"],
        "predictions": corrected,
        "gap_by_group": groups,
        "severity_associations": severity,
        "true_gap_recovery": recovery,
        "true_gap_by_group": latent,
        "evaluation": evaluation,
    }


def measured_and_latent_gaps(reports: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Each patient group's measured gap difference from CN beside the latent (simulated) one.

    Args:
        reports: model name -> :func:`clinical_report` on a synthetic cohort (with ``true_gap``).

    Returns:
        One row per patient group (index ``group``): ``<model>`` ("difference [CI]" of the
        corrected gap, years, per model), ``latent`` (the same OLS on ``true_gap``: the truth
        the images were made with) and ``n``. Empty when no report has a latent gap.
    """
    columns: dict[str, pd.Series] = {}
    latent: pd.DataFrame | None = None
    for name, report in reports.items():
        table = report["gap_by_group"].set_index("group").drop(index=HEALTHY_GROUP)
        columns[name] = table.apply(_difference_text, axis=1)
        if report.get("true_gap_by_group") is not None:
            latent = report["true_gap_by_group"].set_index("group").drop(index=HEALTHY_GROUP)
    if latent is None:
        return pd.DataFrame()
    out = pd.DataFrame(columns)
    out["latent"] = latent.apply(_difference_text, axis=1)
    out["n"] = latent["n"]
    return out.rename_axis("group")


def _difference_text(row: pd.Series) -> str:
    return f"{row['difference']:+.1f} [{row['ci_low']:+.1f}, {row['ci_high']:+.1f}]"


def accuracy_table(evaluations: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Accuracy of several models, raw and bias-corrected, as "value [CI low, CI high]" strings.

    Args:
        evaluations: model name -> report of :func:`~brainage_core.analysis.evaluation.evaluate_run`.

    Returns:
        Index ``(model, metric)`` (sorted; metrics ``mae``, ``pearson_r``, ``r2``,
        ``spearman_gap_age``), columns ``corrected`` and ``raw``; values to 3 decimals.
    """
    rows = [
        {"model": name, "stage": stage, "metric": metric, "value": VALUE_WITH_CI.format(**report[stage][metric])}
        for name, report in evaluations.items()
        for stage in ("raw", "corrected")
        for metric in ACCURACY_METRICS
    ]
    return pd.DataFrame(rows).pivot(index=["model", "metric"], columns="stage", values="value")


def clinical_values(reports: Mapping[str, Mapping[str, Any]], reference: str) -> dict[str, Any]:
    """The numbers the clinical chapter quotes, from :func:`clinical_report` of several models.

    Args:
        reports: model name -> :func:`clinical_report` (with ``n_boot`` for the accuracy numbers).
        reference: the model whose correction size and severity associations are quoted.

    Returns:
        Per model ``<name>``: ``mae_raw_<name>``, ``gapage_raw_<name>``, ``gapage_corr_<name>``
        (raw MAE; gap-age Spearman raw and corrected; with an evaluation), for each patient group
        ``<group>_gap_<name>``, ``<group>_lo_<name>``, ``<group>_hi_<name>``, ``<group>_d_<name>``
        (adjusted difference from CN, its 95% CI, Cohen's d) and ``truegap_r_<name>`` (Pearson r
        of the corrected and the true gap, when known, and ``truegap_r_<group>_<name>`` within
        each group); ``<group>_latent`` (the latent gap's adjusted difference from CN, when
        known); for ``reference``: ``n_correction`` and
        per severity score ``rho_<group>_<score>`` and ``pfdr_<group>_<score>``.
    """
    values: dict[str, Any] = {}
    for name, report in reports.items():
        if report["evaluation"] is not None:
            raw, corrected = report["evaluation"]["raw"], report["evaluation"]["corrected"]
            values[f"mae_raw_{name}"] = raw["mae"]["value"]
            values[f"gapage_raw_{name}"] = raw["spearman_gap_age"]["value"]
            values[f"gapage_corr_{name}"] = corrected["spearman_gap_age"]["value"]
        for row in report["gap_by_group"].itertuples():
            if row.group != HEALTHY_GROUP:
                for key, column in (("gap", "difference"), ("lo", "ci_low"), ("hi", "ci_high"), ("d", "cohen_d")):
                    values[f"{row.group}_{key}_{name}"] = float(getattr(row, column))
        if report["true_gap_recovery"] is not None:
            recovery = report["true_gap_recovery"]["gap_corrected"]
            values[f"truegap_r_{name}"] = recovery["overall"]["pearson_r"]
            for group, within in recovery["by_group"].items():
                values[f"truegap_r_{group}_{name}"] = within["pearson_r"]
        if report.get("true_gap_by_group") is not None:
            for row in report["true_gap_by_group"].itertuples():
                if row.group != HEALTHY_GROUP:
                    values[f"{row.group}_latent"] = float(row.difference)
    values["n_correction"] = reports[reference]["bias_correction"]["n"]
    for row in reports[reference]["severity_associations"].itertuples():
        values[f"rho_{row.group}_{row.score}"] = float(row.partial_spearman)
        values[f"pfdr_{row.group}_{row.score}"] = float(row.p_fdr)
    return values
