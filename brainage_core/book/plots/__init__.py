"""The book's figures (matplotlib / seaborn / nilearn).

This module holds the figures several chapters share; each chapter's own figures live in a
submodule named after what they show (e.g. ``plots.cohort``), so that a notebook only calls
them and keeps no plotting code.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from brainage_core.rundir import selected_epoch

__all__ = ["GROUP_COLOURS", "plot_learning_curves", "plot_predicted_vs_true", "plot_volume_slices"]

GROUP_COLOURS = {"CN": "#4C72B0", "MCI": "#8172B3", "AD": "#C44E52", "PD": "#DD8452"}


def plot_learning_curves(metrics: pd.DataFrame, title: str = "") -> Figure:
    """Training loss and train/validation MAE per epoch from a run's ``metrics.csv``."""
    fig, (loss_ax, mae_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    loss_ax.plot(metrics["epoch"], metrics["train_loss"], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="training loss")
    mae_ax.plot(metrics["epoch"], metrics["train_mae"], marker="o", label="train")
    mae_ax.plot(metrics["epoch"], metrics["val_mae"], marker="o", label="validation")
    best = selected_epoch(metrics)
    mae_ax.axvline(best, color="grey", linestyle=":", label=f"selected (epoch {best})")
    mae_ax.set(xlabel="epoch", ylabel="MAE (years)")
    mae_ax.legend(frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_predicted_vs_true(
    predictions: pd.DataFrame, predicted: str = "predicted_age", ax: plt.Axes | None = None, title: str = ""
) -> plt.Axes:
    """Scatter of predicted vs chronological age, coloured by group, with the identity line."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 4))
    sns.scatterplot(
        data=predictions, x="age", y=predicted, hue="group", palette=GROUP_COLOURS, s=22, ax=ax, edgecolor="none"
    )
    low = float(min(predictions["age"].min(), predictions[predicted].min()))
    high = float(max(predictions["age"].max(), predictions[predicted].max()))
    ax.plot([low, high], [low, high], color="black", linewidth=0.8)
    ax.set(xlabel="chronological age (years)", ylabel="predicted age (years)", title=title)
    ax.legend(frameon=False, title=None)
    return ax


def plot_volume_slices(
    volumes: Sequence[np.ndarray], labels: Sequence[str], cmap: str = "gray", vmax: float | None = None
) -> Figure:
    """Axial, coronal and sagittal middle slices of several RAS volumes, one row each.

    Args:
        volumes: arrays ``[X, Y, Z]`` in RAS voxel order.
        labels: a row title per volume.
        cmap: colour map.
        vmax: common upper display limit (default: each volume's 99.5th percentile).
    """
    fig, axes = plt.subplots(len(volumes), 3, figsize=(6.6, 2.3 * len(volumes)), squeeze=False)
    for row, (volume, label) in enumerate(zip(volumes, labels)):
        x, y, z = (s // 2 for s in volume.shape)
        top = vmax if vmax is not None else float(np.percentile(volume, 99.5))
        for col, section in enumerate((volume[:, :, z], volume[:, y, :], volume[x, :, :])):
            ax = axes[row, col]
            ax.imshow(section.T, origin="lower", cmap=cmap, vmin=0, vmax=top)
            ax.set_axis_off()
        axes[row, 0].set_title(label, loc="left", fontsize=9)
    fig.tight_layout()
    return fig
