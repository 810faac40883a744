"""Figures of the ablation chapter: accuracy per seed, feature spaces, errors across the age range.

The tables they draw come from :mod:`brainage_core.analysis.compare`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

__all__ = [
    "plot_age_band_errors",
    "plot_feature_spaces",
    "plot_learning_curve",
    "plot_mae_per_seed",
    "plot_tuning_trials",
    "plot_validation_curves",
]


def plot_mae_per_seed(runs: pd.DataFrame, order: Sequence[str]) -> Figure:
    """Strip plot of each run's test MAE, one column per method, one point per seed.

    Args:
        runs: the table of :func:`~brainage_core.analysis.compare.collect_runs`.
        order: the methods, left to right (e.g. the index of ``summarise_methods``).
    """
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.stripplot(data=runs, x="method", y="mae", order=list(order), ax=ax, size=7)
    ax.set(ylabel="test MAE (years)", xlabel="", title="one point per seed")
    return fig


def plot_feature_spaces(analyses: Mapping[str, dict]) -> Figure:
    """One panel per method: its test controls on two principal components, coloured by age.

    Args:
        analyses: method -> :func:`~brainage_core.analysis.compare.analyse_features`; each panel's
            title gives the method's feature continuity.

    Returns:
        A figure with one scatter axes per method and a shared age colour bar.
    """
    fig, axes = plt.subplots(1, len(analyses), figsize=(2.6 * len(analyses), 2.8), squeeze=False)
    for ax, (method, analysis) in zip(axes[0], analyses.items()):
        pca = analysis["pca"]
        points = ax.scatter(pca["pc1"], pca["pc2"], c=pca["age"], cmap="viridis", s=10)
        ax.set_title(f"{method}\ncontinuity {analysis['continuity']:.2f}", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(points, ax=axes[0].tolist(), label="age (years)")
    return fig


def plot_age_band_errors(bands: pd.DataFrame) -> Figure:
    """MAE and mean gap per age band, one line per method; bands without subjects are left out.

    Args:
        bands: the table of :func:`~brainage_core.analysis.compare.errors_by_age_band`.
    """
    bands = bands[bands["n"] > 0]
    fig, (mae_ax, gap_ax) = plt.subplots(1, 2, figsize=(10, 3.3))
    sns.lineplot(data=bands, x="band", y="mae", hue="method", marker="o", ax=mae_ax)
    sns.lineplot(data=bands, x="band", y="mean_gap", hue="method", marker="o", ax=gap_ax, legend=False)
    gap_ax.axhline(0, color="black", linewidth=0.8)
    mae_ax.set(xlabel="age band (years)", ylabel="MAE (years)")
    gap_ax.set(xlabel="age band (years)", ylabel="mean gap (years)")
    return fig


def plot_validation_curves(curves: pd.DataFrame, run_label: str = "seed") -> Figure:
    """Validation MAE per epoch, one panel per method, one line per run, the selected epoch marked.

    Args:
        curves: the table of :func:`~brainage_core.analysis.compare.validation_curves`.
        run_label: what the second key of a run is (``seed``, or ``fold`` for cross-validation).
    """
    methods = list(dict.fromkeys(curves["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.0), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods):
        for seed, run in curves[curves["method"] == method].groupby("seed"):
            (line,) = ax.plot(run["epoch"], run["val_mae"], lw=1.2, label=f"{run_label} {seed}")
            chosen = run[run["selected"]]
            ax.plot(chosen["epoch"], chosen["val_mae"], "o", color=line.get_color())
        ax.set(title=method, xlabel="epoch")
    axes[0][0].set_ylabel("validation MAE (years)")
    axes[0][0].legend(frameon=False, fontsize=8)
    top = curves["val_mae"].quantile(0.95)
    axes[0][0].set_ylim(max(0.0, curves["val_mae"].min() - 1.0), top)
    fig.tight_layout()
    return fig


def plot_learning_curve(curve: pd.DataFrame) -> Figure:
    """Test MAE with 95 % intervals against the number of training subjects, one line per method.

    Args:
        curve: the table of :func:`~brainage_core.book.workflow.learning_curve`.
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.3))
    for method, rows in curve.sort_values("n_train").groupby("method"):
        ax.errorbar(
            rows["n_train"],
            rows["mae"],
            yerr=[rows["mae"] - rows["mae_low"], rows["mae_high"] - rows["mae"]],
            marker="o",
            capsize=3,
            label=method,
        )
    ax.set(xscale="log", xlabel="training subjects", ylabel="test MAE (years)")
    ax.minorticks_off()
    ax.set_xticks(sorted(curve["n_train"].unique()), [str(n) for n in sorted(curve["n_train"].unique())])
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_tuning_trials(trials: pd.DataFrame) -> Figure:
    """Validation MAE of every tuning trial against its learning rate, one colour per method.

    Args:
        trials: the trials of :func:`~brainage_core.tuned.read_tuning` (``method``, ``lr``,
            ``val_mae``, ``state``); pruned trials are drawn hollow.
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.3))
    for index, (method, rows) in enumerate(trials.groupby("method")):
        colour = f"C{index}"
        done = rows["state"] == "complete"
        ax.scatter(rows.loc[done, "lr"], rows.loc[done, "val_mae"], color=colour, label=method)
        ax.scatter(rows.loc[~done, "lr"], rows.loc[~done, "val_mae"], facecolors="none", edgecolors=colour)
    ax.set(xscale="log", xlabel="learning rate", ylabel="best validation MAE (years)", title="hollow: pruned")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig
