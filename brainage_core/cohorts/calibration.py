"""How realistic a cohort's anatomy is: age trajectories and spread of structure volumes.

The synthetic phantom is only as useful as its resemblance to real brains. This module measures
the two properties brain-age models feed on, for any cohort with per-subject structure volumes
(the phantom's true tissue volumes, :func:`phantom_structure_volumes`, or a labelled real cohort
such as the IXI scans with their DLMUSE parcellations, :func:`read_labelled_cohort`), so the
phantom can be set side by side with real scans:

- how tightly each structure tracks age: the R2 of a quadratic fit of
  ``volume / total brain`` on age (:func:`calibration_table`);
- how much subjects of the same age differ: the coefficient of variation of
  ``volume / total brain`` within 15-year age bands;
- how well ridge regression on the structure volumes predicts age (:func:`volume_ridge_mae`,
  5-fold cross-validation);
- how much brains differ in shape once aligned to the template: the Dice overlap of each brain
  mask with its cohort's majority mask (:func:`mask_overlap`; the IXI import's labels after its
  affine registration, the phantom's masks);
- what a model trained on controls measures in the patients (:func:`volume_model_predictions`,
  ridge on the true volumes): the reference for the phantom's disease parameters, whose latent
  gaps are set so that the measured gaps fall in the published ranges.

:func:`compare_calibration` puts two cohorts' tables side by side with the targets of the
phantom's calibration (R2 within :data:`R2_TOLERANCE`, band CV within
:data:`CV_TOLERANCE_PP` percentage points).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from brainage_core.manifest import SCORE_COLUMNS

__all__ = [
    "AGE_BANDS",
    "CALIBRATION_AGE_RANGE",
    "CV_TOLERANCE_PP",
    "DLMUSE_STRUCTURES",
    "R2_TOLERANCE",
    "STRUCTURES",
    "calibration_subjects",
    "calibration_table",
    "compare_calibration",
    "dlmuse_structure_volumes",
    "mask_overlap",
    "phantom_structure_volumes",
    "read_labelled_cohort",
    "region_volumes",
    "volume_model_predictions",
    "volume_ridge",
    "volume_ridge_mae",
]

STRUCTURES: tuple[str, ...] = ("ventricles", "hippocampus", "gm", "wm", "csf")
AGE_BANDS: tuple[tuple[float, float], ...] = ((20.0, 35.0), (35.0, 50.0), (50.0, 65.0), (65.0, 80.0))
CALIBRATION_AGE_RANGE: tuple[float, float] = (20.0, 80.0)  # ages both the phantom and IXI cover
R2_TOLERANCE = 0.10  # phantom R2 within this of the real cohort's
CV_TOLERANCE_PP = 10.0  # phantom band CV within this many percentage points of the real cohort's
MIN_BAND_SUBJECTS = 8  # bands with fewer subjects get no CV

# DLMUSE label numbers (NiChart's muse_dict.csv) of each structure. GM is every other label but
# the brainstem (35), as in MUSE's GM composite; total brain is GM + WM.
DLMUSE_STRUCTURES: dict[str, tuple[int, ...]] = {
    "ventricles": (4, 11, 49, 50, 51, 52),  # 3rd, 4th, inferior lateral and lateral ventricles
    "hippocampus": (47, 48),
    "csf": (1,),  # cortical (sulcal) CSF
    "wm": (40, 41, *range(81, 96)),  # cerebellar, lobar WM, fornix, internal capsule, corpus callosum
}
DLMUSE_NOT_GM: tuple[int, ...] = (35, *DLMUSE_STRUCTURES["ventricles"], *DLMUSE_STRUCTURES["csf"])


def region_volumes(label_paths: Sequence[str | os.PathLike[str]], subject_ids: Sequence[str]) -> pd.DataFrame:
    """Volume in ml of every integer label (0 excluded) of each label image.

    Returns:
        One row per subject (index ``subject_id``), one column per label; absent labels are 0.
    """
    rows = {}
    for subject, path in zip(subject_ids, label_paths):
        image = cast(nib.Nifti1Image, nib.load(path))
        labels = np.asarray(image.dataobj).astype(np.int64).ravel()
        counts = np.bincount(labels[labels > 0])
        voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
        rows[subject] = {int(label): count * voxel_ml for label, count in enumerate(counts) if count}
    return pd.DataFrame.from_dict(rows, orient="index").fillna(0.0).sort_index(axis=1).rename_axis("subject_id")


def mask_overlap(mask_paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """Dice overlap of each brain mask with its cohort's majority mask: how much shapes differ.

    The majority mask holds the voxels inside at least half of the masks. After alignment to a
    template, the lower the overlaps, the more the brains differ in outline and placement.

    Args:
        mask_paths: masks (or label images: voxels > 0) of one cohort, all on one grid (e.g.
            template space), at least 2.

    Returns:
        ``(N,)`` Dice of each mask with the majority mask, in the order given.

    Raises:
        ValueError: fewer than 2 masks, or masks on different grids (naming the file).
    """
    if len(mask_paths) < 2:
        raise ValueError(f"mask overlap needs at least 2 masks, got {len(mask_paths)}")

    def read(path: str | os.PathLike[str]) -> np.ndarray:
        return np.asarray(cast(nib.Nifti1Image, nib.load(path)).dataobj) > 0

    counts: np.ndarray | None = None  # [X, Y, Z] number of masks holding each voxel
    for path in mask_paths:
        mask = read(path)
        if counts is None:
            counts = np.zeros(mask.shape, dtype=np.int32)
        elif mask.shape != counts.shape:
            raise ValueError(f"{path}: grid {mask.shape} differs from {mask_paths[0]}'s {counts.shape}; resample first")
        counts += mask
    assert counts is not None  # at least 2 masks
    majority = counts * 2 >= len(mask_paths)
    overlaps = []
    for path in mask_paths:  # read again rather than held: memory stays one mask, not the cohort
        mask = read(path)
        overlaps.append(2.0 * float((mask & majority).sum()) / float(mask.sum() + majority.sum()))
    return np.asarray(overlaps)


def read_labelled_cohort(folder: str | os.PathLike[str]) -> pd.DataFrame:
    """Structure volumes and ages of a labelled real cohort laid out as the shared IXI subset.

    Args:
        folder: holds ``participants.csv`` (columns ``MRID``, ``Age``) and
            ``seg/<MRID>_T1_DLMUSE.nii.gz`` (DLMUSE label images); subjects without a label image
            or an age are left out.

    Returns:
        One row per subject (index ``subject_id``): :func:`dlmuse_structure_volumes` and ``age``.

    Raises:
        FileNotFoundError: the folder lacks ``participants.csv`` or any label image, naming it.
    """
    folder = Path(folder)
    table = folder / "participants.csv"
    if not table.is_file():
        raise FileNotFoundError(
            f"{table} not found: give the folder holding participants.csv and seg/ (e.g. ixi_t1_2mm)"
        )
    participants = pd.read_csv(table)
    missing = {"MRID", "Age"} - set(participants.columns)
    if missing:
        raise ValueError(f"{table}: no column(s) {sorted(missing)}; expected MRID,Age,Sex")
    participants = participants.dropna(subset=["Age"]).set_index("MRID")
    labels = {mrid: folder / "seg" / f"{mrid}_T1_DLMUSE.nii.gz" for mrid in participants.index}
    labels = {mrid: path for mrid, path in labels.items() if path.is_file()}
    if not labels:
        raise FileNotFoundError(f"{folder / 'seg'}: no <MRID>_T1_DLMUSE.nii.gz label image for the subjects of {table}")
    volumes = dlmuse_structure_volumes(region_volumes(list(labels.values()), list(labels)))
    return volumes.assign(age=participants["Age"].reindex(volumes.index).astype(float))


def dlmuse_structure_volumes(region_volumes: pd.DataFrame) -> pd.DataFrame:
    """Structure volumes (ml) from DLMUSE label volumes.

    Args:
        region_volumes: one row per subject, one column per label number (ml), as
            :func:`region_volumes` returns.

    Returns:
        Columns ``ventricles``, ``hippocampus``, ``gm``, ``wm``, ``csf``, ``total_brain`` (GM + WM).
    """
    labels = [int(c) for c in region_volumes.columns]
    volumes = region_volumes.set_axis(labels, axis=1)

    def total(numbers: Sequence[int]) -> pd.Series:
        return volumes[[n for n in numbers if n in labels]].sum(axis=1)

    out = pd.DataFrame({name: total(numbers) for name, numbers in DLMUSE_STRUCTURES.items()})
    not_gm = set(DLMUSE_NOT_GM) | set(DLMUSE_STRUCTURES["wm"]) | set(DLMUSE_STRUCTURES["hippocampus"])
    out["gm"] = total([n for n in labels if n not in not_gm]) + out["hippocampus"]
    out["total_brain"] = out["gm"] + out["wm"]
    return out[[*STRUCTURES, "total_brain"]]


def phantom_structure_volumes(ground_truth: pd.DataFrame) -> pd.DataFrame:
    """Structure volumes (ml) of synthetic subjects from their true tissue volumes.

    Args:
        ground_truth: a cohort's ``ground_truth.csv`` (columns ``gm_ml``, ``wm_ml``, ``wmh_ml``,
            ``csf_ventricular_ml``, ``csf_sulcal_ml``, ``hippocampal_gm_ml``), index as wanted.

    Returns:
        Columns as :func:`dlmuse_structure_volumes` (WMH count as WM, as a T1 segmentation does).
    """
    out = pd.DataFrame(
        {
            "ventricles": ground_truth["csf_ventricular_ml"],
            "hippocampus": ground_truth["hippocampal_gm_ml"],
            "gm": ground_truth["gm_ml"],
            "wm": ground_truth["wm_ml"] + ground_truth["wmh_ml"],
            "csf": ground_truth["csf_sulcal_ml"],
        }
    )
    out["total_brain"] = out["gm"] + out["wm"]
    return out


def _band_label(band: tuple[float, float]) -> str:
    return f"cv_{band[0]:g}_{band[1]:g}"


def calibration_table(
    volumes: pd.DataFrame, ages: pd.Series | np.ndarray, bands: Sequence[tuple[float, float]] = AGE_BANDS
) -> pd.DataFrame:
    """R2 of ``volume / total brain`` on age, and its spread within age bands, per structure.

    Args:
        volumes: one row per (healthy) subject, columns :data:`STRUCTURES` and ``total_brain``.
        ages: chronological ages aligned with ``volumes``' rows.
        bands: ``[low, high)`` age bands (years).

    Returns:
        One row per structure (index ``structure``): ``r2_age`` (quadratic least-squares fit),
        ``cv_<low>_<high>`` (percent, SD / mean of the ratio within the band; NaN with fewer
        than :data:`MIN_BAND_SUBJECTS` subjects) and ``n`` (subjects).
    """
    age = np.asarray(ages, dtype=np.float64)
    if len(age) != len(volumes):
        raise ValueError(f"{len(age)} ages for {len(volumes)} rows of volumes")
    missing = [name for name in (*STRUCTURES, "total_brain") if name not in volumes.columns]
    if missing:
        raise ValueError(
            f"volumes lack the column(s) {missing}; use dlmuse_structure_volumes or phantom_structure_volumes"
        )
    if len(age) < 4:
        raise ValueError(f"a calibration table needs at least 4 subjects, got {len(age)}")
    design = np.column_stack([np.ones_like(age), age, age**2])
    rows = {}
    for name in STRUCTURES:
        ratio = (volumes[name] / volumes["total_brain"]).to_numpy(dtype=np.float64)
        fitted = design @ np.linalg.lstsq(design, ratio, rcond=None)[0]
        total = float(((ratio - ratio.mean()) ** 2).sum())
        row: dict[str, float] = {"r2_age": 1.0 - float(((ratio - fitted) ** 2).sum()) / total if total else math.nan}
        for band in bands:
            inside = ratio[(age >= band[0]) & (age < band[1])]
            enough = inside.size >= MIN_BAND_SUBJECTS
            row[_band_label(band)] = 100.0 * float(inside.std(ddof=1) / inside.mean()) if enough else math.nan
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("structure")
    table["n"] = len(age)
    return table


def compare_calibration(phantom: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Two :func:`calibration_table` results side by side, with the calibration targets.

    Returns:
        One row per (structure, measure) (``measure``: ``r2_age`` or a band's ``cv_...``):
        ``phantom``, ``reference``, ``difference`` (phantom minus reference), ``tolerance``
        (:data:`R2_TOLERANCE` or :data:`CV_TOLERANCE_PP`) and ``within`` (bool; False where
        either value is missing).
    """
    measures = [column for column in phantom.columns if column != "n" and column in reference.columns]
    rows = []
    for structure in phantom.index.intersection(reference.index):
        for measure in measures:
            ours, theirs = float(phantom.at[structure, measure]), float(reference.at[structure, measure])
            tolerance = R2_TOLERANCE if measure == "r2_age" else CV_TOLERANCE_PP
            difference = ours - theirs
            rows.append(
                {
                    "structure": structure,
                    "measure": measure,
                    "phantom": ours,
                    "reference": theirs,
                    "difference": difference,
                    "tolerance": tolerance,
                    "within": bool(abs(difference) <= tolerance) if not math.isnan(difference) else False,
                }
            )
    return pd.DataFrame(rows)


def volume_ridge() -> Pipeline:
    """The ridge baseline on volumes: standardised features, the penalty chosen by leave-one-out
    within the training data (scikit-learn ``RidgeCV``); shared with the real-data chapter."""
    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 5, 29)))


def volume_ridge_mae(features: pd.DataFrame, ages: pd.Series | np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Mean absolute error (years) of ridge regression on volumes, by ``folds``-fold cross-validation.

    The model is :func:`volume_ridge`, the real-data chapter's ridge baseline.
    """
    age = np.asarray(ages, dtype=np.float64)
    model = volume_ridge()
    splitter = KFold(folds, shuffle=True, random_state=seed)
    predicted = cross_val_predict(model, features.to_numpy(dtype=np.float64), age, cv=splitter)
    return float(np.mean(np.abs(predicted - age)))


def calibration_subjects(
    ages: pd.Series, groups: pd.Series | None = None, age_range: tuple[float, float] = CALIBRATION_AGE_RANGE
) -> pd.Series:
    """Boolean mask of the healthy (``CN``; all when ``groups`` is ``None``) subjects within ``age_range``."""
    keep = (ages >= age_range[0]) & (ages < age_range[1])
    return keep & (groups == "CN") if groups is not None else keep


def volume_model_predictions(truth: pd.DataFrame) -> pd.DataFrame:
    """Brain ages of every subject from a ridge model on the true tissue volumes, fitted on controls.

    The disease calibration's reference model: trained on the healthy ``train`` split of a
    synthetic cohort's ground truth (its ``*_ml`` volumes), so that every patient and every
    healthy ``val``/``test`` subject is predicted out of sample, as in the book's runs.

    Args:
        truth: ``ground_truth.csv`` (``subject_id``, ``group``, ``split``, ``age``, ``sex``,
            ``true_gap``, scores and ``*_ml`` volumes).

    Returns:
        The columns of a run's ``predictions.csv`` (``subject_id``, ``group``, ``split``, ``age``,
        ``sex``, ``predicted_age``, ``true_gap`` and the scores), ready for
        :func:`brainage_core.analysis.metrics.corrected_predictions`.
    """
    features = truth[[column for column in truth.columns if column.endswith("_ml")]].to_numpy(dtype=np.float64)
    train = ((truth["group"] == "CN") & (truth["split"] == "train")).to_numpy()
    if train.sum() < 10:
        raise ValueError(f"the volume model needs at least 10 healthy training subjects, found {int(train.sum())}")
    model = volume_ridge().fit(features[train], truth["age"].to_numpy()[train])
    keep = [c for c in ("subject_id", "group", "split", "age", "sex", "true_gap", *SCORE_COLUMNS) if c in truth.columns]
    return truth[keep].assign(predicted_age=model.predict(features), image="")
