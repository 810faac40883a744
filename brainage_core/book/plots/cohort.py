"""The data chapter's figures: who is in a cohort, what the scans look like, what aging changed.

The numbers come from :mod:`brainage_core.analysis.cohort`; these functions only draw them and
return the :class:`~matplotlib.figure.Figure`.
"""

from __future__ import annotations

from typing import cast

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from brainage_core.analysis.cohort import VENTRICLE_EXCESS
from brainage_core.book.plots import GROUP_COLOURS, plot_volume_slices
from brainage_core.cohorts.calibration import STRUCTURES

_STRUCTURE_LABELS = {
    "ventricles": "ventricles",
    "hippocampus": "hippocampus",
    "gm": "grey matter",
    "wm": "white matter",
    "csf": "sulcal CSF",
}

__all__ = [
    "plot_age_and_gap",
    "plot_effect_maps",
    "plot_example_scans",
    "plot_realism",
    "plot_severity_scores",
    "plot_tissue_volumes",
    "plot_ventricle_excess",
]

# Published grey-matter loss from early adulthood (age 25): 0.2 to 0.5 % of the young volume per year.
_PUBLISHED_GM_LOSS_PER_YEAR = (0.002, 0.005)
_GM_LOSS_FROM_AGE = 25


def _volume(path: str) -> np.ndarray:
    """A NIfTI file's data as float64 (scaling applied), like ``get_fdata``."""
    return np.asarray(cast(nib.Nifti1Image, nib.load(path)).dataobj, dtype=np.float64)


def _label(row: pd.Series) -> str:
    return f"{row['group']}, {row['age']:.0f} y"


def plot_age_and_gap(frame: pd.DataFrame, truth: pd.DataFrame | None = None) -> Figure:
    """Age histogram per group (stacked) and, with ground truth, the latent gap's density per group.

    Args:
        frame: the manifest (``age``, ``group``).
        truth: the ground truth (``true_gap``, ``group``); ``None`` leaves the right panel empty.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    sns.histplot(data=frame, x="age", hue="group", palette=GROUP_COLOURS, multiple="stack", binwidth=5, ax=axes[0])
    axes[0].set(xlabel="age (years)")
    if truth is not None:
        sns.kdeplot(data=truth, x="true_gap", hue="group", palette=GROUP_COLOURS, common_norm=False, ax=axes[1])
        axes[1].set(xlabel="latent brain-age gap (years)")
    else:
        axes[1].set_axis_off()
    return fig


def plot_severity_scores(frame: pd.DataFrame) -> Figure:
    """Patients' severity scores: MMSE by CDR for AD, UPDRS-III by Hoehn & Yahr stage for PD."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    ad, pd_rows = frame[frame["group"] == "AD"], frame[frame["group"] == "PD"]
    sns.stripplot(data=ad, x="cdr", y="mmse", ax=axes[0], color=GROUP_COLOURS["AD"])
    axes[0].set(xlabel="CDR (global)", ylabel="MMSE", title="AD")
    sns.stripplot(data=pd_rows, x="hoehn_yahr", y="updrs3", ax=axes[1], color=GROUP_COLOURS["PD"])
    axes[1].set(xlabel="Hoehn & Yahr stage", ylabel="UPDRS-III", title="PD")
    fig.tight_layout()
    return fig


def plot_example_scans(subjects: pd.DataFrame) -> Figure:
    """Middle slices (axial, coronal, sagittal) of each subject's image, one row per subject.

    All rows share the display range of the first subject's image (its 99.5th percentile), so
    that intensity changes with age stay visible.

    Args:
        subjects: rows with ``image`` (absolute path), ``group`` and ``age``, e.g. from
            :func:`~brainage_core.analysis.cohort.example_subjects`.
    """
    rows = [row for _, row in subjects.iterrows()]
    volumes = [_volume(row["image"]) for row in rows]
    return plot_volume_slices(volumes, [_label(row) for row in rows], vmax=float(np.percentile(volumes[0], 99.5)))


def plot_effect_maps(subjects: pd.DataFrame, relative_threshold: float = 0.05) -> Figure:
    """Each subject's ground-truth effect map over its image, on an axial slice just above the middle.

    Args:
        subjects: rows with ``image``, ``effect_map`` (absolute paths), ``group`` and ``age``.
        relative_threshold: effects below this fraction of the subject's maximum are not drawn.
    """
    fig, axes = plt.subplots(1, len(subjects), figsize=(3 * len(subjects), 3))
    for ax, (_, row) in zip(np.atleast_1d(axes), subjects.iterrows()):
        image = _volume(row["image"])
        effect = _volume(row["effect_map"])
        z = image.shape[2] // 2 + 2
        ax.imshow(image[:, :, z].T, origin="lower", cmap="gray")
        shown = np.ma.masked_less(effect[:, :, z].T, relative_threshold * effect.max())
        ax.imshow(shown, origin="lower", cmap="hot", alpha=0.7)
        ax.set_title(_label(row), fontsize=9)
        ax.set_axis_off()
    return fig


def plot_tissue_volumes(relative: pd.DataFrame, truth: pd.DataFrame, measured: pd.DataFrame) -> Figure:
    """Tissue against age: controls' GM and WM (ground truth), ventricles, and fractions measured from images.

    Args:
        relative: controls' head-size adjusted ``gm_ml`` and ``wm_ml`` in % of the young mean
            (:func:`~brainage_core.analysis.cohort.relative_tissue_volumes`); drawn with the
            published range of grey-matter loss.
        truth: the ground truth (``age``, ``group``, ``csf_ventricular_ml``).
        measured: controls' ``csf``, ``gm``, ``wm`` in % of the brain mask
            (:func:`~brainage_core.analysis.cohort.measured_tissue_fractions`).
    """
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for column, label in (("gm_ml", "grey matter"), ("wm_ml", "white matter")):
        axes[0].scatter(relative["age"], relative[column], s=8, label=label)
    years = np.linspace(20, 90, 50)
    slow, fast = _PUBLISHED_GM_LOSS_PER_YEAR
    axes[0].fill_between(
        years,
        100 * (1 - slow * (years - _GM_LOSS_FROM_AGE)),
        100 * (1 - fast * (years - _GM_LOSS_FROM_AGE)),
        color="grey",
        alpha=0.2,
        label="published GM loss 0.2-0.5 %/y",
    )
    axes[0].set(xlabel="age (years)", ylabel="% of the under-35 mean", title="CN: GM, WM / head size (ground truth)")
    axes[0].legend(frameon=False, fontsize=8)
    sns.scatterplot(data=truth, x="age", y="csf_ventricular_ml", hue="group", palette=GROUP_COLOURS, s=12, ax=axes[1])
    axes[1].set(xlabel="age (years)", ylabel="ventricular CSF (ml)", title="ventricles (ground truth)")
    for column in ("csf", "gm", "wm"):
        axes[2].scatter(measured["age"], measured[column], s=8, label=column.upper())
    axes[2].set(xlabel="age (years)", ylabel="% of the brain mask", title="CN: measured from the images")
    axes[2].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def plot_ventricle_excess(patients: pd.DataFrame) -> Figure:
    """Patients' ventricular excess over age-matched controls, per disease stage (box and points).

    Args:
        patients: from :func:`~brainage_core.analysis.cohort.ventricle_excess` (``stage`` and the
            excess column).
    """
    fig, ax = plt.subplots()
    order = sorted(patients["stage"].unique())
    sns.boxplot(data=patients, x=VENTRICLE_EXCESS, y="stage", order=order, color="white", ax=ax)
    sns.stripplot(data=patients, x=VENTRICLE_EXCESS, y="stage", order=order, size=3, ax=ax)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(xlabel="ventricular CSF minus age-matched controls (ml)", ylabel="")
    return fig


def plot_realism(cohorts: dict[str, pd.DataFrame]) -> Figure:
    """Each structure's volume / total brain against age, cohorts side by side (one panel each).

    Each cohort's ratio is drawn in % of its own mean under 35 years, so trajectories and spreads
    compare although the phantom's structures are not DLMUSE's (its hippocampus is a template
    region, its CSF classes the template's).

    Args:
        cohorts: name -> healthy subjects' structure volumes with an ``age`` column
            (:func:`~brainage_core.cohorts.calibration.phantom_structure_volumes` or
            :func:`~brainage_core.cohorts.calibration.read_labelled_cohort`), e.g. phantom and IXI.
            Each gets its points and a quadratic fit.
    """
    fig, axes = plt.subplots(1, len(STRUCTURES), figsize=(3.0 * len(STRUCTURES), 3.2))
    for ax, structure in zip(axes, STRUCTURES):
        for colour, (name, frame) in zip(sns.color_palette(n_colors=len(cohorts)), cohorts.items()):
            ratio = frame[structure] / frame["total_brain"]
            percent = 100.0 * ratio / ratio[frame["age"] < 35].mean()
            ax.scatter(frame["age"], percent, s=6, alpha=0.5, color=colour, label=f"{name} (n={len(frame)})")
            years = np.linspace(frame["age"].min(), frame["age"].max(), 50)
            ax.plot(years, np.polyval(np.polyfit(frame["age"], percent, 2), years), color=colour, linewidth=2)
        ax.set(xlabel="age (years)", title=_STRUCTURE_LABELS[structure])
    axes[0].set_ylabel("volume / total brain, % of own under-35 mean")
    axes[0].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig
