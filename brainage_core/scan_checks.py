"""Is a NIfTI file a usable scan? One set of checks for ``brainage validate`` and the loaders.

The checks run in increasing cost, and the cheap ones guard the expensive ones: the header is
checked (dimensions, voxel sizes, affine, the grid after resampling) before a single voxel is
read, so a 39 KB file declaring 1000^3 voxels, or a 400 mm voxel size, is refused instead of
allocating gigabytes. Then the voxel data are read once (a truncated ``.nii.gz`` fails here) and
checked for NaN/Inf and for constant images and empty masks. A mask must sit on its image's
voxel grid: same shape and same affine.

Every message starts with the file's path and says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "MAX_EXTENT_MM",
    "MAX_VOXELS",
    "ZOOM_RANGE_MM",
    "data_problems",
    "grid_problems",
    "header_problems",
    "scan_problems",
    "value_problems",
]

MAX_VOXELS = 512**3  # per volume, as stored or after resampling (~0.5 GB as float32)
ZOOM_RANGE_MM = (0.05, 20.0)  # plausible voxel sizes of a structural MRI
MAX_EXTENT_MM = 1000.0  # field of view per axis; a head is ~250 mm


def _load(path: Path) -> nib.Nifti1Image | str:
    """The image object (header only is read) or a problem message."""
    if not path.is_file():
        return f"{path}: file not found"
    try:
        image = nib.load(path)
    except Exception as error:  # nibabel raises several types for unreadable files
        return f"{path}: not a readable NIfTI image ({type(error).__name__}: {error}); re-export it as .nii or .nii.gz"
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        return f"{path}: not a NIfTI image ({type(image).__name__}); convert it to .nii or .nii.gz"
    return image


def header_problems(path: str | os.PathLike[str]) -> list[str]:
    """Problems visible in the header alone: dimensions, voxel sizes, affine."""
    image = _load(Path(path))
    return [image] if isinstance(image, str) else _header_problems(Path(path), image)


def _header_problems(path: Path, image: nib.Nifti1Image) -> list[str]:
    shape = tuple(int(s) for s in image.shape)
    problems = []
    if len(shape) == 4 and shape[3] != 1:
        problems.append(
            f"{path}: a 4-D series of {shape[3]} volumes; give one 3-D T1 volume (extract it, e.g. with nibabel)"
        )
    elif len(shape) not in (3, 4):
        problems.append(f"{path}: {len(shape)}-D image of shape {shape}; a T1 scan must be a 3-D volume")
    if any(size == 0 for size in shape):
        problems.append(f"{path}: the header declares an empty dimension (shape {shape})")
    elif int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        problems.append(
            f"{path}: the header declares {shape} = {np.prod(shape, dtype=np.int64):,} voxels, more than {MAX_VOXELS:,}; a corrupt header or not a structural scan"
        )
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=float)
    if (
        len(zooms) < 3
        or not np.all(np.isfinite(zooms))
        or np.any(zooms < ZOOM_RANGE_MM[0])
        or np.any(zooms > ZOOM_RANGE_MM[1])
    ):
        problems.append(
            f"{path}: voxel size {tuple(round(float(z), 4) for z in zooms)} mm is outside {ZOOM_RANGE_MM[0]}-{ZOOM_RANGE_MM[1]} mm; check the header's pixdim"
        )
    affine = image.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        problems.append(
            f"{path}: the affine (voxel-to-world matrix) is not finite or not invertible; fix the header's qform/sform"
        )
    elif len(shape) >= 3 and not problems:
        extent = np.asarray(shape[:3]) * zooms
        if np.any(extent > MAX_EXTENT_MM):
            problems.append(
                f"{path}: field of view {tuple(round(float(e)) for e in extent)} mm exceeds {MAX_EXTENT_MM:g} mm per axis; a corrupt header?"
            )
    return problems


def _resampled_problems(path: Path, image: nib.Nifti1Image, spacing: float) -> list[str]:
    """Whether resampling to ``spacing`` mm would make a grid larger than :data:`MAX_VOXELS`."""
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=float)
    voxels = float(np.prod(np.asarray(image.shape[:3]) * zooms / spacing))
    if not np.isfinite(voxels) or voxels > MAX_VOXELS:
        return [
            f"{path}: resampling to {spacing:g} mm would need {voxels:,.0f} voxels (limit {MAX_VOXELS:,}); check the voxel size in the header"
        ]
    return []


def value_problems(path: str | os.PathLike[str], data: np.ndarray, is_mask: bool = False) -> list[str]:
    """Problems of voxel values already in memory: NaN/Inf, a constant image, an empty mask."""
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        return [f"{path}: contains NaN or infinite values; fix or re-export the image"]
    if is_mask:
        if not np.any(data > 0):
            return [f"{path}: the mask is empty (no voxel > 0); give the brain mask of this scan"]
        return []
    if data.size == 0 or np.ptp(data) == 0:
        value = float(data.flat[0]) if data.size else float("nan")
        return [f"{path}: the image is constant (every voxel is {value:g}); not a scan"]
    return []


def data_problems(path: str | os.PathLike[str], is_mask: bool = False) -> list[str]:
    """Read the voxel data (after :func:`header_problems` passed) and check their values."""
    image = _load(Path(path))
    return [image] if isinstance(image, str) else _data_problems(Path(path), image, is_mask)


def _data_problems(path: Path, image: nib.Nifti1Image, is_mask: bool) -> list[str]:
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # gzip/zlib/EOF errors of truncated files, and others
        return [
            f"{path}: the voxel data cannot be read ({type(error).__name__}: {error}); the file is truncated or corrupt: re-copy or re-export it"
        ]
    return value_problems(path, data, is_mask)


def grid_problems(image_path: str | os.PathLike[str], mask_path: str | os.PathLike[str]) -> list[str]:
    """Whether the mask is on the image's voxel grid; the message says what differs."""
    image, mask = _load(Path(image_path)), _load(Path(mask_path))
    if isinstance(image, str) or isinstance(mask, str):
        return []
    return _grid_problems(image_path, image, mask_path, mask)


def _grid_problems(
    image_path: str | os.PathLike[str], image: nib.Nifti1Image, mask_path: str | os.PathLike[str], mask: nib.Nifti1Image
) -> list[str]:
    problems = []
    if tuple(image.shape[:3]) != tuple(mask.shape[:3]):
        problems.append(
            f"{mask_path}: mask shape {tuple(mask.shape[:3])} differs from image {image_path} shape {tuple(image.shape[:3])}"
        )
    difference = float(np.max(np.abs(image.affine - mask.affine)))
    if difference > 1e-3:
        problems.append(
            f"{mask_path}: mask affine differs from image {image_path} affine (largest difference {difference:.3g} mm); "
            f"the mask must be on the image's voxel grid (resample it with nearest neighbour)\n"
            f"      image affine {np.round(image.affine, 3).tolist()}\n      mask affine  {np.round(mask.affine, 3).tolist()}"
        )
    return problems


def scan_problems(
    image_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str] | None = None,
    read_data: bool = True,
    spacing: float | None = None,
) -> list[str]:
    """Every problem of a scan and its optional mask, cheapest checks first; each file is opened once.

    Args:
        image_path: the T1 NIfTI.
        mask_path: its brain mask, or ``None``.
        read_data: also read the voxel data (truncation, NaN/Inf, constant image, empty mask).
        spacing: also check the grid after resampling to this voxel size (mm).

    Returns:
        Messages, each starting with the file's path; empty when the scan is usable.
    """
    image_path = Path(image_path)
    image = _load(image_path)
    problems = [image] if isinstance(image, str) else _header_problems(image_path, image)
    mask: tuple[Path, nib.Nifti1Image] | None = None
    if mask_path is not None:
        mask_file = Path(mask_path)
        loaded = _load(mask_file)
        if isinstance(loaded, str):
            problems.append(loaded)
        else:
            problems += _header_problems(mask_file, loaded)
            mask = (mask_file, loaded)
    if problems or isinstance(image, str):  # a str is a load error, already among the problems
        return problems
    if spacing is not None:
        problems += _resampled_problems(image_path, image, spacing)
    if mask is not None:
        problems += _grid_problems(image_path, image, *mask)
    if read_data and not problems:
        problems += _data_problems(image_path, image, is_mask=False)
        if mask is not None:
            problems += _data_problems(*mask, is_mask=True)
    return problems
