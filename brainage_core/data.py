"""From a manifest to training tensors: preprocessing through the cache, splits, datasets.

All scans of a manifest are preprocessed once (:class:`~brainage_core.imaging.VolumeCache`)
and read from the cache when a batch needs them (:class:`~brainage_core.scan_store.CachedVolumes`;
``data.in_memory`` holds them all in memory as float16 instead, with the same values);
:class:`VolumeDataset` serves them with random augmentation
seeded by (seed, epoch, index), so a sample's views do not depend on the number of DataLoader
workers, on batch order, or on whether a run was resumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike
from torch.utils.data import Dataset
from tqdm import tqdm

from brainage_core.imaging import (
    AugmentConfig,
    ImageReadError,
    MultiViewTransform,
    PreprocessConfig,
    VolumeCache,
    build_augmentation,
    default_cache_dir,
)
from brainage_core.scan_store import CachedVolumes

__all__ = [
    "DataConfig",
    "UnaugmentedDraws",
    "VolumeDataset",
    "assign_splits",
    "cached_volumes",
    "load_manifest_volumes",
    "load_volumes",
    "open_manifest_volumes",
    "sample_seed",
    "training_subset",
]

Scan = TypeVar("Scan")


@dataclass
class DataConfig:
    """Which data a run uses and how it is preprocessed.

    Attributes:
        manifest: path of the manifest CSV (see ``data_manifests/schema.md``).
        spacing: voxel size in mm after resampling.
        shape: grid ``[X, Y, Z]`` after crop/pad.
        use_mask: apply the manifest's ``mask`` column when present.
        crop_foreground: crop to the brain before padding (native-space scans).
        train_groups: groups the model is trained and selected on (healthy controls by default:
            a brain-age model learns normal aging; patients are only predicted).
        test_fold: with a ``fold`` column, cross-validation: rows of this fold are the test set,
            rows of fold ``(test_fold + 1) % n_folds`` the validation set, the rest training;
            ``None`` uses the manifest's ``split`` column.
        cache_dir: preprocessing cache folder; ``None`` uses ``$BRAINAGE_CACHE`` or ``~/.cache/brainage``.
        train_subjects: train on this many of the training scans only (:func:`training_subset`,
            the same scans for every method and seed; for learning curves); ``None``: all.
        in_memory: hold every scan of a run in memory (float16) instead of reading each from the
            preprocessing cache when a batch needs it; the same values and results either way,
            but memory grows with the number of scans.
    """

    manifest: str = ""
    spacing: float = 4.0
    shape: tuple[int, int, int] = (48, 56, 48)
    use_mask: bool = True
    crop_foreground: bool = False
    train_groups: tuple[str, ...] = ("CN",)
    test_fold: int | None = None
    cache_dir: str | None = None
    train_subjects: int | None = None
    in_memory: bool = False

    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig(
            spacing=self.spacing, shape=self.shape, use_mask=self.use_mask, crop_foreground=self.crop_foreground
        )


def assign_splits(frame: pd.DataFrame, test_fold: int | None = None) -> pd.Series:
    """Return each row's split (``train``, ``val``, ``test``), checking subjects never straddle two.

    Args:
        frame: a manifest read by :func:`~brainage_core.manifest.read_manifest`.
        test_fold: see :attr:`DataConfig.test_fold`.

    Raises:
        ValueError: the manifest lacks the column the choice needs, a row has no split, or a
            subject would be in two splits.
    """
    if test_fold is None:
        if "split" not in frame.columns or (frame["split"] == "").any():
            raise ValueError(
                "every row needs a 'split' (train/val/test) in the manifest, or set data.test_fold "
                "to use the 'fold' column for cross-validation"
            )
        splits = frame["split"].astype(str)
    else:
        if "fold" not in frame.columns or frame["fold"].isna().any():
            raise ValueError(f"data.test_fold={test_fold} needs a 'fold' value on every manifest row")
        n_folds = int(frame["fold"].max()) + 1
        if not 0 <= test_fold < n_folds:
            raise ValueError(f"data.test_fold={test_fold} is not one of the folds 0..{n_folds - 1}")
        val_fold = (test_fold + 1) % n_folds
        splits = pd.Series(
            np.where(frame["fold"] == test_fold, "test", np.where(frame["fold"] == val_fold, "val", "train")),
            index=frame.index,
        )
    per_subject = splits.groupby(frame["subject_id"]).nunique()
    leaking = per_subject[per_subject > 1].index.tolist()
    if leaking:
        raise ValueError(f"subjects in more than one split (data leakage): {leaking[:10]}")
    return splits


def training_subset(ages: ArrayLike, n: int | None) -> np.ndarray:
    """Positions of ``n`` training scans spread evenly over the age range (all with ``None``).

    The scans are taken at evenly spaced ranks of age, so a small training set still covers
    the whole age range and is the same for every method and seed.

    Raises:
        ValueError: ``n`` exceeds the number of scans.
    """
    values = np.asarray(ages, dtype=float)
    if n is None or n == len(values):
        return np.arange(len(values))
    if n > len(values):
        raise ValueError(f"data.train_subjects={n}, but there are only {len(values)} training scans")
    order = np.argsort(values, kind="stable")
    return np.sort(order[np.round(np.linspace(0, len(values) - 1, n)).astype(int)])


def load_volumes(
    images: Sequence[str],
    masks: Sequence[str | None],
    config: PreprocessConfig,
    cache: VolumeCache,
    progress: bool = True,
    rows: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocess (or read from the cache) every scan.

    ``rows`` are the scans' manifest row numbers (1-based) for the error message; by default
    their positions in ``images``.

    Returns:
        ``volumes`` float16 ``[N, 1, X, Y, Z]`` and ``affines`` float64 ``[N, 4, 4]``.

    Raises:
        ImageReadError: one or more scans cannot be used; the message lists every one.
    """
    volumes = torch.empty((len(images), 1, *config.shape), dtype=torch.float16)
    affines = torch.empty((len(images), 4, 4), dtype=torch.float64)
    for index, volume in _each_scan(images, masks, lambda image, mask: cache.load(image, config, mask), progress, rows):
        volumes[index] = volume.as_tensor().half()
        affines[index] = torch.as_tensor(volume.affine, dtype=torch.float64)
    return volumes, affines


def cached_volumes(
    images: Sequence[str],
    masks: Sequence[str | None],
    config: PreprocessConfig,
    cache: VolumeCache,
    progress: bool = True,
    rows: Sequence[int] | None = None,
) -> CachedVolumes:
    """Preprocess every scan into the cache (unless there) and return them as lazily read volumes.

    Arguments as for :func:`load_volumes`; only the cache entries' paths are kept in memory.

    Raises:
        ImageReadError: one or more scans cannot be used; the message lists every one.
    """
    read = _each_scan(images, masks, lambda image, mask: cache.entry(image, config, mask), progress, rows)
    return CachedVolumes([entry for _, entry in read], config.shape)


def _each_scan(
    images: Sequence[str],
    masks: Sequence[str | None],
    read: Callable[[str, str | None], Scan],
    progress: bool,
    rows: Sequence[int] | None,
) -> Iterator[tuple[int, Scan]]:
    """``(position, read(image, mask))`` of every scan that can be read, one at a time.

    Raises:
        ImageReadError: after the last scan, when any could not be read; the message lists every
            one by its manifest row (``rows``, 1-based; by default the position + 1).
    """
    failures = []
    for index, (image, mask) in enumerate(tqdm(list(zip(images, masks)), desc="preprocess", disable=not progress)):
        try:
            scan = read(image, mask or None)
        except ImageReadError as error:
            failures.append(f"  - row {rows[index] if rows is not None else index + 1}: {error}")
            continue
        yield index, scan
    if failures:
        raise ImageReadError(
            f"{len(failures)} of {len(images)} scans cannot be used (rows of the manifest; "
            "`brainage validate MANIFEST` lists the same problems):\n" + "\n".join(failures)
        )


def load_manifest_volumes(
    frame: pd.DataFrame, config: DataConfig, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`load_volumes` for the rows of a manifest, with a run's preprocessing and cache.

    Args:
        frame: rows of a manifest read by :func:`~brainage_core.manifest.read_manifest`
            (``image`` and, if present, ``mask`` as absolute paths); its index (the manifest's
            row positions) numbers the rows in error messages.
        config: the run's data settings (preprocessing parameters and cache folder).
        progress: show a progress bar.

    Returns:
        ``volumes`` float16 ``[N, 1, X, Y, Z]`` and ``affines`` float64 ``[N, 4, 4]``, in row order.
    """
    images, masks, preprocess_config, cache, rows = _manifest_scans(frame, config)
    return load_volumes(images, masks, preprocess_config, cache, progress, rows)


def open_manifest_volumes(
    frame: pd.DataFrame, config: DataConfig, progress: bool = True
) -> CachedVolumes | torch.Tensor:
    """A run's volumes of the rows of a manifest: read when needed, or in memory with ``data.in_memory``.

    Arguments as for :func:`load_manifest_volumes`.

    Returns:
        :class:`~brainage_core.scan_store.CachedVolumes`, or with ``config.in_memory`` a
        float16 tensor ``[N, 1, X, Y, Z]``; the same values, in row order.
    """
    if config.in_memory:
        return load_manifest_volumes(frame, config, progress)[0]
    images, masks, preprocess_config, cache, rows = _manifest_scans(frame, config)
    return cached_volumes(images, masks, preprocess_config, cache, progress, rows)


def _manifest_scans(
    frame: pd.DataFrame, config: DataConfig
) -> tuple[list[str], list[str | None], PreprocessConfig, VolumeCache, list[int] | None]:
    """Images, masks, preprocessing, cache and row numbers of :func:`load_volumes` for a manifest's rows."""
    cache = VolumeCache(Path(config.cache_dir) if config.cache_dir else default_cache_dir())
    masks = frame["mask"].tolist() if "mask" in frame.columns else [None] * len(frame)
    rows = [int(label) + 1 for label in frame.index] if pd.api.types.is_integer_dtype(frame.index) else None
    return frame["image"].tolist(), masks, config.preprocess_config(), cache, rows


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed unique to (run seed, epoch, sample index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class VolumeDataset(Dataset):
    """Volumes with ages, served as augmented views.

    Args:
        volumes: ``[N, 1, X, Y, Z]`` (float16 or float32), a tensor or
            :class:`~brainage_core.scan_store.CachedVolumes` (each scan read when drawn).
        ages: ``[N]`` years.
        augment: augmentation settings, or ``None`` for no augmentation.
        n_views: views per sample; 1 returns ``[1, X, Y, Z]``, more return ``[V, 1, X, Y, Z]``.
        seed: run seed; with :meth:`set_epoch` it fixes every sample's augmentation.

    Index ``r * N + i`` (``r >= 1``) is sample ``i`` again with its own augmentation: an epoch
    that shows a sample ``r + 1`` times draws it as ``i``, ``N + i``, ..., ``r * N + i``.
    """

    def __init__(
        self,
        volumes: torch.Tensor | CachedVolumes,
        ages: torch.Tensor,
        augment: AugmentConfig | None = None,
        n_views: int = 1,
        seed: int = 0,
    ):
        if len(volumes) != len(ages):
            raise ValueError(f"{len(volumes)} volumes but {len(ages)} ages")
        self.volumes = volumes
        self.ages = ages.float()
        self.n_views = n_views
        self.seed = seed
        self.epoch = 0
        self.transform = MultiViewTransform(build_augmentation(augment), n_views) if augment is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = index % len(self.volumes)
        return self.views(self.volumes[sample].float(), index), self.ages[sample]

    def views(self, volume: torch.Tensor, index: int) -> torch.Tensor:
        """The views of draw ``index`` made from its float32 volume ``[1, X, Y, Z]``, on the volume's device.

        Returns:
            ``[1, X, Y, Z]`` with one view, else ``[V, 1, X, Y, Z]``.
        """
        if self.transform is None:
            views = volume.unsqueeze(0).expand(self.n_views, *volume.shape)  # views: [V, 1, X, Y, Z]
        else:
            self.transform.transform.set_random_state(seed=sample_seed(self.seed, self.epoch, index))
            views = self.transform(volume)  # views: [V, 1, X, Y, Z]
        return views[0] if self.n_views == 1 else views


class UnaugmentedDraws(Dataset):
    """The stored volume, age and index of each draw of a :class:`VolumeDataset`, not augmented.

    For augmentation on the training device (``augment.on_device``): the DataLoader only reads,
    and :meth:`VolumeDataset.views` makes the same views from the batch once it is on the device.
    """

    def __init__(self, dataset: VolumeDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        sample = index % len(self.dataset.volumes)
        return self.dataset.volumes[sample], self.dataset.ages[sample], index  # volume: float16 [1, X, Y, Z]
