"""Figures of the real-data chapter: saved QC and Grad-RAM figures, cross-validated predictions."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from brainage_core.book.plots import plot_predicted_vs_true

__all__ = ["plot_cv_predictions", "plot_saved_images"]


def plot_saved_images(
    paths: Sequence[str | os.PathLike[str]], width: float = 9.0, height_per_image: float = 3.0
) -> Figure:
    """Saved figures (PNG files), one under the other, without axes.

    Args:
        paths: image files, e.g. the import's QC figures or Grad-RAM's ``figures/*.png``.
        width: figure width in inches.
        height_per_image: inches of height per image.
    """
    fig, axes = plt.subplots(len(paths), 1, figsize=(width, height_per_image * len(paths)), squeeze=False)
    for ax, path in zip(axes[:, 0], paths):
        ax.imshow(plt.imread(Path(path)))
        ax.set_axis_off()
    return fig


def plot_cv_predictions(predictions: pd.DataFrame) -> Figure:
    """Out-of-fold predicted vs chronological age, one panel per method (shared age axis).

    Args:
        predictions: columns ``method``, ``age``, ``predicted_age`` (as
            :func:`~brainage_core.analysis.crossval.cross_validate` gives them).
    """
    n_methods = predictions["method"].nunique()
    fig, axes = plt.subplots(1, n_methods, figsize=(3.6 * n_methods, 3.5), sharey=True, squeeze=False)
    for ax, (method, group) in zip(axes[0], predictions.groupby("method", sort=False)):
        plot_predicted_vs_true(group.assign(group="CN"), ax=ax, title=method)
        ax.get_legend().remove()
    return fig
