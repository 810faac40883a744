"""The aging and disease model of the synthetic cohort, in template space.

:func:`prepare_model` crops the template (:mod:`brainage_core.cohorts.synthetic.tissue_template`)
to the brain and precomputes what every subject shares (:class:`SynthModel`: region weights,
inverted response tables, ventricle fields). :func:`aging_targets` turns a subject's biological
age and disease into volume changes, and :func:`age_tissues` builds them into the template's
tissue maps:

1. **Aging** driven by the latent biological age (chronological age + gap), as several partly
   independent processes (:data:`~brainage_core.cohorts.synthetic.params.AGING_PROCESSES`), each
   at the subject's own rate around its population trajectory: the GM/WM boundary moves into
   the cortex until midlife and back later (WM), the cortex erodes from the pial side (GM
   becomes sulcal CSF; a frontal and a late temporal component of their own), the hippocampus
   loses GM to the temporal horn (slow before 60, faster after 70), the ventricles expand
   (through the smooth diffeomorphic displacement fields applied in
   :mod:`brainage_core.cohorts.synthetic.images`), and periventricular WM turns into
   T1-hypointense WMH. The latent biological age is what the processes share, not one knob.
2. **Individual anatomy** that does not depend on age: ventricle size, cortical GM (thickness)
   and WM volume of the subject (plus head size and shape, applied in ``images``).
3. **Disease**: AD removes medial temporal GM (hippocampus, amygdala, entorhinal; becoming
   ventricular CSF, the temporal horn) and temporo-parietal and precuneus cortex with
   subject-specific weights, and enlarges the ventricles, scaled by CDR; PD shrinks the putamen
   (capsule WM takes its place) and caudate (the ventricle takes its place), thins frontal
   cortex and enlarges the ventricles a little, scaled by UPDRS-III. Regions are MNI
   ellipsoids (:data:`REGIONS`) in template space, warped with each subject's shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.special import expit

from brainage_core.cohorts.synthetic.config import SynthConfig
from brainage_core.cohorts.synthetic.subjects import SubjectParams
from brainage_core.cohorts.synthetic.tissue_template import load_template, ventricle_levels

__all__ = [
    "REGIONS",
    "SynthModel",
    "age_tissues",
    "aging_targets",
    "diffeomorphic_displacement",
    "field_at",
    "prepare_model",
    "smooth_field",
]

WMH_DECAY_MM = 10.0  # WMH propensity falls as exp(-distance to ventricles / this)
FIELD_GRID_MM = 8.0  # random smooth fields are interpolated on this grid, then linearly
# Regions as MNI ellipsoids (centre mm, semi-axes mm), mirrored left/right; approximate
# positions read off the ICBM 2009a template (hippocampus centroid about (+-26, -22, -14),
# putamen about (+-25, 2, 0), caudate head about (+-13, 12, 10)). Weights are 1 inside
# 0.75 of the radius and fall linearly to 0 at 1.25 radii.
REGIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], bool]] = {
    "hippocampus": ((27.0, -23.0, -12.0), (6.0, 16.0, 9.0), True),
    "amygdala": ((23.0, -5.0, -19.0), (7.0, 7.0, 7.0), True),
    "entorhinal": ((24.0, -8.0, -30.0), (6.0, 9.0, 6.0), True),
    "temporal": ((48.0, -25.0, -12.0), (16.0, 30.0, 16.0), True),
    "parietal": ((38.0, -62.0, 42.0), (22.0, 22.0, 18.0), True),
    "precuneus": ((8.0, -60.0, 40.0), (8.0, 16.0, 14.0), True),
    "putamen": ((25.0, 2.0, 1.0), (6.0, 14.0, 9.0), True),
    "caudate": ((13.0, 12.0, 10.0), (5.0, 9.0, 8.0), True),
    "frontal": ((0.0, 35.0, 25.0), (65.0, 45.0, 45.0), False),
}


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
    margin = math.ceil((3.0 * _deformation_sd_mm(config) + 2.0 * spacing) / spacing)
    occupied = np.argwhere(template["envelope"] > 0.01)
    low = np.maximum(occupied.min(axis=0) - margin, 0)
    high = np.minimum(occupied.max(axis=0) + margin + 1, template["envelope"].shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    names = ("gm", "wm", "csf_ventricular", "csf_sulcal", "envelope", "pial_depth", "wm_depth")
    maps = {name: np.array(template[name][crop]) for name in names}
    index = np.indices(maps["gm"].shape, dtype=np.float32) + low[:, None, None, None]
    world = np.tensordot(template["affine"][:3, :3], index, axes=1) + template["affine"][:3, 3, None, None, None]
    regions = {name: _region_weight(world, name) for name in REGIONS}
    maps["medial_temporal"] = np.maximum.reduce([regions[name] for name in ("hippocampus", "amygdala", "entorhinal")])
    maps["hippocampus"] = (regions["hippocampus"] >= 0.5).astype(np.float32)
    maps["temporoparietal"] = np.maximum.reduce([regions[name] for name in ("temporal", "parietal", "precuneus")])
    for name in ("putamen", "caudate", "frontal", "temporal"):
        maps[name] = regions[name]
    # MNI y: +1 at the frontal pole, -1 occipital; thinning is 1 + gm_frontal_gradient * frontal rate * this.
    maps["frontal_axis"] = np.clip(world[1] / 70.0, -1.0, 1.0).astype(np.float32)
    distance = template["ventricle_distance"][crop]
    maps["wmh_propensity"] = (maps["wm"] * np.exp(-distance / WMH_DECAY_MM)).astype(np.float32)
    wmh_candidates = np.flatnonzero((maps["wm"] > 0.3) & (distance < 3.0 * WMH_DECAY_MM))
    dilation = max(1, math.ceil(3.0 * _deformation_sd_mm(config) / spacing) + 1)
    maps["selectable"] = ndi.binary_dilation(maps["envelope"] > 0.01, iterations=dilation).astype(np.uint8)
    i = config.intensities
    csf = maps["csf_ventricular"] + maps["csf_sulcal"]
    maps["t1_reference"] = (i.wm * maps["wm"] + i.gm * maps["gm"] + i.csf * csf) / i.wm

    # Tables are computed on the voxels holding GM (1-D views), all others never change.
    active = maps["gm"] > 1e-4
    g, w, sulcal = maps["gm"][active], maps["wm"][active], maps["csf_sulcal"][active]
    pial, wm_depth = maps["pial_depth"][active], maps["wm_depth"][active]
    gradient = 1.0 + config.aging.gm_frontal_gradient * maps["frontal_axis"][active]  # the population's
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
        "temporal_loss": _table(np.linspace(0.0, 10.0, 41), regional_loss(maps["temporal"][active])),
    }
    displacements, ratios, coarse = ventricle_levels(float(spacing), tuple((s.start, s.stop) for s in crop))
    envelope_full = template["envelope"]
    centre_index = np.array(ndi.center_of_mass(envelope_full))
    centre_mm = template["affine"][:3, :3] @ centre_index + template["affine"][:3, 3]
    return SynthModel(
        config=config,
        spacing=float(spacing),
        affine=np.array(template["affine"]),
        shape=(int(envelope_full.shape[0]), int(envelope_full.shape[1]), int(envelope_full.shape[2])),
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


def _deformation_sd_mm(config: SynthConfig) -> float:
    """Combined SD (mm) of the two scales of the random velocity field."""
    anatomy = config.anatomy
    return math.hypot(anatomy.deformation_sd_mm, anatomy.deformation_coarse_sd_mm)


def diffeomorphic_displacement(rng: np.random.Generator, model: SynthModel, steps: int = 6) -> np.ndarray:
    """A random smooth diffeomorphism's displacement on the ``FIELD_GRID_MM`` grid.

    A stationary velocity field, the sum of two scales of :func:`smooth_field` (control points
    every ``anatomy.deformation_coarse_spacing_mm`` and ``anatomy.deformation_spacing_mm``, SDs
    ``deformation_coarse_sd_mm`` and ``deformation_sd_mm``), is exponentiated by scaling and
    squaring (arsigny2006log): ``phi = v / 2**steps``, then ``steps`` times
    ``phi(x) <- phi(x) + phi(x + phi(x))``. The result is invertible whatever its size.

    Returns:
        ``(3, fx, fy, fz)`` displacement in output-grid voxels, for :func:`field_at`.
    """
    anatomy = model.config.anatomy
    velocity_mm = anatomy.deformation_coarse_sd_mm * smooth_field(
        rng, model, anatomy.deformation_coarse_spacing_mm, 3
    ) + anatomy.deformation_sd_mm * smooth_field(rng, model, anatomy.deformation_spacing_mm, 3)
    phi = velocity_mm / FIELD_GRID_MM / 2**steps  # in field-grid voxels
    grid = np.indices(phi.shape[1:], dtype=np.float32)
    for _ in range(steps):
        where = grid + phi
        phi = phi + np.stack([ndi.map_coordinates(c, where, order=1, mode="nearest") for c in phi])
    return (phi * (FIELD_GRID_MM / model.spacing)).astype(np.float32)


def smooth_field(rng: np.random.Generator, model: SynthModel, control_mm: float, count: int) -> np.ndarray:
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


def field_at(field: np.ndarray, index: np.ndarray, model: SynthModel) -> np.ndarray:
    """Sample a field-grid array at output-grid voxel positions ``index`` ``(3, N)``."""
    return ndi.map_coordinates(field, index * (model.spacing / FIELD_GRID_MM), order=1, mode="nearest")


def aging_targets(subject: SubjectParams, config: SynthConfig) -> dict[str, float]:
    """The volume changes one subject's biological age, own rates, anatomy and disease call for.

    Each aging process's population trajectory is scaled by the subject's rate for it,
    ``exp(sd * rate_z[process])`` (``aging.ventricle_rate_sd`` for the ventricles, else
    ``aging.rate_sd``); the individual anatomy adds age-independent offsets.

    Returns:
        ``gm_loss`` (fraction of template GM, before disease; the cortex's own loss plus the
        subject's thinner or thicker cortex); ``frontal_rate`` (multiplier of the frontal excess
        of thinning); ``temporal_loss`` (extra late loss of temporal GM, fraction of its GM);
        ``hippocampal_loss`` (fraction of medial temporal GM, aging and AD); ``wm_gain`` and
        ``wm_decline`` (fractions of template WM: the GM/WM boundary moves into the cortex by the
        gain and back by the decline, and the cortex follows the decline inwards, so declined WM
        becomes sulcal CSF); ``wm_offset`` (the subject's WM volume, fraction, moving the
        boundary alone); ``ventricle_ratio`` (ventricular volume / template's); ``wmh_ml``
        (template-space ml).
    """
    aging, disease, anatomy = config.aging, config.disease, config.anatomy
    age = subject.biological_age
    years = age - aging.reference_age

    def rate(process: str) -> float:
        sd = aging.ventricle_rate_sd if process == "ventricles" else aging.rate_sd
        return math.exp(sd * subject.rate_z[process])

    def after(onset: float) -> float:
        return max(age - onset, 0.0)

    growth = (
        aging.ventricle_growth_per_year * years
        + aging.ventricle_growth_quadratic * after(aging.ventricle_acceleration_age) ** 2
    )
    ratio = (1.0 + rate("ventricles") * growth) * math.exp(anatomy.ventricle_log_sd * subject.anatomy_z["ventricles"])
    wmh_exponent = aging.wmh_growth_per_year * (age - 60.0) + aging.wmh_log_sd * subject.wmh_z
    wmh = aging.wmh_ml_at_60 * math.exp(wmh_exponent)
    hippocampal = (
        rate("hippocampus")
        * (
            aging.hippocampal_loss_per_year * years
            + aging.hippocampal_loss_quadratic * after(aging.hippocampal_acceleration_age) ** 2
        )
        + anatomy.hippocampus_sd * subject.anatomy_z["hippocampus"]
    )
    if subject.group == "AD":
        ratio *= 1.0 + disease.ad_ventricle_expansion_per_cdr * subject.cdr
        wmh *= disease.ad_wmh_factor
        medial = disease.ad_hippocampal_loss_base + disease.ad_hippocampal_loss_per_cdr * subject.cdr
        medial *= math.exp(disease.ad_pattern_log_sd * subject.pattern_z["medial_temporal"])
        hippocampal = 1.0 - (1.0 - hippocampal) * (1.0 - min(medial, disease.ad_hippocampal_loss_max))
    elif subject.group == "PD":
        ratio *= 1.0 + disease.pd_ventricle_expansion_per_severity * subject.severity
    gm_loss = aging.gm_loss_per_year * years + aging.gm_loss_acceleration * after(aging.gm_acceleration_age) ** 2
    return {
        "gm_loss": rate("cortex") * gm_loss + anatomy.cortex_sd * subject.anatomy_z["cortex"],
        "frontal_rate": rate("frontal"),
        "temporal_loss": rate("temporal") * aging.temporal_loss_quadratic * after(aging.temporal_acceleration_age) ** 2,
        "hippocampal_loss": float(np.clip(hippocampal, -0.2, 0.9)),
        "wm_gain": aging.wm_gain_max * (1.0 - math.exp(-years / aging.wm_gain_tau)),
        "wm_decline": rate("wm") * aging.wm_decline_quadratic * after(aging.wm_decline_age) ** 2,
        "wm_offset": anatomy.wm_sd * subject.anatomy_z["wm"],
        "ventricle_ratio": ratio,
        "wmh_ml": wmh,
    }


def age_tissues(
    model: SynthModel, subject: SubjectParams, targets: dict[str, float], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Apply aging (``targets`` from :func:`aging_targets`) and disease to the template tissue
    maps, in template space on the crop grid ``(x, y, z)``."""
    maps, width, disease = model.maps, model.width, model.config.disease
    g, w = maps["gm"].copy(), maps["wm"].copy()
    ventricular, sulcal = maps["csf_ventricular"].copy(), maps["csf_sulcal"].copy()
    shift = _invert(model.tables["wm_gain"], targets["wm_gain"] - targets["wm_decline"] + targets["wm_offset"])
    # The medial temporal lobe ages on its own curve (hippocampal_loss below), not with the
    # GM/WM boundary or the cortical erosion.
    own_curve = 1.0 - maps["medial_temporal"]
    moved = _wm_boundary_shift(g, w, maps["wm_depth"], shift, width) * own_curve
    g, w = g - moved, w + moved
    # The cortex erodes by its own loss plus the GM that the receding WM boundary handed it.
    erosion = targets["gm_loss"] + targets["wm_decline"] * float(maps["wm"].sum() / maps["gm"].sum())
    gradient = 1.0 + model.config.aging.gm_frontal_gradient * targets["frontal_rate"] * maps["frontal_axis"]
    thinning = _invert(model.tables["gm_loss"], erosion) * gradient
    thinning = thinning + _invert(model.tables["temporal_loss"], targets["temporal_loss"]) * maps["temporal"]
    if subject.group == "AD":
        loss = disease.ad_temporoparietal_loss_per_cdr * subject.cdr
        loss *= math.exp(disease.ad_pattern_log_sd * subject.pattern_z["cortical"])
        thinning = thinning + _invert(model.tables["temporoparietal_loss"], loss) * maps["temporoparietal"]
    if subject.group == "PD":
        loss = disease.pd_frontal_loss_per_severity * subject.severity
        thinning = thinning + _invert(model.tables["frontal_loss"], loss) * maps["frontal"]
    moved = _transfer(g, sulcal, maps["pial_depth"], thinning * own_curve, width)
    g, sulcal = g - moved, sulcal + moved
    # Medial temporal GM lost with age (and AD) goes to the temporal horn; a negative loss (a
    # subject whose rate makes it younger than the template) takes CSF back, as far as there is.
    moved = np.maximum(g * targets["hippocampal_loss"] * maps["medial_temporal"], -ventricular)
    g, ventricular = g - moved, ventricular + moved
    if subject.group == "PD":
        moved = g * (disease.pd_caudate_loss_per_severity * subject.severity) * maps["caudate"]
        g, ventricular = g - moved, ventricular + moved
        moved = g * (disease.pd_putamen_loss_per_severity * subject.severity) * maps["putamen"]
        g, w = g - moved, w + moved  # the shrinking putamen: the capsule's WM takes its place
    # WMH: the WM voxels with the highest periventricular propensity (times a smooth random
    # texture) become WMH until the target volume is reached.
    candidates = model.wmh_candidates
    texture = smooth_field(rng, model, 16.0, 1)[0]
    position = np.array(np.unravel_index(candidates, g.shape), dtype=np.float32) + model.crop_start[:, None]
    score = maps["wmh_propensity"].ravel()[candidates] * np.exp(0.7 * field_at(texture, position, model))
    order = candidates[np.argsort(-score, kind="stable")]
    available = w.ravel()[order]
    chosen = order[: np.searchsorted(np.cumsum(available) - available / 2, targets["wmh_ml"] / model.voxel_ml)]
    wmh = np.zeros_like(w)
    wmh.ravel()[chosen] = w.ravel()[chosen]
    w.ravel()[chosen] = 0.0
    tissues = {"gm": g, "wm": w, "csf_ventricular": ventricular, "csf_sulcal": sulcal, "wmh": wmh}
    return tissues | {"hippocampal_gm": g * maps["hippocampus"]}
