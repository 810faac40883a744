"""Import the IXI T1 scans: IXI names and demographics, then ``brainage prepare``, folds and a manifest.

:func:`import_ixi` turns a folder of raw IXI T1 volumes (``IXI<ID>-<SITE>-<N>_T1.nii.gz``,
native scanner space, with skull) and the IXI demographics (the original ``IXI.xls`` or a
``participants.csv`` with ``MRID,Age,Sex``) into what the rest of brainage reads. The scans
go through :func:`brainage_core.prepare.prepare_scans`, the one preparation of raw scans, so
the outputs are those of ``brainage prepare``::

    out_dir/images/<subject_id>_T1w_mni.nii.gz      float32, skull-stripped, N4-corrected, MNI grid
    out_dir/masks/<subject_id>_mask_mni.nii.gz      the subject's brain mask on the same grid
    out_dir/labels/<subject_id>_labels_mni.nii.gz   DLMUSE labels (only with a mask folder)
    out_dir/qc/<subject_id>.png                     three slices with the template brain outline
    out_dir/cache/<subject_id>.json                 input hashes + parameters + QC (the cache)
    out_dir/qc.csv, out_dir/qc.html                 registration QC of every processed scan
    out_dir/import_report.json                      counts and every problem found
    out_dir/manifest.csv                            written last, with age-stratified folds

Per scan: read (nibabel, so a truncated file is caught) and reorient to RAS -> skull strip
with the DLMUSE parcellation (``seg > 0``; without one, deepbet) -> N4 bias correction
(SimpleITK, fitted on a shrunk copy) -> affine registration to the skull-stripped ICBM152
2009a template shipped with nilearn (Mattes mutual information, moments initialisation, a
similarity stage then an affine stage, multi-resolution, seeded random sampling) ->
resampling onto the template grid at ``spacing`` mm. Nothing is guessed: a scan whose
demographics are missing, invalid or contradictory, whose file is unreadable, or whose
registration fails QC is left out of the manifest and named in the report.

Modules, from the bottom up:

- :mod:`.demographics`: IXI file names (subject, site) and the ages and sexes of
  ``IXI.xls`` / ``participants.csv``;
- :mod:`.registration`: image operations (read in RAS, N4, the registration template,
  registration, resampling to the template grid, writing NIfTI), used by
  :mod:`brainage_core.prepare`;
- :mod:`.qc`: QC metrics, thresholds and the QC figure;
- :mod:`.importer`: :func:`import_ixi`, its :class:`ImportReport` and the fold assignment.

This package re-exports the public names of those modules that the rest of brainage uses.
"""

from brainage_core.cohorts.ixi.demographics import (
    SITES,
    Demographics,
    IxiScan,
    parse_ixi_name,
    read_demographics,
    read_ixi_xls,
    read_participants_csv,
)
from brainage_core.cohorts.ixi.importer import N_FOLDS, ImportReport, assign_folds, import_ixi
from brainage_core.cohorts.ixi.qc import (
    QC_BRAIN_VOLUME_ML,
    QC_MIN_CORRELATION,
    QC_MIN_DICE,
    passes_qc,
    qc_metrics,
)
from brainage_core.cohorts.ixi.registration import (
    AFFINE_LEVELS,
    N4_FIT_SPACING_MM,
    N4_ITERATIONS,
    SAMPLING_PERCENTAGE,
    SEED,
    SIMILARITY_LEVELS,
    CorruptImageError,
    Template,
    load_registration_template,
    register_to_template,
)

__all__ = [
    "AFFINE_LEVELS",
    "N4_FIT_SPACING_MM",
    "N4_ITERATIONS",
    "N_FOLDS",
    "QC_BRAIN_VOLUME_ML",
    "QC_MIN_CORRELATION",
    "QC_MIN_DICE",
    "SAMPLING_PERCENTAGE",
    "SEED",
    "SIMILARITY_LEVELS",
    "SITES",
    "CorruptImageError",
    "Demographics",
    "ImportReport",
    "IxiScan",
    "Template",
    "assign_folds",
    "import_ixi",
    "load_registration_template",
    "parse_ixi_name",
    "passes_qc",
    "qc_metrics",
    "read_demographics",
    "read_ixi_xls",
    "read_participants_csv",
    "register_to_template",
]
