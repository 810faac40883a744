"""The embedded default dataset: a synthetic aging cohort built from the MNI ICBM152 templates.

A teaching phantom, not a clinical simulator. Every subject starts from the ICBM 2009a tissue
maps shipped in the nilearn wheel (which stand for a ``reference_age`` adult) and is changed by
aging (driven by its latent biological age), disease (AD or PD, scaled by severity) and
individual variation (head, shape, pose, scanner). Every effect size lives in
:class:`SynthConfig`. The modules, in the order a cohort is made:

- :mod:`~brainage_core.cohorts.synthetic.params`: the parameter sections (groups, aging, scores,
  disease, anatomy, scanner, intensities), each value with its literature source;
- :mod:`~brainage_core.cohorts.synthetic.config`: :class:`SynthConfig`, read from YAML and checked;
- :mod:`~brainage_core.cohorts.synthetic.subjects`: each subject's scalars and split;
- :mod:`~brainage_core.cohorts.synthetic.tissue_template`: tissue compartments of the template;
- :mod:`~brainage_core.cohorts.synthetic.model`: the aging and disease model in template space;
- :mod:`~brainage_core.cohorts.synthetic.images`: one subject's T1, mask, effect map and volumes,
  and :func:`age_derivative`, the change of its noise-free T1 per year of age;
- :mod:`~brainage_core.cohorts.synthetic.writer`: :func:`generate_cohort` and the files it writes.

The names in ``__all__`` below are importable from ``brainage_core.cohorts.synthetic`` itself.
"""

from brainage_core.cohorts.synthetic.config import SynthConfig
from brainage_core.cohorts.synthetic.images import (
    SubjectImages,
    age_derivative,
    image_tissue_volumes,
    synthesize_subject,
    tissue_volumes,
)
from brainage_core.cohorts.synthetic.model import (
    REGIONS,
    SynthModel,
    aging_targets,
    diffeomorphic_displacement,
    prepare_model,
)
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
)
from brainage_core.cohorts.synthetic.subjects import SubjectParams, assign_cohort_splits, sample_subjects
from brainage_core.cohorts.synthetic.tissue_template import load_template
from brainage_core.cohorts.synthetic.writer import (
    EFFECT_SLOPE,
    FORMAT_VERSION,
    cohort_subjects,
    generate_cohort,
    write_age_derivatives,
)

__all__ = [
    "AGE_LIMITS",
    "EFFECT_SLOPE",
    "FORMAT_VERSION",
    "REGIONS",
    "SPLITS",
    "SYNTH_GROUPS",
    "AgingEffects",
    "AnatomyVariation",
    "ClinicalScores",
    "DiseaseEffects",
    "GroupSpec",
    "ScannerEffects",
    "SubjectImages",
    "SubjectParams",
    "SynthConfig",
    "SynthModel",
    "TissueIntensities",
    "age_derivative",
    "aging_targets",
    "assign_cohort_splits",
    "cohort_subjects",
    "diffeomorphic_displacement",
    "generate_cohort",
    "image_tissue_volumes",
    "load_template",
    "prepare_model",
    "sample_subjects",
    "synthesize_subject",
    "tissue_volumes",
    "write_age_derivatives",
]
