"""Figures of the Grad-RAM chapter: the group-average maps of several models, one above the other.

:func:`~brainage_core.analysis.interpret.explain.explain_run` renders each average map on the
template as ``OUT_DIR/figures/<average>_<kind>.png``; :func:`plot_average_maps` stacks one
model's image per row so that the models can be compared at a glance.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["plot_average_maps"]


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
