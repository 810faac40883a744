"""Voxel-level attributions beside Grad-RAM: gradient x input, integrated gradients, occlusion.

Grad-RAM (:mod:`~brainage_core.analysis.interpret.gradram`) has its target layer's resolution
(3x4x3 voxels at ``encoder.layer3`` on the book's 48x56x48 input). These methods attribute the
predicted age to input voxels instead, so they can point at a ventricle rim or a hippocampus:

* **gradient x input** (Shrikumar et al. 2016): ``x * dy/dx``; Captum's ``InputXGradient``.
* **integrated gradients** (Sundararajan et al. 2017): ``(x - x0) * mean_a dy/dx(x0 + a (x - x0))``
  along the straight path from a baseline ``x0`` (here the population mean image, so the
  attributions explain the difference from an average brain); Captum's ``IntegratedGradients``.
  Its attributions sum to ``y(x) - y(x0)`` (completeness), up to the path's discretisation.
* **occlusion** (Zeiler and Fergus 2014): how much the predicted age moves when a cube of the
  scan is replaced by the baseline image there (half-overlapping cubes). Written here because
  MONAI 1.6's ``OcclusionSensitivity`` indexes tensors with lists, which torch >= 2.9 rejects,
  and fills only with constants or patch means.

Each returns ``[N, 1, X, Y, Z]`` float32 maps on the CPU, signed: positive voxels raise the
predicted age.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from captum.attr import InputXGradient, IntegratedGradients
from torch import nn

__all__ = ["ATTRIBUTION_METHODS", "attribution_maps", "method_maps"]

ATTRIBUTION_METHODS = ("gradient_x_input", "integrated_gradients", "occlusion")


class _Ages(nn.Module):
    """The model's predicted age as ``[B]``, one scalar per scan (what Captum attributes)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).reshape(len(x))  # [B]


def _batches(volumes: torch.Tensor, batch_size: int, explain: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    parts = [explain(volumes[i : i + batch_size]).detach().float().cpu() for i in range(0, len(volumes), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, *volumes.shape[1:])


def attribution_maps(
    model: nn.Module,
    volumes: torch.Tensor,
    method: str,
    baseline: torch.Tensor | None = None,
    batch_size: int = 4,
    ig_steps: int = 16,
    occlusion_size: int = 8,
) -> torch.Tensor:
    """Attribution maps of the predicted age for many scans.

    Args:
        model: the trained network, ``[B, 1, X, Y, Z] -> [B]`` ages (eval mode is set; weights
            are not changed).
        volumes: ``[N, 1, X, Y, Z]`` preprocessed scans.
        method: one of :data:`ATTRIBUTION_METHODS`.
        baseline: ``[1, X, Y, Z]`` or ``[1, 1, X, Y, Z]`` reference image (e.g. the training
            scans' mean): the start of the integration path, and what occlusion puts in place
            of a cube; zeros when ``None``.
        batch_size: scans per pass.
        ig_steps: points on the integration path (integrated gradients).
        occlusion_size: edge of the occluding cube in voxels (occlusion: about
            ``(X / (size / 2)) * (Y / (size / 2)) * (Z / (size / 2))`` forward passes per batch).

    Returns:
        ``[N, 1, X, Y, Z]`` float32 signed maps (years per voxel for the gradient methods;
        years of predicted-age change when the voxel is occluded, averaged over the cubes
        covering it, for occlusion).
    """
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of {list(ATTRIBUTION_METHODS)}")
    if volumes.ndim != 5 or volumes.shape[1] != 1:
        raise ValueError(f"volumes must be [N, 1, X, Y, Z], got {tuple(volumes.shape)}")
    model.eval()
    device = next(model.parameters()).device
    reference = (
        torch.zeros(1, *volumes.shape[1:]) if baseline is None else baseline.float().reshape(1, *volumes.shape[1:])
    )
    reference = reference.to(device)

    def prepared(batch: torch.Tensor) -> torch.Tensor:
        return batch.to(device).float().requires_grad_(True)

    if method == "gradient_x_input":
        explainer = InputXGradient(_Ages(model))
        return _batches(volumes, batch_size, lambda batch: explainer.attribute(prepared(batch)))
    if method == "integrated_gradients":
        integrated = IntegratedGradients(_Ages(model))
        return _batches(
            volumes,
            batch_size,
            lambda batch: integrated.attribute(
                prepared(batch),
                baselines=reference.expand(len(batch), *reference.shape[1:]),
                n_steps=ig_steps,
                internal_batch_size=batch_size,
            ),
        )
    return _batches(
        volumes, batch_size, lambda batch: _occlusion(model, batch.to(device).float(), reference, occlusion_size)
    )


def method_maps(
    model: nn.Module,
    volumes: torch.Tensor,
    method: str,
    layer: str,
    baseline: torch.Tensor | None = None,
    batch_size: int = 4,
) -> torch.Tensor:
    """Signed maps of ``method``: ``gradram`` at ``layer``, or one of :data:`ATTRIBUTION_METHODS`.

    Returns:
        ``[N, 1, X, Y, Z]`` float32 maps on the CPU.
    """
    from brainage_core.analysis.interpret.gradram import saliency_maps

    if method == "gradram":
        return saliency_maps(model, volumes, layer, signed=True, batch_size=batch_size)
    return attribution_maps(model, volumes, method, baseline=baseline, batch_size=batch_size)


def _occlusion(model: nn.Module, batch: torch.Tensor, fill: torch.Tensor, size: int) -> torch.Tensor:
    """Predicted age minus the age with a ``size``-cube replaced by ``fill``, averaged over the
    half-overlapping cubes that cover each voxel: ``[B, 1, X, Y, Z]`` from ``[B, 1, X, Y, Z]``."""
    stride = max(1, size // 2)
    spatial = batch.shape[2:]
    starts = [sorted({*range(0, max(1, n - size + 1), stride), max(0, n - size)}) for n in spatial]
    change = torch.zeros_like(batch)
    covered = torch.zeros(1, 1, *spatial, device=batch.device)
    with torch.no_grad():
        predicted = model(batch).reshape(-1)  # predicted: [B]
        for x0 in starts[0]:
            for y0 in starts[1]:
                for z0 in starts[2]:
                    cube = (..., slice(x0, x0 + size), slice(y0, y0 + size), slice(z0, z0 + size))
                    occluded = batch.clone()
                    occluded[cube] = fill[cube]
                    delta = predicted - model(occluded).reshape(-1)  # delta: [B]; > 0: the cube raised the age
                    change[cube] += delta.reshape(-1, 1, 1, 1, 1)
                    covered[cube] += 1
    return change / covered
