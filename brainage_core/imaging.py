"""The NIfTI pipeline: load, reorient, mask, resample, normalise, crop/pad, cache, augment.

Every step but the foreground-percentile normalisation is a MONAI transform, so the output is
a :class:`monai.data.MetaTensor` whose ``affine`` still maps voxels to world (scanner or MNI)
millimetres; Grad-RAM maps computed on it can be written back as NIfTI in the same space.

Preprocessed volumes are cached on disk by :class:`VolumeCache`, keyed by the SHA-256 of the
image (and mask) file content and the preprocessing parameters, as float16 ``.npz`` files with
their affine. A second epoch or run reads the cache, never the NIfTI.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    LoadImage,
    Orientation,
    RandAffine,
    RandBiasField,
    RandFlip,
    RandGaussianNoise,
    RandScaleIntensity,
    RandShiftIntensity,
    ResizeWithPadOrCrop,
    Spacing,
    SpatialCrop,
)
from monai.transforms.utils import generate_spatial_bounding_box

from brainage_core.fileio import atomic_path, sha256_file
from brainage_core.scan_checks import header_problems, scan_problems, value_problems

__all__ = [
    "AugmentConfig",
    "ImageReadError",
    "MultiViewTransform",
    "PreprocessConfig",
    "VolumeCache",
    "build_augmentation",
    "default_cache_dir",
    "load_volume",
    "preprocess",
    "robust_normalise",
]

CACHE_FORMAT_VERSION = 1


class ImageReadError(OSError):
    """A file could not be read as a NIfTI volume; the message names the file."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of the deterministic preprocessing (all of them enter the cache key).

    Attributes:
        spacing: target voxel size in mm (isotropic).
        shape: output grid ``(X, Y, Z)`` in voxels after crop/pad.
        use_mask: multiply the image by the manifest's brain mask when one is given.
        crop_foreground: crop to the brain's bounding box before the centred crop/pad (for
            scans in native space); ``False`` keeps the grid centred on the field of view,
            which preserves voxel correspondence for scans already in template space.
        percentiles: foreground intensity percentiles mapped to 0 and 1 (values clipped).
    """

    spacing: float = 3.0
    shape: tuple[int, int, int] = (64, 72, 64)
    use_mask: bool = True
    crop_foreground: bool = False
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if not self.spacing > 0:
            raise ValueError(f"PreprocessConfig.spacing must be > 0 mm, got {self.spacing}")
        if len(self.shape) != 3 or any(int(s) < 8 for s in self.shape):
            raise ValueError(f"PreprocessConfig.shape must be three sizes >= 8 voxels, got {self.shape}")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(
                f"PreprocessConfig.percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}"
            )
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "percentiles", tuple(float(p) for p in self.percentiles))

    def key(self) -> str:
        """A stable string of all parameters, used in cache keys."""
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation for contrastive views (MONAI transforms; probabilities per view).

    The defaults suit inputs already aligned to a template (the synthetic cohort, the IXI
    import, any affinely registered T1): small rotations and intensity changes, no translation
    and no zoom. A zoom of 5 % changes brain volume by about 15 %, as much as decades of
    atrophy, so it blurs the very signal being learned; a shift moves every structure away from
    where the other subjects have it. Turn them on for unregistered inputs, and choose any
    augmentation on validation data, never on the test split.

    Attributes:
        rotate_deg: maximum rotation about each axis in degrees.
        translate_vox: maximum translation along each axis in voxels.
        scale: maximum relative zoom (0.05 = +-5%).
        intensity_shift: maximum additive shift (intensities are in [0, 1]).
        intensity_scale: maximum relative multiplicative change.
        bias_field: maximum coefficient of the smooth multiplicative bias field.
        noise_std: maximum standard deviation of additive Gaussian noise.
        flip_lr: also flip left-right with probability 0.5. Off by default: brain aging is
            not exactly symmetric and laterality is part of what a model may learn.
        on_device: augment each batch on the training device (a GPU) after it is moved there,
            instead of in the DataLoader on CPU cores, which cannot keep up with a GPU at 2 mm.
            Every view is seeded per sample either way, so on CPU the views are identical.
    """

    rotate_deg: float = 5.0
    translate_vox: float = 0.0
    scale: float = 0.0
    intensity_shift: float = 0.05
    intensity_scale: float = 0.1
    bias_field: float = 0.15
    noise_std: float = 0.02
    flip_lr: bool = False
    on_device: bool = False


def load_volume(path: str | os.PathLike[str]) -> MetaTensor:
    """Load a NIfTI file as a RAS-oriented ``[1, X, Y, Z]`` float32 MetaTensor.

    Handles ``.nii``/``.nii.gz``, any orientation and voxel size, integer storage with a
    scale slope/intercept (applied), and float data.

    Raises:
        ImageReadError: the file is missing, truncated, not NIfTI, or not a 3-D volume.
    """
    path = Path(path)
    problems = header_problems(path)  # before any voxel is read: no allocation from a bad header
    if problems:
        raise ImageReadError("\n".join(problems))
    try:
        volume = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(str(path))
    except Exception as error:  # nibabel/gzip/MONAI raise many types for bad files
        raise ImageReadError(
            f"{path}: the voxel data cannot be read ({type(error).__name__}: {error}); "
            "the file is truncated or corrupt: re-copy or re-export it"
        ) from None
    if volume.ndim != 4 or volume.shape[0] != 1:
        raise ImageReadError(f"{path}: expected a single 3-D volume, got array shape {tuple(volume.shape)}")
    if not torch.isfinite(volume).all():
        raise ImageReadError(f"{path}: contains NaN or infinite intensities")
    # MONAI annotates its transforms as returning Tensor; given a MetaTensor they return one.
    return cast(MetaTensor, Orientation(axcodes="RAS", labels=None)(volume))


def robust_normalise(volume: torch.Tensor, foreground: torch.Tensor, percentiles: tuple[float, float]) -> torch.Tensor:
    """Map foreground intensity percentiles to [0, 1], clip, and zero the background.

    MONAI's ``ScaleIntensityRangePercentiles`` computes percentiles over the whole field of
    view, which the background dominates; brain-age inputs need them over the brain only.

    Args:
        volume: ``[1, X, Y, Z]`` intensities.
        foreground: ``[1, X, Y, Z]`` boolean mask of the voxels the percentiles are taken over.
        percentiles: (low, high) in percent.

    Returns:
        ``[1, X, Y, Z]`` float32 in [0, 1].
    """
    values = volume[foreground]  # values: [n_foreground]
    if values.numel() == 0:
        raise ValueError("cannot normalise intensities: the foreground (mask) is empty")
    low, high = torch.quantile(values.float(), torch.tensor(percentiles, dtype=torch.float32) / 100.0)
    scaled = ((volume - low) / torch.clamp(high - low, min=1e-6)).clamp(0.0, 1.0)
    return scaled * foreground


def preprocess(
    image_path: str | os.PathLike[str],
    config: PreprocessConfig,
    mask_path: str | os.PathLike[str] | None = None,
) -> MetaTensor:
    """Run the deterministic pipeline on one scan.

    Steps: load -> RAS -> resample to ``config.spacing`` (bilinear; mask nearest) -> apply mask
    -> optional crop to the brain -> foreground-percentile normalisation -> centred crop/pad to
    ``config.shape``.

    Args:
        image_path: the T1 NIfTI.
        config: preprocessing parameters.
        mask_path: optional brain mask on the same grid (voxels > 0 are brain).

    Returns:
        ``[1, *config.shape]`` float32 MetaTensor in [0, 1] whose ``affine`` maps voxels to world mm.

    Raises:
        ImageReadError: an input file cannot be read, is implausible (see
            :mod:`brainage_core.scan_checks`), is constant, or its mask is empty or on another grid.
    """
    pixdim = (config.spacing,) * 3
    used_mask_path = mask_path if config.use_mask else None
    problems = scan_problems(image_path, used_mask_path, read_data=False, spacing=config.spacing)
    if problems:
        raise ImageReadError("\n".join(problems))
    raw = load_volume(image_path)
    problems = value_problems(image_path, raw.numpy())
    if problems:
        raise ImageReadError("\n".join(problems))
    # MONAI annotates its transforms as returning Tensor; given a MetaTensor they return one.
    image = cast(MetaTensor, Spacing(pixdim=pixdim, mode="bilinear", padding_mode="zeros")(raw))
    if used_mask_path is not None:
        mask = Spacing(pixdim=pixdim, mode="nearest", padding_mode="zeros")(load_volume(used_mask_path))
        problems = value_problems(used_mask_path, (mask > 0.5).numpy(), is_mask=True)
        if problems:
            raise ImageReadError("\n".join(problems))
        foreground = mask > 0.5
        image = cast(MetaTensor, image * foreground)
    else:
        foreground = image > 0
        if not bool(foreground.any()):
            raise ImageReadError(
                f"{image_path}: no voxel is above 0, so there is no foreground to normalise; give a brain mask"
            )
    if config.crop_foreground:
        start, end = generate_spatial_bounding_box(foreground, select_fn=lambda x: x > 0)
        crop = SpatialCrop(roi_start=start, roi_end=end)
        image, foreground = cast(MetaTensor, crop(image)), crop(foreground)
    image.array = robust_normalise(image.as_tensor(), cast(MetaTensor, foreground).as_tensor(), config.percentiles)
    return cast(MetaTensor, ResizeWithPadOrCrop(spatial_size=config.shape)(image))


def default_cache_dir() -> Path:
    """``$BRAINAGE_CACHE`` if set, else ``~/.cache/brainage``."""
    return Path(os.environ.get("BRAINAGE_CACHE", Path.home() / ".cache" / "brainage"))


@dataclass
class VolumeCache:
    """On-disk cache of preprocessed volumes, keyed by file contents and parameters.

    Each entry is ``<root>/<key[:2]>/<key>.npz`` holding ``volume`` (float16 ``[1, X, Y, Z]``)
    and ``affine`` (float64 ``[4, 4]``), written atomically. File hashes are memoised per
    (path, size, mtime) so an epoch does not re-hash the inputs.

    Attributes:
        root: cache folder.
        hits: number of lookups served from the cache (for tests and benchmarks).
        misses: number of lookups that ran the pipeline.
    """

    root: Path = field(default_factory=default_cache_dir)
    hits: int = 0
    misses: int = 0
    _hashes: dict[tuple[str, int, int], str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def _file_hash(self, path: str | os.PathLike[str]) -> str:
        path = Path(path)
        try:
            stat = path.stat()
        except FileNotFoundError as error:
            raise ImageReadError(f"{path}: file not found") from error
        memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if memo_key not in self._hashes:
            self._hashes[memo_key] = sha256_file(path)
        return self._hashes[memo_key]

    def key(
        self,
        image_path: str | os.PathLike[str],
        config: PreprocessConfig,
        mask_path: str | os.PathLike[str] | None = None,
    ) -> str:
        """The cache key of a (image, mask, config) triple."""
        parts = [
            f"v{CACHE_FORMAT_VERSION}",
            self._file_hash(image_path),
            self._file_hash(mask_path) if mask_path is not None and config.use_mask else "nomask",
            config.key(),
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def path_for(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    @staticmethod
    def _read_entry(entry: Path, config: PreprocessConfig) -> MetaTensor | None:
        """A cached volume, or ``None`` when the entry is unreadable or malformed (then rewritten)."""
        try:
            with np.load(entry) as stored:
                volume, affine = stored["volume"], stored["affine"]
        except Exception:  # truncated or corrupt .npz: zipfile, zlib, pickle and value errors
            return None
        if volume.shape != (1, *config.shape) or affine.shape != (4, 4) or not np.all(np.isfinite(volume)):
            return None
        return MetaTensor(torch.from_numpy(volume.astype(np.float32)), affine=torch.from_numpy(affine))

    def entry(
        self,
        image_path: str | os.PathLike[str],
        config: PreprocessConfig,
        mask_path: str | os.PathLike[str] | None = None,
    ) -> Path:
        """The path of a valid cache entry of the scan, preprocessing it first when it has none.

        For :class:`~brainage_core.scan_store.CachedVolumes`, which reads entries when needed.
        """
        entry = self.path_for(self.key(image_path, config, mask_path))
        if entry.is_file() and self._read_entry(entry, config) is not None:
            self.hits += 1
        else:
            self.load(image_path, config, mask_path)
        return entry

    def load(
        self,
        image_path: str | os.PathLike[str],
        config: PreprocessConfig,
        mask_path: str | os.PathLike[str] | None = None,
    ) -> MetaTensor:
        """Return the preprocessed volume, from the cache or by running :func:`preprocess`.

        Returns:
            ``[1, *config.shape]`` float32 MetaTensor with its affine.
        """
        entry = self.path_for(self.key(image_path, config, mask_path))
        if entry.is_file():
            cached = self._read_entry(entry, config)
            if cached is not None:
                self.hits += 1
                return cached
        volume = preprocess(image_path, config, mask_path)
        with atomic_path(entry, suffix=".npz") as temp:
            np.savez(temp, volume=volume.numpy().astype(np.float16), affine=np.asarray(volume.affine, dtype=np.float64))
        self.misses += 1
        # Serve what a cache hit would serve, so a run does not depend on whether it hit.
        volume.array = volume.as_tensor().half().float()
        return volume


def build_augmentation(config: AugmentConfig) -> Compose:
    """MONAI random transforms producing one augmented view of a ``[1, X, Y, Z]`` volume.

    Spatial: rotation, translation and zoom in one resampling (RandAffine, zero padding).
    Intensity: smooth bias field, shift and scale, Gaussian noise. Optional left-right flip.
    Seed it with ``.set_random_state(seed)`` for reproducible views.
    """
    angle = np.deg2rad(config.rotate_deg)
    transforms = [
        RandAffine(
            prob=1.0,
            rotate_range=(angle, angle, angle),
            translate_range=(config.translate_vox,) * 3,
            scale_range=(config.scale,) * 3,
            mode="bilinear",
            padding_mode="zeros",
        ),
        RandBiasField(coeff_range=(0.0, config.bias_field), prob=0.8),
        RandShiftIntensity(offsets=config.intensity_shift, prob=0.8),
        RandScaleIntensity(factors=config.intensity_scale, prob=0.8),
        RandGaussianNoise(std=config.noise_std, prob=0.8),
    ]
    if config.flip_lr:
        transforms.append(RandFlip(prob=0.5, spatial_axis=0))  # axis 0 is R-L in RAS
    return Compose(transforms)


class MultiViewTransform:
    """Apply a random transform ``n_views`` times to make contrastive views of one scan.

    Args:
        transform: a random transform mapping ``[1, X, Y, Z]`` to ``[1, X, Y, Z]``.
        n_views: number of independent views (>= 1).
    """

    def __init__(self, transform: Compose, n_views: int = 2):
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        self.transform = transform
        self.n_views = n_views

    def __call__(self, volume: torch.Tensor) -> torch.Tensor:
        """Return ``[n_views, 1, X, Y, Z]`` float32 views of a ``[1, X, Y, Z]`` volume."""
        views = [torch.as_tensor(self.transform(volume)).float() for _ in range(self.n_views)]
        return torch.stack(views)  # views: [V, 1, X, Y, Z]
