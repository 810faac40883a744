"""Preprocessed scans read from the preprocessing cache when a batch needs them.

A training run used to hold every preprocessed scan in memory (float16, ~2 MB a scan at 2 mm),
so its memory grew with the cohort: 40,000 scans would need ~80 GB per process, on every DDP
rank. :class:`CachedVolumes` keeps only the paths of the scans' cache entries (one uncompressed
``.npz`` per scan, written by :class:`~brainage_core.imaging.VolumeCache`) and reads a scan when
it is indexed, so memory does not depend on the number of scans and a DDP rank reads only the
scans of its own share of each batch. The operating system's page cache keeps recently read
entries in memory where there is room, which costs the process nothing.

Why per-scan files and not one chunked array store (zarr, HDF5): a training step reads whole
scans in random order, which is exactly one file read per scan here; a chunked store would add
a dependency and a second copy of the cache without making that read cheaper. ``brainage bench
--scaling`` measures memory and throughput against the in-memory path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import overload

import numpy as np
import torch
from numpy.typing import ArrayLike

from brainage_core.imaging import ImageReadError

__all__ = ["CachedVolumes", "read_cache_volume"]


def read_cache_volume(entry: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """The float16 volume ``[1, X, Y, Z]`` of one cache entry.

    Raises:
        ImageReadError: the entry is missing, unreadable or of another shape (the cache changed
            while a run used it); the message says what to do.
    """
    try:
        with np.load(entry) as stored:
            volume = stored["volume"]
    except Exception as error:
        raise ImageReadError(
            f"{entry}: the preprocessing cache entry of a scan this run uses cannot be read ({error}); "
            "was the cache cleared while the run was going? Rerun: the scan is preprocessed again"
        ) from None
    if volume.shape != (1, *shape):
        raise ImageReadError(
            f"{entry}: cache entry holds a volume of shape {volume.shape}, expected {(1, *shape)}; "
            "rerun so the scan is preprocessed again"
        )
    return volume.astype(np.float16, copy=False)


class CachedVolumes:
    """Scans ``[N, 1, X, Y, Z]`` (float16) read from their cache entries on demand.

    Indexing follows what the training and inference code needs:

    - ``volumes[i]`` (an integer): one scan ``[1, X, Y, Z]``, read now;
    - ``volumes[a:b]`` (a slice): a batch ``[k, 1, X, Y, Z]``, read now;
    - ``volumes[indices]`` (an integer array or list): a lazy subset, nothing read.

    A :class:`torch.Tensor` of volumes gives the same values for the first two and a copy for
    the third, so code written for either works with both.

    Args:
        entries: the scans' cache entry paths, in order.
        shape: the preprocessed grid ``[X, Y, Z]``.
    """

    dtype = torch.float16

    def __init__(self, entries: Sequence[str | Path], shape: Sequence[int]):
        self.entries = [Path(entry) for entry in entries]
        self.grid = (int(shape[0]), int(shape[1]), int(shape[2]))

    @property
    def shape(self) -> tuple[int, ...]:
        """``(N, 1, X, Y, Z)``, as a tensor of the same volumes would report."""
        return (len(self.entries), 1, *self.grid)

    def __len__(self) -> int:
        return len(self.entries)

    @overload
    def __getitem__(self, index: int | np.integer | slice) -> torch.Tensor: ...

    @overload
    def __getitem__(self, index: np.ndarray | Sequence[int]) -> CachedVolumes: ...

    def __getitem__(self, index: int | np.integer | slice | ArrayLike) -> torch.Tensor | CachedVolumes:
        if isinstance(index, (int, np.integer)):
            return torch.from_numpy(read_cache_volume(self.entries[index], self.grid))
        if isinstance(index, slice):
            rows = range(len(self.entries))[index]
            batch = torch.empty((len(rows), 1, *self.grid), dtype=self.dtype)  # batch: [k, 1, X, Y, Z]
            for position, row in enumerate(rows):
                batch[position] = torch.from_numpy(read_cache_volume(self.entries[row], self.grid))
            return batch
        positions = np.asarray(index)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        return CachedVolumes([self.entries[int(position)] for position in positions], self.grid)

    def __repr__(self) -> str:
        return f"CachedVolumes({len(self)} scans of {self.grid})"
