"""What a cohort contains: the data chapter's analyses of a manifest and its ground truth.

A synthetic cohort (:func:`brainage_core.cohorts.synthetic.generate_cohort`) writes
``ground_truth.csv`` beside its manifest: per subject the latent brain-age gap, the tissue
volumes the generator produced (``gm_ml``, ``wm_ml``, ``csf_ventricular_ml``, ...) and the
linear head scale. The functions here summarise it: latent gaps per group, grey-matter loss per
year, patients' ventricular excess over age-matched controls, tissue fractions measured back from
the images, example subjects to show, and :func:`phantom_realism`, the phantom set beside a
labelled real cohort (:mod:`brainage_core.cohorts.calibration`). A manifest of one's own has no
ground truth; :func:`read_ground_truth` then returns ``None``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainage_core.cohorts import calibration
from brainage_core.cohorts.synthetic import image_tissue_volumes
from brainage_core.manifest import manifest_folder

__all__ = [
    "GROUND_TRUTH_FILE",
    "VENTRICLE_EXCESS",
    "Realism",
    "brain_shape_overlap",
    "example_subjects",
    "grey_matter_loss_per_year",
    "latent_gap_summary",
    "mean_ventricle_excess",
    "measured_tissue_fractions",
    "phantom_realism",
    "read_ground_truth",
    "relative_tissue_volumes",
    "ventricle_excess",
    "volume_model_gaps",
]

GROUND_TRUTH_FILE = "ground_truth.csv"
VENTRICLE_EXCESS = "ventricles_vs_age_matched_cn"  # column added by :func:`ventricle_excess`
_CONTROLS = "CN"


def brain_shape_overlap(frame: pd.DataFrame, column: str = "mask") -> tuple[float, float] | None:
    """How much the healthy brains of a manifest differ in shape on its (template) grid.

    The mean and SD over the controls of :func:`~brainage_core.cohorts.calibration.mask_overlap`
    (Dice of each brain mask with the majority mask): the phantom's ``mask`` column, or the
    ``labels`` of an IXI import (the DLMUSE brain after the affine registration).

    Args:
        frame: a manifest (:func:`~brainage_core.manifest.read_manifest`: absolute paths).
        column: the column of brain masks or label images, all on one grid.

    Returns:
        ``(mean, sd)``; ``None`` without the column or with fewer than 2 controls that have a file in it.
    """
    if column not in frame.columns or "group" not in frame.columns:
        return None
    paths = [path for path in frame.loc[frame["group"] == _CONTROLS, column] if isinstance(path, str) and path]
    if len(paths) < 2:
        return None
    overlap = calibration.mask_overlap(paths)
    return float(overlap.mean()), float(overlap.std(ddof=1))


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise ``KeyError`` naming every column of ``columns`` that ``frame`` lacks."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise KeyError(f"{what} lacks the column(s) {missing}; it has {list(frame.columns)}")


def _controls(truth: pd.DataFrame, minimum: int = 1) -> pd.DataFrame:
    """The healthy controls (group ``CN``) of ``truth``, youngest first; at least ``minimum`` of them."""
    controls = truth[truth["group"] == _CONTROLS].sort_values("age")
    if len(controls) < minimum:
        raise ValueError(f"needs at least {minimum} healthy controls (group {_CONTROLS!r}), found {len(controls)}")
    return controls


def read_ground_truth(manifest_path: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The ``ground_truth.csv`` beside a manifest, or ``None`` when there is none (a manifest of one's own).

    Args:
        manifest_path: the manifest CSV; the ground truth is looked for in its folder
            (:func:`~brainage_core.manifest.manifest_folder`).

    Returns:
        One row per subject (``subject_id``, ``age``, ``group``, ``true_gap``, ``head_scale``,
        tissue volumes ``*_ml``, scores), or ``None``.

    Raises:
        KeyError: the file exists but lacks ``subject_id``, ``age`` or ``group``.
    """
    path = manifest_folder(manifest_path) / GROUND_TRUTH_FILE
    if not path.is_file():
        return None
    truth = pd.read_csv(path)
    _require_columns(truth, ("subject_id", "age", "group"), str(path))
    return truth


def latent_gap_summary(truth: pd.DataFrame, groups: Sequence[str] = ("CN", "AD", "PD")) -> pd.DataFrame:
    """Count, mean and SD of the latent brain-age gap (``true_gap``, years) per group.

    Args:
        truth: the ground truth (:func:`read_ground_truth`).
        groups: the groups to summarise, in this order; a group without subjects gets ``n = 0``.

    Returns:
        Indexed by group, columns ``n``, ``mean`` (NaN without subjects) and ``sd`` (NaN with
        fewer than two).

    Raises:
        KeyError: ``truth`` lacks ``group`` or ``true_gap``.
    """
    _require_columns(truth, ("group", "true_gap"), "the ground truth")
    rows = {}
    for group in groups:
        gaps = truth.loc[truth["group"] == group, "true_gap"]
        rows[group] = {
            "n": len(gaps),
            "mean": float(gaps.mean()) if len(gaps) else np.nan,
            "sd": float(gaps.std()) if len(gaps) > 1 else np.nan,
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("group")


def relative_tissue_volumes(
    truth: pd.DataFrame, columns: Sequence[str] = ("gm_ml", "wm_ml"), young_age: float = 35.0
) -> pd.DataFrame:
    """Controls' tissue volumes divided by head size, in % of the young controls' mean.

    Volumes scale with the cube of the linear head size, so each volume is divided by
    ``head_scale ** 3`` (as volumetric studies divide by intracranial volume), then expressed as a
    percentage of the mean over controls younger than ``young_age``.

    Args:
        truth: the ground truth (:func:`read_ground_truth`).
        columns: the volume columns (ml) to express.
        young_age: controls below this age (years) form the 100 % reference.

    Returns:
        One row per control, youngest first: ``age`` and each of ``columns`` in %.

    Raises:
        KeyError: a needed column is missing.
        ValueError: no control is younger than ``young_age``.
    """
    _require_columns(truth, ("group", "age", "head_scale", *columns), "the ground truth")
    controls = _controls(truth)
    young = controls["age"] < young_age
    if not young.any():
        raise ValueError(f"no healthy control is younger than {young_age} years: no reference for relative volumes")
    head = controls["head_scale"] ** 3
    relative = controls[["age"]].copy()
    for column in columns:
        adjusted = controls[column] / head
        relative[column] = 100 * adjusted / adjusted[young].mean()
    return relative


def grey_matter_loss_per_year(truth: pd.DataFrame, young_age: float = 35.0) -> float:
    """Controls' grey-matter loss, in % of the young-adult volume per year (positive = loss).

    The slope of a straight-line fit of :func:`relative_tissue_volumes` (``gm_ml``, head-size
    adjusted) on age, sign flipped. Published range: 0.2 to 0.5 % per year.

    Args:
        truth: the ground truth (:func:`read_ground_truth`).
        young_age: see :func:`relative_tissue_volumes`.

    Raises:
        KeyError: a needed column is missing.
        ValueError: no control is younger than ``young_age``.
    """
    relative = relative_tissue_volumes(truth, ("gm_ml",), young_age)
    return float(-np.polyfit(relative["age"], relative["gm_ml"], 1)[0])


def ventricle_excess(truth: pd.DataFrame, degree: int = 2) -> pd.DataFrame:
    """Patients' ventricular CSF relative to healthy controls of the same age.

    A polynomial of ``degree`` in age is fitted to the controls' ``csf_ventricular_ml``; each
    patient's excess is its volume minus the fit at its age.

    Args:
        truth: the ground truth (:func:`read_ground_truth`).
        degree: degree of the age fit (2: quadratic, ventricles grow faster after about 60).

    Returns:
        The patients (every group but ``CN``; empty if there are none) with two added columns:
        :data:`VENTRICLE_EXCESS` (ml) and ``stage`` (``"AD, CDR 1.0"``, ``"PD, H&Y 2.0"``).

    Raises:
        KeyError: a needed column is missing.
        ValueError: fewer than ``degree + 1`` controls to fit.
    """
    _require_columns(truth, ("group", "age", "csf_ventricular_ml", "cdr", "hoehn_yahr"), "the ground truth")
    controls = _controls(truth, minimum=degree + 1)
    fit = np.polyfit(controls["age"], controls["csf_ventricular_ml"], degree)
    patients = truth[truth["group"] != _CONTROLS].copy()
    patients[VENTRICLE_EXCESS] = patients["csf_ventricular_ml"] - np.polyval(fit, patients["age"])
    patients["stage"] = np.where(
        patients["group"] == "AD",
        "AD, CDR " + patients["cdr"].astype(str),
        "PD, H&Y " + patients["hoehn_yahr"].astype(str),
    )
    return patients


def mean_ventricle_excess(patients: pd.DataFrame) -> dict[str, float]:
    """Mean ventricular excess (ml) per patient group, from :func:`ventricle_excess`.

    Raises:
        KeyError: ``patients`` does not come from :func:`ventricle_excess`.
    """
    _require_columns(patients, ("group", VENTRICLE_EXCESS), "the patients table (from ventricle_excess)")
    return {group: float(value) for group, value in patients.groupby("group")[VENTRICLE_EXCESS].mean().items()}


def measured_tissue_fractions(frame: pd.DataFrame, max_subjects: int = 60) -> pd.DataFrame:
    """CSF, GM and WM of the controls measured from their images, in % of the brain mask.

    Uses :func:`~brainage_core.cohorts.synthetic.image_tissue_volumes` (intensity thresholds) on
    about ``max_subjects`` controls spread evenly over age (every k-th, youngest first).

    Args:
        frame: the manifest (:func:`~brainage_core.manifest.read_manifest`: absolute paths).
        max_subjects: roughly how many controls to measure (each reads two NIfTI files).

    Returns:
        One row per measured control: ``age``, ``csf``, ``gm``, ``wm`` (% of the mask).

    Raises:
        KeyError: the manifest has no ``mask`` column.
        ValueError: no controls, or a measured control has no mask.
    """
    _require_columns(frame, ("subject_id", "group", "age", "image", "mask"), "the manifest")
    controls = _controls(frame)
    sample = controls.iloc[:: max(1, len(controls) // max_subjects)]
    unmasked = sample.loc[sample["mask"].fillna("").astype(str).str.strip() == "", "subject_id"].tolist()
    if unmasked:
        raise ValueError(f"measuring tissue needs a brain mask; the manifest gives none for {unmasked}")
    measured = pd.DataFrame(
        [image_tissue_volumes(row["image"], row["mask"]) | {"age": row["age"]} for _, row in sample.iterrows()]
    )
    total = measured[["csf", "gm", "wm"]].sum(axis=1)
    fractions = measured[["age"]].copy()
    for column in ("csf", "gm", "wm"):
        fractions[column] = 100 * measured[column] / total
    return fractions


def example_subjects(
    frame: pd.DataFrame,
    quantiles: Sequence[float] = (0.0, 0.33, 0.66, 1.0),
    patient_groups: Sequence[str] = ("AD", "PD"),
) -> pd.DataFrame:
    """Subjects to show: controls at age quantiles, then the oldest subject of each patient group.

    Args:
        frame: the manifest (or any table with ``group`` and ``age``).
        quantiles: positions in the controls' age order (0: youngest, 1: oldest).
        patient_groups: groups whose oldest subject follows the controls (skipped when absent).

    Returns:
        The chosen rows of ``frame``, in that order.

    Raises:
        KeyError: ``group`` or ``age`` is missing.
        ValueError: there are no controls, or a quantile is outside [0, 1].
    """
    _require_columns(frame, ("group", "age"), "the manifest")
    frame = frame.reset_index(drop=True)  # unique labels for the picks
    if any(not 0.0 <= q <= 1.0 for q in quantiles):
        raise ValueError(f"quantiles must lie in [0, 1], got {tuple(quantiles)}")
    controls = _controls(frame)
    positions = [controls.index[int(q * (len(controls) - 1))] for q in quantiles]
    for group in patient_groups:
        rows = frame[frame["group"] == group]
        if len(rows):
            positions.append(rows.sort_values("age").index[-1])
    return frame.loc[positions]


@dataclass
class Realism:
    """The phantom beside a labelled real cohort (:func:`phantom_realism`).

    Attributes:
        cohorts: name (``phantom``, ``IXI``) -> healthy subjects aged within
            :data:`~brainage_core.cohorts.calibration.CALIBRATION_AGE_RANGE`: structure volumes
            (ml) and ``age``.
        tables: name -> :func:`~brainage_core.cohorts.calibration.calibration_table`.
        ridge_mae: name -> 5-fold MAE (years) of ridge regression on the structure volumes
            (the same six features in both cohorts).
        comparison: :func:`~brainage_core.cohorts.calibration.compare_calibration` of the two, or
            ``None`` with one cohort.
    """

    cohorts: dict[str, pd.DataFrame]
    tables: dict[str, pd.DataFrame]
    ridge_mae: dict[str, float]
    comparison: pd.DataFrame | None

    def compared(self) -> pd.DataFrame:
        """The rows of ``comparison`` where both cohorts have a value (a band may be too small)."""
        if self.comparison is None:
            return pd.DataFrame(columns=["structure", "measure", "phantom", "reference", "within"])
        return self.comparison.dropna(subset=["phantom", "reference"])

    def misses(self) -> list[str]:
        """The compared measures outside their target, as "structure measure (phantom vs IXI)" phrases."""
        compared = self.compared()
        rows = compared[~compared["within"].astype(bool)]
        return [
            f"{row.structure} {row.measure.replace('cv_', 'CV ').replace('_', '-')} "
            f"({row.phantom:.2f} vs {row.reference:.2f})"
            for row in rows.itertuples()
        ]


def phantom_realism(truth: pd.DataFrame | None, reference_dir: str | os.PathLike[str] | None) -> Realism:
    """The phantom's age trajectories and spread of structure volumes beside real scans'.

    Args:
        truth: the phantom's ground truth (:func:`read_ground_truth`), or ``None`` (a cohort of
            one's own: only the reference is shown).
        reference_dir: a labelled real cohort laid out as the shared IXI subset
            (:func:`~brainage_core.cohorts.calibration.read_labelled_cohort`), or ``None`` / a
            missing folder (only the phantom is shown).

    Returns:
        A :class:`Realism`; its ``cohorts`` is empty when neither is available.
    """
    cohorts: dict[str, pd.DataFrame] = {}
    if truth is not None:
        truth = truth.set_index("subject_id")
        keep = calibration.calibration_subjects(truth["age"], truth["group"])
        cohorts["phantom"] = calibration.phantom_structure_volumes(truth[keep]).assign(age=truth.loc[keep, "age"])
    if reference_dir is not None and (Path(reference_dir) / "participants.csv").is_file():
        real = calibration.read_labelled_cohort(reference_dir)
        cohorts["IXI"] = real[calibration.calibration_subjects(real["age"])]
    features = [*calibration.STRUCTURES, "total_brain"]
    tables = {name: calibration.calibration_table(frame, frame["age"]) for name, frame in cohorts.items()}
    ridge = {name: calibration.volume_ridge_mae(frame[features], frame["age"]) for name, frame in cohorts.items()}
    both = "phantom" in tables and "IXI" in tables
    comparison = calibration.compare_calibration(tables["phantom"], tables["IXI"]) if both else None
    return Realism(cohorts=cohorts, tables=tables, ridge_mae=ridge, comparison=comparison)


def volume_model_gaps(truth: pd.DataFrame) -> pd.DataFrame:
    """What a model trained on controls measures in the phantom's patients, beside the truth.

    The reference of the phantom's disease calibration: ridge regression on the true volumes,
    trained on the healthy training split
    (:func:`~brainage_core.cohorts.calibration.volume_model_predictions`), Cole's age-bias
    correction fitted on healthy validation subjects, and the clinical chapter's OLS
    (:func:`~brainage_core.analysis.clinical.gap_by_group`, age-matched controls) on the measured
    and on the latent gap.

    Returns:
        One row per patient group (index ``group``): ``measured``, ``ci_low``, ``ci_high`` (95 %),
        ``latent`` (the same OLS on ``true_gap``), ``n``.
    """
    from brainage_core.analysis.clinical import gap_by_group
    from brainage_core.analysis.metrics import corrected_predictions

    corrected = corrected_predictions(calibration.volume_model_predictions(truth), method="cole")
    measured = gap_by_group(corrected).set_index("group").drop(index=_CONTROLS)
    latent = gap_by_group(corrected, gap_column="true_gap").set_index("group").drop(index=_CONTROLS)
    table = measured[["difference", "ci_low", "ci_high", "n"]].rename(columns={"difference": "measured"})
    return table.assign(latent=latent["difference"])[["measured", "ci_low", "ci_high", "latent", "n"]]
