"""All parameters of the synthetic cohort in one config: :class:`SynthConfig`, read and checked.

:class:`SynthConfig` gathers the sections of :mod:`brainage_core.cohorts.synthetic.params` and is
read by :func:`brainage_core.cohorts.synthetic.generate_cohort`. A YAML file holds a subset of the
fields, nested like :meth:`SynthConfig.to_dict`; missing fields keep their defaults (the loader is
:func:`brainage_core.config_loader.dataclass_from_dict`, the one of every config)::

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

import yaml

from brainage_core.cohorts.synthetic.params import (
    AGE_LIMITS,
    SPLITS,
    SYNTH_GROUPS,
    AgingEffects,
    AnatomyVariation,
    ClinicalScores,
    DiseaseEffects,
    GroupSpec,
    ScannerEffects,
    TissueIntensities,
    default_groups,
    default_splits,
)
from brainage_core.config_loader import ConfigError, dataclass_from_dict

__all__ = ["SynthConfig"]

SOURCE = "the synthetic-cohort config"


@dataclass
class SynthConfig:
    """All parameters of the synthetic cohort (see the module docstring)."""

    groups: dict[str, GroupSpec] = field(default_factory=default_groups)
    aging: AgingEffects = field(default_factory=AgingEffects)
    scores: ClinicalScores = field(default_factory=ClinicalScores)
    disease: DiseaseEffects = field(default_factory=DiseaseEffects)
    anatomy: AnatomyVariation = field(default_factory=AnatomyVariation)
    scanner: ScannerEffects = field(default_factory=ScannerEffects)
    intensities: TissueIntensities = field(default_factory=TissueIntensities)
    splits: dict[str, float] = field(default_factory=default_splits)

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as nested plain dicts (YAML/JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = SOURCE) -> SynthConfig:
        """Build a config from nested plain values and check it.

        Read by :func:`brainage_core.config_loader.dataclass_from_dict`, the loader of every
        config: missing fields keep their defaults, an entry of ``groups`` is merged into the
        default group of that name, ``splits`` and the score tables replace their defaults, and
        every value is converted to its field's type.

        Args:
            data: sections nested like :meth:`to_dict` (any subset).
            source: names the config in the error message (the YAML file, say).

        Raises:
            ConfigError: (a ValueError) every unknown section, group or field, wrong type and
                invalid value at once, each naming its field (see :meth:`problems`).
        """
        problems: list[str] = []
        groups = data.get("groups")
        if isinstance(groups, dict) and set(groups) - set(SYNTH_GROUPS):
            unknown = [name for name in groups if name not in SYNTH_GROUPS]
            problems.append(f"groups: unknown group name(s) {unknown}; the phantom simulates only {list(SYNTH_GROUPS)}")
            data = {**data, "groups": {name: spec for name, spec in groups.items() if name in SYNTH_GROUPS}}
        config = dataclass_from_dict(cls, data, problems)
        problems += config.problems()
        if problems:
            raise ConfigError(list(dict.fromkeys(problems)), source)
        return config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> SynthConfig:
        """Read a (partial) config from a YAML file and check it (see :meth:`from_dict`).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ConfigError: (a ValueError) the file is not a YAML mapping, or every problem of
                :meth:`from_dict`.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"synthetic-cohort config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError([f"not valid YAML ({' '.join(str(error).split())})"], str(path)) from None
        except UnicodeDecodeError:
            raise ConfigError(["not a text (YAML) file"], str(path)) from None
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise ConfigError([f"expected a mapping of sections (groups, aging, ...), got {kind}"], str(path))
        return cls.from_dict(data, source=str(path))

    def validate(self) -> None:
        """Raise one ConfigError listing every invalid value (see :meth:`problems`).

        Raises:
            ConfigError: (a ValueError) each problem names the field, its value and the allowed range.
        """
        problems = self.problems()
        if problems:
            raise ConfigError(problems, SOURCE)

    def problems(self) -> list[str]:
        """Every invalid value, each naming the field, its value and the allowed range."""
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
        need("aging.hippocampal_loss_per_year", a.hippocampal_loss_per_year, 0.0, 0.02)
        need("aging.hippocampal_loss_quadratic", a.hippocampal_loss_quadratic, 0.0, 0.002)
        need("aging.hippocampal_acceleration_age", a.hippocampal_acceleration_age, *AGE_LIMITS)
        need("aging.temporal_loss_quadratic", a.temporal_loss_quadratic, 0.0, 0.001)
        need("aging.temporal_acceleration_age", a.temporal_acceleration_age, *AGE_LIMITS)
        need("aging.rate_sd", a.rate_sd, 0.0, 1.0)
        need("aging.ventricle_rate_sd", a.ventricle_rate_sd, 0.0, 2.0)
        need("aging.rate_correlation", a.rate_correlation, 0.0, 1.0)

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
                    "hippocampus_sd": (0.0, 0.3),
                    "deformation_sd_mm": (0.0, 6.0),
                    "deformation_spacing_mm": (8.0, 200.0),
                    "deformation_coarse_sd_mm": (0.0, 12.0),
                    "deformation_coarse_spacing_mm": (8.0, 300.0),
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
        n_sites = self.scanner.n_sites
        if isinstance(n_sites, (int, float)) and not float(n_sites).is_integer():
            problems.append(f"scanner.n_sites = {n_sites!r} must be a whole number")
        i = self.intensities
        if not i.wm > i.gm > i.csf:
            problems.append(f"intensities: a T1 needs wm > gm > csf, got wm={i.wm:g}, gm={i.gm:g}, csf={i.csf:g}")
        return problems


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
