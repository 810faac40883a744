"""The parameter sections of the synthetic cohort: every effect size and distribution.

Each dataclass here is one section of :class:`~brainage_core.cohorts.synthetic.config.SynthConfig`
(``groups``, ``aging``, ``scores``, ``disease``, ``anatomy``, ``scanner``, ``intensities``,
``splits``). Each effect size carries, in the comment beside it, the BibTeX key
(``book/references.bib``) of the work it is taken from. Numbers marked "design choice" are not
taken from the literature: they set up the phantom (group mix, scanner spread, split) and are
documented in ``data_manifests/synthetic_cohort.md``. The literature values are orders of
magnitude for a teaching phantom, not a fit to any data set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "AGE_LIMITS",
    "AGING_PROCESSES",
    "SPLITS",
    "SYNTH_GROUPS",
    "AgingEffects",
    "AnatomyVariation",
    "ClinicalScores",
    "DiseaseEffects",
    "GroupSpec",
    "ScannerEffects",
    "TissueIntensities",
]

SYNTH_GROUPS: tuple[str, ...] = ("CN", "AD", "PD")  # groups the phantom can simulate
AGE_LIMITS: tuple[float, float] = (0.0, 120.0)
SPLITS: tuple[str, ...] = ("train", "val", "test")
# The partly independent aging processes, each with a subject-specific rate (AgingEffects.rate_sd).
AGING_PROCESSES: tuple[str, ...] = ("cortex", "frontal", "temporal", "hippocampus", "wm", "ventricles")


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


def default_groups() -> dict[str, GroupSpec]:
    return {
        # Group mix, ages and sex ratios: design choice (adult lifespan for controls, late
        # onset for AD, typical PD cohort ages). Gap SD of healthy adults 3-5 y:
        # cole2017predicting, franke2019ten.
        "CN": GroupSpec(0.70, 20.0, 90.0, None, 0.0, 0.50, 0.0, 4.0),
        # LATENT gaps: the published gaps (AD +5 to +10 y, franke2012longitudinal, franke2019ten;
        # PD +1 to +3 y, eickhoff2021advanced, beheshti2020t1) are what models MEASURE, which
        # includes the disease atrophy below. The latent gaps are set so that a model trained on
        # controls (ridge on the true volumes, calibration.volume_model_predictions, 1000
        # subjects) measures gaps in those ranges: AD atrophy reads as about 2 y older, PD's
        # (a putamen shrinking into capsule WM) as about 1.5 y younger
        # (data_manifests/synthetic_cohort.md); male predominance of PD: wooten2004are.
        "AD": GroupSpec(0.15, 60.0, 90.0, 74.0, 7.0, 0.55, 3.0, 4.0, 1.5),
        "PD": GroupSpec(0.15, 50.0, 85.0, 66.0, 8.0, 0.40, 3.0, 4.0, 0.5),
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
    # Hippocampal GM loss: slow before 60, accelerating after (fraser2015hippocampal,
    # fjell2009one): linear loss /y plus a quadratic term after hippocampal_acceleration_age;
    # about 0.45 %/y at 70 and 0.75 %/y at 80, below the 1-1.5 %/y of longitudinal studies, because
    # the IXI scans' hippocampus / total brain hardly changes with age (R2 0.05): a compromise
    # named in data_manifests/synthetic_cohort.md.
    hippocampal_loss_per_year: float = 0.0008  # fraser2015hippocampal
    hippocampal_loss_quadratic: float = 0.0002  # fraser2015hippocampal, fjell2009one
    hippocampal_acceleration_age: float = 55.0  # fraser2015hippocampal
    # Temporal cortex thins faster late in life than the cortex as a whole: fjell2009one.
    temporal_loss_quadratic: float = 0.00008  # extra temporal GM loss /y^2 after temporal_acceleration_age
    temporal_acceleration_age: float = 50.0  # fjell2009one
    # Each subject ages each process (AGING_PROCESSES) at its own rate, exp(rate_sd * z) times
    # the population trajectory; the z are correlated rate_correlation across processes (one
    # shared factor). Individual differences in atrophy rates of this order: fjell2009one,
    # raz2005regional.
    rate_sd: float = 0.3  # fjell2009one, raz2005regional
    # Ventricular expansion rates vary more between people (SD of the log rate): the spread of
    # ventricular volume grows with age (IXI: CV 36 % at 20-35 y, 53 % at 65-80 y; NiChart
    # centiles: nichart2024), walhovd2011consistent.
    ventricle_rate_sd: float = 0.6  # walhovd2011consistent, nichart2024
    rate_correlation: float = 0.5  # raz2005regional


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

    # Medial temporal (hippocampus, amygdala, entorhinal) GM loss: about 15-20 % already in mild
    # AD, growing with CDR: frisoni2010clinical.
    ad_hippocampal_loss_base: float = 0.10  # frisoni2010clinical
    ad_hippocampal_loss_per_cdr: float = 0.10  # frisoni2010clinical
    ad_hippocampal_loss_max: float = 0.5  # frisoni2010clinical
    # Temporo-parietal and precuneus cortex (the cortical signature of AD): dickerson2009cortical.
    ad_temporoparietal_loss_per_cdr: float = 0.04  # dickerson2009cortical
    # Subject-specific weights of the medial temporal and cortical components (log-normal SD):
    # limbic-predominant to hippocampal-sparing atrophy subtypes, ferreira2020biological.
    ad_pattern_log_sd: float = 0.3  # ferreira2020biological
    ad_ventricle_expansion_per_cdr: float = 0.25  # ventricles beyond age-expected /CDR unit: nestor2008ventricular
    ad_wmh_factor: float = 1.3  # more WMH in AD than controls: habes2016white
    # Putamen shrinks (the surrounding capsule WM takes its place): laansma2021international.
    pd_putamen_loss_per_severity: float = 0.04  # laansma2021international
    pd_caudate_loss_per_severity: float = 0.03  # laansma2021international
    pd_frontal_loss_per_severity: float = 0.015  # laansma2021international
    pd_ventricle_expansion_per_severity: float = 0.05  # laansma2021international
    severity_reference_updrs3: float = 30.0  # typical MDS-UPDRS-III of a PD cohort: goetz2008movement


@dataclass
class AnatomyVariation:
    """Individual anatomy no model can remove: head size, shape, tissue amounts, placement.

    None of it depends on age. Sizes are set so that the phantom's spread of volume / total brain
    within 15-year age bands matches the shared IXI scans (:mod:`brainage_core.cohorts.calibration`);
    the NiChart DLMUSE centiles of healthy adults give the same order (log-SD of ventricular
    volume about 0.45, nichart2024).
    """

    head_scale_sd: float = 0.035  # linear SD (about 10 % of intracranial volume): ruigrok2014meta
    head_scale_sex_difference: float = 0.04  # male/female linear ratio - 1 (about 12 % in volume): ruigrok2014meta
    ventricle_log_sd: float = 0.30  # individual ventricular volume (log-normal): nichart2024
    cortex_sd: float = 0.025  # individual cortical GM volume (cortical thickness), fraction: nichart2024
    wm_sd: float = 0.02  # individual WM volume, fraction (the GM/WM boundary): nichart2024
    hippocampus_sd: float = 0.08  # individual hippocampal volume, fraction: nichart2024
    # Shape: a diffeomorphism (scaling and squaring of a random stationary velocity field with
    # a coarse and a fine scale), so that no two brains share a shape, plus the pose an affine
    # registration leaves. The images stand for scans affinely registered to the template (head
    # size is in the volumes, not the image). Sizes set so that the brain masks overlap their
    # cohort's majority mask as the shared IXI scans' do after the import's affine registration
    # (Dice 0.973, SD 0.003; :func:`~brainage_core.cohorts.calibration.mask_overlap`).
    deformation_sd_mm: float = 0.75  # fine-scale velocity SD: calibrated on IXI (mask overlap)
    deformation_spacing_mm: float = 24.0  # control-point spacing of the fine scale: design choice
    deformation_coarse_sd_mm: float = 1.5  # coarse-scale velocity SD: calibrated on IXI (mask overlap)
    deformation_coarse_spacing_mm: float = 64.0  # control-point spacing of the coarse scale: design choice
    rotation_max_deg: float = 1.0  # residual misregistration: calibrated on IXI (mask overlap)
    translation_max_mm: float = 1.0  # residual misregistration: calibrated on IXI (mask overlap)


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


def default_splits() -> dict[str, float]:
    return {"train": 0.6, "val": 0.2, "test": 0.2}  # design choice
