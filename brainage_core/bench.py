"""Benchmarks behind ``brainage bench``: loss speed, training throughput, preparation of raw scans, memory.

Results are a JSON document (``bench/results.json`` by default) that the book's performance
chapter reads. Every figure is measured on the machine that runs the command and carries
its description (CPU model and threads, GPU model when one is used).
"""

from __future__ import annotations

import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from brainage_core import __version__
from brainage_core.config import RunConfig
from brainage_core.data import UnaugmentedDraws, VolumeDataset
from brainage_core.engine import compute_loss, torch_threads
from brainage_core.fileio import write_json
from brainage_core.imaging import AugmentConfig, build_augmentation
from brainage_core.inference import resolve_device
from brainage_core.losses import CONTRASTIVE_LOSSES, RnCLoss, build_loss, rnc_loss_loop
from brainage_core.models import build_model

__all__ = [
    "bench_augmentation",
    "bench_prepare",
    "bench_rnc_loss",
    "bench_training_throughput",
    "machine_description",
    "peak_rss_mb",
    "run_benchmarks",
]


def machine_description(device: torch.device) -> dict[str, Any]:
    """CPU model, core and thread counts, torch version and the GPU model when used."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    description = {
        "cpu": cpu,
        "cpu_count": torch.multiprocessing.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "brainage": __version__,
        "device": str(device),
    }
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
    return description


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_MIN_AGE, _MAX_AGE = 20, 90


def _forward_backward_s(loss_fn: Callable[[Tensor, Tensor], Tensor], features: Tensor, ages: Tensor) -> float:
    """Wall time of one ``loss_fn(features, ages).backward()`` on a fresh leaf copy of ``features``.

    Args:
        loss_fn: Loss taking ``features`` ``[B, V, D]`` and ``ages`` ``[B]``.
        features: Embeddings, shape ``[B, V, D]``.
        ages: Ages, shape ``[B]``.

    Returns:
        Seconds for the forward + backward pass.
    """
    leaf = features.detach().clone().requires_grad_(True)
    _synchronize(features.device)
    start = time.perf_counter()
    loss_fn(leaf, ages).backward()
    _synchronize(features.device)
    return time.perf_counter() - start


def _median_times_s(
    loss_fns: dict[str, Callable[[Tensor, Tensor], Tensor]],
    features: Tensor,
    ages: Tensor,
    repeats: int,
) -> dict[str, float]:
    """Median forward + backward seconds of each loss, the losses timed in alternation.

    Every loss first runs once untimed (absorbing one-off costs such as first-touch
    page faults of large buffers); then each repeat times every loss once, so that
    background load on a shared machine affects all losses alike.

    Args:
        loss_fns: Losses by name, each taking ``features`` ``[B, V, D]`` and ``ages`` ``[B]``.
        features: Embeddings, shape ``[B, V, D]``.
        ages: Ages, shape ``[B]``.
        repeats: Number of timed runs per loss.

    Returns:
        Median seconds per forward + backward pass, by loss name.
    """
    for loss_fn in loss_fns.values():
        _forward_backward_s(loss_fn, features, ages)
    times: dict[str, list[float]] = {name: [] for name in loss_fns}
    for _ in range(repeats):
        for name, loss_fn in loss_fns.items():
            times[name].append(_forward_backward_s(loss_fn, features, ages))
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def bench_rnc_loss(
    batch_sizes: Sequence[int] = (32, 64, 128, 256, 512, 1024),
    views: int = 2,
    dim: int = 128,
    repeats: int = 3,
    loop_max_batch: int = 512,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Time forward + backward of :class:`RnCLoss` and :func:`rnc_loss_loop`.

    Features are standard-normal ``[B, views, dim]`` tensors and ages random
    integers in ``[20, 90]`` (many ties, as with real ages in years), drawn after
    ``torch.manual_seed(batch_size)``. Each loss runs once untimed at every size,
    then the two losses are timed in alternation ``repeats`` times.

    Args:
        batch_sizes: Batch sizes ``B`` (subjects) to time; each ``>= 2``.
        views: Views per subject ``V`` (``>= 2``); ``n = V * B`` samples are pooled.
        dim: Embedding dimension ``D``.
        repeats: Timed runs per loss and size (after the warm-up); the median is reported.
        loop_max_batch: Largest ``B`` for which the ``O(n^3)`` loop reference is timed.
        device: Torch device string, e.g. ``"cpu"`` or ``"cuda"``.

    Returns:
        One dict per batch size with keys ``batch_size``, ``views``, ``dim``,
        ``device``, ``fast_s`` (median seconds of :class:`RnCLoss`), ``loop_s``
        and ``speedup`` (``loop_s / fast_s``); the last two are ``None`` when
        ``batch_size > loop_max_batch``.

    Raises:
        ValueError: If an argument is out of range.
    """
    if not batch_sizes or min(batch_sizes) < 2:
        raise ValueError(f"batch_sizes must be non-empty with every size >= 2, got {tuple(batch_sizes)}")
    if views < 2:
        raise ValueError(f"views must be >= 2 (Rank-N-Contrast contrasts augmented views), got {views}")
    if dim < 1 or repeats < 1:
        raise ValueError(f"dim and repeats must be >= 1, got dim={dim}, repeats={repeats}")
    torch_device = torch.device(device)
    fast_loss = RnCLoss()
    rows: list[dict[str, Any]] = []
    for batch_size in batch_sizes:
        torch.manual_seed(batch_size)
        features = torch.randn(batch_size, views, dim, device=torch_device)  # features: [B, V, D]
        ages = torch.randint(_MIN_AGE, _MAX_AGE + 1, (batch_size,), device=torch_device).float()  # ages: [B]
        loss_fns: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"fast": fast_loss}
        if batch_size <= loop_max_batch:
            loss_fns["loop"] = rnc_loss_loop
        medians = _median_times_s(loss_fns, features, ages, repeats)
        fast_s, loop_s = medians["fast"], medians.get("loop")
        rows.append(
            {
                "batch_size": batch_size,
                "views": views,
                "dim": dim,
                "device": str(torch_device),
                "fast_s": fast_s,
                "loop_s": loop_s,
                "speedup": None if loop_s is None else loop_s / fast_s,
            }
        )
    return rows


def bench_training_throughput(
    config: RunConfig, n_subjects: int = 64, steps: int = 8, warmup_steps: int = 2, seed: int = 0
) -> dict[str, Any]:
    """Training samples/s through the real data pipeline vs a model-only step.

    Both loops run the same model, loss (:func:`~brainage_core.engine.compute_loss`, as in
    training) and optimiser on random volumes of the configured shape.
    The *pipeline* loop draws batches from :class:`~brainage_core.data.VolumeDataset` through a
    DataLoader (augmentation included, ``config.num_workers`` workers, or on the training device
    after the batch is moved there with ``augment.on_device``); the *model-only* loop
    reuses one preloaded batch of views. ``overhead`` = 1 - pipeline/model-only throughput.

    Args:
        config: run configuration (model, loss, batch size, augmentation, device, DataLoader
            workers, torch threads).
        n_subjects: size of the random in-memory dataset.
        steps: timed optimisation steps per loop.
        warmup_steps: untimed steps first.
        seed: random seed for volumes and ages.

    Returns:
        ``{loss, batch_size, n_views, shape, pipeline_samples_per_s, model_only_samples_per_s, overhead}``;
        a *sample* is one subject (with all its views).
    """
    device = resolve_device(config.device)
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(config.data.shape)
    volumes = torch.rand((n_subjects, 1, *shape), generator=generator).half()
    ages = 20 + 70 * torch.rand(n_subjects, generator=generator)
    contrastive = config.loss.name in CONTRASTIVE_LOSSES
    n_views = config.loss.n_views
    dataset = VolumeDataset(volumes, ages, config.augment, n_views=n_views, seed=seed)
    torch.manual_seed(seed)
    model = build_model(config.model).to(device)
    model.set_age_scale(ages)
    loss_fn = build_loss(config.loss.name, **config.loss.params)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
    batch_size = config.train.batch_size

    def step(views: torch.Tensor, batch_ages: torch.Tensor, draws: torch.Tensor | None = None) -> None:
        views, batch_ages = views.to(device, non_blocking=True), batch_ages.to(device, non_blocking=True)
        if draws is not None:  # augment.on_device: views are the stored volumes, augmented here as in training
            views = torch.stack([dataset.views(volume.float(), draw) for volume, draw in zip(views, draws.tolist())])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and config.amp):
            loss = compute_loss(
                model,
                loss_fn,
                views,
                batch_ages,
                contrastive=contrastive,
                age_mean=model.age_mean,
                age_std=model.age_std,
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(batches) -> float:
        iterator = iter(batches)
        for _ in range(warmup_steps):
            step(*next(iterator))
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step(*next(iterator))
        _synchronize(device)
        return steps * batch_size / (time.perf_counter() - started)

    model.train()
    loader = DataLoader(
        UnaugmentedDraws(dataset) if config.augment.on_device else dataset,
        batch_size=batch_size,
        sampler=torch.utils.data.RandomSampler(
            dataset, replacement=True, num_samples=(steps + warmup_steps) * batch_size
        ),
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    with torch_threads(config.num_threads):  # as training does
        pipeline = timed(loader)
        fixed = next(iter(DataLoader(dataset, batch_size=batch_size)))
        model_only = timed([fixed] * (steps + warmup_steps))
        threads = torch.get_num_threads()
    return {
        "loss": config.loss.name,
        "batch_size": batch_size,
        "n_views": n_views,
        "shape": list(shape),
        "arch": config.model.arch,
        "width": config.model.width,
        "num_workers": config.num_workers,
        "torch_threads": threads,
        "augment_on_device": config.augment.on_device,
        "pipeline_samples_per_s": pipeline,
        "model_only_samples_per_s": model_only,
        "overhead": 1.0 - pipeline / model_only,
    }


def bench_augmentation(
    augment: AugmentConfig, shape: Sequence[int], repeats: int = 20, seed: int = 0
) -> list[dict[str, Any]]:
    """Milliseconds per view of each augmentation transform, on one CPU volume of ``shape``.

    Explains the data pipeline's overhead measured by :func:`bench_training_throughput`: the
    transforms are those of :func:`~brainage_core.imaging.build_augmentation`, each applied
    ``repeats`` times (after one untimed call) to a random ``[1, *shape]`` volume.

    Args:
        augment: augmentation settings.
        shape: volume size ``(X, Y, Z)``.
        repeats: timed calls per transform; the median is reported.
        seed: seeds the volume and the transforms.

    Returns:
        One dict per transform (``transform``, ``ms_per_view``), then ``total`` for the whole chain.
    """
    volume = torch.rand((1, *shape), generator=torch.Generator().manual_seed(seed))
    chain = build_augmentation(augment)
    chain.set_random_state(seed)

    def median_ms(transform: Callable[[Tensor], Tensor]) -> float:
        transform(volume)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            transform(volume)
            times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times)

    rows = [
        {"transform": type(transform).__name__, "ms_per_view": median_ms(transform)} for transform in chain.transforms
    ]
    rows.append({"transform": "total", "ms_per_view": median_ms(chain)})
    return rows


def bench_prepare(raw_scans: Sequence[str | Path]) -> dict[str, Any]:
    """Seconds per scan of each step of ``brainage prepare`` (deepbet, N4, registration, ...).

    The scans are prepared from scratch (an empty temporary folder, so nothing is cached) by
    one worker process, one at a time, so every step gets one core and the steps' times add up
    to the time per scan; with ``W`` workers on ``W`` cores, scans go ``W`` times as fast.

    Args:
        raw_scans: raw T1 files with skull (e.g. a few shared IXI scans).

    Returns:
        ``n_scans``, ``median_s`` (step -> median seconds per scan, with ``total``) and
        ``per_scan`` (one dict per scan: ``scan_id`` and the seconds of each step).
    """
    import pandas as pd

    from brainage_core.prepare import prepare_scans

    rows = [
        {"subject_id": f"scan{index}", "image": str(Path(scan).resolve()), "age": 50.0, "sex": "F", "group": "CN"}
        for index, scan in enumerate(raw_scans)
    ]  # age and sex are required by the manifest, and unused here
    with tempfile.TemporaryDirectory(prefix="brainage-bench-prepare-") as folder:
        report = prepare_scans(rows, folder, workers=1, progress=False, include_failed_qc=True)
        if report.corrupt or report.failed:
            raise ValueError("; ".join(report.corrupt + report.failed))
        seconds = pd.read_csv(Path(folder) / "qc.csv").set_index("scan_id").filter(like="seconds_")
    seconds.columns = [column.removeprefix("seconds_") for column in seconds.columns]
    seconds["total"] = seconds.sum(axis=1)
    return {
        "n_scans": len(seconds),
        "median_s": seconds.median().round(2).to_dict(),
        "per_scan": seconds.round(2).reset_index().to_dict("records"),
    }


def run_benchmarks(
    out: str | Path,
    config: RunConfig | None = None,
    quick: bool = False,
    loop_max_batch: int = 512,
    raw_scans: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Run every benchmark and write the results as JSON.

    Args:
        out: JSON output path.
        config: the training configuration to measure (default: :class:`RunConfig` defaults,
            the book's CPU configuration).
        quick: smaller sizes and fewer repeats (for tests and smoke runs).
        loop_max_batch: largest batch at which the loop formulation is timed. Its autograd graph
            grows as O(B^3): about 7 GB of memory at B=512, an eighth of that at 256.
        raw_scans: raw T1 files to time ``brainage prepare`` on (:func:`bench_prepare`); none:
            ``prepare`` is ``None`` in the results.

    Returns:
        The results written.
    """
    config = config or RunConfig()
    device = resolve_device(config.device)
    batch_sizes = (32, 64, 128) if quick else (32, 64, 128, 256, 512, 1024)
    loss_rows = bench_rnc_loss(
        batch_sizes=batch_sizes,
        repeats=1 if quick else 3,
        loop_max_batch=min(128 if quick else 1024, loop_max_batch),
        device=str(device),
    )
    steps = 2 if quick else 8
    throughput = [
        bench_training_throughput(
            replace(config, loss=replace(config.loss, name=name)), steps=steps, n_subjects=4 * config.train.batch_size
        )
        for name in ("rnc", "mse")
    ]
    augmentation = bench_augmentation(config.augment, config.data.shape, repeats=3 if quick else 20)
    speedups = [row["speedup"] for row in loss_rows if row.get("speedup")]
    results = {
        "machine": machine_description(device),
        "rnc_loss": loss_rows,
        "rnc_loss_speedup_at_largest_loop_batch": speedups[-1] if speedups else None,
        "training_throughput": throughput,
        "augmentation_ms_per_view": augmentation,
        "prepare": bench_prepare(raw_scans) if raw_scans else None,
        "peak_rss_mb": peak_rss_mb(),
        "quick": quick,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "median_overhead": statistics.median(row["overhead"] for row in throughput),
    }
    write_json(out, results)
    return results
