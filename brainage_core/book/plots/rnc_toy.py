"""The Rank-N-Contrast chapter's figures: toy feature spaces coloured by age.

The numbers (losses, read-out R²) come from the chapter and
:mod:`brainage_core.analysis.rnc_toy`; these functions only draw them and return the
:class:`~matplotlib.figure.Figure`.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.decomposition import PCA

__all__ = ["plot_encoder_features", "plot_feature_spaces"]


def plot_feature_spaces(spaces: Mapping[str, torch.Tensor], ages: torch.Tensor, losses: Mapping[str, float]) -> Figure:
    """One panel per 2-D feature space (first view of each subject), coloured by age, with its loss.

    Args:
        spaces: name -> features ``[B, V, 2]``.
        ages: ``[B]`` ages in years.
        losses: name -> the RNC loss of that space (shown in the title).

    Returns:
        A figure with one axes per space and a shared age colour bar.
    """
    fig, axes = plt.subplots(1, len(spaces), figsize=(11 / 3 * len(spaces), 3.4), squeeze=False)
    for ax, (name, features) in zip(axes[0], spaces.items()):
        points = ax.scatter(features[:, 0, 0], features[:, 0, 1], c=ages, cmap="viridis", s=18)
        ax.set_title(f"{name}: RNC loss {losses[name]:.3f}")
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(points, ax=axes[0].tolist(), label="age (years)")
    return fig


def plot_encoder_features(
    features: Mapping[str, np.ndarray], ages: np.ndarray, readout_r2: Mapping[str, float]
) -> Figure:
    """One panel per encoder: its features projected on their two principal components, coloured by age.

    Args:
        features: encoder name -> ``[N, D]`` features of the same ``N`` test inputs.
        ages: ``[N]`` ages of the test inputs.
        readout_r2: encoder name -> R² of a linear age read-out (shown in the title).
    """
    fig, axes = plt.subplots(1, len(features), figsize=(4.5 * len(features), 3.6), squeeze=False)
    for ax, (name, values) in zip(axes[0], features.items()):
        embedded = PCA(n_components=2).fit_transform(values)  # embedded: [N, 2]
        ax.scatter(embedded[:, 0], embedded[:, 1], c=ages, cmap="viridis", s=12)
        ax.set_title(f"{name}: linear read-out R² = {readout_r2[name]:.2f}")
    return fig
