"""Grad-RAM: saliency maps for brain-age regression on MONAI's CAM machinery.

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

The maps themselves: :func:`saliency_maps` (many scans, in batches). :func:`randomized_copy`
gives the same network with random weights, for the checks in
:mod:`brainage_core.analysis.interpret.scoring`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.visualize.class_activation_maps import CAMBase
from monai.visualize.visualizer import default_upsampler
from torch import nn

__all__ = [
    "DEFAULT_LAYER",
    "GradRAM",
    "max_abs_normalizer",
    "randomized_copy",
    "saliency_maps",
]

DEFAULT_LAYER = "encoder.layer3"


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
            reset_parameters = getattr(module, "reset_parameters", None)
            if callable(reset_parameters):
                reset_parameters()
                reset.update(id(p) for p in module.parameters(recurse=False))
    missed = [name for name, parameter in clone.named_parameters() if id(parameter) not in reset]
    if missed:
        raise ValueError(f"cannot re-initialise parameters {missed[:10]}: their modules have no reset_parameters()")
    return clone.to(device)
