"""Streaming data: scans read from the preprocessing cache when needed, on one process and under DDP."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from brainage_core.config import load_config
from brainage_core.data import cached_volumes, load_volumes
from brainage_core.engine import Trainer, compute_loss
from brainage_core.imaging import ImageReadError, PreprocessConfig, VolumeCache
from brainage_core.manifest import read_manifest
from brainage_core.scan_store import CachedVolumes
from brainage_core.train import train
from tests.conftest import write_tiny_cohort
from tests.test_train import tiny_overrides

WORLD_SIZE = 2
JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("cohort"), n_subjects=30)


def _scans(manifest: Path) -> tuple[list[str], list[None]]:
    frame = read_manifest(manifest)
    return frame["image"].tolist(), [None] * len(frame)


def test_cached_volumes_hold_paths_and_read_the_same_values(cohort: Path, tmp_path: Path) -> None:
    images, masks = _scans(cohort)
    config = PreprocessConfig(spacing=4.0, shape=(16, 16, 16))
    cache = VolumeCache(tmp_path / "cache")
    in_memory, _ = load_volumes(images, masks, config, cache, progress=False)
    lazy = cached_volumes(images, masks, config, cache, progress=False)
    assert isinstance(lazy, CachedVolumes) and lazy.shape == tuple(in_memory.shape)
    assert all(isinstance(entry, Path) for entry in lazy.entries), "only the entries' paths are held"
    assert torch.equal(lazy[3], in_memory[3])
    assert torch.equal(lazy[2:7], in_memory[2:7])
    subset = lazy[np.array([5, 0, 9])]
    assert isinstance(subset, CachedVolumes) and len(subset) == 3
    assert torch.equal(subset[0:3], in_memory[[5, 0, 9]])


def test_a_cache_entry_removed_during_a_run_is_a_clear_error(cohort: Path, tmp_path: Path) -> None:
    images, masks = _scans(cohort)
    lazy = cached_volumes(images, masks, PreprocessConfig(spacing=4.0, shape=(16, 16, 16)), VolumeCache(tmp_path))
    lazy.entries[1].unlink()
    with pytest.raises(ImageReadError, match=r"cache entry .* cannot be read .* Rerun"):
        lazy[1]


def test_streamed_and_in_memory_runs_are_identical(cohort: Path, tmp_path: Path) -> None:
    histories = {}
    for mode in ("false", "true"):
        overrides = [*tiny_overrides(tmp_path, cohort, "rnc"), f"data.in_memory={mode}"]
        run = train(load_config(None, overrides), tmp_path / f"in_memory_{mode}", progress=False)
        histories[mode] = pd.read_csv(run / "metrics.csv").drop(columns="seconds")
        histories[mode + "_predictions"] = pd.read_csv(run / "predictions.csv")
    pd.testing.assert_frame_equal(histories["false"], histories["true"])
    pd.testing.assert_frame_equal(histories["false_predictions"], histories["true_predictions"])


class _ReadLog(CachedVolumes):
    """CachedVolumes that records which of its scans were read."""

    def __init__(self, volumes: CachedVolumes):
        super().__init__(volumes.entries, volumes.grid)
        self.read: list[int] = []

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        if isinstance(index, (int, np.integer)):
            self.read.append(int(index))
        return super().__getitem__(index)


def _first_batch_loss(trainer: Trainer) -> tuple[float, list[int]]:
    """The loss of epoch 0's first batch (this rank's share, gathered), and the scans read for it.

    The model is in eval mode, so every view's features depend on that view only (batch norm
    uses its running statistics) and the loss can be compared across world sizes.
    """
    log = _ReadLog(trainer.volumes)
    trainer.dataset.volumes = log
    batch = trainer._batches(0)[0]
    views, ages = zip(*(trainer.dataset[int(index)] for index in batch))
    trainer.model.eval()
    with torch.no_grad():
        loss = compute_loss(
            trainer.network,
            trainer.loss_fn,
            torch.stack(views),
            torch.stack(ages),
            contrastive=trainer.contrastive,
            age_mean=trainer.model.age_mean,
            age_std=trainer.model.age_std,
        )
    return float(loss), log.read


def _rank(rank: int, init_file: str, overrides: list[str], out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60)
    )
    try:
        trainer = Trainer(load_config(None, overrides))
        assert isinstance(trainer.volumes, CachedVolumes), "the default data path streams"
        loss, read = _first_batch_loss(trainer)
        del trainer
    finally:
        dist.destroy_process_group()
    torch.save({"loss": loss, "read": read}, Path(out_dir) / f"rank{rank}.pt")


def test_ddp_ranks_read_disjoint_shards_and_match_the_single_process_loss(cohort: Path, tmp_path: Path) -> None:
    overrides = [*tiny_overrides(tmp_path, cohort, "rnc"), "train.batch_size=8"]
    single_loss, single_read = _first_batch_loss(Trainer(load_config(None, overrides)))

    context = mp.start_processes(
        _rank,
        args=(str(tmp_path / "init"), overrides, str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two-process gloo job did not finish within {JOB_TIMEOUT_S} s")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]

    shards = [set(result["read"]) for result in ranks]
    assert shards[0] and shards[1] and not shards[0] & shards[1], "each rank reads only its own scans"
    assert shards[0] | shards[1] == set(single_read), "together the ranks read the global batch"
    for result in ranks:
        assert result["loss"] == pytest.approx(single_loss, rel=1e-5), "the gathered loss is the global batch's"
