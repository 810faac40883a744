"""Registration QC of prepared scans: overlap with the template, pass/fail thresholds, figures and ``qc.csv``.

Every processed scan gets a QC record (:func:`scan_qc`): ``correlation`` with the template T1
and ``dice`` with the template brain mask (:func:`qc_metrics`), ``mattes_mi`` (final
registration metric, negative mutual information), ``brain_volume_ml`` (native mask) and
``affine_scale`` (cube root of the affine's determinant: scan size relative to the template).
:func:`passes_qc` applies the thresholds below and :func:`save_qc_figure` draws three slices with
the template brain outline (:mod:`brainage_core.prepare` writes them into ``qc.csv`` and ``qc.html``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import SimpleITK as sitk
from matplotlib.figure import Figure

from brainage_core.cohorts.ixi.registration import Template
from brainage_core.fileio import atomic_path

__all__ = [
    "QC_BRAIN_VOLUME_ML",
    "QC_MIN_CORRELATION",
    "QC_MIN_DICE",
    "dice",
    "passes_qc",
    "qc_metrics",
    "save_qc_figure",
    "scan_qc",
]

# QC thresholds (see import_ixi). On the 145 labelled IXI scans: Dice 0.951-0.971 and
# correlation 0.49-0.69 (the lowest, IXI175, is well aligned but has very large ventricles,
# so correlation alone would flag atrophy). Perturbing good registrations: a 10 degree
# rotation or 10 mm shift gives Dice 0.89-0.95 and correlation 0.27-0.48; moments-only
# alignment gives Dice 0.82-0.86 and correlation 0.32-0.37.
QC_MIN_CORRELATION = 0.40  # Pearson correlation with the template inside its brain mask
QC_MIN_DICE = 0.93  # registered brain mask vs template brain mask
QC_BRAIN_VOLUME_ML: tuple[float, float] = (900.0, 2300.0)  # native mask volume (DLMUSE: 1076-1845 ml)


class NamedScan(Protocol):
    """What :func:`scan_qc` needs of a scan: its subject and the name of the scan itself.

    An :class:`~brainage_core.cohorts.ixi.demographics.IxiScan` (``mrid`` is the IXI name) or a
    scan of ``brainage prepare`` (``mrid`` is its scan id).
    """

    @property
    def subject_id(self) -> str: ...

    @property
    def mrid(self) -> str: ...


def dice(first: np.ndarray, second: np.ndarray) -> float:
    """Dice overlap of two masks of the same shape (nonzero voxels); 0 when both are empty."""
    first, second = first > 0, second > 0
    return float(2.0 * np.logical_and(first, second).sum() / max(1, first.sum() + second.sum()))


def qc_metrics(image: np.ndarray, mask: np.ndarray, template: Template) -> dict[str, float]:
    """Registration QC of a scan on the template grid.

    Args:
        image: ``[Z, Y, X]`` registered, skull-stripped scan (SimpleITK array order).
        mask: ``[Z, Y, X]`` its registered brain mask.
        template: the template it was registered to.

    Returns:
        ``correlation``: Pearson correlation of the scan with the template T1 inside the
        template brain mask; ``dice``: overlap of ``mask`` with the template brain mask.
    """
    inside = sitk.GetArrayViewFromImage(template.mask) > 0
    reference = sitk.GetArrayViewFromImage(template.brain)
    return {
        "correlation": float(np.corrcoef(image[inside], reference[inside])[0, 1]),
        "dice": dice(mask, inside),
    }


def scan_qc(
    scan: NamedScan,
    image: np.ndarray,
    mask: np.ndarray,
    native_mask: sitk.Image,
    transform: sitk.AffineTransform,
    metric: float,
    template: Template,
) -> dict[str, object]:
    """The QC record of one registered scan (the row of ``qc.csv``, without ``qc_pass``).

    Args:
        scan: the scan (its ``subject_id`` and ``mrid`` start the record).
        image: ``[Z, Y, X]`` registered, skull-stripped scan on the template grid.
        mask: ``[Z, Y, X]`` its registered brain mask.
        native_mask: its brain mask on the T1 grid, for the brain volume.
        transform: the registration's affine.
        metric: the registration's final metric value.
        template: the template it was registered to.
    """
    overlap = qc_metrics(image, mask, template)
    voxel_ml = float(np.prod(native_mask.GetSpacing())) / 1000.0
    return {
        "subject_id": scan.subject_id,
        "mrid": scan.mrid,
        "correlation": round(overlap["correlation"], 4),
        "dice": round(overlap["dice"], 4),
        "mattes_mi": round(metric, 4),
        "brain_volume_ml": round(float(sitk.GetArrayViewFromImage(native_mask).sum()) * voxel_ml, 1),
        "affine_scale": round(float(np.linalg.det(np.reshape(transform.GetMatrix(), (3, 3)))) ** (1 / 3), 4),
    }


def passes_qc(qc: Mapping[str, Any]) -> bool:
    """Whether a scan's QC metrics (``correlation``, ``dice``, ``brain_volume_ml``) meet the thresholds above."""
    low, high = QC_BRAIN_VOLUME_ML
    return bool(
        qc["correlation"] >= QC_MIN_CORRELATION and qc["dice"] >= QC_MIN_DICE and low <= qc["brain_volume_ml"] <= high
    )


def save_qc_figure(path: Path, image: np.ndarray, template: Template, qc: dict[str, object]) -> None:
    """Save three orthogonal slices of ``image`` ([Z, Y, X], RAS) with the template brain outline, titled with ``qc``.

    Pass the registered whole scan (skull included): the outline then shows how the brain sits
    in the template's brain region.
    """
    template_mask = sitk.GetArrayFromImage(template.mask) > 0
    title = f"{qc['mrid']}  r={qc['correlation']:.3f}  Dice={qc['dice']:.3f}  brain {qc['brain_volume_ml']:.0f} ml"
    centre = [round(c) for c in np.argwhere(template_mask).mean(axis=0)]
    vmax = float(np.percentile(image[image > 0], 99.5)) if (image > 0).any() else 1.0
    views = (
        ("sagittal", image[:, :, centre[2]], template_mask[:, :, centre[2]]),
        ("coronal", image[:, centre[1], :], template_mask[:, centre[1], :]),
        ("axial", image[centre[0]], template_mask[centre[0]]),
    )
    figure = Figure(figsize=(9, 3.4))
    for axis, (name, slice_, outline) in zip(figure.subplots(1, 3), views):
        axis.imshow(slice_, cmap="gray", origin="lower", vmin=0.0, vmax=vmax)
        axis.contour(outline.astype(float), levels=[0.5], colors="red", linewidths=0.8)
        axis.set_title(name, fontsize=9)
        axis.set_axis_off()
    figure.suptitle(title, fontsize=10)
    with atomic_path(path, suffix=".png") as temp:
        figure.savefig(temp, dpi=100)
