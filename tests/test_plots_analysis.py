"""The figures of the ablation, clinical and Grad-RAM chapters: a Figure with the expected axes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from brainage_core.analysis.clinical import severity_associations
from brainage_core.analysis.metrics import corrected_predictions
from brainage_core.book.plots import clinical as clinical_plots
from brainage_core.book.plots import comparison, saliency
from tests.test_clinical import synthetic_predictions


@pytest.fixture(autouse=True)
def _close_figures() -> None:
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def corrected() -> pd.DataFrame:
    return corrected_predictions(synthetic_predictions())


def test_plot_mae_per_seed_orders_the_methods() -> None:
    runs = pd.DataFrame({"method": ["a", "a", "b"], "seed": [0, 1, 0], "mae": [3.0, 4.0, 2.0]})
    fig = comparison.plot_mae_per_seed(runs, order=["b", "a"])
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert [label.get_text() for label in ax.get_xticklabels()] == ["b", "a"]
    assert ax.get_ylabel() == "test MAE (years)" and ax.get_title() == "one point per seed"
    assert sum(len(collection.get_offsets()) for collection in ax.collections) == 3


def test_plot_feature_spaces_one_panel_per_method_and_a_colour_bar() -> None:
    rng = np.random.default_rng(0)
    pca = pd.DataFrame({"pc1": rng.normal(size=5), "pc2": rng.normal(size=5), "age": np.arange(20.0, 70.0, 10)})
    analyses = {"rnc": {"pca": pca, "continuity": 0.5}, "mse": {"pca": pca, "continuity": 0.125}}
    fig = comparison.plot_feature_spaces(analyses)
    assert isinstance(fig, Figure) and len(fig.axes) == 3  # two panels and the colour bar
    assert [ax.get_title() for ax in fig.axes[:2]] == ["rnc\ncontinuity 0.50", "mse\ncontinuity 0.12"]
    assert fig.axes[2].get_ylabel() == "age (years)"
    assert len(fig.axes[0].collections[0].get_offsets()) == 5


def test_plot_age_band_errors_leaves_out_empty_bands() -> None:
    bands = pd.DataFrame(
        {
            "band": ["[20, 30)", "[30, 40)", "[40, 50)"] * 2,
            "n": [3, 0, 2] * 2,
            "mae": [1.0, np.nan, 2.0, 1.5, np.nan, 2.5],
            "mean_gap": [0.5, np.nan, -1.0, 0.2, np.nan, -0.5],
            "method": ["rnc"] * 3 + ["mse"] * 3,
        }
    )
    fig = comparison.plot_age_band_errors(bands)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    mae_ax, gap_ax = fig.axes
    assert mae_ax.get_ylabel() == "MAE (years)" and gap_ax.get_ylabel() == "mean gap (years)"
    assert [label.get_text() for label in mae_ax.get_xticklabels()] == ["[20, 30)", "[40, 50)"]
    assert mae_ax.get_legend() is not None and gap_ax.get_legend() is None


def test_plot_raw_and_corrected_gap(corrected: pd.DataFrame) -> None:
    fig = clinical_plots.plot_raw_and_corrected_gap(corrected, "RNC")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["RNC: raw gap", "RNC: corrected gap"]
    assert fig.axes[0].get_ylabel() == "brain-age gap (years)"
    assert [text.get_text() for text in fig.axes[1].get_legend().get_texts()] == ["AD", "CN", "PD"]
    # the analysis sample: CN test rows and all patients
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 150 + 150 + 150


def test_plot_gap_vs_scores_one_panel_per_tested_score(corrected: pd.DataFrame) -> None:
    severity = severity_associations(corrected)
    fig = clinical_plots.plot_gap_vs_scores(corrected, severity[severity["score"].isin(["cdr", "updrs3"])])
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["AD (n=150)", "PD (n=150)"]
    untested = severity.assign(partial_spearman=np.nan)
    assert clinical_plots.plot_gap_vs_scores(corrected, untested) is None


def test_plot_true_gap_recovery_one_panel_per_model_with_a_true_gap(corrected: pd.DataFrame) -> None:
    def report(r: float | None) -> dict:
        recovery = None if r is None else {"gap_corrected": {"overall": {"pearson_r": r}}}
        return {"predictions": corrected, "true_gap_recovery": recovery}

    fig = clinical_plots.plot_true_gap_recovery({"RNC": report(0.876), "none": report(None), "MSE": report(0.5)})
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["RNC: r = 0.88", "MSE: r = 0.50"]
    assert fig.axes[0].get_xlabel() == "true gap (years)" and fig.axes[0].get_legend() is not None
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 150 + 150 + 150
    assert clinical_plots.plot_true_gap_recovery({"RNC": report(None)}) is None


def test_plot_average_maps_one_row_per_model(tmp_path: Path) -> None:
    (tmp_path / "RNC" / "figures").mkdir(parents=True)
    plt.imsave(tmp_path / "RNC" / "figures" / "group-AD_gradram.png", np.zeros((4, 6, 3)))
    fig = saliency.plot_average_maps({"RNC": tmp_path / "RNC", "MSE": tmp_path / "MSE"}, "group-AD")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["RNC: group-AD", "MSE: group-AD"]
    assert fig.axes[0].images[0].get_array().shape[:2] == (4, 6)
    assert not fig.axes[1].images  # no image written for MSE: an empty, titled panel
    assert tuple(fig.get_size_inches()) == (9, 5.6)
