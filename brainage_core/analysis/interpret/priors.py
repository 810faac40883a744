"""Content-free maps a saliency map must beat, and the deletion test of what a map points at.

A saliency map that overlaps the true aging regions more than chance is not yet informative:
"look at the centre of the brain" or "look where aging usually happens" may do as well without
looking at the scan or the model. This module builds those trivial maps **on the same grid as
the model's maps** (a Grad-RAM map at ``encoder.layer3`` has the layer's 3x4x3 voxels,
upsampled; a prior at full resolution would be unfairly sharp or unfairly blurred):

* :func:`central_blob`: a Gaussian centred on each scan's brain, as wide as the brain
  (ranking voxels by distance from the centre);
* :func:`population_prior`: the mean ``|effect|`` map of the training scans (where aging
  changes the image on average, the same for every scan);
* :func:`layer_grid`: any map average-pooled onto a layer's grid and upsampled back as
  Grad-RAM is (MONAI's trilinear upsampler).

:func:`deletion_curves` asks the model itself: replacing the most salient voxels by the
population mean image should hurt the prediction more than replacing as many random brain
voxels (Samek et al. 2017, "Evaluating the visualization of what a deep neural network has
learned"; deletion as in Petsiuk et al. 2018, RISE).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from monai.visualize.visualizer import default_upsampler
from torch import nn

__all__ = [
    "DELETION_FRACTIONS",
    "central_blob",
    "deletion_areas",
    "deletion_curves",
    "layer_grid",
    "layer_shape",
    "population_prior",
]

DELETION_FRACTIONS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)  # shares of brain voxels replaced


def layer_shape(model: nn.Module, layer: str, input_shape: Sequence[int]) -> tuple[int, ...]:
    """The spatial shape of ``layer``'s output for one input of spatial shape ``input_shape``."""
    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise ValueError(f"layer {layer!r} is not a submodule of the model")
    shapes: list[tuple[int, ...]] = []
    handle = module.register_forward_hook(lambda _m, _i, output: shapes.append(tuple(output.shape[2:])))
    parameter = next(model.parameters())
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, *input_shape, device=parameter.device, dtype=parameter.dtype))
    finally:
        handle.remove()
    return shapes[0]


def layer_grid(maps: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Maps as a layer of that grid would show them: average-pooled to ``grid``, upsampled back.

    Args:
        maps: ``[N, 1, X, Y, Z]``.
        grid: the layer's spatial shape (:func:`layer_shape`).

    Returns:
        ``[N, 1, X, Y, Z]`` float32: piecewise-smooth at the layer's resolution, upsampled with
        the trilinear upsampler Grad-RAM uses.
    """
    if len(grid) != 3:
        raise ValueError(f"grid must have 3 sizes, got {list(grid)}")
    pooled = F.adaptive_avg_pool3d(maps.float(), (grid[0], grid[1], grid[2]))  # pooled: [N, 1, x, y, z]
    return default_upsampler(tuple(maps.shape[2:]))(pooled)


def central_blob(brain_masks: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
    """A Gaussian on each scan's brain centroid, its SD the brain's RMS radius per axis.

    Args:
        brain_masks: ``[N, 1, X, Y, Z]`` (non-zero inside the brain).
        grid: put the blob on this layer grid (:func:`layer_grid`); ``None`` keeps full resolution.

    Returns:
        ``[N, 1, X, Y, Z]`` float32 in ``(0, 1]``.
    """
    masks = brain_masks.float() > 0
    axes = [torch.arange(size, dtype=torch.float32) for size in masks.shape[2:]]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # coords: [3, X, Y, Z]
    blobs = []
    for mask in masks[:, 0]:
        inside = coords[:, mask]  # inside: [3, n_brain]
        if inside.shape[1] < 2:
            raise ValueError("a brain mask has fewer than 2 voxels")
        centre, spread = inside.mean(1), inside.std(1).clamp_min(1.0)  # centre, spread: [3]
        z = (coords - centre[:, None, None, None]) / spread[:, None, None, None]
        blobs.append(torch.exp(-0.5 * (z**2).sum(0)))
    blob = torch.stack(blobs).unsqueeze(1)  # blob: [N, 1, X, Y, Z]
    return blob if grid is None else layer_grid(blob, grid)


def population_prior(train_effects: torch.Tensor | np.ndarray, grid: Sequence[int] | None = None) -> torch.Tensor:
    """The mean ``|effect|`` map of training scans: where the image changes on average.

    Args:
        train_effects: ``[M, 1, X, Y, Z]`` or ``[M, X, Y, Z]`` effect maps of training scans on
            the model's grid (never the scans being scored).
        grid: put the prior on this layer grid (:func:`layer_grid`); ``None`` keeps full resolution.

    Returns:
        ``[1, 1, X, Y, Z]`` float32 (broadcasts over scans).
    """
    effects = torch.as_tensor(np.asarray(train_effects), dtype=torch.float32).abs()
    if effects.ndim == 4:
        effects = effects.unsqueeze(1)
    if effects.ndim != 5 or len(effects) < 1:
        raise ValueError(f"train_effects must be [M, 1, X, Y, Z] with M >= 1, got {tuple(effects.shape)}")
    prior = effects.mean(0, keepdim=True)
    return prior if grid is None else layer_grid(prior, grid)


def deletion_curves(
    model: nn.Module,
    volumes: torch.Tensor,
    ages: Sequence[float] | np.ndarray,
    maps: dict[str, torch.Tensor],
    fill: torch.Tensor,
    fractions: Sequence[float] = DELETION_FRACTIONS,
    seed: int = 0,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Test MAE as the most salient brain voxels are replaced by ``fill``, per map, and at random.

    For each scan and fraction ``f``, the ``round(f * n_brain)`` brain voxels (non-zero voxels
    of the scan) of largest ``|map|`` take the value of ``fill`` there; ``random`` replaces as
    many brain voxels drawn uniformly (one fixed random order per scan, from ``seed``). A map
    that points at what the model uses makes the error rise faster than random deletion.

    Args:
        model: the trained network, ``[B, 1, X, Y, Z] -> [B]`` ages (eval mode is set).
        volumes: ``[N, 1, X, Y, Z]`` preprocessed scans.
        ages: ``[N]`` chronological ages.
        maps: ``{name: [N, 1, X, Y, Z]}`` saliency (or prior) maps; ``[1, 1, X, Y, Z]`` broadcasts.
        fill: ``[1, X, Y, Z]`` or ``[1, 1, X, Y, Z]`` replacement image (e.g. the training mean).
        fractions: shares of brain voxels replaced, in ``[0, 1]``.
        seed: seed of the random deletion order.
        batch_size: scans per forward pass.

    Returns:
        One row per (``method``, ``fraction``): ``mae`` (years) and ``n_subjects``; ``method``
        is each key of ``maps`` and ``random``.
    """
    if volumes.ndim != 5 or volumes.shape[1] != 1:
        raise ValueError(f"volumes must be [N, 1, X, Y, Z], got {tuple(volumes.shape)}")
    if any(not 0 <= f <= 1 for f in fractions):
        raise ValueError(f"fractions must lie in [0, 1], got {list(fractions)}")
    ages_t = torch.as_tensor(np.asarray(ages, dtype=np.float32))
    flat = volumes.float().flatten(1)  # flat: [N, V]
    fill_flat = fill.float().reshape(-1)  # fill_flat: [V]
    if fill_flat.numel() != flat.shape[1]:
        raise ValueError(f"fill has {fill_flat.numel()} voxels, the scans {flat.shape[1]}")
    brains = flat != 0  # brains: [N, V]
    generator = torch.Generator().manual_seed(seed)
    orders = {"random": [torch.randperm(int(b.sum()), generator=generator) for b in brains]}
    for name, saliency in maps.items():
        scores = saliency.float().abs().expand(len(flat), *saliency.shape[1:]).flatten(1)  # scores: [N, V]
        if scores.shape != flat.shape:
            raise ValueError(f"map {name!r} has shape {tuple(saliency.shape)}, the scans {tuple(volumes.shape)}")
        orders[name] = [torch.argsort(-scores[i][brains[i]], stable=True) for i in range(len(flat))]
    device = next(model.parameters()).device
    model.eval()

    def predict(batch: torch.Tensor) -> torch.Tensor:  # batch: [N, V] -> predicted ages [N]
        with torch.no_grad():
            scans = batch.reshape(-1, *volumes.shape[1:])
            parts = [
                model(scans[i : i + batch_size].to(device)).reshape(-1).float().cpu()
                for i in range(0, len(scans), batch_size)
            ]
        return torch.cat(parts)

    rows = []
    for name, order in orders.items():
        for fraction in fractions:
            edited = flat.clone()
            for i, brain_order in enumerate(order):
                brain_index = torch.nonzero(brains[i]).squeeze(1)
                chosen = brain_index[brain_order[: round(fraction * len(brain_index))]]
                edited[i, chosen] = fill_flat[chosen]
            predicted = predict(edited)
            mae = float((predicted - ages_t).abs().mean())
            rows.append({"method": name, "fraction": float(fraction), "mae": mae, "n_subjects": len(flat)})
    return pd.DataFrame(rows)


def deletion_areas(curves: pd.DataFrame) -> pd.DataFrame:
    """Area between each map's deletion curve and the random one (trapezoid over the fractions).

    Returns:
        One row per map: ``area`` (years x fraction; > 0: deleting the map's top voxels hurts
        the model more than random deletion), ``mae_at_max`` and ``random_mae_at_max`` (the MAE
        at the largest fraction, of the map and of random deletion).
    """
    random = curves[curves["method"] == "random"].set_index("fraction")["mae"]
    rows = []
    for name, curve in curves[curves["method"] != "random"].groupby("method", sort=False):
        curve = curve.set_index("fraction")["mae"].sort_index()
        gap = curve - random.reindex(curve.index)
        rows.append(
            {
                "method": name,
                "area": float(np.trapezoid(gap.to_numpy(), gap.index.to_numpy())),
                "mae_at_max": float(curve.iloc[-1]),
                "random_mae_at_max": float(random.reindex(curve.index).iloc[-1]),
            }
        )
    return pd.DataFrame(rows)
