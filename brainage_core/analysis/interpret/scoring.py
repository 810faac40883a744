"""Checks of saliency maps: against the ground truth, against random weights, per region.

* :func:`saliency_in_ground_truth`: on the synthetic cohort, whose manifest gives each scan's
  true effect map, how much of the saliency falls where aging/disease actually changed the
  image (a number per model, so RNC and MSE maps are compared by number, not by eye).
* :func:`randomization_check`: the model-randomisation test of Adebayo et al. (2018): maps of
  the trained model must differ from those of the same network with random weights.
* :func:`region_summary`: mean saliency per anatomical label (real data, e.g. DLMUSE regions).
* :func:`map_similarity`: rank/linear correlation and SSIM of two maps of one scan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from brainage_core.analysis.interpret.gradram import DEFAULT_LAYER, randomized_copy, saliency_maps

__all__ = [
    "map_similarity",
    "randomization_check",
    "region_summary",
    "saliency_in_ground_truth",
]


def _flat(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return np.asarray(x.detach().cpu().float() if isinstance(x, torch.Tensor) else x, dtype=np.float64).ravel()


def map_similarity(
    a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray | None = None
) -> dict[str, float]:
    """Similarity of two maps of one scan (same shape), over ``mask`` voxels or all voxels.

    Returns:
        ``spearman`` (rank correlation), ``pearson`` and ``ssim``: the SSIM formula evaluated
        over the whole (masked) map as one window, after scaling each map by its own maximum
        ``|value|`` (1 for identical maps; near 0 for unrelated ones). A constant map gives NaN
        correlations.
    """
    a, b = _flat(a), _flat(b)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in size: {a.size} vs {b.size} voxels")
    if mask is not None:
        keep = _flat(mask) > 0
        if keep.shape != a.shape:
            raise ValueError(f"mask has {keep.size} voxels, maps have {a.size}")
        a, b = a[keep], b[keep]
    if a.size < 2:
        raise ValueError("need at least 2 voxels to compare maps")
    a_scaled = a / (np.abs(a).max() or 1.0)
    b_scaled = b / (np.abs(b).max() or 1.0)
    c1, c2 = 0.01**2, 0.03**2  # SSIM constants for a data range of 1
    mean_a, mean_b = a_scaled.mean(), b_scaled.mean()
    covariance = ((a_scaled - mean_a) * (b_scaled - mean_b)).mean()
    numerator = (2 * mean_a * mean_b + c1) * (2 * covariance + c2)
    ssim = numerator / ((mean_a**2 + mean_b**2 + c1) * (a_scaled.var() + b_scaled.var() + c2))
    constant = a.std() == 0 or b.std() == 0
    return {
        "spearman": math.nan if constant else float(stats.spearmanr(a, b).statistic),
        "pearson": math.nan if constant else float(np.corrcoef(a, b)[0, 1]),
        "ssim": float(ssim),
    }


def _per_subject(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    """``[N, 1, X, Y, Z]`` or ``[N, X, Y, Z]`` -> float64 array ``[N, X, Y, Z]``."""
    array = np.asarray(x.detach().cpu().float() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if array.ndim == 5 and array.shape[1] == 1:
        array = array[:, 0]  # array: [N, X, Y, Z]
    if array.ndim != 4:
        raise ValueError(f"{name} must be [N, 1, X, Y, Z] or [N, X, Y, Z], got {array.shape}")
    return array


def randomization_check(
    model: nn.Module,
    volumes: torch.Tensor,
    seed: int = 0,
    layer: str = DEFAULT_LAYER,
    signed: bool = True,
    batch_size: int = 8,
    maps: torch.Tensor | None = None,
    brain_masks: torch.Tensor | np.ndarray | None = None,
) -> dict[str, Any]:
    """Model-randomisation sanity check (Adebayo et al. 2018, "Sanity checks for saliency maps").

    A saliency method that explains the *trained* model must give different maps when the
    weights are random. Maps ``|M|`` of the trained model and of :func:`randomized_copy` are
    compared per scan with :func:`map_similarity`; a faithful method gives low similarity
    (a map compared with itself scores 1). High similarity means the maps show the
    architecture's or the input's structure, not what the model learned.

    Args:
        model: the trained network.
        volumes: ``[N, 1, X, Y, Z]`` scans.
        seed: seed of the random re-initialisation.
        layer, signed, batch_size: as in :func:`saliency_maps`.
        maps: the trained model's maps of ``volumes`` if already computed (``[N, 1, X, Y, Z]``).
        brain_masks: ``[N, ...]`` voxels to compare (``> 0``), or ``None`` for all voxels.

    Returns:
        ``spearman``, ``pearson``, ``ssim``: means over scans; ``per_subject``: the lists;
        ``seed``, ``layer``, ``signed``, ``n_subjects``.
    """
    trained = saliency_maps(model, volumes, layer, signed, batch_size) if maps is None else maps
    random_maps = saliency_maps(randomized_copy(model, seed), volumes, layer, signed, batch_size)
    return {**_similarities(trained, random_maps, brain_masks), "seed": seed, "layer": layer, "signed": signed}


def _similarities(
    maps: torch.Tensor, other_maps: torch.Tensor, brain_masks: torch.Tensor | np.ndarray | None
) -> dict[str, Any]:
    """Per-scan :func:`map_similarity` of ``|maps|`` and ``|other_maps|`` (``[N, 1, X, Y, Z]``), with means."""
    first, second = np.abs(_per_subject(maps, "maps")), np.abs(_per_subject(other_maps, "other maps"))
    if first.shape != second.shape:
        raise ValueError(f"maps {first.shape} and {second.shape} differ in shape")
    masks = None if brain_masks is None else _per_subject(brain_masks, "brain_masks")
    rows = [map_similarity(first[i], second[i], None if masks is None else masks[i]) for i in range(len(first))]
    per_subject = {key: [row[key] for row in rows] for key in ("spearman", "pearson", "ssim")}
    return {
        **{key: float(np.mean(values)) if values else math.nan for key, values in per_subject.items()},
        "per_subject": per_subject,
        "n_subjects": len(rows),
    }


def saliency_in_ground_truth(
    saliency: torch.Tensor | np.ndarray,
    effect_maps: torch.Tensor | np.ndarray,
    brain_masks: torch.Tensor | np.ndarray | None = None,
    top_fraction: float = 0.1,
) -> dict[str, Any]:
    """Score how well saliency falls where the true (synthetic) effect is.

    For each scan, inside the brain (``brain_masks > 0``; all voxels when ``None``), with
    ``n`` brain voxels and ``k = max(1, round(top_fraction * n))``:

    * ``S`` = the ``k`` voxels of largest ``|saliency|`` (ties broken by voxel order);
    * ``G`` = the ground-truth voxels: ``|effect| >=`` the ``k``-th largest ``|effect|`` and
      ``|effect| > 0`` (all ties included; unaffected voxels never count);
    * ``overlap = |S ∩ G| / k``: the share of the most salient voxels that are truly affected
      (a precision); ``chance = |G| / n`` is its expected value for a map with no
      information (``= top_fraction`` when ``G`` has exactly ``k`` voxels); ``lift =
      overlap / chance`` (1 = chance; ``min(k, |G|) / k / chance`` at best);
    * ``spearman`` / ``pearson``: correlation of ``|saliency|`` with ``|effect|`` over the brain.

    Higher is better for every score; compare models (e.g. RNC vs MSE) on the same scans.

    Args:
        saliency: ``[N, 1, X, Y, Z]`` or ``[N, X, Y, Z]`` maps (signed or not; ``|.|`` is used).
        effect_maps: same shape, true effect magnitude on the same grid.
        brain_masks: same shape, or ``None``.
        top_fraction: share of brain voxels taken as "most salient" and "most affected".

    Returns:
        ``overlap``, ``chance``, ``lift``, ``spearman``, ``pearson`` (means over scans),
        ``top_fraction``, ``n_subjects`` and ``per_subject`` (lists of each score).

    Raises:
        ValueError: shapes differ, ``top_fraction`` is not in (0, 1], a mask is empty, or an
            effect map is zero over the brain.
    """
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    saliency_abs = np.abs(_per_subject(saliency, "saliency"))
    effect_abs = np.abs(_per_subject(effect_maps, "effect_maps"))
    if saliency_abs.shape != effect_abs.shape:
        raise ValueError(f"saliency {saliency_abs.shape} and effect maps {effect_abs.shape} must have the same shape")
    if brain_masks is None:
        masks = np.ones_like(saliency_abs, dtype=bool)
    else:
        masks = _per_subject(brain_masks, "brain_masks") > 0
    if masks.shape != saliency_abs.shape:
        raise ValueError(f"brain masks {masks.shape} must have the saliency's shape {saliency_abs.shape}")
    keys = ("overlap", "chance", "lift", "spearman", "pearson")
    per_subject: dict[str, list[float]] = {key: [] for key in keys}
    for index in range(len(saliency_abs)):
        s, e = saliency_abs[index][masks[index]], effect_abs[index][masks[index]]  # s, e: [n_brain]
        n = s.size
        if n < 2:
            raise ValueError(f"scan {index}: the brain mask has {n} voxel(s)")
        if not e.max() > 0:
            raise ValueError(f"scan {index}: the effect map is zero over the brain")
        k = max(1, round(top_fraction * n))
        top_salient = np.argsort(-s, kind="stable")[:k]  # top_salient: [k]
        truth = (e >= np.partition(e, n - k)[n - k]) & (e > 0)  # truth: [n_brain] bool
        overlap, chance = truth[top_salient].mean(), truth.mean()
        constant = s.std() == 0
        per_subject["overlap"].append(float(overlap))
        per_subject["chance"].append(float(chance))
        per_subject["lift"].append(float(overlap / chance))
        per_subject["spearman"].append(math.nan if constant else float(stats.spearmanr(s, e).statistic))
        per_subject["pearson"].append(math.nan if constant else float(np.corrcoef(s, e)[0, 1]))
    return {
        **{key: float(np.mean(values)) if values else math.nan for key, values in per_subject.items()},
        "top_fraction": top_fraction,
        "n_subjects": len(saliency_abs),
        "per_subject": per_subject,
    }


def _label_sums(labels: np.ndarray, values: np.ndarray, n_labels: int) -> np.ndarray:
    """Per-scan sums of ``values`` over each label: ``[N, L]`` from ``[N, X, Y, Z]`` labels and values."""
    return np.stack(
        [np.bincount(label.ravel(), weights=value.ravel(), minlength=n_labels) for label, value in zip(labels, values)]
    )


def region_summary(
    saliency: torch.Tensor | np.ndarray,
    label_volumes: torch.Tensor | np.ndarray,
    label_names: Mapping[int, str] | None = None,
    background: int = 0,
) -> pd.DataFrame:
    """Mean saliency per anatomical label (e.g. DLMUSE regions of the IXI data).

    Label volumes must cover the same field of view as the maps (e.g. preprocessed like the
    images, or brought onto the preprocessed grid with :func:`load_on_grid` and
    ``order=0``); a label grid of another size is resampled onto the map grid by nearest
    neighbour.

    Args:
        saliency: ``[N, 1, X, Y, Z]`` or ``[N, X, Y, Z]`` maps.
        label_volumes: ``[N, 1, x, y, z]`` or ``[N, x, y, z]`` non-negative integer labels.
        label_names: optional ``{label: name}``; missing names are left blank.
        background: label excluded from the summary.

    Returns:
        One row per label, sorted by ``mean_abs_saliency`` (descending): ``label``, ``name``,
        ``mean_abs_saliency`` and ``mean_saliency`` (per-scan means over the label's voxels,
        averaged over the scans that have the label), ``sd_abs_saliency`` (over scans),
        ``n_subjects``, ``mean_voxels`` (label size on the map grid).
    """
    maps = _per_subject(saliency, "saliency")
    labels = _per_subject(label_volumes, "label_volumes")
    if len(labels) != len(maps):
        raise ValueError(f"{len(maps)} maps but {len(labels)} label volumes")
    if np.any(labels < 0) or not np.allclose(labels, np.round(labels)):
        raise ValueError("label volumes must hold non-negative integers")
    if labels.shape[1:] != maps.shape[1:]:
        resized = F.interpolate(torch.from_numpy(labels).unsqueeze(1), size=maps.shape[1:], mode="nearest-exact")
        # resized: [N, 1, X, Y, Z] on the map grid
        labels = resized[:, 0].numpy()  # labels: [N, X, Y, Z]
    labels = np.round(labels).astype(np.int64)
    n_labels = int(labels.max()) + 1
    counts = _label_sums(labels, np.ones_like(maps), n_labels)  # counts: [N, L]
    abs_sums = _label_sums(labels, np.abs(maps), n_labels)  # abs_sums: [N, L]
    sums = _label_sums(labels, maps, n_labels)  # sums: [N, L]
    present = counts > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        abs_means = np.where(present, abs_sums / counts, np.nan)  # abs_means: [N, L]
        means = np.where(present, sums / counts, np.nan)  # means: [N, L]
    rows = []
    for label in np.flatnonzero(present.any(axis=0)):
        if label == background:
            continue
        seen = present[:, label]
        rows.append(
            {
                "label": int(label),
                "name": (label_names or {}).get(int(label), ""),
                "mean_abs_saliency": float(np.nanmean(abs_means[:, label])),
                "mean_saliency": float(np.nanmean(means[:, label])),
                "sd_abs_saliency": float(np.nanstd(abs_means[:, label], ddof=1)) if seen.sum() > 1 else math.nan,
                "n_subjects": int(seen.sum()),
                "mean_voxels": float(counts[seen, label].mean()),
            }
        )
    columns = ["label", "name", "mean_abs_saliency", "mean_saliency", "sd_abs_saliency", "n_subjects", "mean_voxels"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values("mean_abs_saliency", ascending=False, ignore_index=True)
