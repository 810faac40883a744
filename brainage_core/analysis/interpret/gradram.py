"""Where does the model look? Grad-RAM saliency maps for brain-age regression, and their checks.

**Grad-RAM** (gradient-weighted regression activation map) is Grad-CAM (Selvaraju et al. 2017)
for a scalar regression output, built on MONAI's CAM machinery
(:class:`monai.visualize.class_activation_maps.CAMBase`). For the predicted age ``y`` of one
scan and the activation ``A`` ``[C, x, y, z]`` of a target layer (``encoder.layer3`` by
default), the channel weights are the spatial mean of the gradient,
``w_c = mean_v dy / dA_c(v)``, and the map is ``M(v) = sum_c w_c A_c(v)``. The map is
trilinearly upsampled to the input grid and divided by its maximum ``|M|`` (per scan), so it
lies in ``[-1, 1]``:

* ``signed=True`` keeps the sign: positive voxels raise the predicted age, negative ones lower
  it. For ``encoder.layer4`` of :class:`~brainage_core.models.BrainAgeModel` (global average
  pooling, then a linear regressor) the raw map is an exact additive decomposition:
  ``sum_v M(v) = predicted age - (age_mean + age_std * bias)``.
* ``signed=False`` applies a ReLU (the Grad-CAM variant): evidence for an older age only.

Limits worth knowing when reading the maps: the channel weights are spatial means, so Grad-RAM
localises through *which features* are active, not where the gradient is; a feature the model
uses lights up wherever it occurs, including regions that do not drive the age. The map has
the target layer's resolution before upsampling: for the book's 48x56x48 input (stride 32 at
``encoder.layer4``) layer4 is 2x2x2 voxels and ``encoder.layer3`` 3x4x3, hence the default
``encoder.layer3``. Measured on the book's default RNC model (seed 0, 60 test subjects), the
share of top-saliency voxels inside the ground-truth aging regions is 1.95 times chance at
layer3 but 0.31 times chance at layer4, whose few voxels cannot separate ventricles from cortex.
And the decomposition above includes each voxel's constant (age-independent) contribution.

MONAI's own defaults do not suit regression, and :class:`GradRAM` avoids them: its
``default_normalizer`` maps (min, max) to (1, 0), i.e. it *inverts* the map, and
:class:`~monai.visualize.class_activation_maps.GradCAM` always applies the ReLU.

Checks of the maps:

* :func:`saliency_in_ground_truth`: on the synthetic cohort, whose manifest gives each scan's
  true effect map, how much of the saliency falls where aging/disease actually changed the
  image (a number per model, so RNC and MSE maps are compared by number, not by eye).
* :func:`randomization_check`: the model-randomisation test of Adebayo et al. (2018): maps of
  the trained model must differ from those of the same network with random weights.
* :func:`region_summary`: mean saliency per anatomical label (real data, e.g. DLMUSE regions).

:func:`explain_run` does all of it for a trained run directory and writes NIfTI maps, group
averages, figures and ``saliency_scores.json``.
"""

from __future__ import annotations

import copy
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import nibabel.processing
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from monai.visualize.class_activation_maps import CAMBase
from monai.visualize.visualizer import default_upsampler
from scipy import stats
from torch import nn

from brainage_core.data import assign_splits, load_manifest_volumes
from brainage_core.fileio import atomic_path, write_json
from brainage_core.inference import predict_ages, resolve_device
from brainage_core.manifest import read_manifest
from brainage_core.rundir import load_model

__all__ = [
    "DEFAULT_LAYER",
    "GradRAM",
    "age_band_labels",
    "explain_run",
    "group_average_maps",
    "load_on_grid",
    "map_similarity",
    "max_abs_normalizer",
    "plot_map_on_template",
    "randomization_check",
    "randomized_copy",
    "region_summary",
    "saliency_in_ground_truth",
    "saliency_maps",
    "save_map_nifti",
]

DEFAULT_LAYER = "encoder.layer3"
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def max_abs_normalizer(maps: torch.Tensor) -> torch.Tensor:
    """Divide each map by its own maximum ``|value|`` (sign and zero kept; never inverts).

    Args:
        maps: ``[B, 1, X, Y, Z]`` (any number of trailing dimensions).

    Returns:
        Maps of the same shape in ``[-1, 1]`` (``[0, 1]`` for non-negative maps); an all-zero
        map stays zero.
    """
    scale = maps.detach().abs().flatten(1).amax(1)  # scale: [B]
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return maps / scale.reshape(-1, *[1] * (maps.ndim - 1))  # scale: [B, 1, 1, ...]


def _identity(maps: torch.Tensor) -> torch.Tensor:
    """Post-processing that keeps the raw (upsampled) map."""
    return maps


class _AgeColumn(nn.Module):
    """Present a scalar regressor (output ``[B]``) as a one-column ``[B, 1]`` "logit".

    The input is made to require gradients, so the gradient reaches the target layer even when
    every weight is frozen (weights never accumulate ``.grad``).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.model(x.detach().requires_grad_(True))
        if output.ndim == 1:
            return output.unsqueeze(1)  # output: [B] -> [B, 1]
        if output.ndim == 2 and output.shape[1] == 1:
            return output
        raise ValueError(
            f"Grad-RAM needs a scalar output per scan ([B] or [B, 1]); the model returned {tuple(output.shape)}"
        )


def _check_layer(model: nn.Module, layer: str) -> None:
    names = [name for name, _ in model.named_modules() if name]
    if layer not in names:
        suggestions = [name for name in names if name.count(".") <= 1][:20]
        raise ValueError(f"layer {layer!r} is not a submodule of the model; e.g. {suggestions}")


class GradRAM(CAMBase):
    """Grad-CAM for a scalar regression output (predicted age), signed or ReLU'd.

    The explainer hooks a private, frozen copy of ``nn_module`` taken at construction (MONAI's
    hooks are never removed, so hooking the caller's model would leave it storing activations
    on every later forward pass). Later changes to ``nn_module``'s weights are not seen: build
    a new explainer. The network runs in eval mode, so maps do not depend on the batch.

    Args:
        nn_module: a network mapping ``[B, 1, X, Y, Z]`` to ``[B]`` (or ``[B, 1]``), e.g.
            :class:`~brainage_core.models.BrainAgeModel`.
        target_layers: dotted name of the layer whose activation is weighted
            (``encoder.layer4``, ``encoder.layer3``, ...).
        signed: keep negative evidence (``True``) or apply a ReLU (``False``).
        upsampler: MONAI upsampler factory (trilinear by default).
        postprocessing: applied to the upsampled maps ``[B, 1, X, Y, Z]``; by default
            :func:`max_abs_normalizer` (maps in ``[-1, 1]``, not inverted). Pass
            ``lambda m: m`` for raw values (years per feature voxel, see the module docstring).

    Shapes:
        ``compute_map(x)``: ``[B, 1, x, y, z]`` at the target layer's resolution, raw.
        ``__call__(x)``: ``[B, 1, X, Y, Z]`` on the input grid, post-processed.
    """

    def __init__(
        self,
        nn_module: nn.Module,
        target_layers: str = DEFAULT_LAYER,
        signed: bool = True,
        upsampler: Callable = default_upsampler,
        postprocessing: Callable[[torch.Tensor], torch.Tensor] = max_abs_normalizer,
    ) -> None:
        _check_layer(nn_module, target_layers)
        frozen = copy.deepcopy(nn_module)
        frozen.requires_grad_(False)
        super().__init__(
            nn_module=_AgeColumn(frozen),
            target_layers=f"model.{target_layers}",
            upsampler=upsampler,
            postprocessing=postprocessing,
            register_backward=True,
        )
        self.signed = signed
        self.layer = target_layers

    def compute_map(  # type: ignore[override]
        self, x: torch.Tensor, class_idx: int = 0, retain_graph: bool = False, layer_idx: int = -1
    ) -> torch.Tensor:
        """Raw Grad-RAM at the target layer's resolution.

        Args:
            x: ``[B, 1, X, Y, Z]`` input volumes (on the model's device).
            class_idx: output column; the age wrapper has one, so only ``0`` is valid.
            retain_graph: keep the autograd graph after the backward pass.
            layer_idx: index among the target layers (one here).

        Returns:
            ``[B, 1, x, y, z]`` map (detached), signed or ReLU'd.
        """
        if class_idx != 0:
            raise ValueError(f"Grad-RAM explains the single age output; class_idx must be 0, got {class_idx}")
        _, activations, gradients = self.nn_module(x, class_idx=0, retain_graph=retain_graph)
        activation, gradient = activations[layer_idx].detach(), gradients[layer_idx].detach()
        self.nn_module.activations.clear()
        self.nn_module.gradients.clear()
        batch, channels, *spatial = gradient.shape
        weights = gradient.reshape(batch, channels, -1).mean(2)  # weights: [B, C]
        weights = weights.reshape(batch, channels, *[1] * len(spatial))  # weights: [B, C, 1, 1, 1]
        ram = (weights * activation).sum(1, keepdim=True)  # ram: [B, 1, x, y, z]
        return ram if self.signed else F.relu(ram)

    def __call__(  # type: ignore[override]
        self, x: torch.Tensor, layer_idx: int = -1, retain_graph: bool = False
    ) -> torch.Tensor:
        """Grad-RAM upsampled to the input grid and post-processed: ``[B, 1, X, Y, Z]``."""
        ram = self.compute_map(x, class_idx=0, retain_graph=retain_graph, layer_idx=layer_idx)
        return self._upsample_and_post_process(ram, x)


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def saliency_maps(
    model: nn.Module,
    volumes: torch.Tensor,
    layer: str = DEFAULT_LAYER,
    signed: bool = True,
    batch_size: int = 8,
    normalize: bool = True,
) -> torch.Tensor:
    """Grad-RAM maps of many scans, in batches, on the model's device.

    Args:
        model: the network (e.g. a trained :class:`~brainage_core.models.BrainAgeModel`).
        volumes: ``[N, 1, X, Y, Z]`` preprocessed scans (float16 or float32, any device).
        layer: target layer name.
        signed: signed maps (``True``) or the ReLU variant.
        batch_size: scans per forward/backward pass (results do not depend on it).
        normalize: divide each map by its max ``|value|`` (``[-1, 1]``); ``False`` keeps raw values.

    Returns:
        ``[N, 1, X, Y, Z]`` float32 maps on the CPU.
    """
    if volumes.ndim != 5 or volumes.shape[1] != 1:
        raise ValueError(f"volumes must be [N, 1, X, Y, Z], got {tuple(volumes.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    explainer = GradRAM(model, layer, signed=signed, postprocessing=max_abs_normalizer if normalize else _identity)
    device = _device_of(model)
    parts = [
        explainer(volumes[i : i + batch_size].to(device).float()).detach().float().cpu()  # [b, 1, X, Y, Z]
        for i in range(0, len(volumes), batch_size)
    ]
    return torch.cat(parts) if parts else torch.empty(0, *volumes.shape[1:])


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """The same architecture with every parameter re-initialised from ``seed``.

    Each submodule's ``reset_parameters`` is called on a CPU copy with the CPU generator
    seeded (the global random state is restored afterwards), so the result does not depend on
    the device or on earlier random draws. Buffers that are not parameters (e.g.
    ``age_mean`` / ``age_std``) are kept; BatchNorm running statistics are reset with the layer.

    Raises:
        ValueError: a parameter belongs to a module without ``reset_parameters`` (it could not
            be randomised, so the check would be meaningless).
    """
    device = _device_of(model)
    clone = copy.deepcopy(model).cpu()
    reset: set[int] = set()
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        for module in clone.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
                reset.update(id(p) for p in module.parameters(recurse=False))
    missed = [name for name, parameter in clone.named_parameters() if id(parameter) not in reset]
    if missed:
        raise ValueError(f"cannot re-initialise parameters {missed[:10]}: their modules have no reset_parameters()")
    return clone.to(device)


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


def age_band_labels(ages: Sequence[float] | np.ndarray, width: float = 10.0) -> list[str]:
    """Label each age with its band ``[lo, lo + width)``, e.g. ``"60-70"`` for 64.5 years."""
    if not width > 0:
        raise ValueError(f"age band width must be > 0, got {width}")
    bands = []
    for age in np.asarray(ages, dtype=float):
        if not np.isfinite(age):
            raise ValueError(f"cannot band a non-finite age {age}")
        low = math.floor(age / width) * width
        bands.append(f"{low:g}-{low + width:g}")
    return bands


def group_average_maps(maps: torch.Tensor, labels: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Mean map per label (group, age band, ...).

    Args:
        maps: ``[N, 1, X, Y, Z]``.
        labels: ``N`` labels (converted with ``str``).

    Returns:
        ``{label: mean map [1, X, Y, Z]}`` in sorted label order.
    """
    if len(labels) != len(maps):
        raise ValueError(f"{len(maps)} maps but {len(labels)} labels")
    names = np.array([str(label) for label in labels])
    return {name: maps[torch.from_numpy(np.flatnonzero(names == name))].float().mean(0) for name in sorted(set(names))}


def _nifti_suffix(path: Path) -> str:
    for suffix in _NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: a NIfTI map needs a .nii or .nii.gz name")


def save_map_nifti(
    map_: torch.Tensor | np.ndarray, affine: torch.Tensor | np.ndarray, path: str | os.PathLike[str]
) -> Path:
    """Write a map as float32 NIfTI (atomically) with the voxel-to-world ``affine``.

    Args:
        map_: ``[1, X, Y, Z]`` or ``[X, Y, Z]``.
        affine: ``[4, 4]`` voxel-to-world (mm) matrix of the preprocessed grid (from
            :func:`~brainage_core.data.load_volumes`).
        path: destination ``.nii.gz`` or ``.nii``.

    Returns:
        The path written.
    """
    path = Path(path)
    suffix = _nifti_suffix(path)
    data = np.asarray(map_.detach().cpu().float() if isinstance(map_, torch.Tensor) else map_, dtype=np.float32)
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]  # data: [X, Y, Z]
    if data.ndim != 3:
        raise ValueError(f"a map must be [1, X, Y, Z] or [X, Y, Z], got {data.shape}")
    matrix = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"affine must be [4, 4], got {matrix.shape}")
    image = nib.Nifti1Image(data, matrix)
    image.header.set_xyzt_units("mm")
    with atomic_path(path, suffix=suffix) as temp:
        nib.save(image, temp)
    return path


def load_on_grid(
    path: str | os.PathLike[str], affine: torch.Tensor | np.ndarray, shape: Sequence[int], order: int = 1
) -> np.ndarray:
    """Resample a NIfTI file (effect map, label volume) onto a preprocessed grid, by world mm.

    The preprocessed grid is the one :func:`~brainage_core.data.load_volumes` returns
    (``affine`` ``[4, 4]`` and ``shape`` ``(X, Y, Z)``); alignment goes through the world
    coordinates, so it holds whatever resampling, cropping or padding the preprocessing did.

    Args:
        path: a 3-D NIfTI in the same world space as the scan it belongs to.
        affine: ``[4, 4]`` voxel-to-world matrix of the target grid.
        shape: target ``(X, Y, Z)``.
        order: spline order; 1 (trilinear) for maps, 0 (nearest) for integer labels.

    Returns:
        float64 ``[X, Y, Z]`` (zero outside the file's field of view).
    """
    image = nib.load(str(path))
    data_shape = image.shape
    if len(data_shape) == 4 and data_shape[3] == 1:
        image = nib.Nifti1Image(np.asarray(image.dataobj)[..., 0], image.affine)
    elif len(data_shape) != 3:
        raise ValueError(f"{path}: expected a 3-D volume, got shape {data_shape}")
    matrix = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    target = (tuple(int(s) for s in shape), matrix)
    resampled = nibabel.processing.resample_from_to(image, target, order=order, mode="constant", cval=0.0)
    return np.asarray(resampled.dataobj, dtype=np.float64)


def _mni_template() -> nib.Nifti1Image:
    # nilearn is imported where used: its import (matplotlib included) would slow every CLI command.
    from nilearn import datasets

    return datasets.load_mni152_template(resolution=2)


def plot_map_on_template(
    map_img: nib.Nifti1Image | str | os.PathLike[str],
    title: str,
    bg_img: nib.Nifti1Image | str | os.PathLike[str] | None = None,
    signed: bool = True,
    threshold: float | None = None,
    display_mode: str = "ortho",
    **kwargs: Any,
) -> Any:
    """Show a map over a background with :func:`nilearn.plotting.plot_stat_map`.

    Args:
        map_img: NIfTI image or path (e.g. from :func:`save_map_nifti`).
        title: figure title.
        bg_img: background; ``None`` uses nilearn's MNI152 2 mm template (ships with nilearn,
            works offline). Use it for template-space data only; for native-space scans pass
            the (mean) preprocessed scan instead.
        signed: symmetric diverging colour scale (``True``) or a one-sided scale for ReLU maps.
        threshold: hide ``|value| < threshold``; ``None`` hides 5% of the map's max ``|value|``.
        display_mode: nilearn cut mode (``ortho``, ``z``, ``x``, ``mosaic``...).
        kwargs: passed on to :func:`~nilearn.plotting.plot_stat_map`.

    Returns:
        The nilearn display; ``display.savefig(path)`` writes it, ``display.close()`` frees it.
    """
    from nilearn import image as nimage
    from nilearn import plotting

    stat = nimage.load_img(map_img)
    data = np.asarray(stat.dataobj, dtype=np.float64)
    vmax = float(np.abs(data).max()) or 1.0
    return plotting.plot_stat_map(
        stat,
        bg_img=_mni_template() if bg_img is None else bg_img,
        title=title,
        threshold=0.05 * vmax if threshold is None else threshold,
        display_mode=display_mode,
        cmap="RdBu_r" if signed else "hot",
        symmetric_cbar=signed,
        vmax=vmax,
        vmin=None if signed else 0.0,
        **kwargs,
    )


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _select_rows(
    frame: pd.DataFrame, split: str | None, test_fold: int | None, max_subjects: int | None
) -> pd.DataFrame:
    """Rows of ``split`` (assigned as in training), the first ``max_subjects`` of them."""
    if split is not None:
        frame = frame[(assign_splits(frame, test_fold) == split).to_numpy()]
    if max_subjects is not None:
        frame = frame.head(max_subjects)
    return frame.reset_index(drop=True)


def _file_stems(frame: pd.DataFrame) -> list[str]:
    """One file-name stem per row: the subject id, plus ``_<session>`` when a subject repeats."""
    stems = frame["subject_id"].astype(str)
    if stems.duplicated().any() and "session" in frame.columns:
        stems = stems + "_" + frame["session"].astype(str)
    if stems.duplicated().any():
        raise ValueError(f"rows share a subject id (and session): {sorted(set(stems[stems.duplicated()]))[:10]}")
    return [_safe_name(stem) for stem in stems]


def _write_averages(
    maps: dict[str, torch.Tensor],
    groupings: dict[str, list[str]],
    affine: torch.Tensor,
    bg_img: nib.Nifti1Image | None,
    out_dir: Path,
) -> tuple[int, int]:
    """Average NIfTI and PNG per (map kind, grouping, label); returns (n_nifti, n_png)."""
    n_written = 0
    for kind, kind_maps in maps.items():
        for prefix, labels in groupings.items():
            for label, mean_map in group_average_maps(kind_maps, labels).items():
                name = "all" if prefix == "all" else f"{prefix}-{_safe_name(label)}"
                nifti = save_map_nifti(mean_map, affine, out_dir / "average" / f"{name}_{kind}.nii.gz")
                title = f"{kind} {name} (n={labels.count(label)})"
                display = plot_map_on_template(nifti, title, bg_img=bg_img, signed=kind == "gradram")
                try:
                    with atomic_path(out_dir / "figures" / f"{name}_{kind}.png", suffix=".png") as temp:
                        display.savefig(str(temp), dpi=100)
                finally:
                    display.close()
                n_written += 1
    return n_written, n_written


def _ground_truth_scores(
    frame: pd.DataFrame,
    affines: torch.Tensor,
    brains: torch.Tensor,
    candidates: dict[str, torch.Tensor],
    top_fraction: float,
) -> dict[str, Any] | None:
    """:func:`saliency_in_ground_truth` of each candidate's maps on the rows with an effect map."""
    if "effect_map" not in frame.columns:
        return None
    rows = np.flatnonzero(frame["effect_map"].fillna("").astype(str).str.len().to_numpy() > 0)
    if not len(rows):
        return None
    shape = tuple(brains.shape[2:])
    effects = np.stack([load_on_grid(frame["effect_map"][i], affines[i], shape, order=1) for i in rows])
    # effects: [M, X, Y, Z] on the preprocessed grid
    selected = torch.from_numpy(rows)
    scores = {
        name: saliency_in_ground_truth(maps[selected], effects, brains[selected], top_fraction)
        for name, maps in candidates.items()
    }
    return {"n_subjects": len(rows), **scores}


def explain_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    manifest: str | os.PathLike[str] | None = None,
    split: str | None = "test",
    max_subjects: int | None = None,
    device: str = "cpu",
    layer: str = DEFAULT_LAYER,
    batch_size: int = 8,
    age_band_width: float = 10.0,
    top_fraction: float = 0.1,
    seed: int = 0,
    background: str = "mean",
    progress: bool = True,
) -> dict[str, Any]:
    """Grad-RAM maps, group averages, figures and scores for a trained run.

    Scans are preprocessed exactly as in training (:func:`~brainage_core.data.load_volumes`
    with the run's preprocessing and cache). Written under ``out_dir``:

    * ``subjects/<id>_gradram.nii.gz`` (signed, ``[-1, 1]``) and ``<id>_gradram_relu.nii.gz``
      (ReLU, ``[0, 1]``), on the preprocessed grid with its world affine; ``<id>`` is the
      subject id (plus ``_<session>`` when a subject has several scans);
    * ``average/<name>_gradram[_relu].nii.gz`` for ``all``, ``group-<G>`` and
      ``age-<lo>-<hi>``, with a PNG each in ``figures/``. When the scans are not on one world
      grid (native-space data), the averages are voxel-wise, as the model sees the scans,
      carry the first scan's affine, a warning is issued and ``common_grid`` is false;
    * ``subjects.csv`` (id, group, age, age band, predicted age, map paths);
    * ``saliency_scores.json``: ``randomization`` (:func:`randomization_check` of the signed
      maps) and ``ground_truth`` (when the manifest has ``effect_map``:
      :func:`saliency_in_ground_truth` of the signed, ReLU and random-weights maps; effect maps
      are brought onto the preprocessed grid with :func:`load_on_grid`; the brain is the
      non-zero voxels of the preprocessed scan), else ``null``.

    Args:
        run_dir: a finished training run (``config.yaml``, ``model.pt``).
        out_dir: output folder (created).
        manifest: manifest of the scans; ``None`` uses the run's ``config.data.manifest``.
        split: explain only this split (``train``/``val``/``test``, assigned as in training);
            ``None`` explains every row.
        max_subjects: keep the first rows only.
        device: ``cpu``, ``cuda`` or ``auto``.
        layer: Grad-RAM target layer.
        batch_size: scans per pass.
        age_band_width: width of the age bands in years.
        top_fraction: see :func:`saliency_in_ground_truth`.
        seed: seed of the randomised model.
        background: figure background: ``mean`` (the mean preprocessed scan: always aligned)
            or ``mni152`` (nilearn's template: for template-space data only).
        progress: show the preprocessing progress bar.

    Returns:
        ``n_subjects``, ``layer``, ``out_dir``, ``scores`` (the JSON content) and ``files``
        (numbers of NIfTI and PNG files written).
    """
    if background not in ("mean", "mni152"):
        raise ValueError(f"background must be 'mean' or 'mni152', got {background!r}")
    torch_device = resolve_device(device)
    model, config = load_model(run_dir, str(torch_device))
    manifest_path = manifest if manifest is not None else config.data.manifest
    if not manifest_path:
        raise ValueError(f"{run_dir}: the run's config has no data.manifest; pass manifest=")
    frame = _select_rows(read_manifest(manifest_path), split, config.data.test_fold, max_subjects)
    if frame.empty:
        raise ValueError(f"{manifest_path}: no rows to explain (split={split!r}, max_subjects={max_subjects})")
    stems = _file_stems(frame)

    volumes, affines = load_manifest_volumes(frame, config.data, progress=progress)
    brains = volumes.float() > 0  # brains: [N, 1, X, Y, Z]
    maps = {
        "gradram": saliency_maps(model, volumes, layer, signed=True, batch_size=batch_size),
        "gradram_relu": saliency_maps(model, volumes, layer, signed=False, batch_size=batch_size),
    }
    random_maps = saliency_maps(randomized_copy(model, seed), volumes, layer, signed=True, batch_size=batch_size)

    out_dir = Path(out_dir)
    table = frame[[c for c in ("subject_id", "session", "group", "age") if c in frame.columns]].copy()
    table["age_band"] = age_band_labels(frame["age"].to_numpy(), age_band_width)
    table["predicted_age"] = predict_ages(model, volumes, torch_device, batch_size).numpy()
    for kind, kind_maps in maps.items():
        paths = [
            save_map_nifti(kind_maps[i], affines[i], out_dir / "subjects" / f"{stem}_{kind}.nii.gz")
            for i, stem in enumerate(stems)
        ]
        table[f"{kind}_path"] = [str(path.relative_to(out_dir)) for path in paths]
    with atomic_path(out_dir / "subjects.csv", suffix=".csv") as temp:
        table.to_csv(temp, index=False)

    common_grid = all(torch.allclose(affine, affines[0], atol=1e-3) for affine in affines)
    if not common_grid:
        warnings.warn(
            "the preprocessed scans are not on one world grid (native-space data): group averages "
            "are voxel-wise, as the model sees the scans, and carry the first scan's affine",
            stacklevel=2,
        )
    mean_scan = volumes.float().mean(0)[0]  # mean_scan: [X, Y, Z]
    bg_img = nib.Nifti1Image(mean_scan.numpy(), affines[0].numpy()) if background == "mean" else None
    groupings = {
        "all": ["all"] * len(frame),
        "group": frame["group"].astype(str).tolist(),
        "age": table["age_band"].tolist(),
    }
    n_average, n_png = _write_averages(maps, groupings, affines[0], bg_img, out_dir)

    scores: dict[str, Any] = {
        "layer": layer,
        "n_subjects": len(frame),
        "common_grid": common_grid,
        "randomization": {**_similarities(maps["gradram"], random_maps, brains), "seed": seed, "signed": True},
        "ground_truth": _ground_truth_scores(
            frame, affines, brains, {**maps, "random_model": random_maps}, top_fraction
        ),
    }
    write_json(out_dir / "saliency_scores.json", scores)
    return {
        "n_subjects": len(frame),
        "layer": layer,
        "out_dir": str(out_dir),
        "scores": scores,
        "files": {"nifti": len(stems) * len(maps) + n_average, "png": n_png},
    }
