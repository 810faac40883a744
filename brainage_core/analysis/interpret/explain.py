"""Grad-RAM for a trained run directory: :func:`explain_run` (what ``brainage explain`` runs).

It loads the run's model (:func:`~brainage_core.rundir.load_model`), preprocesses the scans as
in training, and writes per-scan NIfTI maps, group averages, figures and
``saliency_scores.json`` (randomisation check; ground-truth scores on the synthetic cohort).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from brainage_core.analysis.interpret.gradram import DEFAULT_LAYER, randomized_copy, saliency_maps
from brainage_core.analysis.interpret.maps_io import (
    age_band_labels,
    group_average_maps,
    load_on_grid,
    plot_map_on_template,
    save_map_nifti,
)
from brainage_core.analysis.interpret.scoring import _similarities, saliency_in_ground_truth
from brainage_core.data import assign_splits, load_manifest_volumes
from brainage_core.fileio import atomic_path, write_json
from brainage_core.inference import predict_ages, resolve_device
from brainage_core.manifest import read_manifest
from brainage_core.rundir import load_model

__all__ = ["choose_layer", "explain_run"]

LAYER_CANDIDATES = ("encoder.layer2", "encoder.layer3", "encoder.layer4")


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


def choose_layer(
    run_dirs: Sequence[str | os.PathLike[str]],
    candidates: Sequence[str] = LAYER_CANDIDATES,
    split: str = "val",
    top_fraction: float = 0.1,
    batch_size: int = 8,
) -> tuple[str, pd.DataFrame]:
    """Choose the Grad-RAM layer on validation scans: the highest ground-truth lift, averaged over runs.

    No file is written and no test scan is read. Without ground truth (no ``effect_map``
    column, e.g. real scans) the first candidate is returned with an empty table.

    Args:
        run_dirs: finished runs whose maps are scored (one layer is chosen for all of them).
        candidates: layers to compare.
        split: the split to score on.
        top_fraction: see :func:`saliency_in_ground_truth`.
        batch_size: scans per pass.

    Returns:
        The chosen layer and one row per (run, layer): ``run``, ``layer``, ``lift``, ``overlap``.
    """
    rows = []
    for run_dir in run_dirs:
        model, config = load_model(run_dir)
        frame = _select_rows(read_manifest(config.data.manifest), split, config.data.test_fold, None)
        if frame.empty or "effect_map" not in frame.columns:
            continue
        volumes, affines = load_manifest_volumes(frame, config.data, progress=False)
        brains = volumes.float() > 0  # brains: [N, 1, X, Y, Z]
        for layer in candidates:
            maps = saliency_maps(model, volumes, layer, signed=True, batch_size=batch_size)
            truth = _ground_truth_scores(frame, affines, brains, {"gradram": maps}, top_fraction)
            if truth is not None:
                score = truth["gradram"]
                rows.append({"run": str(run_dir), "layer": layer, "lift": score["lift"], "overlap": score["overlap"]})
    table = pd.DataFrame(rows, columns=["run", "layer", "lift", "overlap"])
    if table.empty:
        return candidates[0], table
    return str(table.groupby("layer")["lift"].mean().idxmax()), table
