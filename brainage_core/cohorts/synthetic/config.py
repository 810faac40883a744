"""Every effect size and distribution of the synthetic aging cohort, and who is in it.

:class:`SynthConfig` holds the parameters; :func:`sample_subjects` draws each subject's
scalars (group, age, sex, gap, scores, head size, pose, site) from them, and
:func:`aging_targets` turns a subject into the volume changes that
:mod:`brainage_core.cohorts.synthetic` builds into the images.

:class:`SynthConfig` is read by :func:`brainage_core.cohorts.synthetic.generate_cohort`. Each effect size
carries, in the comment beside it, the BibTeX key (``book/references.bib``) of the work it is
taken from. Numbers marked "design choice" are not taken from the literature: they set up the
phantom (group mix, scanner spread, split) and are documented in
``data_manifests/synthetic_cohort.md``. The literature values are orders of magnitude for a
teaching phantom, not a fit to any data set.

A YAML file holds a subset of the fields, nested like :meth:`SynthConfig.to_dict`; missing
fields keep their defaults::

    groups:
      AD: {fraction: 0.2}
      CN: {fraction: 0.65}
    aging:
      gm_loss_per_year: 0.004
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.stats import truncnorm

__all__ = [
    "SYNTH_GROUPS",
    "AgingEffects",
    "AnatomyVariation",
    "ClinicalScores",
    "DiseaseEffects",
    "GroupSpec",
    "ScannerEffects",
    "SubjectParams",
    "SynthConfig",
    "TissueIntensities",
    "aging_targets",
    "assign_splits",
    "sample_subjects",
]

SYNTH_GROUPS: tuple[str, ...] = ("CN", "AD", "PD")  # groups the phantom can simulate
AGE_LIMITS: tuple[float, float] = (0.0, 120.0)
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class GroupSpec:
    """Demographics and latent brain-age gap of one diagnostic group.

    Attributes:
        fraction: share of the cohort in this group.
        age_min: youngest chronological age (years).
        age_max: oldest chronological age (years).
        age_mean: mean of a normal age distribution truncated to ``[age_min, age_max]``;
            ``None`` draws ages uniformly between the limits.
        age_sd: SD of that normal (ignored when ``age_mean`` is ``None``).
        female_fraction: probability of sex F.
        gap_mean: mean brain-age gap (biological minus chronological age, years).
        gap_sd: SD of the gap (years).
        gap_per_severity: extra gap (years) per unit of disease severity above the group's
            mean severity (CDR for AD, UPDRS-III / ``severity_reference_updrs3`` for PD).
    """

    fraction: float
    age_min: float
    age_max: float
    age_mean: float | None
    age_sd: float
    female_fraction: float
    gap_mean: float
    gap_sd: float
    gap_per_severity: float = 0.0


def _default_groups() -> dict[str, GroupSpec]:
    return {
        # Group mix, ages and sex ratios: design choice (adult lifespan for controls, late
        # onset for AD, typical PD cohort ages). Gap SD of healthy adults 3-5 y:
        # cole2017predicting, franke2019ten.
        "CN": GroupSpec(0.70, 20.0, 90.0, None, 0.0, 0.50, 0.0, 4.0),
        # AD gap +5 to +10 y growing with severity: franke2012longitudinal, franke2019ten.
        "AD": GroupSpec(0.15, 60.0, 90.0, 74.0, 7.0, 0.55, 7.0, 4.5, 3.0),
        # PD gap of a few years, related to motor impairment: eickhoff2021advanced,
        # beheshti2020t1; male predominance of PD: wooten2004are.
        "PD": GroupSpec(0.15, 50.0, 85.0, 66.0, 8.0, 0.40, 2.5, 4.5, 1.5),
    }


@dataclass
class AgingEffects:
    """Healthy aging, driven by biological age (chronological age + gap).

    Volume changes are fractions of the template's volume; the template (ICBM 2009a, built
    from adults aged 18.5-43.5, fonov2009unbiased) stands for ``reference_age``.
    """

    # Age the template represents (ICBM 2009 adults 18.5-43.5 y): fonov2009unbiased, fonov2011unbiased.
    reference_age: float = 25.0
    # Cortical GM volume loss /y (0.2-0.5 %/y): fjell2010structural, raz2005regional, bethlehem2022brain.
    gm_loss_per_year: float = 0.0025
    gm_loss_acceleration: float = 0.00004  # extra loss /y^2 after gm_acceleration_age: fjell2009one
    gm_acceleration_age: float = 60.0  # fjell2009one
    # Thinning 30 % stronger frontally, 30 % weaker occipitally: raz2005regional, fjell2009high.
    gm_frontal_gradient: float = 0.3
    # WM volume gain (GM/WM boundary moving into the cortex) until midlife: walhovd2005effects, bethlehem2022brain.
    wm_gain_max: float = 0.05
    wm_gain_tau: float = 12.0  # years to approach that gain: walhovd2005effects
    # WM volume loss /y^2 after wm_decline_age (inverted U): walhovd2005effects, fotenos2005normative.
    wm_decline_quadratic: float = 0.00006
    wm_decline_age: float = 50.0  # walhovd2005effects
    ventricle_growth_per_year: float = 0.010  # linear ventricular growth /y: walhovd2011consistent
    # Accelerating growth /y^2 after ventricle_acceleration_age: walhovd2011consistent, fjell2009one.
    ventricle_growth_quadratic: float = 0.0012
    ventricle_acceleration_age: float = 50.0  # walhovd2011consistent
    wmh_ml_at_60: float = 1.5  # T1-hypointense WMH volume (ml) at 60 y: decarli2005measures
    wmh_growth_per_year: float = 0.07  # exponential WMH growth /y: decarli2005measures, habes2016white
    wmh_log_sd: float = 0.6  # between-subject SD of log WMH volume: decarli2005measures
    contrast_loss_per_year: float = 0.0008  # WM intensity falls, GM rises, by this fraction /y: salat2009age


@dataclass
class ClinicalScores:
    """Distributions of the clinical scores (manifest columns mmse, cdr, updrs3, hoehn_yahr)."""

    cn_mmse_mean: float = 29.0  # folstein1975mini
    cn_mmse_sd: float = 1.0  # folstein1975mini
    # Global CDR stages: morris1993clinical (the mix is a design choice).
    ad_cdr_probabilities: dict[float, float] = field(default_factory=lambda: {0.5: 0.35, 1.0: 0.45, 2.0: 0.20})
    # MMSE ranges per CDR stage: perneczky2006mapping.
    ad_mmse_mean_by_cdr: dict[float, float] = field(default_factory=lambda: {0.5: 25.0, 1.0: 21.0, 2.0: 15.0, 3.0: 7.0})
    ad_mmse_sd: float = 2.5  # perneczky2006mapping
    # Stages: hoehn1967parkinsonism, goetz2004movement (the mix is a design choice).
    pd_hoehn_yahr_probabilities: dict[float, float] = field(
        default_factory=lambda: {1.0: 0.30, 2.0: 0.45, 3.0: 0.20, 4.0: 0.05}
    )
    pd_updrs3_mean_by_hoehn_yahr: dict[float, float] = field(
        default_factory=lambda: {1.0: 15.0, 2.0: 27.0, 3.0: 38.0, 4.0: 50.0, 5.0: 60.0}  # goetz2008movement
    )
    pd_updrs3_sd: float = 7.0  # goetz2008movement
    pd_mmse_mean: float = 28.0  # folstein1975mini
    pd_mmse_sd: float = 1.5  # folstein1975mini

    def __post_init__(self) -> None:
        # YAML and JSON give keys as ints or strings; stages and probabilities are floats.
        for name in (
            "ad_cdr_probabilities",
            "ad_mmse_mean_by_cdr",
            "pd_hoehn_yahr_probabilities",
            "pd_updrs3_mean_by_hoehn_yahr",
        ):
            setattr(self, name, {float(k): float(v) for k, v in getattr(self, name).items()})


@dataclass
class DiseaseEffects:
    """Disease-specific atrophy on top of the (gap-accelerated) aging pattern.

    AD effects scale with global CDR; PD effects with severity = UPDRS-III /
    ``severity_reference_updrs3``. Losses are fractions of the region's template GM volume.
    """

    ad_hippocampal_loss_per_cdr: float = 0.15  # medial temporal GM loss /CDR unit: frisoni2010clinical
    ad_hippocampal_loss_max: float = 0.5  # frisoni2010clinical
    ad_temporoparietal_loss_per_cdr: float = 0.04  # cortical signature of AD: dickerson2009cortical
    ad_ventricle_expansion_per_cdr: float = 0.25  # ventricles beyond age-expected /CDR unit: nestor2008ventricular
    ad_wmh_factor: float = 1.3  # more WMH in AD than controls: habes2016white
    pd_putamen_loss_per_severity: float = 0.04  # laansma2021international
    pd_caudate_loss_per_severity: float = 0.03  # laansma2021international
    pd_frontal_loss_per_severity: float = 0.015  # laansma2021international
    pd_ventricle_expansion_per_severity: float = 0.05  # laansma2021international
    severity_reference_updrs3: float = 30.0  # typical MDS-UPDRS-III of a PD cohort: goetz2008movement


@dataclass
class AnatomyVariation:
    """Individual anatomy no model can remove: head size, shape, and placement."""

    head_scale_sd: float = 0.035  # linear SD (about 10 % of intracranial volume): ruigrok2014meta
    head_scale_sex_difference: float = 0.04  # male/female linear ratio - 1 (about 12 % in volume): ruigrok2014meta
    deformation_sd_mm: float = 2.0  # smooth nonlinear shape variation: design choice
    deformation_spacing_mm: float = 24.0  # control-point spacing of that deformation: design choice
    rotation_max_deg: float = 3.0  # residual misregistration: design choice
    translation_max_mm: float = 3.0  # residual misregistration: design choice


@dataclass
class ScannerEffects:
    """Acquisition: bias field, noise, and per-site differences."""

    n_sites: int = 3  # design choice
    site_gain_sd: float = 0.10  # per-site global intensity scale SD: design choice
    site_contrast_sd: float = 0.03  # per-site GM/WM contrast SD: design choice
    site_noise_sd: float = 0.30  # per-site relative SD of the noise level: design choice
    noise_sd: float = 0.03  # Rician noise SD as a fraction of WM intensity: gudbjartsson1995rician
    bias_field_sd: float = 0.08  # SD of the log of the smooth multiplicative field: sled1998nonparametric
    bias_field_spacing_mm: float = 60.0  # control-point spacing of the bias field: sled1998nonparametric


@dataclass
class TissueIntensities:
    """Noise-free T1 intensities of each tissue, relative to WM at the reference age."""

    wm: float = 1.0  # design choice (T1 contrast order WM > GM > CSF)
    gm: float = 0.68  # ratio measured on the ICBM 2009a T1 template: fonov2011unbiased
    csf: float = 0.25  # fonov2011unbiased
    wmh: float = 0.75  # T1-hypointense WMH, between WM and GM: decarli2005measures
    scale: float = 1000.0  # WM value in the int16 image: design choice


def _default_splits() -> dict[str, float]:
    return {"train": 0.6, "val": 0.2, "test": 0.2}  # design choice


@dataclass
class SynthConfig:
    """All parameters of the synthetic cohort (see the module docstring)."""

    groups: dict[str, GroupSpec] = field(default_factory=_default_groups)
    aging: AgingEffects = field(default_factory=AgingEffects)
    scores: ClinicalScores = field(default_factory=ClinicalScores)
    disease: DiseaseEffects = field(default_factory=DiseaseEffects)
    anatomy: AnatomyVariation = field(default_factory=AnatomyVariation)
    scanner: ScannerEffects = field(default_factory=ScannerEffects)
    intensities: TissueIntensities = field(default_factory=TissueIntensities)
    splits: dict[str, float] = field(default_factory=_default_splits)

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as nested plain dicts (YAML/JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthConfig:
        """Build a config from nested dicts; missing fields keep their defaults.

        Raises:
            ValueError: an unknown section or field name (the message lists the known ones).
        """
        config = cls()
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown SynthConfig section(s) {sorted(unknown)}; known: {known}")
        for section in ("groups", "splits"):
            if not isinstance(data.get(section) or {}, dict):
                raise ValueError(f"{section}: expected a mapping, got {data[section]!r}")
        groups = _default_groups()
        for name, spec in (data.get("groups") or {}).items():
            if name not in SYNTH_GROUPS:
                raise ValueError(f"groups: unknown group {name!r}; the phantom simulates only {list(SYNTH_GROUPS)}")
            groups[name] = GroupSpec(**_merge(f"groups.{name}", dataclasses.asdict(groups[name]), spec, GroupSpec))
        config.groups = groups
        for section in ("aging", "scores", "disease", "anatomy", "scanner", "intensities"):
            if section in data:
                current = getattr(config, section)
                merged = _merge(section, dataclasses.asdict(current), data[section], type(current))
                setattr(config, section, type(current)(**merged))
        if "splits" in data:
            config.splits = {str(k): float(v) for k, v in data["splits"].items()}
        return config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> SynthConfig:
        """Read a (partial) config from a YAML file and validate it.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: unknown fields or invalid values (see :meth:`validate`).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"synthetic-cohort config not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of sections (groups, aging, ...), got {type(data).__name__}")
        config = cls.from_dict(data)
        config.validate()
        return config

    def validate(self) -> None:
        """Check every value; raise one ValueError listing all problems.

        Raises:
            ValueError: each problem names the field, its value and the allowed range.
        """
        problems: list[str] = []

        def need(name: str, value: float, low: float, high: float = math.inf, low_open: bool = False) -> None:
            bad = not isinstance(value, (int, float)) or math.isnan(value)
            bad = bad or value < low or value > high or (low_open and value == low)
            if bad:
                bracket = "(" if low_open else "["
                problems.append(f"{name} = {value!r} is outside the allowed range {bracket}{low:g}, {high:g}]")

        unknown = [name for name in self.groups if name not in SYNTH_GROUPS]
        if unknown:
            problems.append(f"groups: unknown group name(s) {unknown}; the phantom simulates only {list(SYNTH_GROUPS)}")
        for name, spec in self.groups.items():
            prefix = f"groups.{name}"
            need(f"{prefix}.fraction", spec.fraction, 0.0, 1.0)
            need(f"{prefix}.age_min", spec.age_min, *AGE_LIMITS)
            need(f"{prefix}.age_max", spec.age_max, *AGE_LIMITS)
            if spec.age_min > spec.age_max:
                problems.append(f"{prefix}: age_min {spec.age_min:g} > age_max {spec.age_max:g}; swap them")
            if spec.age_mean is not None:
                need(f"{prefix}.age_mean", spec.age_mean, spec.age_min, spec.age_max)
                need(f"{prefix}.age_sd", spec.age_sd, 0.0, 100.0, low_open=True)
            need(f"{prefix}.female_fraction", spec.female_fraction, 0.0, 1.0)
            need(f"{prefix}.gap_mean", spec.gap_mean, -30.0, 30.0)
            need(f"{prefix}.gap_sd", spec.gap_sd, 0.0, 30.0)
            need(f"{prefix}.gap_per_severity", spec.gap_per_severity, -30.0, 30.0)
        _check_fractions("groups (fraction)", {k: v.fraction for k, v in self.groups.items()}, problems)
        _check_fractions("splits", self.splits, problems)
        unknown_splits = [name for name in self.splits if name not in SPLITS]
        if unknown_splits:
            problems.append(f"splits: unknown split name(s) {unknown_splits}; use {list(SPLITS)}")

        a = self.aging
        need("aging.reference_age", a.reference_age, *AGE_LIMITS)
        need("aging.gm_loss_per_year", a.gm_loss_per_year, 0.0, 0.02)
        need("aging.gm_loss_acceleration", a.gm_loss_acceleration, 0.0, 0.001)
        need("aging.gm_acceleration_age", a.gm_acceleration_age, *AGE_LIMITS)
        need("aging.gm_frontal_gradient", a.gm_frontal_gradient, 0.0, 0.9)
        need("aging.wm_gain_max", a.wm_gain_max, 0.0, 0.2)
        need("aging.wm_gain_tau", a.wm_gain_tau, 0.0, 100.0, low_open=True)
        need("aging.wm_decline_quadratic", a.wm_decline_quadratic, 0.0, 0.001)
        need("aging.wm_decline_age", a.wm_decline_age, *AGE_LIMITS)
        need("aging.ventricle_growth_per_year", a.ventricle_growth_per_year, 0.0, 0.1)
        need("aging.ventricle_growth_quadratic", a.ventricle_growth_quadratic, 0.0, 0.01)
        need("aging.ventricle_acceleration_age", a.ventricle_acceleration_age, *AGE_LIMITS)
        need("aging.wmh_ml_at_60", a.wmh_ml_at_60, 0.0, 100.0)
        need("aging.wmh_growth_per_year", a.wmh_growth_per_year, 0.0, 0.5)
        need("aging.wmh_log_sd", a.wmh_log_sd, 0.0, 3.0)
        need("aging.contrast_loss_per_year", a.contrast_loss_per_year, 0.0, 0.005)

        s = self.scores
        for name in ("cn_mmse_mean", "pd_mmse_mean"):
            need(f"scores.{name}", getattr(s, name), 0.0, 30.0)
        for name in ("cn_mmse_sd", "ad_mmse_sd", "pd_updrs3_sd", "pd_mmse_sd"):
            need(f"scores.{name}", getattr(s, name), 0.0, 50.0)
        _check_fractions("scores.ad_cdr_probabilities", s.ad_cdr_probabilities, problems)
        _check_fractions("scores.pd_hoehn_yahr_probabilities", s.pd_hoehn_yahr_probabilities, problems)
        for cdr in s.ad_cdr_probabilities:
            if cdr not in (0.5, 1.0, 2.0, 3.0):
                problems.append(f"scores.ad_cdr_probabilities: CDR {cdr!r} is not one of 0.5, 1, 2, 3")
            elif cdr not in s.ad_mmse_mean_by_cdr:
                problems.append(f"scores.ad_mmse_mean_by_cdr: no MMSE mean for CDR {cdr:g}; add one")
        for cdr, mmse in s.ad_mmse_mean_by_cdr.items():
            need(f"scores.ad_mmse_mean_by_cdr[{cdr}]", mmse, 0.0, 30.0)
        for stage in s.pd_hoehn_yahr_probabilities:
            if stage not in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0):
                problems.append(f"scores.pd_hoehn_yahr_probabilities: {stage!r} is not a Hoehn & Yahr stage (1-5)")
            elif stage not in s.pd_updrs3_mean_by_hoehn_yahr:
                problems.append(f"scores.pd_updrs3_mean_by_hoehn_yahr: no UPDRS-III mean for stage {stage:g}; add one")
        for stage, updrs in s.pd_updrs3_mean_by_hoehn_yahr.items():
            need(f"scores.pd_updrs3_mean_by_hoehn_yahr[{stage}]", updrs, 0.0, 132.0)

        section_limits: tuple[tuple[str, dict[str, tuple[float, float]]], ...] = (
            (
                "disease",
                {
                    "ad_hippocampal_loss_max": (0.0, 0.9),
                    "severity_reference_updrs3": (1.0, 132.0),
                    "ad_wmh_factor": (0.0, 10.0),
                },
            ),
            (
                "anatomy",
                {
                    "head_scale_sd": (0.0, 0.1),
                    "head_scale_sex_difference": (0.0, 0.2),
                    "deformation_sd_mm": (0.0, 6.0),
                    "deformation_spacing_mm": (8.0, 200.0),
                    "rotation_max_deg": (0.0, 15.0),
                    "translation_max_mm": (0.0, 15.0),
                },
            ),
            (
                "scanner",
                {
                    "n_sites": (1, 100),
                    "site_gain_sd": (0.0, 0.5),
                    "site_contrast_sd": (0.0, 0.2),
                    "site_noise_sd": (0.0, 1.0),
                    "noise_sd": (0.0, 0.3),
                    "bias_field_sd": (0.0, 0.5),
                    "bias_field_spacing_mm": (20.0, 500.0),
                },
            ),
            (
                "intensities",
                {"wm": (0.0, 10.0), "gm": (0.0, 10.0), "csf": (0.0, 10.0), "wmh": (0.0, 10.0), "scale": (1.0, 20000.0)},
            ),
        )
        for name, limits in section_limits:
            section = getattr(self, name)
            for f in dataclasses.fields(section):
                # Unlisted fields are fractions or per-unit losses: [0, 1].
                need(f"{name}.{f.name}", getattr(section, f.name), *limits.get(f.name, (0.0, 1.0)))
        if isinstance(self.scanner.n_sites, float) and not self.scanner.n_sites.is_integer():
            problems.append(f"scanner.n_sites = {self.scanner.n_sites!r} must be a whole number")
        i = self.intensities
        if not i.wm > i.gm > i.csf:
            problems.append(f"intensities: a T1 needs wm > gm > csf, got wm={i.wm:g}, gm={i.gm:g}, csf={i.csf:g}")
        if problems:
            raise ValueError("invalid SynthConfig:\n  - " + "\n  - ".join(problems))


def _merge(where: str, base: dict[str, Any], override: Any, kind: type) -> dict[str, Any]:
    """Overlay ``override`` (a mapping from YAML) on ``base``, rejecting unknown field names."""
    if not isinstance(override, dict):
        raise ValueError(f"{where}: expected a mapping of fields, got {override!r}")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = set(override) - known
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; known fields: {sorted(known)}")
    return {**base, **override}


def _check_fractions(name: str, fractions: dict[Any, float], problems: list[str]) -> None:
    """Record a problem unless ``fractions`` are non-negative and sum to 1."""
    values = list(fractions.values())
    if not values:
        problems.append(f"{name}: empty; give at least one entry")
        return
    if any(not isinstance(v, (int, float)) or math.isnan(v) or v < 0 for v in values):
        problems.append(f"{name}: fractions must be numbers >= 0, got {dict(fractions)}")
    elif abs(sum(values) - 1.0) > 1e-6:
        problems.append(f"{name}: fractions sum to {sum(values):.6g}, they must sum to 1")


@dataclass(frozen=True)
class SubjectParams:
    """The scalars describing one subject; with ``seed`` they determine its images.

    Attributes:
        subject_id: ``sub-0001``, ...
        group: CN, AD or PD.
        sex: M or F.
        age: chronological age (years, 2 decimals).
        true_gap: latent brain-age gap (years, 2 decimals).
        severity: disease severity (CDR for AD, UPDRS-III / reference for PD, 0 for CN).
        mmse, cdr, updrs3, hoehn_yahr: clinical scores (NaN where not recorded).
        site: acquisition site label.
        site_gain, site_contrast, site_noise: that site's intensity scale, GM contrast
            change and noise multiplier.
        head_scale: linear head size relative to the template.
        rotation_deg: rotation about x, y, z (degrees).
        translation_mm: translation (mm).
        wmh_z: standard-normal deviation of the subject's WMH volume.
        seed: seed sequence of the subject's random fields and noise.
    """

    subject_id: str
    group: str
    sex: str
    age: float
    true_gap: float
    severity: float
    mmse: float
    cdr: float
    updrs3: float
    hoehn_yahr: float
    site: str
    site_gain: float
    site_contrast: float
    site_noise: float
    head_scale: float
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    wmh_z: float
    seed: np.random.SeedSequence

    @property
    def biological_age(self) -> float:
        """Chronological age + gap: the age that drives the simulated aging."""
        return round(self.age + self.true_gap, 2)


def _streams(seed: int) -> list[np.random.SeedSequence]:
    """Independent seed streams: group order, sites, subjects, splits."""
    return np.random.SeedSequence(seed).spawn(4)


def _largest_remainder(fractions: dict[Any, float], n: int) -> dict[Any, int]:
    """Integer counts summing to ``n`` closest to ``fraction * n`` (ties: first key first)."""
    exact = {key: fraction * n for key, fraction in fractions.items()}
    counts = {key: math.floor(value) for key, value in exact.items()}
    by_remainder = sorted(exact, key=lambda key: -(exact[key] - counts[key]))
    for key in by_remainder[: n - sum(counts.values())]:
        counts[key] += 1
    return counts


def _expected_severity(group: str, config: SynthConfig) -> float:
    scores = config.scores
    if group == "AD":
        return sum(p * cdr for cdr, p in scores.ad_cdr_probabilities.items())
    if group == "PD":
        reference = config.disease.severity_reference_updrs3
        stages = scores.pd_hoehn_yahr_probabilities.items()
        return sum(p * scores.pd_updrs3_mean_by_hoehn_yahr[stage] / reference for stage, p in stages)
    return 0.0


def _score(rng: np.random.Generator, mean: float, sd: float, high: float) -> float:
    return float(np.clip(np.round(rng.normal(mean, sd)), 0.0, high))


def sample_subjects(n_subjects: int, seed: int, config: SynthConfig) -> list[SubjectParams]:
    """Draw the scalars of every subject.

    Group sizes follow ``fraction`` exactly (largest remainder) in a random order; everything
    else about subject ``i`` comes from its own generator, spawned from ``seed`` and ``i``.

    Args:
        n_subjects: cohort size.
        seed: non-negative integer.
        config: a validated config.

    Returns:
        One :class:`SubjectParams` per subject, ``sub-0001`` first.
    """
    order_seq, site_seq, subject_seq, _ = _streams(seed)
    counts = _largest_remainder({name: spec.fraction for name, spec in config.groups.items()}, n_subjects)
    groups = np.random.default_rng(order_seq).permutation(np.repeat(list(counts), list(counts.values())))
    scanner, anatomy, scores = config.scanner, config.anatomy, config.scores
    site_rng = np.random.default_rng(site_seq)
    site_gain = np.exp(scanner.site_gain_sd * site_rng.standard_normal(scanner.n_sites))
    site_contrast = scanner.site_contrast_sd * site_rng.standard_normal(scanner.n_sites)
    site_noise = np.exp(scanner.site_noise_sd * site_rng.standard_normal(scanner.n_sites))
    digits = max(4, len(str(n_subjects)))
    subjects = []
    for index, (group, sequence) in enumerate(zip(groups, subject_seq.spawn(n_subjects))):
        spec = config.groups[str(group)]
        scalar_seq, image_seq = sequence.spawn(2)
        rng = np.random.default_rng(scalar_seq)
        sex = "F" if rng.random() < spec.female_fraction else "M"
        if spec.age_mean is None:
            age = rng.uniform(spec.age_min, spec.age_max)
        else:
            low, high = (spec.age_min - spec.age_mean) / spec.age_sd, (spec.age_max - spec.age_mean) / spec.age_sd
            age = truncnorm.rvs(low, high, loc=spec.age_mean, scale=spec.age_sd, random_state=rng)
        mmse = cdr = updrs3 = hoehn_yahr = math.nan
        severity = 0.0
        if group == "CN":
            mmse, cdr = _score(rng, scores.cn_mmse_mean, scores.cn_mmse_sd, 30.0), 0.0
        elif group == "AD":
            stages = list(scores.ad_cdr_probabilities)
            cdr = float(stages[rng.choice(len(stages), p=list(scores.ad_cdr_probabilities.values()))])
            mmse, severity = _score(rng, scores.ad_mmse_mean_by_cdr[cdr], scores.ad_mmse_sd, 30.0), cdr
        elif group == "PD":
            stages = list(scores.pd_hoehn_yahr_probabilities)
            hoehn_yahr = float(stages[rng.choice(len(stages), p=list(scores.pd_hoehn_yahr_probabilities.values()))])
            updrs3 = _score(rng, scores.pd_updrs3_mean_by_hoehn_yahr[hoehn_yahr], scores.pd_updrs3_sd, 132.0)
            mmse = _score(rng, scores.pd_mmse_mean, scores.pd_mmse_sd, 30.0)
            severity = updrs3 / config.disease.severity_reference_updrs3
        excess = severity - _expected_severity(str(group), config)
        gap = spec.gap_mean + spec.gap_per_severity * excess + spec.gap_sd * rng.standard_normal()
        sex_factor = 1.0 + anatomy.head_scale_sex_difference / 2.0 * (1.0 if sex == "M" else -1.0)
        head_scale = float(np.clip(sex_factor * (1.0 + anatomy.head_scale_sd * rng.standard_normal()), 0.8, 1.2))
        rotation = rng.uniform(-anatomy.rotation_max_deg, anatomy.rotation_max_deg, 3)
        translation = rng.uniform(-anatomy.translation_max_mm, anatomy.translation_max_mm, 3)
        site = int(rng.integers(scanner.n_sites))
        subjects.append(
            SubjectParams(
                subject_id=f"sub-{index + 1:0{digits}d}",
                group=str(group),
                sex=sex,
                age=round(float(age), 2),
                true_gap=round(float(gap), 2),
                severity=float(severity),
                mmse=mmse,
                cdr=cdr,
                updrs3=updrs3,
                hoehn_yahr=hoehn_yahr,
                site=f"S{site + 1}",
                site_gain=float(site_gain[site]),
                site_contrast=float(site_contrast[site]),
                site_noise=float(site_noise[site]),
                head_scale=round(head_scale, 4),
                rotation_deg=tuple(float(v) for v in rotation),
                translation_mm=tuple(float(v) for v in translation),
                wmh_z=float(rng.standard_normal()),
                seed=image_seq,
            )
        )
    return subjects


def assign_splits(subjects: list[SubjectParams], config: SynthConfig, seed: int) -> list[str]:
    """Subject-level train/val/test labels stratified by group and age.

    Within each group, subjects sorted by age are cut into blocks of 10; each block gets the
    ``config.splits`` fractions (largest remainder) in a random order.

    Returns:
        One split label per subject, in the order of ``subjects``.
    """
    rng = np.random.default_rng(_streams(seed)[3])
    labels = [""] * len(subjects)
    for group in sorted({s.group for s in subjects}):
        members = sorted((s.age, i) for i, s in enumerate(subjects) if s.group == group)
        for start in range(0, len(members), 10):
            block = [i for _, i in members[start : start + 10]]
            counts = _largest_remainder(config.splits, len(block))
            for i, label in zip(block, rng.permutation(np.repeat(list(counts), list(counts.values())))):
                labels[i] = str(label)
    return labels


def aging_targets(subject: SubjectParams, config: SynthConfig) -> dict[str, float]:
    """The volume changes one subject's biological age and disease call for.

    Returns:
        ``gm_loss`` (fraction of template GM, before disease); ``wm_gain`` and ``wm_decline``
        (fractions of template WM: the GM/WM boundary moves into the cortex by the gain and back
        by the decline, and the cortex follows the decline inwards, so declined WM becomes
        sulcal CSF); ``ventricle_ratio`` (ventricular volume / template's); ``wmh_ml``
        (template-space ml).
    """
    aging, disease = config.aging, config.disease
    years = subject.biological_age - aging.reference_age
    late = max(subject.biological_age - aging.gm_acceleration_age, 0.0)
    wm_late = max(subject.biological_age - aging.wm_decline_age, 0.0)
    ventricle_late = max(subject.biological_age - aging.ventricle_acceleration_age, 0.0)
    ratio = 1.0 + aging.ventricle_growth_per_year * years + aging.ventricle_growth_quadratic * ventricle_late**2
    wmh_exponent = aging.wmh_growth_per_year * (subject.biological_age - 60.0) + aging.wmh_log_sd * subject.wmh_z
    wmh = aging.wmh_ml_at_60 * math.exp(wmh_exponent)
    if subject.group == "AD":
        ratio *= 1.0 + disease.ad_ventricle_expansion_per_cdr * subject.cdr
        wmh *= disease.ad_wmh_factor
    elif subject.group == "PD":
        ratio *= 1.0 + disease.pd_ventricle_expansion_per_severity * subject.severity
    return {
        "gm_loss": aging.gm_loss_per_year * years + aging.gm_loss_acceleration * late**2,
        "wm_gain": aging.wm_gain_max * (1.0 - math.exp(-years / aging.wm_gain_tau)),
        "wm_decline": aging.wm_decline_quadratic * wm_late**2,
        "ventricle_ratio": max(ratio, 0.5),
        "wmh_ml": wmh,
    }
