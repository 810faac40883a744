"""One synthetic subject's images, and tissue volumes measured on maps or on a T1.

:func:`synthesize_subject` ages the template tissue maps (:func:`~brainage_core.cohorts.synthetic.model.age_tissues`)
and adds the **individual variation**: a random diffeomorphic deformation, the rotation and
translation an affine registration leaves, the ventricle expansion, a multiplicative bias field,
per-site gain/contrast/noise and Rician noise; the GM/WM intensity contrast falls with age. The
images stand for scans affinely registered to the template: head size (sex-dependent) scales the
volumes (:func:`tissue_volumes`), not the image.

Tissue maps are changed in template space, then one coordinate map (individual transform
composed with the ventricle field) resamples every map with a single ``map_coordinates`` call
each, on the voxels that can hold brain. The effect map is ``|T1 - T1_ref|`` of the noise-free,
site-free intensities, where ``T1_ref`` is the same subject (same head, shape and pose) at the
reference age without disease.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from brainage_core.cohorts.synthetic.config import SynthConfig
from brainage_core.cohorts.synthetic.model import (
    SynthModel,
    age_tissues,
    aging_targets,
    diffeomorphic_displacement,
    field_at,
    smooth_field,
)
from brainage_core.cohorts.synthetic.subjects import SubjectParams

__all__ = ["SubjectImages", "age_derivative", "image_tissue_volumes", "synthesize_subject", "tissue_volumes"]


@dataclass
class SubjectImages:
    """One synthesised subject on the output grid.

    Attributes:
        image: ``(X, Y, Z)`` int16 T1 (WM about ``intensities.scale``), 0 outside the mask.
        effect: ``(X, Y, Z)`` float32 |noise-free T1 - reference T1| relative to WM.
        clean: ``(X, Y, Z)`` float32 noise-free, site-free T1 relative to WM (0 outside the mask).
        mask: ``(X, Y, Z)`` uint8 brain (intracranial) mask.
        tissues: ``(X, Y, Z)`` float32 fractions ``gm``, ``wm``, ``csf_ventricular``,
            ``csf_sulcal``, ``wmh``, ``hippocampal_gm``.
    """

    image: np.ndarray
    effect: np.ndarray
    clean: np.ndarray
    mask: np.ndarray
    tissues: dict[str, np.ndarray]


def synthesize_subject(model: SynthModel, subject: SubjectParams) -> SubjectImages:
    """Synthesise one subject's T1, mask, effect map and tissue maps (no files written).

    Deterministic: all randomness comes from ``subject.seed`` (and the scalars already in
    ``subject``), so the result does not depend on the process or the order of subjects.
    """
    config = model.config
    rng = np.random.default_rng(subject.seed)
    targets = aging_targets(subject, config)
    tissues = age_tissues(model, subject, targets, rng)

    # Output voxel -> template crop voxel: inverse rotation and translation about the brain
    # centre (the misregistration an affine alignment leaves), then the inverse smooth
    # deformation. The image stands for a scan after affine registration to the template, as the
    # IXI import makes them: head size is not in it, only in the volumes (see tissue_volumes).
    rotation = Rotation.from_euler("xyz", subject.rotation_deg, degrees=True).as_matrix()
    to_template = np.eye(4)
    to_template[:3, :3] = rotation.T
    moved_centre = model.centre_mm + np.array(subject.translation_mm)
    to_template[:3, 3] = model.centre_mm - rotation.T @ moved_centre
    index_map = np.linalg.inv(model.affine) @ to_template @ model.affine
    grid = np.indices(model.shape, dtype=np.float32).reshape(3, -1)
    offset = (index_map[:3, 3] - model.crop_start)[:, None].astype(np.float32)
    affine_part = index_map[:3, :3].astype(np.float32) @ grid + offset
    selected = np.flatnonzero(ndi.map_coordinates(model.maps["selectable"], affine_part, order=0, cval=0))
    points = grid[:, selected]
    deformation = diffeomorphic_displacement(rng, model)
    source = affine_part[:, selected] + np.stack([field_at(d, points, model) for d in deformation])

    # Compose with the ventricle expansion (blend of the two nearest precomputed levels).
    level = float(np.interp(targets["ventricle_ratio"], model.ventricle_ratios, np.arange(model.ventricle_ratios.size)))
    low = min(int(level), model.ventricle_ratios.size - 2)
    weight = level - low
    field = (1.0 - weight) * model.ventricle_displacements[low] + weight * model.ventricle_displacements[low + 1]
    coarse_source = source / model.coarse
    aged_source = source + np.stack([ndi.map_coordinates(c, coarse_source, order=1, mode="nearest") for c in field])

    def warp(volume: np.ndarray, where: np.ndarray) -> np.ndarray:
        return ndi.map_coordinates(volume, where, order=1, cval=0.0, output=np.float32)

    warped = {name: warp(volume, aged_source) for name, volume in tissues.items()}
    inside = warp(model.maps["envelope"], source) >= 0.5
    reference = warp(model.maps["t1_reference"], source)

    intensities = config.intensities
    contrast = config.aging.contrast_loss_per_year * (subject.biological_age - config.aging.reference_age)
    wm_level, gm_level = intensities.wm * (1.0 - contrast), intensities.gm * (1.0 + contrast)
    csf = warped["csf_ventricular"] + warped["csf_sulcal"]
    other = intensities.csf * csf + intensities.wmh * warped["wmh"]
    clean = (wm_level * warped["wm"] + gm_level * warped["gm"] + other) / intensities.wm
    scanner = wm_level * warped["wm"] + gm_level * (1.0 + subject.site_contrast) * warped["gm"] + other
    bias_field = smooth_field(rng, model, config.scanner.bias_field_spacing_mm, 1)[0]
    bias = np.exp(config.scanner.bias_field_sd * field_at(bias_field, points, model))
    gain = intensities.scale * subject.site_gain
    sigma = config.scanner.noise_sd * subject.site_noise * gain
    noise = rng.standard_normal((2, selected.size), dtype=np.float32) * sigma
    signal = np.hypot(gain * bias * scanner + noise[0], noise[1])  # magnitude image: Rician noise

    def to_grid(values: np.ndarray, dtype: Any) -> np.ndarray:
        volume = np.zeros(int(np.prod(model.shape)), dtype)
        volume[selected] = values
        return volume.reshape(model.shape)

    return SubjectImages(
        image=to_grid(np.clip(np.round(signal), 0, np.iinfo(np.int16).max) * inside, np.int16),
        effect=to_grid(np.abs(clean - reference) * inside, np.float32),
        clean=to_grid(clean * inside, np.float32),
        mask=to_grid(inside, np.uint8),
        tissues={name: to_grid(values, np.float32) for name, values in warped.items()},
    )


def age_derivative(model: SynthModel, subject: SubjectParams, step: float = 0.5) -> np.ndarray:
    """How the subject's noise-free T1 changes with biological age: the saliency ground truth.

    The central difference ``(T1(a + step) - T1(a - step)) / (2 step)`` of the noise-free,
    site-free image (:attr:`SubjectImages.clean`) at the subject's biological age ``a``, with
    everything else (head, shape, pose, WMH texture, disease) the subject's own: the voxels
    whose intensity the subject's aging moves, per year. Exact where the image is linear in age
    over ``a +- step``; WMH growth is stepwise (a voxel turns WMH or not), so WMH voxels show a
    step's jump where it happens.

    Returns:
        ``(X, Y, Z)`` float32, relative to WM intensity per year (signed).
    """
    if step <= 0:
        raise ValueError(f"step must be > 0 years, got {step}")
    older = synthesize_subject(model, dataclasses.replace(subject, age=subject.age + step))
    younger = synthesize_subject(model, dataclasses.replace(subject, age=subject.age - step))
    return ((older.clean - younger.clean) / (2.0 * step)).astype(np.float32)


def tissue_volumes(tissues: Mapping[str, np.ndarray], spacing: float, head_scale: float = 1.0) -> dict[str, float]:
    """Native volumes in ml of tissue-fraction maps on the template-aligned grid.

    The images are affinely aligned to the template, so a map's volume on the grid is scaled by
    ``head_scale ** 3`` (the determinant of the alignment, as modulated volumes are in
    template-space morphometry) to give the subject's own volume.

    Args:
        tissues: name -> ``(X, Y, Z)`` fraction map (e.g. :attr:`SubjectImages.tissues`).
        spacing: voxel size in mm.
        head_scale: the subject's linear head size relative to the template.

    Returns:
        name -> volume in ml.
    """
    voxel_ml = spacing**3 / 1000.0 * head_scale**3
    return {name: float(np.sum(volume, dtype=np.float64)) * voxel_ml for name, volume in tissues.items()}


def image_tissue_volumes(
    image_path: str | os.PathLike[str], mask_path: str | os.PathLike[str], config: SynthConfig | None = None
) -> dict[str, float]:
    """CSF / GM / WM volumes (ml) measured from a T1 image by intensity thresholds.

    The WM level is the 90th percentile of the intensities in the mask (robust to site gain);
    voxels are CSF below the CSF/GM midpoint and WM above the GM/WM midpoint of
    ``config.intensities`` (relative to WM). A crude segmentation, good enough to see atrophy.

    Args:
        image_path: T1 NIfTI.
        mask_path: brain mask NIfTI on the same grid.
        config: intensity model; default :class:`SynthConfig`.

    Returns:
        ``csf``, ``gm``, ``wm`` in ml.
    """
    intensities = (config or SynthConfig()).intensities
    image = cast(nib.Nifti1Image, nib.load(image_path))
    mask = np.asarray(cast(nib.Nifti1Image, nib.load(mask_path)).dataobj) > 0
    inside = np.asarray(image.dataobj, dtype=np.float32)[mask]
    if inside.size == 0:
        raise ValueError(f"{image_path}: the brain mask {mask_path} is empty")
    values = inside / np.percentile(inside, 90)
    relative = np.array([intensities.csf, intensities.gm, intensities.wm]) / intensities.wm
    low, high = (relative[:2] + relative[1:]) / 2.0
    voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
    return {
        "csf": float((values < low).sum()) * voxel_ml,
        "gm": float(((values >= low) & (values < high)).sum()) * voxel_ml,
        "wm": float((values >= high).sum()) * voxel_ml,
    }
