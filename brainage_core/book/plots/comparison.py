"""Figures of the ablation chapter: accuracy per seed, feature spaces, errors across the age range.

The tables they draw come from :mod:`brainage_core.analysis.compare`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

__all__ = ["plot_age_band_errors", "plot_feature_spaces", "plot_mae_per_seed"]


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
