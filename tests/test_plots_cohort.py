"""The data chapter's figures (brainage_core.book.plots.cohort) on small hand-made data."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from brainage_core.analysis.cohort import VENTRICLE_EXCESS
from brainage_core.book.plots import cohort as cohort_plots
from tests.conftest import brain_phantom, write_nifti

GROUPS = ["CN"] * 6 + ["AD"] * 3 + ["PD"] * 3


@pytest.fixture(autouse=True)
def close_figures() -> None:
    yield
    plt.close("all")


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "subject_id": [f"s{i}" for i in range(len(GROUPS))],
            "age": np.linspace(20, 90, len(GROUPS)),
            "group": GROUPS,
            "split": "train",
            "true_gap": rng.normal(0, 3, len(GROUPS)),
            "mmse": [30] * 6 + [27, 22, 18] + [np.nan] * 3,
            "cdr": [0] * 6 + [0.5, 1.0, 2.0] + [np.nan] * 3,
            "updrs3": [np.nan] * 9 + [12, 25, 40],
            "hoehn_yahr": [np.nan] * 9 + [1.0, 2.0, 3.0],
            "csf_ventricular_ml": np.linspace(15, 60, len(GROUPS)),
        }
    )


@pytest.fixture
def with_images(frame: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    """``frame`` with small phantom images and effect maps (absolute paths)."""
    frame = frame.copy()
    frame["image"] = [
        str(write_nifti(tmp_path / f"{s}_T1w.nii.gz", brain_phantom((12, 14, 12), i)))
        for i, s in enumerate(frame["subject_id"])
    ]
    effect = np.zeros((12, 14, 12), np.float32)
    effect[4:8, 5:9, 6:10] = 1.0
    frame["effect_map"] = str(write_nifti(tmp_path / "effect.nii.gz", effect))
    return frame


def test_age_and_gap_has_two_panels_the_second_empty_without_ground_truth(frame: pd.DataFrame) -> None:
    figure = cohort_plots.plot_age_and_gap(frame, frame)
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    assert figure.axes[1].get_xlabel() == "latent brain-age gap (years)"
    without = cohort_plots.plot_age_and_gap(frame, None)
    assert len(without.axes) == 2 and not without.axes[1].axison


def test_severity_scores_have_an_ad_and_a_pd_panel(frame: pd.DataFrame) -> None:
    figure = cohort_plots.plot_severity_scores(frame)
    assert isinstance(figure, Figure)
    assert [ax.get_title() for ax in figure.axes] == ["AD", "PD"]


def test_example_scans_show_three_sections_per_subject(with_images: pd.DataFrame) -> None:
    figure = cohort_plots.plot_example_scans(with_images.iloc[[0, 5, 8]])
    assert isinstance(figure, Figure) and len(figure.axes) == 9
    assert figure.axes[0].get_title(loc="left") == "CN, 20 y"


def test_effect_maps_show_one_panel_per_subject(with_images: pd.DataFrame) -> None:
    figure = cohort_plots.plot_effect_maps(with_images.iloc[[0, 8, 11]])
    assert isinstance(figure, Figure) and len(figure.axes) == 3
    assert [ax.get_title() for ax in figure.axes] == ["CN, 20 y", "AD, 71 y", "PD, 90 y"]
    assert len(cohort_plots.plot_effect_maps(with_images.iloc[[0]]).axes) == 1


def test_tissue_volumes_have_three_panels(frame: pd.DataFrame) -> None:
    ages = frame.loc[frame["group"] == "CN", "age"]
    relative = pd.DataFrame({"age": ages, "gm_ml": 100 - 0.4 * (ages - 25), "wm_ml": 100.0})
    measured = pd.DataFrame({"age": ages, "csf": 20.0, "gm": 45.0, "wm": 35.0})
    figure = cohort_plots.plot_tissue_volumes(relative, frame, measured)
    assert isinstance(figure, Figure) and len(figure.axes) == 3
    assert figure.axes[2].get_title() == "CN: measured from the images"


def test_ventricle_excess_is_one_panel_with_a_row_per_stage(frame: pd.DataFrame) -> None:
    patients = frame[frame["group"] != "CN"].assign(
        **{
            VENTRICLE_EXCESS: np.arange(6.0),
            "stage": ["AD, CDR 0.5", "AD, CDR 1.0", "AD, CDR 1.0"] + ["PD, H&Y 2.0"] * 3,
        }
    )
    figure = cohort_plots.plot_ventricle_excess(patients)
    assert isinstance(figure, Figure) and len(figure.axes) == 1
    assert [label.get_text() for label in figure.axes[0].get_yticklabels()] == [
        "AD, CDR 0.5",
        "AD, CDR 1.0",
        "PD, H&Y 2.0",
    ]
