"""Inference with a trained model: encoder features and predicted ages of preprocessed volumes.

Nothing here imports the training engine, so prediction (:mod:`brainage_core.prediction`),
comparisons and saliency work without it.
"""

from __future__ import annotations

import torch

from brainage_core.models import BrainAgeModel
from brainage_core.scan_store import CachedVolumes

__all__ = ["extract_features", "predict_ages", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use device=cpu or auto")
    return torch.device(name)


@torch.no_grad()
def extract_features(
    model: BrainAgeModel, volumes: torch.Tensor | CachedVolumes, device: torch.device, batch_size: int = 32
) -> torch.Tensor:
    """Encoder features ``[N, D]`` (float32, CPU) of volumes ``[N, 1, X, Y, Z]`` in eval mode.

    ``volumes`` may be :class:`~brainage_core.scan_store.CachedVolumes`: one batch is read at a time.
    """
    model.eval()
    parts = [
        model.features(volumes[i : i + batch_size].to(device).float()).float().cpu()
        for i in range(0, len(volumes), batch_size)
    ]
    return torch.cat(parts) if parts else torch.empty(0, model.feature_dim)


@torch.no_grad()
def predict_ages(
    model: BrainAgeModel, volumes: torch.Tensor | CachedVolumes, device: torch.device, batch_size: int = 32
) -> torch.Tensor:
    """Predicted ages ``[N]`` in years of volumes ``[N, 1, X, Y, Z]``."""
    return model.regress(extract_features(model, volumes, device, batch_size).to(device)).cpu()
