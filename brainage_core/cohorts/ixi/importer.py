"""Import the IXI T1 scans: demographics, preprocessing to MNI space, QC and a manifest.

:func:`import_ixi` turns a folder of raw IXI T1 volumes (``IXI<ID>-<SITE>-<N>_T1.nii.gz``,
native scanner space, with skull) and the IXI demographics (the original ``IXI.xls`` or a
``participants.csv`` with ``MRID,Age,Sex``) into what the rest of brainage reads::

    out_dir/images/<subject_id>_T1w_mni.nii.gz    float32, skull-stripped, N4-corrected, MNI grid
    out_dir/masks/<subject_id>_mask_mni.nii.gz    the subject's brain mask on the same grid
    out_dir/labels/<subject_id>_dlmuse_mni.nii.gz DLMUSE labels (only with a mask folder)
    out_dir/qc/<subject_id>.png                   three slices with the template brain outline
    out_dir/cache/<subject_id>.json               input hashes + parameters + QC (the cache)
    out_dir/qc.csv                                registration QC of every processed scan
    out_dir/import_report.json                    counts and every problem found
    out_dir/manifest.csv                          written last; validates with validate_manifest

Per scan: read (nibabel, so a truncated file is caught) and reorient to RAS -> skull strip
with the DLMUSE parcellation (``seg > 0``; without one, a cruder template-based fallback)
-> N4 bias correction (SimpleITK, fitted on a shrunk copy) -> affine registration to the
skull-stripped ICBM152 2009a template shipped with nilearn (Mattes mutual information,
moments initialisation, a similarity stage then an affine stage, multi-resolution, seeded
random sampling) -> resampling onto the template grid at ``spacing`` mm. Nothing is guessed: a scan whose demographics are missing, invalid or
contradictory, whose file is unreadable, or whose registration fails QC is left out of the
manifest and named in the report.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import nilearn
import numpy as np
import pandas as pd
import SimpleITK as sitk
import xlrd
from matplotlib.figure import Figure
from tqdm import tqdm

from brainage_core.fileio import atomic_path, sha256_file, write_json
from brainage_core.manifest import write_manifest

__all__ = [
    "QC_BRAIN_VOLUME_ML",
    "QC_MIN_CORRELATION",
    "QC_MIN_DICE",
    "SITES",
    "CorruptImageError",
    "Demographics",
    "ImportReport",
    "IxiScan",
    "Template",
    "assign_folds",
    "import_ixi",
    "load_template",
    "parse_ixi_name",
    "passes_qc",
    "qc_metrics",
    "read_demographics",
    "read_ixi_xls",
    "read_participants_csv",
    "register_to_template",
]

SITES: tuple[str, ...] = ("HH", "Guys", "IOP")  # Hammersmith, Guy's, Institute of Psychiatry
_MRID = re.compile(r"IXI(?P<number>\d+)-(?P<site>[A-Za-z]+)-(?P<scan>\d+)")
_T1_NAME = re.compile(_MRID.pattern + r"_T1\.nii(\.gz)?")
PIPELINE_VERSION = 1  # bump when the processing changes, to invalidate every cached subject
SEED = 20240611  # SimpleITK metric sampling and fold assignment
N_FOLDS = 5
# QC thresholds (see import_ixi). On the 145 labelled IXI scans: Dice 0.951-0.971 and
# correlation 0.49-0.69 (the lowest, IXI175, is well aligned but has very large ventricles,
# so correlation alone would flag atrophy). Perturbing good registrations: a 10 degree
# rotation or 10 mm shift gives Dice 0.89-0.95 and correlation 0.27-0.48; moments-only
# alignment gives Dice 0.82-0.86 and correlation 0.32-0.37.
QC_MIN_CORRELATION = 0.40  # Pearson correlation with the template inside its brain mask
QC_MIN_DICE = 0.93  # registered brain mask vs template brain mask
QC_BRAIN_VOLUME_ML: tuple[float, float] = (900.0, 2300.0)  # native mask volume (DLMUSE: 1076-1845 ml)
QC_COLUMNS = ("subject_id", "mrid", "correlation", "dice", "mattes_mi", "brain_volume_ml", "affine_scale", "qc_pass")
# Registration: (shrink factor, smoothing sigma in mm) per resolution level of each stage;
# the similarity stage stops at half resolution (the full level changed nothing but time).
SIMILARITY_LEVELS: tuple[tuple[int, float], ...] = ((4, 4.0), (2, 2.0))
AFFINE_LEVELS: tuple[tuple[int, float], ...] = ((4, 4.0), (2, 2.0), (1, 0.0))
SAMPLING_PERCENTAGE = 0.2  # of the fixed voxels, drawn at random with a fixed seed
N4_FIT_SPACING_MM = 8.0  # N4 fits its (smooth) bias field on a copy shrunk to about this voxel size
N4_ITERATIONS = (50, 50, 50, 50)  # four B-spline fitting levels
FALLBACK_EROSION_MM = 4.0  # separates brain from scalp in the no-mask fallback
FALLBACK_DILATION_VOXELS = 1
_TEMPLATE_DIR = Path(nilearn.__file__).parent / "datasets" / "data"
_TEMPLATE_T1 = _TEMPLATE_DIR / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


class CorruptImageError(OSError):
    """A NIfTI file cannot be read (truncated, not NIfTI, not 3-D); the message names it."""


# --------------------------------------------------------------------------- names, tables


@dataclass(frozen=True)
class IxiScan:
    """One IXI T1 file, identified from its name.

    Attributes:
        path: the T1 file.
        mrid: the IXI scan id, e.g. ``IXI012-HH-1211``.
        subject_id: ``IXI`` and the three-digit IXI_ID, e.g. ``IXI012``.
        site: acquisition site, one of :data:`SITES`.
    """

    path: Path
    mrid: str
    subject_id: str
    site: str


def _parse_mrid(mrid: str) -> tuple[str, str]:
    """``(subject_id, site)`` of an IXI scan id such as ``IXI012-HH-1211``."""
    match = _MRID.fullmatch(mrid.strip())
    if match is None or match["site"] not in SITES:
        raise ValueError(f"{mrid!r} is not an IXI scan id IXI<ID>-<SITE>-<N> with SITE one of {', '.join(SITES)}")
    return f"IXI{int(match['number']):03d}", match["site"]


def parse_ixi_name(path: str | os.PathLike[str]) -> IxiScan:
    """Identify an IXI T1 file from its name, ``IXI<ID>-<SITE>-<N>_T1.nii.gz``.

    Raises:
        ValueError: the name does not follow the IXI pattern or the site is unknown.
    """
    path = Path(path)
    match = _T1_NAME.fullmatch(path.name)
    if match is None:
        raise ValueError(f"{path.name}: not an IXI T1 file name IXI<ID>-<SITE>-<N>_T1.nii.gz")
    mrid = path.name.split("_T1.nii")[0]
    subject_id, site = _parse_mrid(mrid)
    return IxiScan(path=path, mrid=mrid, subject_id=subject_id, site=site)


@dataclass
class Demographics:
    """Age and sex per subject, after resolving duplicate rows.

    Attributes:
        table: one row per subject (index ``subject_id``) with ``age`` (float, NaN when the
            table has none) and ``sex`` (``"M"`` or ``"F"``).
        conflicting: ``subject_id -> message`` for subjects whose duplicate rows disagree;
            they are not in ``table``.
        invalid: ``subject_id -> message`` for rows with an unusable age or sex.
        source: the file read.
    """

    table: pd.DataFrame
    conflicting: dict[str, str] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    source: str = ""


def _collapse(records: list[tuple[str, float, str, int]], source: Path, row_word: str) -> Demographics:
    """Merge ``(subject_id, age, sex, row)`` records: identical duplicates once, others conflicting."""
    by_subject: dict[str, list[tuple[float, str, int]]] = {}
    for subject_id, age, sex, row in records:
        by_subject.setdefault(subject_id, []).append((age, sex, row))
    rows, conflicting, invalid = [], {}, {}
    for subject_id, entries in sorted(by_subject.items()):
        values = {(None if math.isnan(age) else age, sex) for age, sex, _ in entries}
        if len(values) > 1:
            listed = "; ".join(f"{row_word} {row}: age {age:g}, sex {sex or '?'}" for age, sex, row in entries)
            conflicting[subject_id] = (
                f"{subject_id}: duplicate rows in {source.name} disagree ({listed}); left out - "
                "correct the table so the rows agree or keep one"
            )
            continue
        age, sex, row = entries[0]
        where = f"{subject_id}: {source.name} {row_word} {row}"
        if not math.isnan(age) and not 0.0 < age <= 120.0:
            invalid[subject_id] = f"{where}: age {age:g} is outside 0-120 years; left out - correct it"
        elif sex not in ("M", "F"):
            invalid[subject_id] = f"{where}: sex is not male/female; left out - correct it"
        else:
            rows.append({"subject_id": subject_id, "age": age, "sex": sex})
    table = pd.DataFrame(rows, columns=["subject_id", "age", "sex"]).set_index("subject_id")
    return Demographics(table=table, conflicting=conflicting, invalid=invalid, source=str(source))


def _number(value: object) -> float:
    """A spreadsheet/CSV cell as a float; blank cells are NaN, text raises ValueError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    return float(value)


def read_ixi_xls(path: str | os.PathLike[str]) -> Demographics:
    """Read the original IXI spreadsheet (``IXI_ID``, ``SEX_ID (1=m, 2=f)``, ``AGE``).

    Rows repeating an IXI_ID are kept once when they agree on age and sex; when they
    disagree the subject is reported in ``conflicting`` and left out (the spreadsheet has
    e.g. IXI219 and IXI328 with two different ages).

    Raises:
        ValueError: the sheet lacks one of the three columns or a cell is not a number.
    """
    path = Path(path)
    sheet = xlrd.open_workbook(str(path)).sheet_by_index(0)
    header = [str(value).strip() for value in sheet.row_values(0)]
    columns = {}
    for key, prefix in (("id", "IXI_ID"), ("sex", "SEX_ID"), ("age", "AGE")):
        matches = [index for index, name in enumerate(header) if name.upper().startswith(prefix)]
        if not matches:
            raise ValueError(f"{path}: no column starting with {prefix!r} in the header {header}; is this IXI.xls?")
        columns[key] = matches[0]
    records = []
    for row in range(1, sheet.nrows):
        values = sheet.row_values(row)
        try:
            ixi_id, sex_id, age = (_number(values[columns[key]]) for key in ("id", "sex", "age"))
        except ValueError as error:
            raise ValueError(f"{path}: spreadsheet row {row + 1}: a cell is not a number ({error})") from error
        if math.isnan(ixi_id):
            continue  # a blank line in the sheet
        sex = {1.0: "M", 2.0: "F"}.get(sex_id, "")
        records.append((f"IXI{int(ixi_id):03d}", age, sex, row + 1))
    return _collapse(records, path, "spreadsheet row")


def read_participants_csv(path: str | os.PathLike[str]) -> Demographics:
    """Read a ``participants.csv`` with columns ``MRID`` (e.g. ``IXI012-HH-1211``), ``Age``, ``Sex``.

    Duplicate subjects are resolved as in :func:`read_ixi_xls`.

    Raises:
        ValueError: a column is missing, an MRID is malformed or an age is not a number.
    """
    path = Path(path)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in ("MRID", "Age", "Sex") if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected MRID,Age,Sex")
    records = []
    for index, (mrid, age, sex) in enumerate(zip(frame["MRID"], frame["Age"], frame["Sex"])):
        line = index + 2
        try:
            subject_id, _ = _parse_mrid(mrid)
            age_value = _number(age)
        except ValueError as error:
            raise ValueError(f"{path}: line {line}: {error}") from error
        records.append((subject_id, age_value, sex.strip().upper(), line))
    return _collapse(records, path, "line")


def read_demographics(path: str | os.PathLike[str]) -> Demographics:
    """Read IXI demographics from ``IXI.xls`` or a ``participants.csv``, by file extension."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"demographics file not found: {path}")
    if path.suffix.lower() == ".xls":
        return read_ixi_xls(path)
    if path.suffix.lower() == ".csv":
        return read_participants_csv(path)
    raise ValueError(f"{path}: demographics must be IXI.xls or a participants .csv (MRID,Age,Sex)")


# --------------------------------------------------------------------------- template


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
def load_template(spacing: float = 2.0) -> Template:
    """The nilearn copy of the MNI ICBM152 2009a (symmetric) T1 template on a ``spacing`` mm grid.

    nilearn ships the template skull-stripped (brain and inner CSF) at 1 mm; the grid keeps
    its origin and field of view (99 x 117 x 95 voxels at 2 mm). The T1 is smoothed by
    ``spacing / 2`` mm before downsampling; the mask is the template's support, resampled
    linearly and thresholded at one half.
    """
    t1 = sitk.Cast(sitk.ReadImage(str(_TEMPLATE_T1)), sitk.sitkFloat32)
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


# --------------------------------------------------------------------------- per-scan steps


def _read_ras(path: Path, pixel_type: int) -> sitk.Image:
    """Read a NIfTI volume with nibabel (scale slope applied), reorient to RAS, return SimpleITK.

    nibabel is used for reading because SimpleITK silently zero-fills a truncated ``.nii.gz``.

    Raises:
        CorruptImageError: the file cannot be read completely or is not a finite 3-D volume.
    """
    try:
        image = nib.as_closest_canonical(nib.load(path))
        data = np.asarray(image.dataobj, dtype=np.float32)  # data: [X, Y, Z]
    except Exception as error:  # nibabel, gzip and zlib raise many types for bad files
        raise CorruptImageError(
            f"{path}: cannot read as NIfTI ({type(error).__name__}: {error}); re-copy or re-export the file"
        ) from error
    if data.ndim != 3 or not np.isfinite(data).all():
        raise CorruptImageError(f"{path}: expected a finite 3-D volume, got shape {data.shape}")
    volume = sitk.GetImageFromArray(data.transpose(2, 1, 0))  # SimpleITK arrays are [Z, Y, X]
    lps = np.diag([-1.0, -1.0, 1.0]) @ image.affine[:3]  # NIfTI world is RAS, ITK world is LPS
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    volume.SetSpacing(spacing.tolist())
    volume.SetDirection((lps[:, :3] / spacing).flatten().tolist())
    volume.SetOrigin(lps[:, 3].tolist())
    return sitk.Cast(volume, pixel_type)


def _n4(image: sitk.Image, mask: sitk.Image) -> sitk.Image:
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
        template: from :func:`load_template`.
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


def _fallback_mask(head: sitk.Image, template: Template, seed: int) -> sitk.Image:
    """A brain mask for a scan without a segmentation; cruder than DLMUSE, and costs an extra N4 and registration.

    1. N4-correct the head inside its Otsu foreground; 2. a rough brain: Otsu tissue mask,
    eroded by 4 mm to cut the brain from the scalp, largest component, dilated back, holes
    filled; 3. register that rough brain to the template and carry the template brain mask
    back into native space through the inverse affine; 4. dilate by
    :data:`FALLBACK_DILATION_VOXELS` voxel(s), so the mask errs on including some meninges
    rather than cutting cortex. On five IXI scans it overlapped the DLMUSE mask with Dice
    0.944-0.953 and contained 97.5-99.6% of it.
    """
    corrected = _n4(head, sitk.OtsuThreshold(head, 0, 1))
    radius = [max(1, round(FALLBACK_EROSION_MM / spacing)) for spacing in head.GetSpacing()]
    core = sitk.BinaryErode(sitk.OtsuThreshold(corrected, 0, 1), radius)
    largest = sitk.Cast(
        sitk.RelabelComponent(sitk.ConnectedComponent(core), sortByObjectSize=True) == 1, sitk.sitkUInt8
    )
    rough = sitk.BinaryFillhole(sitk.BinaryDilate(largest, radius))
    transform, _ = register_to_template(corrected * sitk.Cast(rough, sitk.sitkFloat32), template, seed)
    native = sitk.Resample(template.mask, head, transform.GetInverse(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.BinaryDilate(native, [FALLBACK_DILATION_VOXELS] * 3)


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
    mask = mask > 0
    return {
        "correlation": float(np.corrcoef(image[inside], reference[inside])[0, 1]),
        "dice": float(2.0 * np.logical_and(mask, inside).sum() / max(1, mask.sum() + inside.sum())),
    }


def _qc_figure(path: Path, image: np.ndarray, template_mask: np.ndarray, title: str) -> None:
    """Save three orthogonal slices of ``image`` ([Z, Y, X], RAS) with the template brain outline."""
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


def _write(image: sitk.Image, path: Path) -> None:
    """Write a volume as compressed NIfTI, atomically."""
    with atomic_path(path, suffix=".nii.gz") as temp:
        sitk.WriteImage(image, str(temp), useCompression=True)


@dataclass(frozen=True)
class _Job:
    """One scan to process (picklable, sent to the worker processes)."""

    scan: IxiScan
    mask_path: Path | None
    out_dir: Path
    spacing: float
    inputs: dict[str, str]  # file hashes, stored in the sidecar

    def outputs(self) -> dict[str, Path]:
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
        return self.out_dir / "cache" / f"{self.scan.subject_id}.json"

    def parameters(self) -> dict[str, object]:
        return {
            "pipeline_version": PIPELINE_VERSION,
            "spacing": self.spacing,
            "seed": SEED,
            "mask_source": "dlmuse" if self.mask_path is not None else "template_fallback",
        }


def _cached_qc(job: _Job) -> dict[str, object] | None:
    """The QC record of a previous run when its inputs, parameters and outputs still match."""
    sidecar = job.sidecar()
    if not sidecar.is_file() or not all(path.is_file() for path in job.outputs().values()):
        return None
    stored = json.loads(sidecar.read_text())
    if stored.get("inputs") != job.inputs or stored.get("parameters") != job.parameters():
        return None
    return stored["qc"]


def _process(job: _Job) -> dict[str, object]:
    """Preprocess one scan, write its outputs and sidecar, and return its QC record.

    Raises:
        CorruptImageError: the T1 or its mask cannot be read.
        RuntimeError: SimpleITK failed (e.g. the registration diverged).
    """
    template = load_template(job.spacing)
    head = _read_ras(job.scan.path, sitk.sitkFloat32)
    labels = None
    if job.mask_path is not None:
        labels = _read_ras(job.mask_path, sitk.sitkUInt16)
        same_grid = labels.GetSize() == head.GetSize() and all(
            np.allclose(getter(labels), getter(head), atol=1e-3)
            for getter in (sitk.Image.GetOrigin, sitk.Image.GetSpacing, sitk.Image.GetDirection)
        )
        if not same_grid:
            raise CorruptImageError(
                f"{job.mask_path}: its voxel grid differs from the T1 {job.scan.path}; give the segmentation of this scan"
            )
        labels.CopyInformation(head)  # drop rounding differences below ITK's tolerance
        native_mask = sitk.Cast(labels > 0, sitk.sitkUInt8)
    else:
        native_mask = _fallback_mask(head, template, SEED)
    corrected = _n4(head, native_mask)
    brain = corrected * sitk.Cast(native_mask, sitk.sitkFloat32)
    transform, metric = register_to_template(brain, template, SEED)

    mask = (
        sitk.Resample(sitk.Cast(native_mask, sitk.sitkFloat32), template.brain, transform, sitk.sitkLinear, 0.0) > 0.5
    )
    mask = sitk.Cast(mask, sitk.sitkUInt8)
    image = sitk.Resample(corrected, template.brain, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    image = image * sitk.Cast(mask, sitk.sitkFloat32)
    outputs = job.outputs()
    _write(image, outputs["image"])
    _write(mask, outputs["mask"])
    if labels is not None:
        _write(sitk.Resample(labels, template.brain, transform, sitk.sitkNearestNeighbor, 0), outputs["labels"])

    image_array = sitk.GetArrayFromImage(image)  # [Z, Y, X]
    overlap = qc_metrics(image_array, sitk.GetArrayFromImage(mask), template)
    voxel_ml = float(np.prod(head.GetSpacing())) / 1000.0
    qc: dict[str, object] = {
        "subject_id": job.scan.subject_id,
        "mrid": job.scan.mrid,
        "correlation": round(overlap["correlation"], 4),
        "dice": round(overlap["dice"], 4),
        "mattes_mi": round(metric, 4),
        "brain_volume_ml": round(float(sitk.GetArrayViewFromImage(native_mask).sum()) * voxel_ml, 1),
        "affine_scale": round(float(np.linalg.det(np.reshape(transform.GetMatrix(), (3, 3)))) ** (1 / 3), 4),
    }
    title = f"{job.scan.mrid}  r={qc['correlation']:.3f}  Dice={qc['dice']:.3f}  brain {qc['brain_volume_ml']:.0f} ml"
    _qc_figure(outputs["qc_figure"], image_array, sitk.GetArrayFromImage(template.mask) > 0, title)
    write_json(
        job.sidecar(),
        {"inputs": job.inputs, "parameters": job.parameters(), "qc": qc, "transform": list(transform.GetParameters())},
    )
    return qc


def passes_qc(qc: dict[str, float]) -> bool:
    """Whether a scan's QC metrics meet the documented thresholds (see :func:`import_ixi`)."""
    low, high = QC_BRAIN_VOLUME_ML
    return bool(
        qc["correlation"] >= QC_MIN_CORRELATION and qc["dice"] >= QC_MIN_DICE and low <= qc["brain_volume_ml"] <= high
    )


def _run_job(job: _Job) -> tuple[str, str, dict[str, object] | str]:
    """Worker entry point: ``(subject_id, status, qc record or problem message)``."""
    try:
        return job.scan.subject_id, "ok", _process(job)
    except CorruptImageError as error:
        return job.scan.subject_id, "corrupt", str(error)
    except RuntimeError as error:  # SimpleITK reports its failures as RuntimeError
        return job.scan.subject_id, "failed", f"{job.scan.path}: processing failed ({error})"


def _init_worker() -> None:
    """One SimpleITK thread per worker process.

    The processes already share the cores, and N4 and the registration metric give slightly
    different results with different thread counts: one thread everywhere makes the outputs
    identical whatever ``workers`` is.
    """
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)


# --------------------------------------------------------------------------- folds, report


def assign_folds(
    ages: Iterable[float], subject_ids: Iterable[str], n_folds: int = N_FOLDS, seed: int = SEED
) -> np.ndarray:
    """Age-stratified fold per subject, deterministic.

    Subjects are sorted by age (ties by id) and cut into consecutive bins of ``n_folds``;
    within each bin the fold labels ``0..n_folds-1`` are shuffled with a seeded generator.
    Every fold gets a near-equal share of every age range; fold sizes differ by at most one.

    Returns:
        ``[n_subjects]`` integer folds, in the input order.
    """
    ages, subject_ids = np.asarray(list(ages), dtype=float), np.asarray(list(subject_ids), dtype=str)
    order = np.lexsort((subject_ids, ages))
    rng = np.random.default_rng(seed)
    folds = np.empty(len(ages), dtype=int)
    for start in range(0, len(order), n_folds):
        block = order[start : start + n_folds]
        folds[block] = rng.permutation(n_folds)[: len(block)]
    return folds


@dataclass
class ImportReport:
    """What :func:`import_ixi` did and every scan it left out, with the reason.

    Problem lists name scans on disk, except ``not_on_disk`` (table rows without an image)
    and ``unrecognised_files``. Each entry says what is wrong and what to do.
    """

    out_dir: str
    manifest: str
    n_images: int = 0
    n_processed: int = 0
    n_cached: int = 0
    n_imported: int = 0
    seconds: float = 0.0
    include_failed_qc: bool = False
    unrecognised_files: list[str] = field(default_factory=list)
    duplicate_subjects: list[str] = field(default_factory=list)
    not_on_disk: list[str] = field(default_factory=list)
    no_demographics: list[str] = field(default_factory=list)
    missing_age: list[str] = field(default_factory=list)
    invalid_demographics: list[str] = field(default_factory=list)
    conflicting: list[str] = field(default_factory=list)
    missing_mask: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    qc_failed: list[str] = field(default_factory=list)

    def problems(self) -> dict[str, list[str]]:
        """The non-empty problem lists by name."""
        return {name: value for name, value in asdict(self).items() if isinstance(value, list) and value}

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"{self.n_images} T1 file(s); {self.n_processed} processed, {self.n_cached} from cache, "
            f"{self.n_imported} in {self.manifest} ({self.seconds:.0f} s)"
        ]
        for name, entries in self.problems().items():
            shown = "; ".join(entries[:5]) + (f"; ... (+{len(entries) - 5})" if len(entries) > 5 else "")
            lines.append(f"  {name} ({len(entries)}): {shown}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- the import


def _scan_folder(t1_dir: Path, report: ImportReport) -> tuple[dict[str, IxiScan], set[str]]:
    """IXI T1 files in ``t1_dir`` by subject, and the subjects with several files (left out).

    Odd file names and subjects with several T1 files go to the report.
    """
    by_subject: dict[str, list[IxiScan]] = {}
    for path in sorted(t1_dir.iterdir()):
        if not path.name.endswith((".nii", ".nii.gz")):
            continue
        try:
            scan = parse_ixi_name(path)
        except ValueError as error:
            report.unrecognised_files.append(f"{error}; rename it or move it out of {t1_dir}")
            continue
        by_subject.setdefault(scan.subject_id, []).append(scan)
    report.n_images = sum(len(scans) for scans in by_subject.values())
    repeated = {subject_id for subject_id, found in by_subject.items() if len(found) > 1}
    for subject_id in sorted(repeated):
        names = ", ".join(scan.path.name for scan in by_subject[subject_id])
        report.duplicate_subjects.append(f"{subject_id}: several T1 files ({names}); left out - keep one")
    return {subject_id: found[0] for subject_id, found in by_subject.items() if subject_id not in repeated}, repeated


def _plan(
    scans: dict[str, IxiScan],
    table: Demographics,
    mask_dir: Path | None,
    out_dir: Path,
    spacing: float,
    report: ImportReport,
) -> list[_Job]:
    """A job per scan with usable demographics (and mask); every other scan goes to the report."""
    source = Path(table.source).name
    jobs = []
    for subject_id, scan in sorted(scans.items()):
        mask_path = None if mask_dir is None else mask_dir / f"{scan.mrid}_T1_DLMUSE.nii.gz"
        if subject_id in table.conflicting:
            report.conflicting.append(table.conflicting[subject_id])
        elif subject_id in table.invalid:
            report.invalid_demographics.append(table.invalid[subject_id])
        elif subject_id not in table.table.index:
            report.no_demographics.append(f"{scan.mrid}: no row in {source}; left out - add its age and sex")
        elif math.isnan(table.table.at[subject_id, "age"]):
            report.missing_age.append(f"{scan.mrid}: no age in {source}; left out - add its age")
        elif mask_path is not None and not mask_path.is_file():
            report.missing_mask.append(f"{scan.mrid}: no mask {mask_path}; left out - add it or drop the mask folder")
        else:
            inputs = {"t1": sha256_file(scan.path), "mask": "" if mask_path is None else sha256_file(mask_path)}
            jobs.append(_Job(scan=scan, mask_path=mask_path, out_dir=out_dir, spacing=spacing, inputs=inputs))
    return jobs


def _run(jobs: list[_Job], workers: int | None, progress: bool, report: ImportReport) -> dict[str, dict[str, object]]:
    """QC records of the jobs: from the cache, else by processing in ``workers`` processes."""
    records: dict[str, dict[str, object]] = {}
    to_run = []
    for job in jobs:
        cached = _cached_qc(job)
        if cached is None:
            to_run.append(job)
        else:
            records[job.scan.subject_id] = cached
    report.n_cached = len(records)

    workers = max(1, min(workers or os.cpu_count() or 1, len(to_run)))
    with (
        tqdm(total=len(to_run), desc="IXI import", unit="scan", disable=not progress) as bar,
        ProcessPoolExecutor(workers, initializer=_init_worker) as pool,
    ):
        for future in as_completed([pool.submit(_run_job, job) for job in to_run]):
            subject_id, status, payload = future.result()
            if status == "ok":
                records[subject_id] = payload
            else:
                (report.corrupt if status == "corrupt" else report.failed).append(str(payload))
            bar.update()
    report.n_processed = len(records) - report.n_cached
    return records


def _manifest(
    jobs: list[_Job],
    records: dict[str, dict[str, object]],
    table: Demographics,
    include_failed_qc: bool,
    report: ImportReport,
) -> pd.DataFrame:
    """Manifest rows of the processed scans (QC failures reported, and dropped unless kept), with folds."""
    rows = []
    for job in jobs:
        qc, outputs = records.get(job.scan.subject_id), job.outputs()
        if qc is None:
            continue  # corrupt or failed: already reported
        if not passes_qc(qc):
            report.qc_failed.append(
                f"{job.scan.mrid}: failed QC (correlation {qc['correlation']}, Dice {qc['dice']}, "
                f"brain {qc['brain_volume_ml']} ml); {'kept' if include_failed_qc else 'left out'} - "
                f"look at {outputs['qc_figure']}"
            )
            if not include_failed_qc:
                continue
        row = {
            "subject_id": job.scan.subject_id,
            "image": str(outputs["image"].resolve()),
            "age": table.table.at[job.scan.subject_id, "age"],
            "sex": table.table.at[job.scan.subject_id, "sex"],
            "group": "CN",  # IXI recruited healthy volunteers
            "site": job.scan.site,
            "mask": str(outputs["mask"].resolve()),
        }
        if "labels" in outputs:  # relative to the manifest, like the paths write_manifest converts
            row["labels"] = outputs["labels"].relative_to(job.out_dir).as_posix()
        rows.append(row)
    columns = ["subject_id", "image", "age", "sex", "group", "site", "mask"]
    manifest = pd.DataFrame(rows, columns=columns + (["labels"] if jobs and jobs[0].mask_path else []))
    manifest["fold"] = assign_folds(manifest["age"], manifest["subject_id"])
    return manifest


def import_ixi(
    t1_dir: str | os.PathLike[str],
    demographics: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    mask_dir: str | os.PathLike[str] | None = None,
    spacing: float = 2.0,
    workers: int | None = None,
    progress: bool = True,
    include_failed_qc: bool = False,
    max_subjects: int | None = None,
) -> ImportReport:
    """Preprocess the IXI T1 scans into MNI space and write a validated manifest.

    ``max_subjects`` keeps only the first subjects (by IXI ID) of the folder, for quick runs
    such as the book's smoke tests; ``None`` imports all of them.

    Brain masks come from ``mask_dir/<MRID>_T1_DLMUSE.nii.gz`` (``seg > 0``), whose labels are
    also carried to the template grid (nearest neighbour). Without ``mask_dir`` a cruder
    fallback is used: the template brain mask registered back into native space and dilated
    (see :func:`_fallback_mask`); expect some non-brain tissue at the edges.

    QC (``qc.csv``, one row per processed scan): ``correlation`` with the template T1 and
    ``dice`` with the template brain mask (:func:`qc_metrics`), ``mattes_mi`` (final
    registration metric, negative mutual information), ``brain_volume_ml`` (native mask),
    ``affine_scale`` (cube root of the affine's determinant: scan size relative to the
    template) and ``qc_pass``. A scan passes when correlation >= :data:`QC_MIN_CORRELATION`,
    Dice >= :data:`QC_MIN_DICE` and the brain volume lies in :data:`QC_BRAIN_VOLUME_ML`
    (:func:`passes_qc`; the thresholds are applied on every run, to cached metrics too).
    Failing scans are left out of the manifest unless ``include_failed_qc``.

    Scans are processed in ``workers`` processes with one SimpleITK thread each (so outputs
    do not depend on ``workers``).
    A rerun skips a scan whose outputs exist and whose sidecar records the same input
    hashes and parameters.

    Args:
        t1_dir: folder of ``IXI<ID>-<SITE>-<N>_T1.nii.gz`` files.
        demographics: ``IXI.xls`` or ``participants.csv`` (``MRID,Age,Sex``).
        out_dir: output folder (created).
        mask_dir: folder of DLMUSE parcellations on the T1 grids, or ``None``.
        spacing: voxel size of the template grid in mm.
        workers: processes; ``None`` uses every CPU core.
        progress: show a tqdm bar.
        include_failed_qc: keep scans that fail QC in the manifest.

    Returns:
        The report, also written to ``out_dir/import_report.json``.
    """
    start = time.perf_counter()
    t1_dir, out_dir = Path(t1_dir), Path(out_dir)
    mask_dir = None if mask_dir is None else Path(mask_dir)
    if not t1_dir.is_dir():
        raise FileNotFoundError(f"T1 folder not found: {t1_dir}")
    if mask_dir is not None and not mask_dir.is_dir():
        raise FileNotFoundError(f"mask folder not found: {mask_dir} (leave it out to use the template fallback)")
    table = read_demographics(demographics)
    report = ImportReport(
        out_dir=str(out_dir), manifest=str(out_dir / "manifest.csv"), include_failed_qc=include_failed_qc
    )
    scans, repeated = _scan_folder(t1_dir, report)
    in_table = set(table.table.index) | set(table.conflicting) | set(table.invalid)
    report.not_on_disk = sorted(in_table - set(scans) - repeated)
    if max_subjects is not None:
        if max_subjects < 1:
            raise ValueError(f"max_subjects must be >= 1 or None, got {max_subjects}")
        scans = dict(sorted(scans.items())[:max_subjects])

    jobs = _plan(scans, table, mask_dir, out_dir, float(spacing), report)
    records = _run(jobs, workers, progress, report)
    qc_frame = pd.DataFrame(
        [{**records[key], "qc_pass": passes_qc(records[key])} for key in sorted(records)], columns=QC_COLUMNS
    )
    with atomic_path(out_dir / "qc.csv", suffix=".csv") as temp:
        qc_frame.to_csv(temp, index=False)
    manifest = _manifest(jobs, records, table, include_failed_qc, report)
    report.n_imported = len(manifest)
    report.seconds = round(time.perf_counter() - start, 1)
    write_json(out_dir / "import_report.json", asdict(report))
    write_manifest(manifest, out_dir / "manifest.csv")
    return report
