"""One IXI scan from raw T1 to the template grid, cached: the unit of work of the import.

A :class:`ScanJob` names a scan, its optional DLMUSE parcellation, the output folder and the
hashes of its inputs. :func:`process_scan` chains the steps of :mod:`.registration` and
:mod:`.qc` for it: read and reorient to RAS -> brain mask (``seg > 0``, or the template
fallback) -> N4 -> registration to the template -> resampling onto the template grid ->
outputs, QC figure and a sidecar ``cache/<subject_id>.json`` holding the input hashes, the
parameters, the QC record and the transform. :func:`cached_qc` reuses that sidecar when the
inputs, parameters and outputs still match. :func:`run_job` is the worker entry point (it
turns failures into messages) and :func:`init_worker` gives each worker process one
SimpleITK thread, so outputs do not depend on the number of workers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from brainage_core.cohorts.ixi.demographics import IxiScan
from brainage_core.cohorts.ixi.qc import save_qc_figure, scan_qc
from brainage_core.cohorts.ixi.registration import (
    SEED,
    CorruptImageError,
    fallback_brain_mask,
    load_registration_template,
    n4_bias_correction,
    read_nifti_ras,
    read_segmentation,
    register_to_template,
    resample_labels,
    resample_to_template,
    write_nifti,
)
from brainage_core.fileio import write_json

__all__ = ["PIPELINE_VERSION", "ScanJob", "cached_qc", "init_worker", "process_scan", "run_job"]

PIPELINE_VERSION = 1  # bump when the processing changes, to invalidate every cached subject


@dataclass(frozen=True)
class ScanJob:
    """One scan to process (picklable, sent to the worker processes).

    Attributes:
        scan: the IXI T1 file.
        mask_path: its DLMUSE parcellation, or ``None`` for the template fallback mask.
        out_dir: the import's output folder.
        spacing: voxel size of the template grid in mm.
        inputs: ``{"t1": sha256, "mask": sha256 or ""}``, stored in the sidecar.
    """

    scan: IxiScan
    mask_path: Path | None
    out_dir: Path
    spacing: float
    inputs: dict[str, str]

    def outputs(self) -> dict[str, Path]:
        """The files this scan produces, by kind (``labels`` only with a parcellation)."""
        sid = self.scan.subject_id
        paths = {
            "image": self.out_dir / "images" / f"{sid}_T1w_mni.nii.gz",
            "mask": self.out_dir / "masks" / f"{sid}_mask_mni.nii.gz",
            "qc_figure": self.out_dir / "qc" / f"{sid}.png",
        }
        if self.mask_path is not None:
            paths["labels"] = self.out_dir / "labels" / f"{sid}_dlmuse_mni.nii.gz"
        return paths

    def sidecar(self) -> Path:
        """The cache record of this scan."""
        return self.out_dir / "cache" / f"{self.scan.subject_id}.json"

    def parameters(self) -> dict[str, object]:
        """The processing parameters; a cached result is reused only when they match."""
        return {
            "pipeline_version": PIPELINE_VERSION,
            "spacing": self.spacing,
            "seed": SEED,
            "mask_source": "dlmuse" if self.mask_path is not None else "template_fallback",
        }


def cached_qc(job: ScanJob) -> dict[str, object] | None:
    """The QC record of a previous run when its inputs, parameters and outputs still match."""
    sidecar = job.sidecar()
    if not sidecar.is_file() or not all(path.is_file() for path in job.outputs().values()):
        return None
    stored = json.loads(sidecar.read_text())
    if stored.get("inputs") != job.inputs or stored.get("parameters") != job.parameters():
        return None
    return stored["qc"]


def process_scan(job: ScanJob) -> dict[str, object]:
    """Preprocess one scan, write its outputs and sidecar, and return its QC record.

    Raises:
        CorruptImageError: the T1 or its mask cannot be read, or the mask is on another grid.
        RuntimeError: SimpleITK failed (e.g. the registration diverged).
    """
    template = load_registration_template(job.spacing)
    head = read_nifti_ras(job.scan.path, sitk.sitkFloat32)
    labels = None
    if job.mask_path is not None:
        labels = read_segmentation(job.mask_path, head, job.scan.path)
        native_mask = sitk.Cast(labels > 0, sitk.sitkUInt8)
    else:
        native_mask = fallback_brain_mask(head, template, SEED)
    corrected = n4_bias_correction(head, native_mask)
    brain = corrected * sitk.Cast(native_mask, sitk.sitkFloat32)
    transform, metric = register_to_template(brain, template, SEED)

    image, mask = resample_to_template(corrected, native_mask, transform, template)
    outputs = job.outputs()
    write_nifti(image, outputs["image"])
    write_nifti(mask, outputs["mask"])
    if labels is not None:
        write_nifti(resample_labels(labels, transform, template), outputs["labels"])

    image_array = sitk.GetArrayFromImage(image)  # [Z, Y, X]
    qc = scan_qc(job.scan, image_array, sitk.GetArrayFromImage(mask), native_mask, transform, metric, template)
    save_qc_figure(outputs["qc_figure"], image_array, template, qc)
    write_json(
        job.sidecar(),
        {"inputs": job.inputs, "parameters": job.parameters(), "qc": qc, "transform": list(transform.GetParameters())},
    )
    return qc


def run_job(job: ScanJob) -> tuple[str, str, dict[str, object] | str]:
    """Worker entry point: ``(subject_id, status, qc record or problem message)``.

    ``status`` is ``"ok"``, ``"corrupt"`` (an unreadable input) or ``"failed"`` (SimpleITK failed).
    """
    try:
        return job.scan.subject_id, "ok", process_scan(job)
    except CorruptImageError as error:
        return job.scan.subject_id, "corrupt", str(error)
    except RuntimeError as error:  # SimpleITK reports its failures as RuntimeError
        return job.scan.subject_id, "failed", f"{job.scan.path}: processing failed ({error})"


def init_worker() -> None:
    """One SimpleITK thread per worker process.

    The processes already share the cores, and N4 and the registration metric give slightly
    different results with different thread counts: one thread everywhere makes the outputs
    identical whatever ``workers`` is.
    """
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
