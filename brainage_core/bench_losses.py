"""Benchmark of the sort-based :class:`~brainage_core.losses.RnCLoss` against the loop reference."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from brainage_core.losses import RnCLoss, rnc_loss_loop

__all__ = ["bench_rnc_loss"]

_MIN_AGE, _MAX_AGE = 20, 90


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels so that wall-clock timings are meaningful on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def _median_forward_backward_s(
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    features: Tensor,
    ages: Tensor,
    repeats: int,
) -> float:
    """Median of ``repeats`` timed forward + backward passes after one untimed warm-up.

    The warm-up absorbs one-off costs (first-touch page faults of large buffers,
    lazy initialisation), which otherwise dominate the loop reference.

    Args:
        loss_fn: Loss taking ``features`` ``[B, V, D]`` and ``ages`` ``[B]``.
        features: Embeddings, shape ``[B, V, D]``.
        ages: Ages, shape ``[B]``.
        repeats: Number of timed runs.

    Returns:
        Median seconds per forward + backward pass.
    """
    _forward_backward_s(loss_fn, features, ages)
    return statistics.median([_forward_backward_s(loss_fn, features, ages) for _ in range(repeats)])


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
    ``torch.manual_seed(batch_size)``. Every measurement is preceded by one
    untimed warm-up run of the same size.

    Args:
        batch_sizes: Batch sizes ``B`` (subjects) to time; each ``>= 2``.
        views: Views per subject ``V`` (``>= 2``); ``n = V * B`` samples are pooled.
        dim: Embedding dimension ``D``.
        repeats: Timed runs per measurement (after the warm-up); the median is reported.
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
        fast_s = _median_forward_backward_s(fast_loss, features, ages, repeats)
        loop_s = None
        if batch_size <= loop_max_batch:
            loop_s = _median_forward_backward_s(rnc_loss_loop, features, ages, repeats)
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
