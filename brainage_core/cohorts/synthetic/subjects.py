"""Who is in the synthetic cohort: each subject's scalars and split, drawn from a seed.

:func:`sample_subjects` draws each subject's scalars (group, age, sex, latent brain-age gap,
clinical scores, head size, pose, site) from a :class:`~brainage_core.cohorts.synthetic.config.SynthConfig`;
:func:`assign_cohort_splits` gives each subject its train/val/test label, stratified by group and
age. Everything comes from independent streams spawned from the cohort's seed, so a subject's
scalars do not depend on the process or on the other subjects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import truncnorm

from brainage_core.cohorts.synthetic.config import SynthConfig
from brainage_core.cohorts.synthetic.params import AGING_PROCESSES

ANATOMY_TRAITS: tuple[str, ...] = ("ventricles", "cortex", "wm", "hippocampus")
AD_COMPONENTS: tuple[str, ...] = ("medial_temporal", "cortical")

__all__ = ["SubjectParams", "assign_cohort_splits", "sample_subjects"]


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
        head_scale: linear head size relative to the template; it scales the subject's volumes,
            not its image (the images stand for affinely registered scans).
        rotation_deg: rotation about x, y, z (degrees) left by the registration.
        translation_mm: translation (mm) left by the registration.
        wmh_z: standard-normal deviation of the subject's WMH volume.
        seed: seed sequence of the subject's random fields and noise.
        anatomy_z: standard-normal deviations of the subject's age-independent anatomy:
            ``ventricles`` (size), ``cortex`` (cortical GM, thickness), ``wm`` (WM volume).
        rate_z: standard-normal deviation of each aging process's rate (one per
            :data:`~brainage_core.cohorts.synthetic.params.AGING_PROCESSES`), correlated across
            processes by ``aging.rate_correlation``.
        pattern_z: standard-normal weights of the AD atrophy components ``medial_temporal``
            and ``cortical`` (unused for other groups).
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
    anatomy_z: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ANATOMY_TRAITS, 0.0))
    rate_z: dict[str, float] = field(default_factory=lambda: dict.fromkeys(AGING_PROCESSES, 0.0))
    pattern_z: dict[str, float] = field(default_factory=lambda: dict.fromkeys(AD_COMPONENTS, 0.0))

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


def _triple(values: np.ndarray) -> tuple[float, float, float]:
    """The three entries of a ``(3,)`` array as Python floats."""
    x, y, z = (float(v) for v in values)
    return x, y, z


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
        wmh_z = float(rng.standard_normal())
        anatomy_z = dict(zip(ANATOMY_TRAITS, (float(z) for z in rng.standard_normal(len(ANATOMY_TRAITS)))))
        shared, own = rng.standard_normal(), rng.standard_normal(len(AGING_PROCESSES))
        rho = config.aging.rate_correlation
        rate_z = {
            name: float(math.sqrt(rho) * shared + math.sqrt(1.0 - rho) * z) for name, z in zip(AGING_PROCESSES, own)
        }
        pattern_z = dict(zip(AD_COMPONENTS, (float(z) for z in rng.standard_normal(len(AD_COMPONENTS)))))
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
                rotation_deg=_triple(rotation),
                translation_mm=_triple(translation),
                wmh_z=wmh_z,
                seed=image_seq,
                anatomy_z=anatomy_z,
                rate_z=rate_z,
                pattern_z=pattern_z,
            )
        )
    return subjects


def assign_cohort_splits(subjects: list[SubjectParams], config: SynthConfig, seed: int) -> list[str]:
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
