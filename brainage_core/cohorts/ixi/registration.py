"""Image operations of the IXI import: read a scan, correct its bias, register it to the template.

Each step works on SimpleITK images in RAS orientation and knows nothing of IXI names, caches
or reports (:mod:`brainage_core.prepare.jobs` chains them per scan):

- :func:`read_nifti_ras` reads a NIfTI volume with nibabel (a truncated file is caught) and
  reorients it to RAS (:func:`read_nifti_canonical` + :func:`nifti_to_sitk`); :func:`read_segmentation` reads a parcellation that must share the
  T1's voxel grid;
- :func:`n4_bias_correction`: N4 (SimpleITK), fitted on a shrunk copy inside a brain mask;
- :func:`load_registration_template`: the skull-stripped ICBM152 2009a T1 from the nilearn
  wheel (:func:`~brainage_core.cohorts.template.mni_template_path`) on a ``spacing`` mm grid;
- :func:`register_to_template`: affine registration (Mattes mutual information, moments
  initialisation, a similarity stage then an affine stage, multi-resolution, seeded random
  sampling);
- :func:`resample_scan`, :func:`resample_mask` and :func:`resample_labels` carry a scan, its
  brain mask and its labels onto the template grid; :func:`in_template_region` keeps the
  template's brain region of a scan; :func:`write_nifti` writes a volume atomically.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from brainage_core.cohorts.template import mni_template_path
from brainage_core.fileio import atomic_path

__all__ = [
    "REGION_DILATION_MM",
    "SEED",
    "CorruptImageError",
    "Template",
    "in_template_region",
    "load_registration_template",
    "n4_bias_correction",
    "nifti_to_sitk",
    "read_nifti_canonical",
    "read_nifti_ras",
    "read_segmentation",
    "register_to_template",
    "resample_labels",
    "resample_mask",
    "resample_scan",
    "write_nifti",
]

SEED = 20240611  # SimpleITK metric sampling (and, in the importer, fold assignment)
# Registration: (shrink factor, smoothing sigma in mm) per resolution level of each stage;
# the similarity stage stops at half resolution (the full level changed nothing but time).
SIMILARITY_LEVELS: tuple[tuple[int, float], ...] = ((4, 4.0), (2, 2.0))
AFFINE_LEVELS: tuple[tuple[int, float], ...] = ((4, 4.0), (2, 2.0), (1, 0.0))
SAMPLING_PERCENTAGE = 0.2  # of the fixed voxels, drawn at random with a fixed seed
N4_FIT_SPACING_MM = 8.0  # N4 fits its (smooth) bias field on a copy shrunk to about this voxel size
N4_ITERATIONS = (50, 50, 50, 50)  # four B-spline fitting levels
# The region the models read: the template brain mask dilated by this much. Undilated, it left
# out 5 % of the DLMUSE-labelled brain of affinely registered IXI scans (cortical CSF, the edges
# of the cerebellum and of the cortex); 2 mm left out 1.8 %, 4 mm 0.4 % (medians of 30 scans).
REGION_DILATION_MM = 4.0


class CorruptImageError(OSError):
    """A NIfTI file cannot be read (truncated, not NIfTI, not 3-D); the message names it."""


@dataclass(frozen=True)
class Template:
    """The ICBM152 2009a template resampled to ``spacing`` mm (SimpleITK images, RAS grid).

    Attributes:
        brain: skull-stripped T1 template (float32), the registration target.
        mask: its brain mask (uint8), the support of the skull-stripped template.
        sampling_mask: ``mask`` dilated by 8 mm, where the metric is sampled.
        region: ``mask`` dilated by :data:`REGION_DILATION_MM`: the voxels of a registered scan
            the models read (:func:`in_template_region`).
    """

    brain: sitk.Image
    mask: sitk.Image
    sampling_mask: sitk.Image
    region: sitk.Image


@functools.lru_cache(maxsize=4)
def load_registration_template(spacing: float = 2.0) -> Template:
    """The nilearn copy of the MNI ICBM152 2009a (symmetric) T1 template on a ``spacing`` mm grid.

    nilearn ships the template skull-stripped (brain and inner CSF) at 1 mm; the grid keeps
    its origin and field of view (99 x 117 x 95 voxels at 2 mm). The T1 is smoothed by
    ``spacing / 2`` mm before downsampling; the mask is the template's support, resampled
    linearly and thresholded at one half.
    """
    t1 = sitk.Cast(sitk.ReadImage(str(mni_template_path("t1"))), sitk.sitkFloat32)
    size = [math.floor((n - 1) * s / spacing) + 1 for n, s in zip(t1.GetSize(), t1.GetSpacing())]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetOrigin(t1.GetOrigin())
    grid.SetDirection(t1.GetDirection())
    grid.SetSpacing((spacing,) * 3)
    smoothed = sitk.SmoothingRecursiveGaussian(t1, spacing / 2) if spacing > 1.0 else t1
    support = sitk.Resample(sitk.Cast(t1 > 0, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    mask = sitk.BinaryFillhole(sitk.Cast(support > 0.5, sitk.sitkUInt8))
    brain = sitk.Resample(smoothed, grid, sitk.Transform(), sitk.sitkLinear, 0.0) * sitk.Cast(mask, sitk.sitkFloat32)
    radius, region_radius = max(1, round(8.0 / spacing)), max(1, round(REGION_DILATION_MM / spacing))
    return Template(
        brain=brain,
        mask=mask,
        sampling_mask=sitk.BinaryDilate(mask, [radius] * 3),
        region=sitk.BinaryDilate(mask, [region_radius] * 3),
    )


def read_nifti_canonical(path: Path) -> nib.Nifti1Image:
    """Read a NIfTI volume with nibabel (scale slope applied) as a float32 RAS image.

    nibabel is used for reading because SimpleITK silently zero-fills a truncated ``.nii.gz``.
    A 4-D file with exactly one volume is taken as that volume.

    Returns:
        A ``[X, Y, Z]`` float32 image in RAS orientation (``nib.as_closest_canonical``).

    Raises:
        CorruptImageError: the file cannot be read completely, or is not a finite 3-D volume
            (or a 4-D file with one volume).
    """
    try:
        image = nib.as_closest_canonical(nib.load(path))
        data = np.asarray(image.dataobj, dtype=np.float32)  # data: [X, Y, Z] or [X, Y, Z, 1]
    except Exception as error:  # nibabel, gzip and zlib raise many types for bad files
        raise CorruptImageError(
            f"{path}: cannot read as NIfTI ({type(error).__name__}: {error}); re-copy or re-export the file"
        ) from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CorruptImageError(
            f"{path}: expected a 3-D volume (or a 4-D file with one volume), got shape {data.shape}; "
            "give one T1 volume per file"
        )
    if not np.isfinite(data).all():
        raise CorruptImageError(f"{path}: the volume holds NaN or infinite values; re-export the file")
    return nib.Nifti1Image(data, image.affine)


def nifti_to_sitk(image: nib.Nifti1Image, pixel_type: int) -> sitk.Image:
    """A 3-D nibabel image as a SimpleITK image of ``pixel_type`` on the same voxel grid (LPS world)."""
    data = np.asarray(image.dataobj, dtype=np.float32)  # data: [X, Y, Z]
    volume = sitk.GetImageFromArray(data.transpose(2, 1, 0))  # SimpleITK arrays are [Z, Y, X]
    lps = np.diag([-1.0, -1.0, 1.0]) @ image.affine[:3]  # NIfTI world is RAS, ITK world is LPS
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    volume.SetSpacing(spacing.tolist())
    volume.SetDirection((lps[:, :3] / spacing).flatten().tolist())
    volume.SetOrigin(lps[:, 3].tolist())
    return sitk.Cast(volume, pixel_type)


def read_nifti_ras(path: Path, pixel_type: int) -> sitk.Image:
    """Read a NIfTI volume (:func:`read_nifti_canonical`) as a SimpleITK image of ``pixel_type`` in RAS.

    Raises:
        CorruptImageError: the file cannot be read completely or is not a finite 3-D volume.
    """
    return nifti_to_sitk(read_nifti_canonical(path), pixel_type)


def n4_bias_correction(image: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """N4 bias correction estimated on a shrunk copy inside ``mask``, applied at full resolution."""
    fit_mask = sitk.Cast((mask > 0) & (image > 0), sitk.sitkUInt8)  # N4 takes logs: positive voxels only
    shrink = [max(1, round(N4_FIT_SPACING_MM / spacing)) for spacing in image.GetSpacing()]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(N4_ITERATIONS))
    corrector.Execute(sitk.Shrink(image, shrink), sitk.Shrink(fit_mask, shrink))
    bias = sitk.Cast(sitk.Exp(corrector.GetLogBiasFieldAsImage(image)), sitk.sitkFloat32)
    return sitk.Divide(image, bias)


def _optimise(
    moving: sitk.Image, transform: sitk.Transform, template: Template, levels: tuple[tuple[int, float], ...], seed: int
) -> float:
    """Run one multi-resolution Mattes-MI stage, updating ``transform`` in place; return the metric."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING_PERCENTAGE, seed)
    method.SetMetricFixedMask(template.sampling_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=100, relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([shrink for shrink, _ in levels])
    method.SetSmoothingSigmasPerLevel([sigma for _, sigma in levels])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(template.brain, moving)
    return float(method.GetMetricValue())


def register_to_template(
    moving: sitk.Image, template: Template, seed: int = SEED
) -> tuple[sitk.AffineTransform, float]:
    """Affinely register a skull-stripped scan to the template brain.

    Moments-based centring, then a similarity stage (rotation, translation, one scale) at
    two resolutions, then a full affine stage started from it at three resolutions; Mattes
    mutual information sampled at random inside the dilated template mask (seeded, so reruns
    with the same SimpleITK thread count give the same transform).

    Args:
        moving: the scan (float32, brain only, any grid).
        template: from :func:`load_registration_template`.
        seed: seed of the metric's random sampling.

    Returns:
        The transform mapping template points to scan points (what ``sitk.Resample`` of the
        scan onto the template grid takes) and the final metric value (negative MI).
    """
    similarity = sitk.Similarity3DTransform(
        sitk.CenteredTransformInitializer(
            template.brain, moving, sitk.Similarity3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
    )
    _optimise(moving, similarity, template, SIMILARITY_LEVELS, seed)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(similarity.GetCenter())
    affine.SetMatrix(similarity.GetMatrix())
    affine.SetTranslation(similarity.GetTranslation())
    metric = _optimise(moving, affine, template, AFFINE_LEVELS, seed)
    return affine, metric


def read_segmentation(path: Path, head: sitk.Image, t1_path: Path) -> sitk.Image:
    """Read a parcellation (uint16 labels, RAS) that must lie on the voxel grid of ``head``, the T1 read from ``t1_path``.

    Raises:
        CorruptImageError: the file cannot be read, or its grid differs from the T1's.
    """
    labels = read_nifti_ras(path, sitk.sitkUInt16)
    same_grid = labels.GetSize() == head.GetSize() and all(
        np.allclose(getter(labels), getter(head), atol=1e-3)
        for getter in (sitk.Image.GetOrigin, sitk.Image.GetSpacing, sitk.Image.GetDirection)
    )
    if not same_grid:
        raise CorruptImageError(
            f"{path}: its voxel grid differs from the T1 {t1_path}; give the segmentation of this scan"
        )
    labels.CopyInformation(head)  # drop rounding differences below ITK's tolerance
    return labels


def resample_mask(mask: sitk.Image, transform: sitk.Transform, template: Template) -> sitk.Image:
    """Carry a brain mask onto the template grid: resampled linearly, thresholded at one half (uint8)."""
    resampled = sitk.Resample(sitk.Cast(mask, sitk.sitkFloat32), template.brain, transform, sitk.sitkLinear, 0.0)
    return sitk.Cast(resampled > 0.5, sitk.sitkUInt8)


def resample_scan(image: sitk.Image, transform: sitk.Transform, template: Template) -> sitk.Image:
    """Carry a whole scan (skull included) onto the template grid, linearly (float32)."""
    return sitk.Resample(image, template.brain, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def in_template_region(registered: sitk.Image, template: Template) -> sitk.Image:
    """A registered scan kept inside the template's brain region (zero outside).

    The region is the template's brain mask dilated by :data:`REGION_DILATION_MM` (so the edges
    of the registered brain stay inside), the same for every scan, rather than the scan's own
    brain mask: a model then sees the same voxels whichever skull stripping guided the
    registration, so its ages do not depend on where a brain mask draws the edge of the brain
    (a model trained on IXI scans cut to their DLMUSE masks aged deepbet-cut copies of four held-out
    scans by 7 to 11 years: the masks agree with Dice 0.98 but differ in a few millilitres of CSF
    at the edge of the brain, which the model had learnt to read).

    Args:
        registered: a scan on the template grid (from :func:`resample_scan`).
        template: the registration target.
    """
    return registered * sitk.Cast(template.region, sitk.sitkFloat32)


def resample_labels(labels: sitk.Image, transform: sitk.Transform, template: Template) -> sitk.Image:
    """Carry a parcellation onto the template grid (nearest neighbour, so labels stay labels)."""
    return sitk.Resample(labels, template.brain, transform, sitk.sitkNearestNeighbor, 0)


def write_nifti(image: sitk.Image, path: Path) -> None:
    """Write a volume as compressed NIfTI, atomically."""
    with atomic_path(path, suffix=".nii.gz") as temp:
        sitk.WriteImage(image, str(temp), useCompression=True)
