"""Inference with a trained run: encoder features, predicted ages, a manifest's predictions.

Everything here reads a finished run directory through :mod:`brainage_core.rundir` and never
imports the training engine, so prediction, comparisons and saliency work without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch

from brainage_core.data import load_manifest_volumes
from brainage_core.fileio import atomic_path
from brainage_core.manifest import read_manifest
from brainage_core.models import BrainAgeModel
from brainage_core.rundir import load_model

__all__ = ["extract_features", "predict", "predict_ages", "resolve_device"]

# Manifest columns copied into a prediction table, when present.
CARRIED_COLUMNS = ("subject_id", "split", "group", "sex", "site", "age")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use device=cpu or auto")
    return torch.device(name)


@torch.no_grad()
def extract_features(
    model: BrainAgeModel, volumes: torch.Tensor, device: torch.device, batch_size: int = 32
) -> torch.Tensor:
    """Encoder features ``[N, D]`` (float32, CPU) of volumes ``[N, 1, X, Y, Z]`` in eval mode."""
    model.eval()
    parts = [
        model.features(volumes[i : i + batch_size].to(device).float()).float().cpu()
        for i in range(0, len(volumes), batch_size)
    ]
    return torch.cat(parts) if parts else torch.empty(0, model.feature_dim)


@torch.no_grad()
def predict_ages(
    model: BrainAgeModel, volumes: torch.Tensor, device: torch.device, batch_size: int = 32
) -> torch.Tensor:
    """Predicted ages ``[N]`` in years of volumes ``[N, 1, X, Y, Z]``."""
    return model.regress(extract_features(model, volumes, device, batch_size).to(device)).cpu()


def predict(
    run_dir: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str],
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Predict brain age for every scan of a manifest with a trained run; write a CSV.

    The scans are preprocessed exactly as the run's training data were (its ``data`` section).

    Args:
        run_dir: a finished run directory.
        manifest: the scans to predict (see ``data_manifests/schema.md``).
        out: the CSV to write; must not be the manifest.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: show a progress bar while preprocessing.

    Returns:
        The predictions: the manifest's subject_id, split, group, sex, site and age (those
        present), ``predicted_age`` and ``brain_age_gap`` (predicted - chronological).
    """
    if Path(out).expanduser().resolve() == Path(manifest).expanduser().resolve():
        raise ValueError(f"--out {out} is the manifest itself; write the predictions to another file")
    torch_device = resolve_device(device)
    model, config = load_model(run_dir, str(torch_device))
    frame = read_manifest(manifest)
    volumes, _ = load_manifest_volumes(frame, config.data, progress=progress)
    result = frame[[c for c in CARRIED_COLUMNS if c in frame.columns]].copy()
    result["predicted_age"] = predict_ages(model, volumes, torch_device).numpy()
    result["brain_age_gap"] = result["predicted_age"] - result["age"]
    with atomic_path(out, suffix=".csv") as temp:
        result.to_csv(temp, index=False)
    return result
