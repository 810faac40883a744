"""The chapters' own figures (plots submodules): right panels, titles and scales."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from brainage_core.book.plots.performance import plot_loss_timings, plot_parallel, plot_scaling
from brainage_core.book.plots.realdata import plot_cv_predictions, plot_saved_images


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_saved_images_are_stacked_without_axes(tmp_path: Path) -> None:
    paths = []
    for index in range(2):
        paths.append(tmp_path / f"{index}.png")
        plt.imsave(paths[-1], np.full((4, 6, 3), index / 2))
    fig = plot_saved_images(paths)
    assert len(fig.axes) == 2 and not any(ax.axison for ax in fig.axes)
    assert tuple(fig.get_size_inches()) == (9.0, 6.0)
    assert fig.axes[0].images[0].get_array().shape[:2] == (4, 6)


def test_cv_predictions_one_panel_per_method() -> None:
    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 80, 12)
    predictions = pd.concat(
        [
            pd.DataFrame({"method": method, "age": ages, "predicted_age": ages + rng.normal(0, 5, 12)})
            for method in ("rnc", "mse", "mean")
        ]
    )
    fig = plot_cv_predictions(predictions)
    assert [ax.get_title() for ax in fig.axes] == ["rnc", "mse", "mean"]
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert fig.axes[0].get_shared_y_axes().joined(fig.axes[0], fig.axes[2])
    single = plot_cv_predictions(predictions[predictions["method"] == "rnc"])
    assert len(single.axes) == 1


def test_loss_timings_log_log_with_the_loop_only_where_timed() -> None:
    timings = pd.DataFrame(
        {"batch_size": [32, 64, 128], "fast_s": [0.001, 0.002, 0.004], "loop_s": [0.01, 0.04, np.nan]}
    )
    ax = plot_loss_timings(timings).axes[0]
    fast, loop = ax.get_lines()
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert list(fast.get_xdata()) == [32, 64, 128] and list(loop.get_xdata()) == [32, 64]
    assert list(loop.get_ydata()) == pytest.approx([10.0, 40.0])  # milliseconds
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["loop-free (ours)", "per-column loop"]


def test_scaling_plot_has_a_line_per_data_path_and_the_sizes_as_ticks() -> None:
    table = pd.DataFrame(
        {
            "n_scans": [300, 3000, 300, 3000],
            "mode": ["in_memory", "in_memory", "streamed", "streamed"],
            "peak_rss_mb": [670.0, 1073.0, 648.0, 645.0],
            "samples_per_s": [50.0, 42.0, 49.0, 41.0],
        }
    )
    memory, speed = plot_scaling(table).axes
    assert [list(line.get_ydata()) for line in memory.get_lines()] == [[670.0, 1073.0], [648.0, 645.0]]
    assert [list(line.get_ydata()) for line in speed.get_lines()] == [[50.0, 42.0], [49.0, 41.0]]
    assert [tick.get_text() for tick in memory.get_xticklabels()] == ["300", "3,000"]
    assert [text.get_text() for text in memory.get_legend().get_texts()] == [
        "held in memory",
        "streamed from the cache",
    ]


def test_parallel_plot_has_a_bar_per_task_and_worker_count() -> None:
    table = pd.DataFrame(
        {"task": ["prepare", "prepare", "book", "book"], "workers": [1, 2, 1, 2], "seconds": [60, 30, 120, 90]}
    )
    ax = plot_parallel(table).axes[0]
    assert sorted(round(patch.get_width(), 2) for patch in ax.patches) == [0.5, 1.0, 1.5, 2.0]  # minutes
