"""``brainage bench --scaling`` and ``--parallel``: memory, throughput and wall time as work grows.

``--scaling``: a training run's memory and throughput as the cohort grows.

For each cohort size (300, 1,000 and 3,000 synthetic scans by default) and each data path
(scans streamed from the preprocessing cache, :class:`~brainage_core.scan_store.CachedVolumes`,
and all scans held in memory, ``data.in_memory``), a fresh process builds the real training
engine (:class:`~brainage_core.engine.Trainer`), trains a fixed number of optimiser steps and
evaluates every training and validation scan, then reports its peak resident memory and its
training throughput. The two paths run side by side on the same scans, so their ratio is the
cost of streaming; the memory at the largest size over that at the smallest is how memory
grows with the cohort.

The scans are simple synthetic heads (a noisy ellipsoid) written directly on the training grid,
so that writing and preprocessing thousands of them takes a minute, not hours; memory and
throughput depend on the grid and the model, not on the anatomy.

``--parallel``: the wall time of ``brainage prepare`` on a batch of raw scans and of the smoke
book's batch run, with 1 and 2 local workers (:mod:`brainage_core.cluster`: more than one is a
local Dask cluster), everything executed afresh each time.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from brainage_core.bench import machine_description, peak_rss_mb
from brainage_core.config import RunConfig, load_config
from brainage_core.data import open_manifest_volumes
from brainage_core.fileio import write_json
from brainage_core.inference import resolve_device
from brainage_core.manifest import read_manifest

__all__ = [
    "SCALING_SHAPE",
    "SCALING_SIZES",
    "SCALING_STEPS_PER_EPOCH",
    "SCALING_TIMED_EPOCHS",
    "bench_parallel",
    "bench_scaling",
    "run_scaling_benchmark",
    "write_scaling_cohort",
]

SCALING_SIZES = (300, 1000, 3000)
SCALING_SHAPE = (32, 40, 32)
_SPACING_MM = 4.0
SCALING_TIMED_EPOCHS = 3  # median of these, after one untimed epoch
SCALING_STEPS_PER_EPOCH = 8
_MODES = {"streamed": "false", "in_memory": "true"}


def write_scaling_cohort(folder: Path, n_scans: int, shape: Sequence[int] = SCALING_SHAPE, seed: int = 0) -> Path:
    """Write ``n_scans`` synthetic heads (NIfTI, 4 mm, on ``shape``) and a manifest; return its path.

    Ages are uniform on 20-90 y; every fifth scan is validation, the rest training (all CN).
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, size) for size in shape], indexing="ij"))
    rows = []
    for index in range(n_scans):
        radii = rng.uniform(0.7, 0.9, size=3)
        inside = ((grid / radii[:, None, None, None]) ** 2).sum(axis=0) < 1  # inside: [X, Y, Z]
        data = (inside * (100 + rng.normal(0, 10, inside.shape))).astype(np.float32)
        path = folder / "scans" / f"sub-{index:05d}.nii"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.diag([_SPACING_MM] * 3 + [1.0])), path)
        rows.append(
            {
                "subject_id": f"sub-{index:05d}",
                "image": str(path),
                "age": round(float(rng.uniform(20, 90)), 1),
                "sex": "MF"[index % 2],
                "group": "CN",
                "split": "val" if index % 5 == 4 else "train",
            }
        )
    manifest = folder / f"manifest_{n_scans}.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def _measure(overrides: list[str], timed_epochs: int, results: Any) -> None:
    """One training run in a fresh process: peak RSS and training samples/s (put on ``results``).

    The median epoch time of ``timed_epochs`` epochs after one untimed (warm-up) epoch.
    """
    from brainage_core.engine import Trainer

    torch.manual_seed(0)
    trainer = Trainer(load_config(None, overrides))
    seconds = []
    for epoch in range(timed_epochs + 1):
        started = time.perf_counter()
        trainer.train_epoch(epoch)
        seconds.append(time.perf_counter() - started)
    trainer.evaluate()  # reads every training and validation scan once
    results.put(
        {
            "samples_per_s": trainer.epoch_size / statistics.median(seconds[1:]),
            "peak_rss_mb": peak_rss_mb(),
            "n_train": len(trainer.train_idx),
            "n_val": len(trainer.val_idx),
        }
    )


def _result_of(process: Any, queue: Any) -> dict[str, Any]:
    """What the measuring process put on ``queue``; an error if it died first."""
    while True:
        try:
            result = queue.get(timeout=5)
        except Exception:  # queue.Empty: still running, or dead
            if not process.is_alive():
                raise RuntimeError(f"a scaling run died (exit code {process.exitcode}); its error is above") from None
            continue
        process.join()
        return result


def bench_scaling(
    work_dir: str | Path,
    config: RunConfig,
    sizes: Sequence[int] = SCALING_SIZES,
    shape: Sequence[int] = SCALING_SHAPE,
    overrides: Sequence[str] = (),
    steps_per_epoch: int = SCALING_STEPS_PER_EPOCH,
    timed_epochs: int = SCALING_TIMED_EPOCHS,
) -> dict[str, Any]:
    """Peak RSS and training throughput of streamed vs in-memory runs at each cohort size.

    Args:
        work_dir: folder for the synthetic scans, their manifests and the preprocessing cache
            (created; several hundred MB at 3,000 scans).
        config: the run settings measured (model, loss, batch size, augmentation, device);
            the data grid is ``shape`` at 4 mm.
        sizes: numbers of scans.
        shape: the scans' grid ``[X, Y, Z]``.
        overrides: the dotted settings ``config`` was made with, passed on to each run.
        steps_per_epoch: optimiser steps of each measured epoch.
        timed_epochs: epochs timed (the median is reported) after one untimed warm-up epoch.

    Returns:
        ``{machine, shape, steps_per_epoch, batch_size, rows: [{n_scans, mode, peak_rss_mb,
        samples_per_s, ...}], rss_growth: {mode: RSS at the largest / smallest size},
        streamed_over_in_memory_throughput: {n_scans: ratio}}``.
    """
    work_dir = Path(work_dir)
    largest = write_scaling_cohort(work_dir, max(sizes), shape)
    frame = pd.read_csv(largest)
    base = [
        *overrides,
        "data.spacing=4.0",
        f"data.shape=[{', '.join(str(int(size)) for size in shape)}]",
        f"data.cache_dir={work_dir / 'cache'}",
        f"train.epoch_size={steps_per_epoch * config.train.batch_size}",
    ]
    manifests = {}
    for n_scans in sorted(sizes):
        manifests[n_scans] = work_dir / f"manifest_{n_scans}.csv"
        frame.head(n_scans).to_csv(manifests[n_scans], index=False)
    # Preprocess every scan once here, so the measured runs read a warm cache.
    open_manifest_volumes(
        read_manifest(largest), load_config(None, [*base, f"data.manifest={largest}"]).data, progress=False
    )

    context = multiprocessing.get_context("spawn")
    rows = []
    for n_scans in sorted(sizes):
        for mode, in_memory in _MODES.items():
            queue = context.Queue()
            run = [*base, f"data.manifest={manifests[n_scans]}", f"data.in_memory={in_memory}"]
            process = context.Process(target=_measure, args=(run, timed_epochs, queue))
            process.start()
            result = _result_of(process, queue)
            rows.append({"n_scans": n_scans, "mode": mode, **result})
    table = pd.DataFrame(rows)
    smallest, biggest = min(sizes), max(sizes)
    by_mode = table.set_index(["mode", "n_scans"])
    return {
        "machine": machine_description(resolve_device(config.device)),
        "shape": [int(size) for size in shape],
        "spacing_mm": _SPACING_MM,
        "arch": config.model.arch,
        "width": config.model.width,
        "loss": config.loss.name,
        "batch_size": config.train.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "timed_epochs": timed_epochs,
        "num_workers": config.num_workers,
        "rows": rows,
        "rss_growth": {
            mode: float(by_mode.loc[(mode, biggest), "peak_rss_mb"] / by_mode.loc[(mode, smallest), "peak_rss_mb"])
            for mode in _MODES
        },
        "streamed_over_in_memory_throughput": {
            str(n_scans): float(
                by_mode.loc[("streamed", n_scans), "samples_per_s"]
                / by_mode.loc[("in_memory", n_scans), "samples_per_s"]
            )
            for n_scans in sorted(sizes)
        },
    }


def run_scaling_benchmark(
    out: str | Path,
    work_dir: str | Path,
    config: RunConfig,
    overrides: Sequence[str] = (),
    sizes: Sequence[int] = SCALING_SIZES,
) -> dict[str, Any]:
    """:func:`bench_scaling`, written to ``out`` as JSON."""
    results = bench_scaling(work_dir, config, sizes, overrides=overrides)
    write_json(Path(out), results)
    return results


def bench_parallel(
    root: str | Path,
    raw_scans: Sequence[tuple[str | Path, str | Path | None]],
    worker_counts: Sequence[int] = (1, 2),
    profile: str = "smoke",
) -> dict[str, Any]:
    """Wall time of ``prepare`` and of a batch run of the book with each number of local workers.

    Args:
        root: the repository (its ``book/runs.yml``); the profile's runs are executed afresh
            (``force``) into its ``_book_runs/<profile>`` folder, as ``brainage book run`` would.
        raw_scans: ``(image, mask or None)`` of raw T1 scans; each count prepares all of them
            from scratch in a temporary folder (a mask skips deepbet).
        worker_counts: numbers of workers to time.
        profile: the book profile to run.

    Returns:
        ``{machine, n_scans, profile, rows: [{task, workers, seconds}]}``.

    Raises:
        RuntimeError: a book run failed, or a scan could not be prepared.
    """
    import io
    import tempfile

    from brainage_core.book.runner import run_book
    from brainage_core.prepare import prepare_scans

    rows = []
    manifest_rows = [
        {"subject_id": f"scan{index}", "image": str(Path(image).resolve()), "age": 50.0, "sex": "F", "group": "CN"}
        | ({"mask": str(Path(mask).resolve())} if mask else {})
        for index, (image, mask) in enumerate(raw_scans)
    ]
    for workers in worker_counts:
        with tempfile.TemporaryDirectory(prefix="brainage-bench-parallel-") as folder:
            started = time.perf_counter()
            report = prepare_scans(manifest_rows, folder, workers=workers, progress=False, include_failed_qc=True)
            seconds = time.perf_counter() - started
        if report.corrupt or report.failed:
            raise RuntimeError("; ".join(report.corrupt + report.failed))
        rows.append({"task": f"prepare {len(raw_scans)} scans", "workers": workers, "seconds": seconds})
    for workers in worker_counts:
        log = io.StringIO()
        started = time.perf_counter()
        outcomes = run_book(Path(root), profile, force=True, jobs=workers, log=log)
        seconds = time.perf_counter() - started
        failed = [outcome.name for outcome in outcomes if outcome.status != "executed"]
        if failed:
            raise RuntimeError(f"book runs {failed} did not execute:\n{log.getvalue()[-2000:]}")
        rows.append({"task": f"book run ({profile}, {len(outcomes)} runs)", "workers": workers, "seconds": seconds})
    return {
        "machine": machine_description(torch.device("cpu")),
        "n_scans": len(raw_scans),
        "profile": profile,
        "rows": rows,
    }
