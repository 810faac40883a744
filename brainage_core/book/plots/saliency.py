"""Figures of the Grad-RAM chapter: group-average maps, benchmark lifts and deletion curves.

:func:`~brainage_core.analysis.interpret.explain.explain_run` renders each average map on the
template as ``OUT_DIR/figures/<average>_<kind>.png``; :func:`plot_average_maps` stacks one
model's image per row so that the models can be compared at a glance.
:func:`plot_benchmark_lifts` and :func:`plot_deletion_curves` draw the tables of
:func:`~brainage_core.analysis.interpret.benchmark.saliency_benchmark`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

__all__ = ["plot_average_maps", "plot_benchmark_lifts", "plot_deletion_curves"]

CANDIDATE_ORDER = ("map", "random_weights", "population_prior", "central_blob")


def plot_benchmark_lifts(lifts: pd.DataFrame) -> Figure:
    """Per-scan lift of each method's map and of its baselines, one panel per model.

    Args:
        lifts: ``SaliencyBenchmark.lifts``.
    """
    models = list(dict.fromkeys(lifts["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 3.4), sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models):
        sns.barplot(
            data=lifts[lifts["model"] == model],
            x="method",
            y="lift",
            hue="candidate",
            hue_order=[c for c in CANDIDATE_ORDER if c in set(lifts["candidate"])],
            errorbar=("ci", 95),
            ax=ax,
        )
        ax.axhline(1.0, color="grey", linestyle=":", label="chance")
        ax.set(title=model, xlabel="", ylabel="lift over chance")
        ax.tick_params(axis="x", rotation=20)
        ax.get_legend().remove()
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def plot_deletion_curves(deletion: pd.DataFrame) -> Figure:
    """Test MAE as the most salient voxels are replaced by the mean image, one panel per model.

    Args:
        deletion: ``SaliencyBenchmark.deletion`` (``random``: voxels deleted in random order).
    """
    models = list(dict.fromkeys(deletion["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.0 * len(models), 3.4), sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models):
        for method, curve in deletion[deletion["model"] == model].groupby("method", sort=False):
            style = {"color": "black", "linestyle": "--"} if method == "random" else {}
            ax.plot(100 * curve["fraction"], curve["mae"], marker="o", ms=3, label=method, **style)
        ax.set(title=model, xlabel="brain voxels replaced (%)", ylabel="test MAE (years)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def plot_average_maps(
    out_dirs: Mapping[str, str | os.PathLike[str]], average: str = "all", kind: str = "gradram"
) -> Figure:
    """One row per model: its rendered average map ``<average>_<kind>.png``, titled by model.

    Args:
        out_dirs: model name -> the ``out_dir`` of its ``explain_run``.
        average: which average, e.g. ``all`` (every scan) or ``group-AD``.
        kind: which maps, ``gradram`` (signed) or ``gradram_relu``.

    Returns:
        A figure with one axes per model; a model without that image gets an empty, titled axes.
    """
    fig, axes = plt.subplots(len(out_dirs), 1, figsize=(9, 2.8 * len(out_dirs)), squeeze=False)
    for ax, (model, out_dir) in zip(axes[:, 0], out_dirs.items()):
        image = Path(out_dir) / "figures" / f"{average}_{kind}.png"
        if image.is_file():
            ax.imshow(plt.imread(image))
        ax.set_title(f"{model}: {average}", loc="left", fontsize=9)
        ax.set_axis_off()
    return fig
