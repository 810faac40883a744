"""Saliency maps as files and figures: NIfTI writing and reading, group averages, map plots.

* :func:`save_map_nifti` writes a map ``[1, X, Y, Z]`` on the preprocessed grid with its world
  affine; :func:`load_on_grid` brings a NIfTI (effect map, labels) onto that grid.
* :func:`group_average_maps` and :func:`age_band_labels`: mean maps per group or age band.
* :func:`plot_map_on_template`: a map over a background with nilearn (used by
  :func:`~brainage_core.analysis.interpret.explain_run`, so the CLI's ``brainage explain``
  writes the figures).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import nibabel.processing
import numpy as np
import torch
from nibabel.spatialimages import SpatialImage

from brainage_core.fileio import atomic_path

__all__ = [
    "age_band_labels",
    "group_average_maps",
    "load_on_grid",
    "plot_map_on_template",
    "save_map_nifti",
]

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def age_band_labels(ages: Sequence[float] | np.ndarray, width: float = 10.0) -> list[str]:
    """Label each age with its band ``[lo, lo + width)``, e.g. ``"60-70"`` for 64.5 years."""
    if not width > 0:
        raise ValueError(f"age band width must be > 0, got {width}")
    bands = []
    for age in np.asarray(ages, dtype=float):
        if not np.isfinite(age):
            raise ValueError(f"cannot band a non-finite age {age}")
        low = math.floor(age / width) * width
        bands.append(f"{low:g}-{low + width:g}")
    return bands


def group_average_maps(maps: torch.Tensor, labels: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Mean map per label (group, age band, ...).

    Args:
        maps: ``[N, 1, X, Y, Z]``.
        labels: ``N`` labels (converted with ``str``).

    Returns:
        ``{label: mean map [1, X, Y, Z]}`` in sorted label order.
    """
    if len(labels) != len(maps):
        raise ValueError(f"{len(maps)} maps but {len(labels)} labels")
    names = np.array([str(label) for label in labels])
    return {name: maps[torch.from_numpy(np.flatnonzero(names == name))].float().mean(0) for name in sorted(set(names))}


def _nifti_suffix(path: Path) -> str:
    for suffix in _NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: a NIfTI map needs a .nii or .nii.gz name")


def save_map_nifti(
    map_: torch.Tensor | np.ndarray, affine: torch.Tensor | np.ndarray, path: str | os.PathLike[str]
) -> Path:
    """Write a map as float32 NIfTI (atomically) with the voxel-to-world ``affine``.

    Args:
        map_: ``[1, X, Y, Z]`` or ``[X, Y, Z]``.
        affine: ``[4, 4]`` voxel-to-world (mm) matrix of the preprocessed grid (from
            :func:`~brainage_core.data.load_volumes`).
        path: destination ``.nii.gz`` or ``.nii``.

    Returns:
        The path written.
    """
    path = Path(path)
    suffix = _nifti_suffix(path)
    data = np.asarray(map_.detach().cpu().float() if isinstance(map_, torch.Tensor) else map_, dtype=np.float32)
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]  # data: [X, Y, Z]
    if data.ndim != 3:
        raise ValueError(f"a map must be [1, X, Y, Z] or [X, Y, Z], got {data.shape}")
    matrix = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"affine must be [4, 4], got {matrix.shape}")
    image = nib.Nifti1Image(data, matrix)
    image.header.set_xyzt_units("mm")
    with atomic_path(path, suffix=suffix) as temp:
        nib.save(image, temp)
    return path


def load_on_grid(
    path: str | os.PathLike[str], affine: torch.Tensor | np.ndarray, shape: Sequence[int], order: int = 1
) -> np.ndarray:
    """Resample a NIfTI file (effect map, label volume) onto a preprocessed grid, by world mm.

    The preprocessed grid is the one :func:`~brainage_core.data.load_volumes` returns
    (``affine`` ``[4, 4]`` and ``shape`` ``(X, Y, Z)``); alignment goes through the world
    coordinates, so it holds whatever resampling, cropping or padding the preprocessing did.

    Args:
        path: a 3-D NIfTI in the same world space as the scan it belongs to.
        affine: ``[4, 4]`` voxel-to-world matrix of the target grid.
        shape: target ``(X, Y, Z)``.
        order: spline order; 1 (trilinear) for maps, 0 (nearest) for integer labels.

    Returns:
        float64 ``[X, Y, Z]`` (zero outside the file's field of view).
    """
    image = cast(SpatialImage, nib.load(str(path)))  # nib.load is typed as returning any FileBasedImage
    data_shape = image.shape
    if len(data_shape) == 4 and data_shape[3] == 1:
        image = nib.Nifti1Image(np.asarray(image.dataobj)[..., 0], image.affine)
    elif len(data_shape) != 3:
        raise ValueError(f"{path}: expected a 3-D volume, got shape {data_shape}")
    matrix = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    target = (tuple(int(s) for s in shape), matrix)
    resampled = nibabel.processing.resample_from_to(image, target, order=order, mode="constant", cval=0.0)
    return np.asarray(resampled.dataobj, dtype=np.float64)


def _mni_template() -> nib.Nifti1Image:
    # nilearn is imported where used: its import (matplotlib included) would slow every CLI command.
    from nilearn import datasets

    return datasets.load_mni152_template(resolution=2)


def plot_map_on_template(
    map_img: nib.Nifti1Image | str | os.PathLike[str],
    title: str,
    bg_img: nib.Nifti1Image | str | os.PathLike[str] | None = None,
    signed: bool = True,
    threshold: float | None = None,
    display_mode: str = "ortho",
    **kwargs: Any,
) -> Any:
    """Show a map over a background with :func:`nilearn.plotting.plot_stat_map`.

    Args:
        map_img: NIfTI image or path (e.g. from :func:`save_map_nifti`).
        title: figure title.
        bg_img: background; ``None`` uses nilearn's MNI152 2 mm template (ships with nilearn,
            works offline). Use it for template-space data only; for native-space scans pass
            the (mean) preprocessed scan instead.
        signed: symmetric diverging colour scale (``True``) or a one-sided scale for ReLU maps.
        threshold: hide ``|value| < threshold``; ``None`` hides 5% of the map's max ``|value|``.
        display_mode: nilearn cut mode (``ortho``, ``z``, ``x``, ``mosaic``...).
        kwargs: passed on to :func:`~nilearn.plotting.plot_stat_map`.

    Returns:
        The nilearn display; ``display.savefig(path)`` writes it, ``display.close()`` frees it.
    """
    from nilearn import image as nimage
    from nilearn import plotting

    stat = nimage.load_img(map_img)
    data = np.asarray(stat.dataobj, dtype=np.float64)
    vmax = float(np.abs(data).max()) or 1.0
    with warnings.catch_warnings():
        if not data.any():  # an all-zero map (e.g. an untrained model) is drawn blank
            warnings.filterwarnings("ignore", message="Given img is empty|empty mask", category=UserWarning)
        return plotting.plot_stat_map(
            stat,
            bg_img=_mni_template() if bg_img is None else bg_img,
            title=title,
            threshold=0.05 * vmax if threshold is None else threshold,
            display_mode=display_mode,
            cmap="RdBu_r" if signed else "hot",
            symmetric_cbar=signed,
            vmax=vmax,
            vmin=None if signed else 0.0,
            **kwargs,
        )
