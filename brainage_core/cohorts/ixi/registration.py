"""Image operations of the IXI import: read a scan, correct its bias, register it to the template.

Each step works on SimpleITK images in RAS orientation and knows nothing of IXI names, caches
or reports (:mod:`.jobs` chains them per scan):

- :func:`read_nifti_ras` reads a NIfTI volume with nibabel (a truncated file is caught) and
  reorients it to RAS (:func:`read_nifti_canonical` + :func:`nifti_to_sitk`); :func:`read_segmentation` reads a parcellation that must share the
  T1's voxel grid;
- :func:`n4_bias_correction`: N4 (SimpleITK), fitted on a shrunk copy inside a brain mask;
- :func:`load_registration_template`: the skull-stripped ICBM152 2009a T1 from the nilearn
  wheel (:func:`~brainage_core.cohorts.template.mni_template_path`) on a ``spacing`` mm grid;
- :func:`register_to_template`: affine registration (Mattes mutual information, moments
  initialisation, a similarity stage then an affine stage, multi-resolution, seeded random
  sampling);
- :func:`fallback_brain_mask`: a brain mask for a scan without a parcellation, the template
  mask carried back into native space;
- :func:`resample_to_template` / :func:`resample_labels` carry a scan, its mask and its labels
  onto the template grid; :func:`write_nifti` writes a volume atomically.
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
    "SEED",
    "CorruptImageError",
    "Template",
    "fallback_brain_mask",
    "load_registration_template",
    "n4_bias_correction",
    "nifti_to_sitk",
    "read_nifti_canonical",
    "read_nifti_ras",
    "read_segmentation",
    "register_to_template",
    "resample_labels",
    "resample_to_template",
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
FALLBACK_EROSION_MM = 4.0  # separates brain from scalp in the no-mask fallback
FALLBACK_DILATION_VOXELS = 1


class CorruptImageError(OSError):
    """A NIfTI file cannot be read (truncated, not NIfTI, not 3-D); the message names it."""


@dataclass(frozen=True)
class Template:
    """The ICBM152 2009a template resampled to ``spacing`` mm (SimpleITK images, RAS grid).

    Attributes:
        brain: skull-stripped T1 template (float32), the registration target.
        mask: its brain mask (uint8), the support of the skull-stripped template.
        sampling_mask: ``mask`` dilated by 8 mm, where the metric is sampled.
    """

    brain: sitk.Image
    mask: sitk.Image
    sampling_mask: sitk.Image


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
    radius = max(1, round(8.0 / spacing))
    return Template(brain=brain, mask=mask, sampling_mask=sitk.BinaryDilate(mask, [radius] * 3))


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


def fallback_brain_mask(head: sitk.Image, template: Template, seed: int) -> sitk.Image:
    """A brain mask for a scan without a segmentation; cruder than DLMUSE, and costs an extra N4 and registration.

    1. N4-correct the head inside its Otsu foreground; 2. a rough brain: Otsu tissue mask,
    eroded by 4 mm to cut the brain from the scalp, largest component, dilated back, holes
    filled; 3. register that rough brain to the template and carry the template brain mask
    back into native space through the inverse affine; 4. dilate by
    :data:`FALLBACK_DILATION_VOXELS` voxel(s), so the mask errs on including some meninges
    rather than cutting cortex. On five IXI scans it overlapped the DLMUSE mask with Dice
    0.944-0.953 and contained 97.5-99.6% of it.
    """
    corrected = n4_bias_correction(head, sitk.OtsuThreshold(head, 0, 1))
    radius = [max(1, round(FALLBACK_EROSION_MM / spacing)) for spacing in head.GetSpacing()]
    core = sitk.BinaryErode(sitk.OtsuThreshold(corrected, 0, 1), radius)
    largest = sitk.Cast(
        sitk.RelabelComponent(sitk.ConnectedComponent(core), sortByObjectSize=True) == 1, sitk.sitkUInt8
    )
    rough = sitk.BinaryFillhole(sitk.BinaryDilate(largest, radius))
    transform, _ = register_to_template(corrected * sitk.Cast(rough, sitk.sitkFloat32), template, seed)
    native = sitk.Resample(template.mask, head, transform.GetInverse(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.BinaryDilate(native, [FALLBACK_DILATION_VOXELS] * 3)


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


def resample_to_template(
    image: sitk.Image, mask: sitk.Image, transform: sitk.Transform, template: Template
) -> tuple[sitk.Image, sitk.Image]:
    """Carry a scan and its brain mask onto the template grid.

    The mask is resampled linearly and thresholded at one half; the scan is resampled
    linearly (float32) and set to zero outside the resampled mask.

    Args:
        image: the bias-corrected scan (native grid).
        mask: its brain mask (native grid).
        transform: from :func:`register_to_template` (template points to scan points).
        template: the registration target, whose grid is used.

    Returns:
        ``(image, mask)`` on the template grid: float32 skull-stripped scan, uint8 mask.
    """
    resampled = sitk.Resample(sitk.Cast(mask, sitk.sitkFloat32), template.brain, transform, sitk.sitkLinear, 0.0)
    registered_mask = sitk.Cast(resampled > 0.5, sitk.sitkUInt8)
    registered = sitk.Resample(image, template.brain, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return registered * sitk.Cast(registered_mask, sitk.sitkFloat32), registered_mask


def resample_labels(labels: sitk.Image, transform: sitk.Transform, template: Template) -> sitk.Image:
    """Carry a parcellation onto the template grid (nearest neighbour, so labels stay labels)."""
    return sitk.Resample(labels, template.brain, transform, sitk.sitkNearestNeighbor, 0)


def write_nifti(image: sitk.Image, path: Path) -> None:
    """Write a volume as compressed NIfTI, atomically."""
    with atomic_path(path, suffix=".nii.gz") as temp:
        sitk.WriteImage(image, str(temp), useCompression=True)
