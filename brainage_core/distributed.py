"""Helpers for computing contrastive losses over the global batch under DDP.

Contrastive losses (:mod:`brainage_core.losses`) compare every sample with every
other sample, so with data parallelism each rank gathers the features of all
ranks -- keeping their gradients -- and evaluates the loss on the global batch.
Without an initialised process group (single process) every helper is a no-op.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather_for_loss", "gather_with_grad", "is_distributed", "rank", "world_size"]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is available and initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Rank of this process in the default group (``0`` when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the default group (``1`` when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def _check_same_shape_on_all_ranks(tensor: Tensor, name: str) -> None:
    """Raise on every rank if ``tensor`` does not have the same shape everywhere.

    ``all_gather`` needs equal shapes; a clear error on all ranks beats a hang or
    garbage from the collective.

    Raises:
        ValueError: If the shapes differ between ranks.
    """
    shape = torch.tensor(tensor.shape, dtype=torch.long, device=tensor.device)  # shape: [ndim]
    shapes = [torch.empty_like(shape) for _ in range(world_size())]
    dist.all_gather(shapes, shape)
    as_tuples = [tuple(s.tolist()) for s in shapes]
    if len(set(as_tuples)) != 1:
        raise ValueError(
            f"{name} must have the same shape on every rank to be gathered, got {as_tuples} "
            f"(rank order); use drop_last=True in the DistributedSampler/DataLoader so every rank "
            f"receives full batches"
        )


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns each rank its chunk's summed gradient.

    Forward: ``[b, ...]`` on every rank -> ``[world_size * b, ...]`` in rank order.
    Backward: the gradients all ranks computed for the gathered tensor are summed
    (all-reduce) and each rank keeps the slice of its own chunk. Written on the public
    ``torch.distributed`` collectives: ``torch.distributed.nn.functional.all_gather``
    is deprecated in torch 2.13 for a private module, and its backward handed
    non-contiguous gradients to gloo, which returned wrong values (the same class of
    bug as pytorch/pytorch#192920); here the gradient is made contiguous first.
    """

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        """Gather ``tensor`` ``[b, ...]`` from all ranks into ``[world_size * b, ...]``."""
        ctx.rank, ctx.size = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        """Sum ``grad_output`` ``[world_size * b, ...]`` over ranks; return this rank's ``[b, ...]``."""
        grad = grad_output.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """All-gather ``tensor`` along dim 0, keeping the autograd graph.

    The backward sums the gradients that all ranks computed for each rank's chunk
    and returns the sum to the chunk's owner (see :func:`gather_for_loss` for what
    that means for loss scaling).

    Args:
        tensor: Local tensor, shape ``[b, ...]``, identical shape on every rank.

    Returns:
        ``[world_size * b, ...]`` concatenated in rank order when a process group
        with more than one process is initialised, otherwise ``tensor`` itself.

    Raises:
        ValueError: If the shapes differ between ranks.
    """
    if world_size() == 1:
        return tensor
    _check_same_shape_on_all_ranks(tensor, "tensor")
    return _AllGatherWithGrad.apply(tensor)  # [world_size * b, ...]


def gather_for_loss(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Gather features (with gradient) and labels (without) from all ranks.

    Gradient scaling under DDP: call this on every rank, evaluate the loss on the
    gathered global batch -- every rank then holds the same scalar ``L`` -- and
    call ``backward`` **without rescaling the loss**. The backward of the
    all-gather sums the ``world_size`` identical copies of ``dL/d(local
    features)``, so the local parameter gradient is ``world_size`` times the
    local part of the true gradient; DDP's all-reduce *averages* over ranks,
    which cancels that factor and sums the per-rank contributions, giving exactly
    the single-process gradient of ``L`` on the whole batch. (If gradients are
    instead all-reduced with a plain *sum*, divide the loss by ``world_size``.)
    ``tests/test_distributed.py`` checks the summing backward and the equality
    of loss and DDP gradients with the single-process run on two gloo processes.

    Args:
        features: Local embeddings, shape ``[b, V, D]``.
        labels: Local ages, shape ``[b]`` or ``[b, 1]``.

    Returns:
        ``(features, labels)`` of shapes ``[world_size * b, V, D]`` and
        ``[world_size * b]`` / ``[world_size * b, 1]`` in rank order; the inputs
        unchanged when not running distributed.

    Raises:
        ValueError: If the local batch sizes differ between ranks.
    """
    if world_size() == 1:
        return features, labels
    gathered_features = gather_with_grad(features)  # gathered_features: [world_size * b, V, D]
    _check_same_shape_on_all_ranks(labels, "labels")
    local_labels = labels.detach().contiguous()
    label_parts = [torch.empty_like(local_labels) for _ in range(world_size())]
    dist.all_gather(label_parts, local_labels)
    return gathered_features, torch.cat(label_parts, dim=0)  # labels: [world_size * b] or [world_size * b, 1]
