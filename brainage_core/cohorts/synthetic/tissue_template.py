"""The synthetic cohort's starting point: tissue compartments of the MNI ICBM152 2009a template.

:func:`load_template` derives GM, WM, ventricular and sulcal CSF, the brain envelope and the
distance maps the aging model needs from the template shipped in the nilearn wheel
(:mod:`brainage_core.cohorts.template`), resampled to the cohort's spacing;
:func:`ventricle_levels` precomputes the diffeomorphic ventricle expansion fields. Both are cached
per spacing: every subject of a cohort starts from the same template.
"""

from __future__ import annotations

import functools
import math
from typing import Any, cast

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from brainage_core.cohorts.template import TEMPLATE_FILES, mni_template_dir, mni_template_path

__all__ = ["VENTRICLE_LEVELS_MM", "check_spacing", "load_template", "ventricle_levels"]

# Bodies of the lateral ventricles (MNI mm), read off the ICBM 2009a T1; the connected deep
# CSF around them (lateral + third ventricles) is the ventricular compartment.
VENTRICLE_SEEDS_MM = ((8.0, -10.0, 20.0), (-8.0, -10.0, 20.0))
VENTRICLE_MIN_DEPTH_MM = 12.0  # deep CSF only: cuts the ventricles from fissures and cisterns
VENTRICLE_SMOOTHING_MM = 8.0  # width of the expansion field around the ventricles
VENTRICLE_LEVELS_MM = np.linspace(-6.0, 28.0, 18)  # strengths of the precomputed fields
PIAL_THRESHOLD = 0.85  # GM + WM level of the pial surface: sulci blurred in the average template count as outside


def check_spacing(spacing: float) -> None:
    """Raise ValueError unless ``spacing`` is a voxel size in mm >= 1."""
    if not isinstance(spacing, (int, float)) or not math.isfinite(spacing) or spacing < 1.0:
        raise ValueError(f"spacing must be a voxel size in mm >= 1 (the templates are 1 mm), got {spacing!r}")


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance (mm, 1 mm grid) to the surface of ``mask``: positive inside."""
    inside = ndi.distance_transform_edt(mask) - 0.5
    outside = ndi.distance_transform_edt(~mask) - 0.5
    return np.where(mask, inside, -outside).astype(np.float32)


def _downsample(volume: np.ndarray, spacing: float) -> np.ndarray:
    """Resample a 1 mm volume to ``spacing`` mm (Gaussian anti-aliasing, then linear).

    Voxel ``i`` of the result is centred on 1 mm voxel ``spacing * i + (spacing - 1) / 2``.
    """
    smooth = ndi.gaussian_filter(volume.astype(np.float32), 0.5 * math.sqrt(spacing**2 - 1.0))
    shape = tuple(math.ceil(n / spacing) for n in volume.shape)
    offset = (spacing - 1.0) / 2.0
    return ndi.affine_transform(
        smooth, np.full(3, spacing), offset=offset, output_shape=shape, order=1, output=np.float32
    )


@functools.lru_cache(maxsize=4)
def load_template(spacing: float = 2.0) -> dict[str, Any]:
    """Derive tissue compartments from the ICBM 2009a templates and resample them.

    Derivation (on the 1 mm templates): the brain envelope is the filled non-zero support of
    the (already skull-stripped) T1; CSF = envelope - GM - WM. Ventricles are the connected
    components of deep CSF (CSF > 0.5, >= 12 mm inside the envelope) that contain the lateral
    ventricle seeds, grown 3 mm within CSF; the rest of the CSF is "sulcal" (sulci, fissures,
    cisterns). ``pial_depth`` is the signed distance to the outer surface of GM + WM (+ the
    ventricles), ``wm_depth`` to the GM/WM boundary (positive inside WM).

    Args:
        spacing: voxel size of the result in mm (>= 1).

    Returns:
        Read-only arrays ``(X, Y, Z)`` float32 on the MNI grid at ``spacing``: ``t1`` (0-1),
        ``gm``, ``wm``, ``csf_ventricular``, ``csf_sulcal``, ``envelope`` (fractions summing to
        ``envelope``), ``brain_mask`` (bool), ``pial_depth``, ``wm_depth``,
        ``ventricle_distance`` (mm); and ``affine`` (4x4, RAS, voxel to MNI mm).

    Raises:
        FileNotFoundError: a template file is missing from the nilearn wheel.
        RuntimeError: the ventricles cannot be found (not the expected template).
    """
    check_spacing(spacing)
    raw = {}
    for name in TEMPLATE_FILES:
        image = cast(nib.Nifti1Image, nib.load(mni_template_path(name)))
        raw[name] = np.asarray(image.dataobj, dtype=np.float32) / 255.0
        affine_1mm = image.affine
    envelope = ndi.binary_fill_holes(raw["t1"] > 0)
    gm, wm = raw["gm"] * envelope, raw["wm"] * envelope
    csf = np.clip(envelope - gm - wm, 0.0, 1.0)
    # Distances are computed on the brain's bounding box (+ 8 mm), the slow part at 1 mm.
    occupied = np.argwhere(envelope)
    box = tuple(slice(max(a - 8, 0), b + 9) for a, b in zip(occupied.min(axis=0), occupied.max(axis=0)))
    depth = ndi.distance_transform_edt(envelope[box])
    labels = np.zeros(envelope.shape, np.int32)
    labels[box] = ndi.label((csf[box] > 0.5) & (depth >= VENTRICLE_MIN_DEPTH_MM))[0]
    inverse = np.linalg.inv(affine_1mm)
    seeds = set()
    for seed in VENTRICLE_SEEDS_MM:
        i, j, k = np.round(inverse[:3, :3] @ seed + inverse[:3, 3]).astype(int)
        seeds |= set(np.unique(labels[i - 3 : i + 4, j - 3 : j + 4, k - 3 : k + 4])) - {0}
    if not seeds:
        raise RuntimeError(
            f"no deep CSF near the lateral-ventricle seeds {VENTRICLE_SEEDS_MM} mm in {mni_template_dir()}; "
            "is it the ICBM 2009a template? Reinstall nilearn"
        )
    core = np.isin(labels, sorted(seeds))
    grown = ndi.binary_dilation(core, iterations=3, mask=csf > 0.05)
    csf_ventricular = csf * grown
    fine = {
        "t1": raw["t1"],
        "gm": gm,
        "wm": wm,
        "csf_ventricular": csf_ventricular,
        "csf_sulcal": csf - csf_ventricular,
        "envelope": envelope.astype(np.float32),
        "ventricle_core": core.astype(np.float32),
    }
    for name, mask in (("pial_depth", (gm + wm >= PIAL_THRESHOLD) | grown), ("wm_depth", wm >= 0.5)):
        fine[name] = np.full(envelope.shape, -8.0, np.float32)  # outside the box: far outside the tissue
        fine[name][box] = np.maximum(_signed_distance(mask[box]), -8.0)
    template: dict[str, Any] = {name: _downsample(volume, spacing) for name, volume in fine.items()}
    outside_ventricles = template.pop("ventricle_core") < 0.5
    template["ventricle_distance"] = ndi.distance_transform_edt(outside_ventricles, sampling=spacing).astype(np.float32)
    template["brain_mask"] = template["envelope"] >= 0.5
    template["affine"] = affine_1mm @ np.diag([spacing, spacing, spacing, 1.0])
    template["affine"][:3, 3] += affine_1mm[:3, :3] @ np.full(3, (spacing - 1.0) / 2.0)
    for value in template.values():
        value.setflags(write=False)
    return template


@functools.lru_cache(maxsize=4)
def ventricle_levels(spacing: float, bounds: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, np.ndarray, int]:
    """Diffeomorphic ventricle expansion fields, one per strength in ``VENTRICLE_LEVELS_MM``.

    The velocity is the gradient of the Gaussian-smoothed ventricle map (pointing into the
    ventricles, unit maximum); sampling at ``x + displacement`` pulls CSF outwards. Each level is
    exponentiated by scaling and squaring on a coarse grid, so it never folds.
    """
    ventricles = load_template(spacing)["csf_ventricular"][tuple(slice(a, b) for a, b in bounds)]
    coarse = max(1, math.ceil(4.0 / spacing))  # fields live on a grid of >= 4 mm
    smooth = ndi.gaussian_filter(ventricles, VENTRICLE_SMOOTHING_MM / spacing)[::coarse, ::coarse, ::coarse]
    velocity = np.stack(np.gradient(smooth))
    velocity /= np.sqrt((velocity**2).sum(axis=0)).max()
    grid = np.indices(smooth.shape, dtype=np.float32)
    # Volumes are measured on the voxels the largest field can reach from the ventricles.
    reach = ndi.binary_dilation(ventricles > 0.01, iterations=math.ceil(VENTRICLE_LEVELS_MM.max() / spacing) + 2)
    near = np.argwhere(reach).T.astype(np.float32)
    fields, ratios = [], []
    for strength in VENTRICLE_LEVELS_MM:
        displacement = velocity * (strength / (spacing * coarse) / 2**6)
        for _ in range(6):
            where = grid + displacement
            composed = [ndi.map_coordinates(c, where, order=1, mode="nearest") for c in displacement]
            displacement = displacement + np.stack(composed)
        fields.append((displacement * coarse).astype(np.float32))
        moved = near + np.stack([ndi.map_coordinates(c, near / coarse, order=1, mode="nearest") for c in fields[-1]])
        ratios.append(ndi.map_coordinates(ventricles, moved, order=1).sum() / ventricles.sum())
    return np.stack(fields), np.maximum.accumulate(np.array(ratios)), coarse
