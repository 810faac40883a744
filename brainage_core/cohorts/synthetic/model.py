"""The embedded default dataset: a synthetic aging cohort built from the MNI ICBM152 templates.

A teaching phantom, not a clinical simulator. Every subject starts from the ICBM 2009a tissue
maps shipped in the nilearn wheel (which stand for a ``reference_age`` adult) and is changed,
in this order:

1. **Aging** driven by the latent biological age (chronological age + gap): the GM/WM boundary
   moves into the cortex until midlife (WM gain), the cortex erodes from the pial side
   (GM becomes sulcal CSF, stronger frontally), the ventricles expand through a smooth
   diffeomorphic displacement field, periventricular WM turns into T1-hypointense WMH, and the
   GM/WM intensity contrast falls.
2. **Disease**: AD removes medial temporal GM (becoming ventricular CSF, the temporal horn) and
   temporoparietal cortex, and enlarges the ventricles, scaled by CDR; PD removes putamen,
   caudate and frontal GM, scaled by UPDRS-III. Regions are MNI ellipsoids (:data:`REGIONS`).
3. **Individual variation**: head size (sex-dependent), a smooth random deformation, rotation
   and translation, a multiplicative bias field, per-site gain/contrast/noise and Rician noise.

Tissue maps are changed in template space, then one coordinate map (individual transform
composed with the ventricle field) resamples every map with a single ``map_coordinates`` call
each, on the voxels that can hold brain. The effect map is ``|T1 - T1_ref|`` of the noise-free,
site-free intensities, where ``T1_ref`` is the same subject (same head, shape and pose) at the
reference age without disease. Every effect size lives in :class:`SynthConfig`.

Files (``generate_cohort``): ``images/sub-XXXX_T1w.nii.gz`` (int16, WM about 1000),
``masks/sub-XXXX_mask.nii.gz``, ``effects/sub-XXXX_effect.nii.gz`` (uint8 with slope 1/250:
|change| relative to WM intensity), ``ground_truth.csv``, ``cohort.json``, and last
``manifest.csv``. A rerun into the same folder returns the existing cohort when its
``cohort.json`` and manifest match the request, regenerates a folder that only holds files
brainage wrote otherwise (deleting its manifest first), and refuses a folder holding anything
else, anywhere below it. Every file is recorded in ``.brainage-owned.json`` before it is written
(:mod:`brainage_core.ownership`); only recorded files are ever deleted.
"""

from __future__ import annotations

import concurrent.futures
import functools
import gzip
import importlib.util
import json
import math
import multiprocessing
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation
from scipy.special import expit
from tqdm import tqdm

from brainage_core import __version__
from brainage_core.cohorts.synthetic.config import (
    SubjectParams,
    SynthConfig,
    aging_targets,
    assign_splits,
    sample_subjects,
)
from brainage_core.fileio import atomic_path, write_json
from brainage_core.manifest import validate_manifest, write_manifest
from brainage_core.ownership import claim, refuse_foreign_files, remove_owned, remove_stale_temp_files

__all__ = [
    "REGIONS",
    "SubjectImages",
    "SynthConfig",
    "SynthModel",
    "generate_cohort",
    "image_tissue_volumes",
    "load_template",
    "prepare_model",
    "synthesize_subject",
    "template_dir",
    "tissue_volumes",
]

FORMAT_VERSION = 1
TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# Bodies of the lateral ventricles (MNI mm), read off the ICBM 2009a T1; the connected deep
# CSF around them (lateral + third ventricles) is the ventricular compartment.
VENTRICLE_SEEDS_MM = ((8.0, -10.0, 20.0), (-8.0, -10.0, 20.0))
VENTRICLE_MIN_DEPTH_MM = 12.0  # deep CSF only: cuts the ventricles from fissures and cisterns
VENTRICLE_SMOOTHING_MM = 8.0  # width of the expansion field around the ventricles
VENTRICLE_LEVELS_MM = np.linspace(-4.0, 28.0, 17)  # strengths of the precomputed fields
WMH_DECAY_MM = 10.0  # WMH propensity falls as exp(-distance to ventricles / this)
PIAL_THRESHOLD = 0.85  # GM + WM level of the pial surface: sulci blurred in the average template count as outside
FIELD_GRID_MM = 8.0  # random smooth fields are interpolated on this grid, then linearly
EFFECT_SLOPE = 1.0 / 250.0  # effect map stored as uint8 * slope (relative to WM intensity)
GZIP_LEVEL = 6
# Regions as MNI ellipsoids (centre mm, semi-axes mm), mirrored left/right; approximate
# positions read off the ICBM 2009a template (hippocampus centroid about (+-26, -22, -14),
# putamen about (+-25, 2, 0), caudate head about (+-13, 12, 10)). Weights are 1 inside
# 0.75 of the radius and fall linearly to 0 at 1.25 radii.
REGIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], bool]] = {
    "hippocampus": ((27.0, -23.0, -12.0), (6.0, 16.0, 9.0), True),
    "amygdala": ((23.0, -5.0, -19.0), (7.0, 7.0, 7.0), True),
    "temporal": ((48.0, -25.0, -12.0), (16.0, 30.0, 16.0), True),
    "parietal": ((38.0, -62.0, 42.0), (22.0, 22.0, 18.0), True),
    "putamen": ((25.0, 2.0, 1.0), (6.0, 14.0, 9.0), True),
    "caudate": ((13.0, 12.0, 10.0), (5.0, 9.0, 8.0), True),
    "frontal": ((0.0, 35.0, 25.0), (65.0, 45.0, 45.0), False),
}
_SUBJECT_DIRS = {
    "image": ("images", "_T1w.nii.gz"),
    "mask": ("masks", "_mask.nii.gz"),
    "effect_map": ("effects", "_effect.nii.gz"),
}
_TOP_FILES = ("manifest.csv", "ground_truth.csv", "cohort.json")


def template_dir() -> Path:
    """Folder of the MNI ICBM152 2009a templates inside the installed nilearn wheel."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("nilearn is not installed; the synthetic cohort needs the MNI templates in its wheel")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _check_spacing(spacing: float) -> None:
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
    _check_spacing(spacing)
    raw = {}
    for name, file_name in TEMPLATE_FILES.items():
        path = template_dir() / file_name
        if not path.is_file():
            raise FileNotFoundError(f"MNI template missing: {path}; reinstall nilearn (>= 0.10), which ships it")
        image = nib.load(path)
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
            f"no deep CSF near the lateral-ventricle seeds {VENTRICLE_SEEDS_MM} mm in {template_dir()}; "
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


def _region_weight(world: np.ndarray, name: str) -> np.ndarray:
    """Soft ellipsoid weight (0-1) of region ``name`` at MNI points ``world`` ``(3, ...)``."""
    centre, radii, mirrored = REGIONS[name]
    centres = [np.array(centre), np.array(centre) * [-1.0, 1.0, 1.0]] if mirrored else [np.array(centre)]
    weight = np.zeros(world.shape[1:], np.float32)
    for c in centres:
        q = np.sqrt(sum(((world[axis] - c[axis]) / radii[axis]) ** 2 for axis in range(3)))
        weight = np.maximum(weight, np.clip((1.25 - q) / 0.5, 0.0, 1.0))
    return weight


def _transfer(
    tissue: np.ndarray, sink: np.ndarray, depth: np.ndarray, shift: np.ndarray | float, width: float
) -> np.ndarray:
    """Volume fraction moving from ``tissue`` to ``sink`` when the tissue surface moves by ``shift``.

    Each voxel's share of the tissue is modelled as ``expit(depth / width)`` (depth in mm,
    positive inside); receding the surface by ``shift`` mm keeps
    ``expit((depth - shift) / width) / expit(depth / width)`` of it. A negative shift grows the
    tissue, limited by what ``sink`` holds. Arrays ``(X, Y, Z)``.
    """
    base = np.clip(depth / width, -40.0, 40.0)
    kept = tissue * expit(base - shift / width) / expit(base)
    return np.maximum(tissue - kept, -sink)


def _table(xs: np.ndarray, fn: Any) -> tuple[np.ndarray, np.ndarray]:
    """Tabulate a monotone response ``fn(x)`` for later inversion with :func:`_invert`."""
    ys = np.maximum.accumulate(np.array([fn(x) for x in xs], dtype=np.float64))
    return np.asarray(xs, np.float64), ys


def _invert(table: tuple[np.ndarray, np.ndarray], target: float) -> float:
    """The x giving response ``target`` (clipped to the tabulated range)."""
    xs, ys = table
    return float(np.interp(target, ys, xs))


@dataclass(frozen=True)
class SynthModel:
    """Everything a worker needs to synthesise subjects at one spacing (picklable).

    Attributes:
        config: the cohort's parameters.
        spacing: voxel size (mm) of the output grid, which is the MNI grid at that spacing.
        affine: ``(4, 4)`` voxel-to-MNI-mm affine of the output grid.
        shape: output grid shape ``(X, Y, Z)``.
        crop_start: ``(3,)`` output-grid index of the template crop's first voxel.
        centre_mm: ``(3,)`` centre of head scaling and rotation (envelope centre of mass).
        maps: template-space arrays on the crop ``(x, y, z)``.
        tables: monotone (parameter, response) tables inverted per subject.
        ventricle_displacements: ``(L, 3, cx, cy, cz)`` displacement (crop voxels) on the grid
            ``crop[::coarse]`` for each strength in ``VENTRICLE_LEVELS_MM``.
        ventricle_ratios: ``(L,)`` ventricular volume of each level relative to the template.
        coarse: subsampling factor of the ventricle grid.
        wmh_candidates: flat crop indices of WM voxels that may become WMH.
    """

    config: SynthConfig
    spacing: float
    affine: np.ndarray
    shape: tuple[int, int, int]
    crop_start: np.ndarray
    centre_mm: np.ndarray
    maps: dict[str, np.ndarray]
    tables: dict[str, tuple[np.ndarray, np.ndarray]]
    ventricle_displacements: np.ndarray
    ventricle_ratios: np.ndarray
    coarse: int
    wmh_candidates: np.ndarray

    @property
    def voxel_ml(self) -> float:
        return self.spacing**3 / 1000.0

    @property
    def width(self) -> float:
        """Partial-volume width (mm) of tissue surfaces in :func:`_transfer`."""
        return 0.5 * self.spacing


@functools.lru_cache(maxsize=4)
def _ventricle_levels(spacing: float, bounds: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, np.ndarray, int]:
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


def prepare_model(spacing: float = 2.0, config: SynthConfig | None = None) -> SynthModel:
    """Crop the template to the brain and precompute everything subjects share.

    Args:
        spacing: voxel size in mm (>= 1).
        config: cohort parameters; default :class:`SynthConfig`.

    Returns:
        The model passed to :func:`synthesize_subject` (and to the worker processes).
    """
    config = config or SynthConfig()
    config.validate()
    template = load_template(spacing)
    margin = math.ceil((4.0 * config.anatomy.deformation_sd_mm + 2.0 * spacing) / spacing)
    occupied = np.argwhere(template["envelope"] > 0.01)
    low = np.maximum(occupied.min(axis=0) - margin, 0)
    high = np.minimum(occupied.max(axis=0) + margin + 1, template["envelope"].shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    names = ("gm", "wm", "csf_ventricular", "csf_sulcal", "envelope", "pial_depth", "wm_depth")
    maps = {name: np.array(template[name][crop]) for name in names}
    index = np.indices(maps["gm"].shape, dtype=np.float32) + low[:, None, None, None]
    world = np.tensordot(template["affine"][:3, :3], index, axes=1) + template["affine"][:3, 3, None, None, None]
    regions = {name: _region_weight(world, name) for name in REGIONS}
    maps["medial_temporal"] = np.maximum(regions["hippocampus"], regions["amygdala"])
    maps["hippocampus"] = (regions["hippocampus"] >= 0.5).astype(np.float32)
    maps["temporoparietal"] = np.maximum(regions["temporal"], regions["parietal"])
    for name in ("putamen", "caudate", "frontal"):
        maps[name] = regions[name]
    frontal = np.clip(world[1] / 70.0, -1.0, 1.0)  # MNI y: +1 at the frontal pole, -1 occipital
    maps["thinning_gradient"] = (1.0 + config.aging.gm_frontal_gradient * frontal).astype(np.float32)
    distance = template["ventricle_distance"][crop]
    maps["wmh_propensity"] = (maps["wm"] * np.exp(-distance / WMH_DECAY_MM)).astype(np.float32)
    wmh_candidates = np.flatnonzero((maps["wm"] > 0.3) & (distance < 3.0 * WMH_DECAY_MM))
    dilation = max(1, math.ceil(4.0 * config.anatomy.deformation_sd_mm / spacing) + 1)
    maps["selectable"] = ndi.binary_dilation(maps["envelope"] > 0.01, iterations=dilation).astype(np.uint8)
    i = config.intensities
    csf = maps["csf_ventricular"] + maps["csf_sulcal"]
    maps["t1_reference"] = (i.wm * maps["wm"] + i.gm * maps["gm"] + i.csf * csf) / i.wm

    # Tables are computed on the voxels holding GM (1-D views), all others never change.
    active = maps["gm"] > 1e-4
    g, w, sulcal = maps["gm"][active], maps["wm"][active], maps["csf_sulcal"][active]
    pial, wm_depth, gradient = maps["pial_depth"][active], maps["wm_depth"][active], maps["thinning_gradient"][active]
    width, gm_total, wm_total = 0.5 * spacing, float(g.sum()), float(maps["wm"].sum())

    def regional_loss(region: np.ndarray) -> Any:
        return lambda tau: float((_transfer(g, sulcal, pial, tau * region, width) * region).sum() / (g * region).sum())

    def gm_loss(t: float) -> float:
        return float(_transfer(g, sulcal, pial, t * gradient, width).sum() / gm_total)

    def wm_gain(shift: float) -> float:
        return float(_wm_boundary_shift(g, w, wm_depth, shift, width).sum() / wm_total)

    tables = {
        "gm_loss": _table(np.linspace(-2.0, 10.0, 49), gm_loss),
        "wm_gain": _table(np.linspace(-3.0, 5.0, 41), wm_gain),
        "temporoparietal_loss": _table(np.linspace(0.0, 10.0, 41), regional_loss(maps["temporoparietal"][active])),
        "frontal_loss": _table(np.linspace(0.0, 10.0, 41), regional_loss(maps["frontal"][active])),
    }
    displacements, ratios, coarse = _ventricle_levels(float(spacing), tuple((s.start, s.stop) for s in crop))
    envelope_full = template["envelope"]
    centre_index = np.array(ndi.center_of_mass(envelope_full))
    centre_mm = template["affine"][:3, :3] @ centre_index + template["affine"][:3, 3]
    return SynthModel(
        config=config,
        spacing=float(spacing),
        affine=np.array(template["affine"]),
        shape=tuple(int(n) for n in envelope_full.shape),
        crop_start=low.astype(np.float64),
        centre_mm=centre_mm,
        maps=maps,
        tables=tables,
        ventricle_displacements=displacements,
        ventricle_ratios=ratios,
        coarse=coarse,
        wmh_candidates=wmh_candidates,
    )


def _wm_boundary_shift(gm: np.ndarray, wm: np.ndarray, wm_depth: np.ndarray, shift: float, width: float) -> np.ndarray:
    """GM volume becoming WM when the GM/WM boundary moves ``shift`` mm into the cortex (< 0: back)."""
    if shift >= 0:
        return _transfer(gm, wm, -wm_depth, shift, width)
    return -_transfer(wm, gm, wm_depth, -shift, width)


def _smooth_field(rng: np.random.Generator, model: SynthModel, control_mm: float, count: int) -> np.ndarray:
    """``count`` random smooth fields (unit SD at control points) on the ``FIELD_GRID_MM`` grid.

    Control points every ``control_mm`` over the output field of view get i.i.d. N(0, 1)
    values; a cubic spline interpolates them on the field grid ``(count, fx, fy, fz)``.
    """
    extent = np.array(model.shape) * model.spacing
    control_shape = tuple(int(n) for n in np.ceil(extent / control_mm) + 2)
    field_shape = tuple(int(n) for n in np.ceil(extent / FIELD_GRID_MM) + 1)
    where = np.indices(field_shape, dtype=np.float32).reshape(3, -1) * (FIELD_GRID_MM / control_mm) + 0.5
    values = rng.standard_normal((count, *control_shape), dtype=np.float32)
    return np.stack([ndi.map_coordinates(v, where, order=3, mode="nearest").reshape(field_shape) for v in values])


def _at(field: np.ndarray, index: np.ndarray, model: SynthModel) -> np.ndarray:
    """Sample a field-grid array at output-grid voxel positions ``index`` ``(3, N)``."""
    return ndi.map_coordinates(field, index * (model.spacing / FIELD_GRID_MM), order=1, mode="nearest")


@dataclass
class SubjectImages:
    """One synthesised subject on the output grid.

    Attributes:
        image: ``(X, Y, Z)`` int16 T1 (WM about ``intensities.scale``), 0 outside the mask.
        effect: ``(X, Y, Z)`` float32 |noise-free T1 - reference T1| relative to WM.
        mask: ``(X, Y, Z)`` uint8 brain (intracranial) mask.
        tissues: ``(X, Y, Z)`` float32 fractions ``gm``, ``wm``, ``csf_ventricular``,
            ``csf_sulcal``, ``wmh``, ``hippocampal_gm``.
    """

    image: np.ndarray
    effect: np.ndarray
    mask: np.ndarray
    tissues: dict[str, np.ndarray]


def _age_tissues(
    model: SynthModel, subject: SubjectParams, targets: dict[str, float], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Apply aging (``targets`` from :func:`aging_targets`) and disease to the template tissue
    maps, in template space on the crop grid ``(x, y, z)``."""
    maps, width, disease = model.maps, model.width, model.config.disease
    g, w = maps["gm"].copy(), maps["wm"].copy()
    ventricular, sulcal = maps["csf_ventricular"].copy(), maps["csf_sulcal"].copy()
    shift = _invert(model.tables["wm_gain"], targets["wm_gain"] - targets["wm_decline"])
    moved = _wm_boundary_shift(g, w, maps["wm_depth"], shift, width)
    g, w = g - moved, w + moved
    # The cortex erodes by its own loss plus the GM that the receding WM boundary handed it.
    erosion = targets["gm_loss"] + targets["wm_decline"] * float(maps["wm"].sum() / maps["gm"].sum())
    thinning = _invert(model.tables["gm_loss"], erosion) * maps["thinning_gradient"]
    if subject.group == "AD":
        loss = disease.ad_temporoparietal_loss_per_cdr * subject.cdr
        thinning = thinning + _invert(model.tables["temporoparietal_loss"], loss) * maps["temporoparietal"]
    if subject.group == "PD":
        loss = disease.pd_frontal_loss_per_severity * subject.severity
        thinning = thinning + _invert(model.tables["frontal_loss"], loss) * maps["frontal"]
    moved = _transfer(g, sulcal, maps["pial_depth"], thinning, width)
    g, sulcal = g - moved, sulcal + moved
    if subject.group == "AD":
        hippocampal = min(disease.ad_hippocampal_loss_per_cdr * subject.cdr, disease.ad_hippocampal_loss_max)
        moved = g * hippocampal * maps["medial_temporal"]  # the temporal horn takes its place
        g, ventricular = g - moved, ventricular + moved
    if subject.group == "PD":
        moved = g * (disease.pd_caudate_loss_per_severity * subject.severity) * maps["caudate"]
        g, ventricular = g - moved, ventricular + moved
        moved = g * (disease.pd_putamen_loss_per_severity * subject.severity) * maps["putamen"]
        g, sulcal = g - moved, sulcal + moved
    # WMH: the WM voxels with the highest periventricular propensity (times a smooth random
    # texture) become WMH until the target volume is reached.
    candidates = model.wmh_candidates
    texture = _smooth_field(rng, model, 16.0, 1)[0]
    position = np.array(np.unravel_index(candidates, g.shape), dtype=np.float32) + model.crop_start[:, None]
    score = maps["wmh_propensity"].ravel()[candidates] * np.exp(0.7 * _at(texture, position, model))
    order = candidates[np.argsort(-score, kind="stable")]
    available = w.ravel()[order]
    chosen = order[: np.searchsorted(np.cumsum(available) - available / 2, targets["wmh_ml"] / model.voxel_ml)]
    wmh = np.zeros_like(w)
    wmh.ravel()[chosen] = w.ravel()[chosen]
    w.ravel()[chosen] = 0.0
    tissues = {"gm": g, "wm": w, "csf_ventricular": ventricular, "csf_sulcal": sulcal, "wmh": wmh}
    return tissues | {"hippocampal_gm": g * maps["hippocampus"]}


def synthesize_subject(model: SynthModel, subject: SubjectParams) -> SubjectImages:
    """Synthesise one subject's T1, mask, effect map and tissue maps (no files written).

    Deterministic: all randomness comes from ``subject.seed`` (and the scalars already in
    ``subject``), so the result does not depend on the process or the order of subjects.
    """
    config, spacing = model.config, model.spacing
    rng = np.random.default_rng(subject.seed)
    targets = aging_targets(subject, config)
    tissues = _age_tissues(model, subject, targets, rng)

    # Output voxel -> template crop voxel: inverse head scaling, rotation and translation
    # about the brain centre, then the inverse smooth deformation.
    rotation = Rotation.from_euler("xyz", subject.rotation_deg, degrees=True).as_matrix()
    to_template = np.eye(4)
    to_template[:3, :3] = rotation.T / subject.head_scale
    moved_centre = model.centre_mm + np.array(subject.translation_mm)
    to_template[:3, 3] = model.centre_mm - rotation.T @ moved_centre / subject.head_scale
    index_map = np.linalg.inv(model.affine) @ to_template @ model.affine
    grid = np.indices(model.shape, dtype=np.float32).reshape(3, -1)
    offset = (index_map[:3, 3] - model.crop_start)[:, None].astype(np.float32)
    affine_part = index_map[:3, :3].astype(np.float32) @ grid + offset
    selected = np.flatnonzero(ndi.map_coordinates(model.maps["selectable"], affine_part, order=0, cval=0))
    points = grid[:, selected]
    deformation = _smooth_field(rng, model, config.anatomy.deformation_spacing_mm, 3)
    shape_change = np.stack([_at(d, points, model) for d in deformation]) * (config.anatomy.deformation_sd_mm / spacing)
    source = affine_part[:, selected] + shape_change

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
    bias_field = _smooth_field(rng, model, config.scanner.bias_field_spacing_mm, 1)[0]
    bias = np.exp(config.scanner.bias_field_sd * _at(bias_field, points, model))
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
        mask=to_grid(inside, np.uint8),
        tissues={name: to_grid(values, np.float32) for name, values in warped.items()},
    )


def tissue_volumes(tissues: Mapping[str, np.ndarray], spacing: float) -> dict[str, float]:
    """Volumes in ml of tissue-fraction maps.

    Args:
        tissues: name -> ``(X, Y, Z)`` fraction map (e.g. :attr:`SubjectImages.tissues`).
        spacing: voxel size in mm.

    Returns:
        name -> volume in ml.
    """
    return {name: float(np.sum(volume, dtype=np.float64)) * spacing**3 / 1000.0 for name, volume in tissues.items()}


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
    image = nib.load(image_path)
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
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


def _write_nifti(volume: np.ndarray, affine: np.ndarray, path: Path, slope: float = 1.0) -> None:
    """Write a NIfTI atomically with a deterministic gzip stream (no mtime, no file name)."""
    image = nib.Nifti1Image(volume, affine)
    image.set_qform(affine, code=4)  # 4: MNI space
    image.set_sform(affine, code=4)
    image.header.set_xyzt_units("mm")
    if slope != 1.0:
        image.header.set_slope_inter(slope, 0.0)
    payload = image.to_bytes()
    with (
        atomic_path(path, suffix=".nii.gz") as temp,
        open(temp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as stream,
    ):
        stream.write(payload)


def _subject_path(out_dir: Path, subject_id: str, kind: str) -> Path:
    folder, suffix = _SUBJECT_DIRS[kind]
    return out_dir / folder / f"{subject_id}{suffix}"


_WORKER_MODEL: SynthModel | None = None


def _init_worker(model: SynthModel) -> None:
    global _WORKER_MODEL
    _WORKER_MODEL = model


def _make_subject(task: tuple[SubjectParams, str]) -> dict[str, float]:
    """Worker job: synthesise one subject, write its three NIfTI files, return its volumes."""
    subject, out_dir = task
    if _WORKER_MODEL is None:
        raise RuntimeError("worker model not initialised; call _init_worker(model) first")
    result = synthesize_subject(_WORKER_MODEL, subject)
    affine = _WORKER_MODEL.affine
    _write_nifti(result.image, affine, _subject_path(Path(out_dir), subject.subject_id, "image"))
    _write_nifti(result.mask, affine, _subject_path(Path(out_dir), subject.subject_id, "mask"))
    effect = np.clip(np.round(result.effect / EFFECT_SLOPE), 0, 255).astype(np.uint8)
    _write_nifti(effect, affine, _subject_path(Path(out_dir), subject.subject_id, "effect_map"), slope=EFFECT_SLOPE)
    return tissue_volumes(result.tissues, _WORKER_MODEL.spacing)


def _existing_cohort(out_dir: Path, request: dict[str, Any]) -> bool:
    """True when ``out_dir`` holds a complete cohort for ``request``; otherwise clear the way.

    A folder holding only files this project wrote (its ownership record lists them) but no
    matching, valid manifest loses its ``manifest.csv`` and ``cohort.json`` first (so no
    half-regenerated folder looks complete).

    Raises:
        FileExistsError: ``out_dir`` holds files that brainage did not write (anywhere below it);
            nothing is deleted.
    """
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another out_dir")
    manifest, meta = out_dir / "manifest.csv", out_dir / "cohort.json"
    if manifest.is_file() and meta.is_file():
        try:
            recorded = json.loads(meta.read_text())
        except json.JSONDecodeError:
            recorded = None
        matches = recorded is not None and {key: recorded.get(key) for key in request} == request
        if matches and not validate_manifest(manifest, check_images="exists"):
            return True
    refuse_foreign_files(out_dir, "write a synthetic cohort")
    remove_owned(out_dir, [name for name in ("manifest.csv", "cohort.json") if (out_dir / name).exists()])
    return False


def _remove_stale(out_dir: Path, keep: set[Path]) -> None:
    """Delete this project's subject files and temporary files not in the cohort just written."""
    stale = []
    for folder, _ in _SUBJECT_DIRS.values():
        for path in (out_dir / folder).iterdir():
            if path not in keep:
                stale.append(path.relative_to(out_dir).as_posix())
    remove_owned(out_dir, stale)
    remove_stale_temp_files(out_dir)


def _synthesize_all(
    model: SynthModel, tasks: list[tuple[SubjectParams, str]], workers: int, progress: bool
) -> list[dict[str, float]]:
    """Run :func:`_make_subject` on every task (in order); stop early on the first error."""
    bar = tqdm(total=len(tasks), desc="synthetic cohort", unit="subject", disable=not progress)
    volumes = []
    try:
        if workers == 1:
            _init_worker(model)
            for task in tasks:
                volumes.append(_make_subject(task))
                bar.update()
            return volumes
        context = multiprocessing.get_context("spawn")  # safe beside threads (torch, tqdm)
        pool_size = min(workers, len(tasks))
        with concurrent.futures.ProcessPoolExecutor(
            pool_size, mp_context=context, initializer=_init_worker, initargs=(model,)
        ) as pool:
            futures = [pool.submit(_make_subject, task) for task in tasks]
            try:
                for future in futures:
                    volumes.append(future.result())
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return volumes
    finally:
        bar.close()


def generate_cohort(
    out_dir: str | os.PathLike[str],
    n_subjects: int,
    seed: int,
    spacing: float = 2.0,
    config: SynthConfig | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Generate (or reuse) a synthetic cohort; return the path of its manifest.

    Args:
        out_dir: output folder (created; see the module docstring for what a rerun does).
        n_subjects: number of subjects (>= 1).
        seed: non-negative integer; same seed and config give byte-identical files.
        spacing: voxel size in mm (>= 1; 2 or 3 are typical).
        config: cohort parameters; default :class:`SynthConfig`. Validated before anything
            is written.
        progress: show a tqdm progress bar.
        workers: processes (default ``os.cpu_count()``); 1 runs in this process.

    Returns:
        ``out_dir / "manifest.csv"``.

    Raises:
        ValueError: invalid arguments or config values (nothing is written).
        FileExistsError: ``out_dir`` holds files that are not part of a synthetic cohort.
    """
    config = config or SynthConfig()
    config.validate()
    _check_spacing(spacing)
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) or n_subjects < 1:
        raise ValueError(f"n_subjects must be a positive integer, got {n_subjects!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    out_dir = Path(out_dir).resolve()  # one spelling of every path: _remove_stale compares them
    request = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "seed": int(seed),
        "n_subjects": int(n_subjects),
        "spacing": float(spacing),
        "config": json.loads(json.dumps(config.to_dict())),
    }
    manifest_path = out_dir / "manifest.csv"
    if _existing_cohort(out_dir, request):
        return manifest_path

    subjects = sample_subjects(int(n_subjects), int(seed), config)
    splits = assign_splits(subjects, config, int(seed))
    # Record every file before writing it: an interrupted run leaves only provably own files.
    claim(
        out_dir,
        [*_TOP_FILES, *(_subject_path(out_dir, s.subject_id, kind) for s in subjects for kind in _SUBJECT_DIRS)],
    )
    tasks = [(subject, str(out_dir)) for subject in subjects]
    volumes = _synthesize_all(prepare_model(spacing, config), tasks, workers, progress)
    rows, truth = [], []
    for subject, split, volume in zip(subjects, splits, volumes):
        paths = {kind: str(_subject_path(out_dir, subject.subject_id, kind).resolve()) for kind in _SUBJECT_DIRS}
        scores = {"mmse": subject.mmse, "cdr": subject.cdr, "updrs3": subject.updrs3, "hoehn_yahr": subject.hoehn_yahr}
        common = {
            "subject_id": subject.subject_id,
            "image": paths["image"],
            "age": subject.age,
            "sex": subject.sex,
            "group": subject.group,
            "site": subject.site,
            "split": split,
        }
        truth_columns = {"true_gap": subject.true_gap, "effect_map": paths["effect_map"]}
        rows.append(common | {"mask": paths["mask"]} | scores | truth_columns)
        truth.append(
            {key: value for key, value in common.items() if key != "image"}
            | scores
            | {"true_gap": subject.true_gap, "biological_age": subject.biological_age, "severity": subject.severity}
            | {"head_scale": subject.head_scale}
            | {f"{name}_ml": value for name, value in volume.items()}
        )
    _remove_stale(out_dir, {Path(row[kind]) for row in rows for kind in _SUBJECT_DIRS})
    with atomic_path(out_dir / "ground_truth.csv", suffix=".csv") as temp:
        pd.DataFrame(truth).to_csv(temp, index=False, float_format="%.6g")
    counts = pd.Series([subject.group for subject in subjects]).value_counts().to_dict()
    write_json(out_dir / "cohort.json", {**request, "template": sorted(TEMPLATE_FILES.values()), "groups": counts})
    write_manifest(pd.DataFrame(rows), manifest_path)  # last: its presence marks a complete cohort
    return manifest_path
