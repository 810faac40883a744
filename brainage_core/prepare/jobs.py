"""One raw T1 scan to the template grid, skull-stripped by deepbet or a given mask, cached.

The image steps are those of the IXI import (:mod:`brainage_core.cohorts.ixi.registration`
and :mod:`brainage_core.cohorts.ixi.qc`); what differs is the brain mask and the names:

- read with nibabel, any orientation, 3-D or 4-D with one volume, reoriented to RAS;
- brain mask: the user's mask (``mask`` column, voxels > 0, on the scan's grid) when given,
  otherwise deepbet (:func:`deepbet_mask`);
- N4 inside the mask -> affine registration of the brain to the ICBM152 2009a template ->
  resampling of the scan onto the template grid, kept inside the template's brain region
  (:func:`.in_template_region`; the ``mask`` output is that region, the same for every
  scan, so the brain mask steers N4 and the registration but not what the models see) -> QC
  record (the registered brain mask against the template's) and figure;
- a parcellation on the scan's grid (``labels`` column, e.g. the IXI DLMUSE labels), when
  given, is carried onto the template grid (nearest neighbour) and measures the brain mask:
  ``reference_dice`` is the Dice of the mask used (deepbet's) against ``labels > 0``, on the
  scan's own grid.

The QC record also holds the seconds each step took (``seconds_read``, ``seconds_mask``,
``seconds_n4``, ``seconds_register``, ``seconds_write``), which ``brainage bench`` and the book
report.

A :class:`PrepareJob` carries explicit output paths (``images/`` names for a manifest,
BIDS-derivatives names for a BIDS dataset) and a sidecar ``cache/<scan_id>.json`` holding the
input hashes, parameters and QC record; :func:`cached_qc` reuses it when they still match,
so a rerun does no work. :func:`run_job` is the worker entry point and turns failures into
messages naming the file.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from brainage_core.cohorts.ixi.qc import dice, save_qc_figure, scan_qc
from brainage_core.cohorts.ixi.registration import (
    SEED,
    CorruptImageError,
    in_template_region,
    load_registration_template,
    n4_bias_correction,
    nifti_to_sitk,
    read_nifti_canonical,
    read_segmentation,
    register_to_template,
    resample_labels,
    resample_mask,
    resample_scan,
    write_nifti,
)
from brainage_core.fileio import write_json

__all__ = [
    "PIPELINE_VERSION",
    "PREPARATION",
    "STEPS",
    "PrepareJob",
    "cached_qc",
    "deepbet_mask",
    "init_worker",
    "process_scan",
    "run_job",
]

PIPELINE_VERSION = 4  # bump when the processing changes, to invalidate every cached scan
DEEPBET_THRESHOLD = 0.5  # deepbet's default probability threshold for brain
PREPARATION = f"brainage-prepare-v{PIPELINE_VERSION}"  # the manifests' 'preparation' value
STEPS = ("read", "mask", "n4", "register", "write")  # timed steps, as QC columns seconds_<step>


@dataclass(frozen=True)
class PrepareJob:
    """One scan to prepare (picklable, sent to the worker processes).

    Attributes:
        scan_id: unique name of the scan in this preparation (file names, QC rows).
        subject_id: its subject.
        image: the raw T1 file.
        mask: the user's brain mask on the T1's grid, or ``None`` for deepbet.
        labels: a parcellation on the T1's grid (label 0 = background), or ``None``.
        outputs: ``image``, ``mask`` and ``qc_figure`` paths to write (and ``labels`` with a
            parcellation).
        sidecar: the cache record to write.
        spacing: voxel size of the template grid in mm.
        inputs: ``{"t1": sha256, "mask": sha256 or "", "labels": sha256 or ""}``, stored in the
            sidecar.
    """

    scan_id: str
    subject_id: str
    image: Path
    mask: Path | None
    labels: Path | None
    outputs: dict[str, Path]
    sidecar: Path
    spacing: float
    inputs: dict[str, str]

    @property
    def mrid(self) -> str:
        """The scan's name in QC records and figures (what :func:`.scan_qc` calls ``mrid``)."""
        return self.scan_id

    @property
    def mask_source(self) -> str:
        """``given`` (the user's mask) or ``deepbet``."""
        return "given" if self.mask is not None else "deepbet"

    def parameters(self) -> dict[str, object]:
        """The processing parameters; a cached result is reused only when they match."""
        parameters: dict[str, object] = {
            "pipeline_version": PIPELINE_VERSION,
            "spacing": self.spacing,
            "seed": SEED,
            "mask_source": self.mask_source,
        }
        if self.mask is None:
            parameters["deepbet"] = {"version": version("deepbet"), "threshold": DEEPBET_THRESHOLD}
        return parameters


@contextmanager
def _timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``seconds[step]``."""
    start = time.perf_counter()
    yield
    seconds[step] = seconds.get(step, 0.0) + time.perf_counter() - start


def cached_qc(job: PrepareJob) -> dict[str, object] | None:
    """The QC record of a previous run when its inputs, parameters and outputs still match."""
    if not job.sidecar.is_file() or not all(path.is_file() for path in job.outputs.values()):
        return None
    try:
        stored = json.loads(job.sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if stored.get("inputs") != job.inputs or stored.get("parameters") != job.parameters():
        return None
    return stored.get("qc")


_ONE_TORCH_THREAD = {"set": False}  # set by init_worker: the worker's deepbet runs on one torch thread


@functools.lru_cache(maxsize=1)
def _brain_extractor():  # type: ignore[no-untyped-def]  # deepbet has no type hints
    """deepbet's two networks on the CPU, loaded once per process.

    deepbet loads them with ``torch.jit.load`` from the TorchScript files inside its own wheel
    (``site-packages/data/models/{model,bbox_model}.pt``), never from a user's file.
    """
    import torch
    from deepbet import BrainExtraction  # imported here: torch and the networks only when needed

    if _ONE_TORCH_THREAD["set"]:
        torch.set_num_threads(1)
    return BrainExtraction(no_gpu=True)


def deepbet_mask(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """deepbet's brain mask of a T1 image (in memory), on the image's voxel grid.

    Args:
        image: ``[X, Y, Z]`` T1 with skull (RAS, as from :func:`.read_nifti_canonical`).

    Returns:
        ``[X, Y, Z]`` uint8 mask (1 = brain): deepbet's largest connected component, holes filled.

    Raises:
        RuntimeError: deepbet found no brain (e.g. an empty or non-head image).
    """
    try:
        _, mask, _ = _brain_extractor().run(image, threshold=DEEPBET_THRESHOLD)
    except (AssertionError, ValueError) as error:  # deepbet asserts on images without foreground
        raise RuntimeError(f"deepbet found no brain ({error})") from error
    data = (np.asarray(mask.dataobj) > 0).astype(np.uint8)
    if not data.any():
        raise RuntimeError("deepbet found no brain")
    return nib.Nifti1Image(data, image.affine)


def process_scan(job: PrepareJob) -> dict[str, object]:
    """Prepare one scan, write its outputs and sidecar, and return its QC record.

    Raises:
        CorruptImageError: the T1 or its mask cannot be read, or the mask is on another grid.
        RuntimeError: deepbet or SimpleITK failed (no brain found, registration diverged).
    """
    seconds: dict[str, float] = {}
    with _timed(seconds, "read"):
        template = load_registration_template(job.spacing)
        canonical = read_nifti_canonical(job.image)
        head = nifti_to_sitk(canonical, sitk.sitkFloat32)
        labels = read_segmentation(job.labels, head, job.image) if job.labels is not None else None
    with _timed(seconds, "mask"):
        if job.mask is not None:
            native_mask = sitk.Cast(read_segmentation(job.mask, head, job.image) > 0, sitk.sitkUInt8)
            if not sitk.GetArrayViewFromImage(native_mask).any():
                raise CorruptImageError(
                    f"{job.mask}: the mask is empty (no voxel > 0); give the brain mask of this scan"
                )
        else:
            native_mask = nifti_to_sitk(deepbet_mask(canonical), sitk.sitkUInt8)
    with _timed(seconds, "n4"):
        corrected = n4_bias_correction(head, native_mask)
    with _timed(seconds, "register"):
        brain = corrected * sitk.Cast(native_mask, sitk.sitkFloat32)
        transform, metric = register_to_template(brain, template, SEED)
    with _timed(seconds, "write"):
        registered_head = resample_scan(corrected, transform, template)
        image = in_template_region(registered_head, template)
        write_nifti(image, job.outputs["image"])
        write_nifti(template.region, job.outputs["mask"])  # the region the models see: the same for every scan
        brain_mask = resample_mask(native_mask, transform, template)
        if labels is not None:
            write_nifti(resample_labels(labels, transform, template), job.outputs["labels"])
        image_array = sitk.GetArrayFromImage(image)  # [Z, Y, X]
        qc = scan_qc(job, image_array, sitk.GetArrayFromImage(brain_mask), native_mask, transform, metric, template)
        if labels is not None:
            qc["reference_dice"] = round(
                dice(sitk.GetArrayViewFromImage(native_mask), sitk.GetArrayViewFromImage(labels)), 4
            )
        save_qc_figure(job.outputs["qc_figure"], sitk.GetArrayFromImage(registered_head), template, qc)
    qc.update({f"seconds_{step}": round(seconds[step], 2) for step in STEPS})
    write_json(
        job.sidecar,
        {"inputs": job.inputs, "parameters": job.parameters(), "qc": qc, "transform": list(transform.GetParameters())},
    )
    return qc


def run_job(job: PrepareJob) -> tuple[str, str, dict[str, object] | str]:
    """Worker entry point: ``(scan_id, status, qc record or problem message)``.

    ``status`` is ``"ok"``, ``"corrupt"`` (an unreadable input) or ``"failed"`` (deepbet or
    SimpleITK failed, or any other error: one odd scan must not stop the batch); a message
    names the file.
    """
    try:
        return job.scan_id, "ok", process_scan(job)
    except CorruptImageError as error:
        return job.scan_id, "corrupt", str(error)
    except RuntimeError as error:  # SimpleITK reports its failures as RuntimeError
        return job.scan_id, "failed", f"{job.image}: processing failed ({error})"
    except Exception as error:  # anything else a user's scan triggers: reported, the batch goes on
        return job.scan_id, "failed", f"{job.image}: processing failed ({type(error).__name__}: {error})"


def init_worker() -> None:
    """One SimpleITK and one torch thread per worker process (the processes share the cores).

    N4 and the registration metric give slightly different results with different SimpleITK
    thread counts: one thread everywhere makes the outputs identical whatever the number of
    workers. torch is set to one thread when
    deepbet is first loaded, so a worker whose scans all have masks never imports it.
    """
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
    _ONE_TORCH_THREAD["set"] = True
