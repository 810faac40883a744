"""Figures of the performance appendix."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["plot_loss_timings"]


def plot_loss_timings(timings: pd.DataFrame) -> Figure:
    """Forward + backward time of the loop-free RNC loss and of the per-column loop, by batch size (log-log).

    Args:
        timings: columns ``batch_size``, ``fast_s`` and ``loop_s`` (seconds; NaN where the loop
            was not timed), as :func:`brainage_core.book.performance.loss_timings` gives them.
    """
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.loglog(timings["batch_size"], 1000 * timings["fast_s"], marker="o", label="loop-free (ours)")
    timed = timings.dropna(subset=["loop_s"])
    ax.loglog(timed["batch_size"], 1000 * timed["loop_s"], marker="o", label="per-column loop")
    ax.set(xlabel="batch size B", ylabel="forward + backward (ms)")
    ax.legend(frameon=False)
    return fig
