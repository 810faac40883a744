"""A floor for brain-age models: ridge regression on simple image measures.

:func:`baseline_age_prediction` fits ridge on tissue volumes measured from the images (by
:func:`brainage_core.cohorts.synthetic.image_tissue_volumes`) or on downsampled voxels. It checks that a
cohort (the synthetic one in particular) carries age information a simple model can find, but
not so cleanly that age is read off perfectly: a deep model should beat this floor, and the
mean predictor is the floor's own floor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import cast

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from sklearn.feature_selection import VarianceThreshold
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from brainage_core.cohorts.synthetic import image_tissue_volumes
from brainage_core.data import assign_splits, training_subset
from brainage_core.manifest import read_manifest

__all__ = ["baseline_age_prediction", "downsampled_voxels", "split_baseline_errors"]


def downsampled_voxels(
    image_path: str | os.PathLike[str], mask_path: str | os.PathLike[str], resolution_mm: float = 8.0
) -> np.ndarray:
    """One image as a short feature vector: intensity-normalised, smoothed and downsampled.

    Intensities are divided by the median inside the mask (removing per-scan gain), the volume
    is Gaussian-smoothed (sigma = half the zoom factor) and zoomed to ``resolution_mm``.

    Args:
        image_path: T1 NIfTI.
        mask_path: brain mask on the same grid.
        resolution_mm: voxel size of the features.

    Returns:
        ``(V,)`` float32 features; the same length for images on the same grid.
    """
    # nib.load is typed as returning any image format; these files are NIfTI (the manifest's scans).
    image = cast(nib.Nifti1Image, nib.load(image_path))
    data = np.asarray(image.dataobj, dtype=np.float32)
    mask = np.asarray(cast(nib.Nifti1Image, nib.load(mask_path)).dataobj) > 0
    if not mask.any():
        raise ValueError(f"{image_path}: the brain mask is empty; check the mask file {mask_path}")
    data = data * mask / np.median(data[mask])
    factor = resolution_mm / float(image.header.get_zooms()[0])
    if factor > 1.0:
        data = ndi.zoom(ndi.gaussian_filter(data, factor / 2.0), 1.0 / factor, order=1)
    return data.ravel()


def _tissue_fractions(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """CSF / GM / WM fractions of each (image, mask) pair, measured from the image: ``[N, 3]``."""
    volumes = np.array([list(image_tissue_volumes(image, mask).values()) for image, mask in pairs])
    return volumes / volumes.sum(axis=1, keepdims=True)


def _fraction_ridge() -> Pipeline:
    """Ridge on the tissue fractions with their squares and products (penalty by leave-one-out CV)."""
    return make_pipeline(
        PolynomialFeatures(2, include_bias=False), StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15))
    )


def split_baseline_errors(
    manifest_path: str | os.PathLike[str],
    groups: Sequence[str] = ("CN",),
    fit_splits: Sequence[str] = ("train", "val"),
    train_subjects: int | None = None,
    test_fold: int | None = None,
) -> pd.DataFrame:
    """Test-split errors of the two baselines every comparison table carries.

    ``ridge``: ridge on tissue fractions measured from the images (as in
    :func:`baseline_age_prediction`), fitted on the ``fit_splits`` rows; ``mean``: predicting
    their mean age. Both see exactly the data a deep model sees for training and selection.

    Args:
        manifest_path: a manifest with a ``mask`` on every row (and ``split`` or ``fold``).
        groups: the groups fitted on and evaluated (healthy controls).
        fit_splits: the splits the baselines are fitted on.
        train_subjects: fit on this many of those rows only, chosen as a deep run with
            ``data.train_subjects`` chooses its training scans (:func:`~brainage_core.data.training_subset`).
        test_fold: the splits as a run with ``data.test_fold`` assigns them
            (:func:`~brainage_core.data.assign_splits`); ``None``: the manifest's ``split`` column.

    Returns:
        One row per (method, test subject): ``method``, ``seed`` (0), ``subject_id``, ``age``,
        ``predicted_age``, ``abs_error``, in the form of
        :func:`~brainage_core.analysis.compare.collect_runs`'s errors.
    """
    frame = read_manifest(manifest_path, check_images="exists")
    if "mask" not in frame.columns or (frame["mask"] == "").any():
        raise ValueError(f"{manifest_path}: every row needs a brain 'mask' for the baselines")
    split = assign_splits(frame, test_fold)
    in_groups = frame["group"].isin(list(groups))
    fit, test = frame[in_groups & split.isin(list(fit_splits))], frame[in_groups & (split == "test")]
    fit = fit.iloc[training_subset(fit["age"].to_numpy(), train_subjects)]
    if len(fit) < 5 or test.empty:
        raise ValueError(f"{manifest_path}: need >= 5 rows to fit and >= 1 test row of groups {list(groups)}")
    ridge = _fraction_ridge().fit(_tissue_fractions(list(zip(fit["image"], fit["mask"]))), fit["age"])
    predictions = {
        "ridge": ridge.predict(_tissue_fractions(list(zip(test["image"], test["mask"])))),
        "mean": np.full(len(test), fit["age"].mean()),
    }
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "method": method,
                    "seed": 0,
                    "subject_id": test["subject_id"].to_numpy(),
                    "age": test["age"].to_numpy(dtype=float),
                    "predicted_age": predicted,
                    "abs_error": np.abs(predicted - test["age"].to_numpy(dtype=float)),
                }
            )
            for method, predicted in predictions.items()
        ],
        ignore_index=True,
    )


def baseline_age_prediction(
    manifest_path: str | os.PathLike[str],
    n_splits: int = 5,
    seed: int = 0,
    groups: Sequence[str] | None = None,
    features: str = "volumes",
    resolution_mm: float = 8.0,
) -> dict[str, float | int | str]:
    """Cross-validated MAE of a ridge regression on simple image features vs the mean predictor.

    Args:
        manifest_path: a manifest with ``mask`` paths (images and masks are read).
        n_splits: folds of the shuffled K-fold cross-validation.
        seed: shuffling seed.
        groups: keep only these groups (e.g. ``("CN",)``); ``None`` keeps every subject.
        features: ``"volumes"``: CSF / GM / WM fractions of the mask measured from the image
            (:func:`image_tissue_volumes`) with their squares and products; ``"voxels"``:
            downsampled voxels (:func:`downsampled_voxels`, those that vary).
        resolution_mm: voxel size of the ``"voxels"`` features.

    Returns:
        ``n`` (subjects), ``features``, ``mae_ridge`` (years; RidgeCV on standardised features,
        its penalty chosen inside each training fold), ``mae_mean`` (years; predicting the
        training folds' mean age) and ``mae_ratio`` (ridge / mean).

    Raises:
        ValueError: unknown ``features``, or fewer than ``2 * n_splits`` subjects are left.
    """
    if features not in ("volumes", "voxels"):
        raise ValueError(f"features must be 'volumes' or 'voxels', got {features!r}")
    frame = read_manifest(manifest_path, check_images="exists")
    if "mask" not in frame.columns or (frame["mask"] == "").any():
        raise ValueError(f"{manifest_path}: every row needs a brain mask (column 'mask') for the baseline")
    if groups is not None:
        frame = frame[frame["group"].isin(list(groups))]
    if len(frame) < 2 * n_splits:
        raise ValueError(
            f"{manifest_path}: {len(frame)} subject(s) in groups {groups}; "
            f"need at least {2 * n_splits} for {n_splits}-fold CV (lower n_splits or add subjects)"
        )
    pairs = list(zip(frame["image"], frame["mask"]))
    if features == "volumes":
        matrix, ridge = _tissue_fractions(pairs), _fraction_ridge()
    else:
        matrix = np.stack([downsampled_voxels(image, mask, resolution_mm) for image, mask in pairs])
        # Voxels that barely vary (background, the brain's rim in a few subjects) would dominate
        # after standardisation; drop them (SD < 0.05 of the median brain intensity).
        ridge = make_pipeline(VarianceThreshold(0.05**2), StandardScaler(), RidgeCV(alphas=np.logspace(-1, 6, 15)))
    ages = frame["age"].to_numpy(dtype=float)
    folds = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
    predicted = cross_val_predict(ridge, matrix, ages, cv=folds)
    mean_predicted = np.empty_like(ages)
    for train, test in folds.split(matrix):
        mean_predicted[test] = ages[train].mean()
    mae_ridge = float(np.mean(np.abs(predicted - ages)))
    mae_mean = float(np.mean(np.abs(mean_predicted - ages)))
    ratio = mae_ridge / mae_mean
    return {"n": len(frame), "features": features, "mae_ridge": mae_ridge, "mae_mean": mae_mean, "mae_ratio": ratio}
