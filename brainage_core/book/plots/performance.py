"""Figures of the performance appendix."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["plot_loss_timings", "plot_parallel", "plot_scaling"]


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


def plot_scaling(table: pd.DataFrame) -> Figure:
    """Peak memory and training throughput against the number of scans, one line per data path.

    Args:
        table: columns ``n_scans``, ``mode`` (``streamed`` or ``in_memory``), ``peak_rss_mb`` and
            ``samples_per_s``, as :func:`brainage_core.book.performance.scaling_table` gives them.
    """
    fig, (memory, speed) = plt.subplots(1, 2, figsize=(9, 3.4))
    for mode, rows in table.groupby("mode"):
        label = {"streamed": "streamed from the cache", "in_memory": "held in memory"}.get(str(mode), str(mode))
        memory.plot(rows["n_scans"], rows["peak_rss_mb"], marker="o", label=label)
        speed.plot(rows["n_scans"], rows["samples_per_s"], marker="o", label=label)
    sizes = sorted(table["n_scans"].unique())
    for ax in (memory, speed):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{size:,}" for size in sizes])
        ax.minorticks_off()
        ax.set(xlabel="scans in the cohort", ylim=(0, None))
    memory.set_ylabel("peak resident memory (MiB)")
    speed.set_ylabel("training samples / s")
    memory.legend(frameon=False, loc="lower right")
    fig.tight_layout()
    return fig


def plot_parallel(table: pd.DataFrame) -> Figure:
    """Wall time of each task with each number of local workers (bars, minutes).

    Args:
        table: columns ``task``, ``workers`` and ``seconds``, as
            :func:`brainage_core.book.performance.parallel_table` gives them.
    """
    wide = table.pivot(index="task", columns="workers", values="seconds") / 60  # wide: tasks x worker counts
    fig, ax = plt.subplots(figsize=(6, 0.9 + 0.7 * len(wide)))
    wide.plot.barh(ax=ax)
    ax.set(xlabel="wall time (minutes)", ylabel="")
    ax.legend(title="workers", frameon=False, bbox_to_anchor=(1.0, 1.0), loc="upper left")
    fig.tight_layout()
    return fig
