"""Figures of the clinical chapter: the gap before and after correction, by severity, against the truth.

They draw the corrected predictions of :func:`~brainage_core.analysis.clinical.clinical_report`
(``report["predictions"]``) on the analysis sample of
:func:`~brainage_core.analysis.clinical.analysis_sample`; the per-group box plot and the single
gap-against-score panel are :func:`~brainage_core.analysis.clinical.plot_gap_by_group` and
:func:`~brainage_core.analysis.clinical.plot_gap_vs_score`, which the report also saves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from brainage_core.analysis.clinical import analysis_sample, plot_gap_vs_score
from brainage_core.analysis.metrics import HEALTHY_GROUP
from brainage_core.book.plots import GROUP_COLOURS

__all__ = ["plot_gap_vs_scores", "plot_raw_and_corrected_gap", "plot_true_gap_recovery"]


def plot_raw_and_corrected_gap(
    predictions: pd.DataFrame, model: str, train_groups: Sequence[str] = (HEALTHY_GROUP,)
) -> Figure:
    """The gap against age before (left) and after (right) the age-bias correction, by group.

    Args:
        predictions: corrected predictions (columns ``age``, ``group``, ``gap``, ``gap_corrected``).
        model: the model's name, for the panel titles.
        train_groups: the run's training groups (see ``analysis_sample``).

    Returns:
        A figure with two axes sharing the gap axis.
    """
    sample = analysis_sample(predictions, train_groups)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3), sharey=True)
    for ax, column, title in zip(axes, ("gap", "gap_corrected"), ("raw gap", "corrected gap")):
        for group, rows in sample.groupby("group"):
            ax.scatter(rows["age"], rows[column], s=10, label=group, color=GROUP_COLOURS.get(group))
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set(xlabel="age (years)", title=f"{model}: {title}")
    axes[0].set_ylabel("brain-age gap (years)")
    axes[1].legend(frameon=False)
    return fig


def plot_gap_vs_scores(predictions: pd.DataFrame, severity: pd.DataFrame) -> Figure | None:
    """One :func:`~brainage_core.analysis.clinical.plot_gap_vs_score` panel per tested severity score.

    Args:
        predictions: corrected predictions.
        severity: the table of :func:`~brainage_core.analysis.clinical.severity_associations`;
            only its tested rows (a ``partial_spearman`` value) get a panel.

    Returns:
        The figure, or ``None`` when no score was tested.
    """
    tested = severity[severity["partial_spearman"].notna()]
    if tested.empty:
        return None
    fig, axes = plt.subplots(1, len(tested), figsize=(3.3 * len(tested), 3.1), squeeze=False)
    for ax, row in zip(axes[0], tested.itertuples()):
        plot_gap_vs_score(predictions, row.group, row.score, ax=ax)
    fig.tight_layout()
    return fig


def plot_true_gap_recovery(
    reports: Mapping[str, Mapping[str, Any]], train_groups: Sequence[str] = (HEALTHY_GROUP,)
) -> Figure | None:
    """The corrected predicted gap against the true (synthetic) gap, one panel per model.

    Args:
        reports: model -> :func:`~brainage_core.analysis.clinical.clinical_report`; models without
            ``true_gap_recovery`` (no true gap) get no panel. Titles give the Pearson r of the
            corrected gap.
        train_groups: the runs' training groups (see ``analysis_sample``).

    Returns:
        The figure, or ``None`` when no model has a true gap.
    """
    known = {model: report for model, report in reports.items() if report["true_gap_recovery"] is not None}
    if not known:
        return None
    fig, axes = plt.subplots(1, len(known), figsize=(4.2 * len(known), 3.6), squeeze=False)
    for ax, (model, report) in zip(axes[0], known.items()):
        for group, part in analysis_sample(report["predictions"], train_groups).groupby("group"):
            ax.scatter(part["true_gap"], part["gap_corrected"], s=10, label=group)
        r = report["true_gap_recovery"]["gap_corrected"]["overall"]["pearson_r"]
        ax.set(xlabel="true gap (years)", ylabel="predicted gap, corrected (years)", title=f"{model}: r = {r:.2f}")
    axes[0][0].legend(frameon=False)
    return fig
