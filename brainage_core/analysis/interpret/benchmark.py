"""Do the saliency maps beat content-free maps? The phantom benchmark of the Grad-RAM chapter.

On the synthetic cohort the truth is known: :func:`~brainage_core.cohorts.synthetic.images.age_derivative`
gives, for each scan, the voxels whose noise-free intensity the subject's aging moves (per
year). :func:`saliency_benchmark` scores every model's maps by each method (Grad-RAM at the
chosen layer and the voxel attributions of :mod:`~brainage_core.analysis.interpret.attributions`)
on the healthy test scans at or above ``min_age`` (where aging is visible), against four
baselines on the same grid as each method's maps: chance (lift 1), a central blob, the
population prior (the training scans' mean effect map) and the same method on the same network
with random weights. A map counts as informative only if its lift beats all four (paired
bootstrap over scans, :func:`~brainage_core.analysis.interpret.tables.prior_comparison`). The
deletion test asks the model itself (:func:`~brainage_core.analysis.interpret.priors.deletion_curves`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from brainage_core.analysis.interpret.attributions import ATTRIBUTION_METHODS, method_maps
from brainage_core.analysis.interpret.gradram import DEFAULT_LAYER, randomized_copy
from brainage_core.analysis.interpret.maps_io import load_on_grid
from brainage_core.analysis.interpret.priors import (
    DELETION_FRACTIONS,
    central_blob,
    deletion_areas,
    deletion_curves,
    layer_shape,
    population_prior,
)
from brainage_core.analysis.interpret.scoring import saliency_in_ground_truth
from brainage_core.analysis.interpret.tables import prior_comparison
from brainage_core.analysis.metrics import N_BOOT
from brainage_core.cohorts.synthetic.writer import write_age_derivatives
from brainage_core.data import assign_splits, load_manifest_volumes
from brainage_core.manifest import read_manifest
from brainage_core.rundir import load_model

__all__ = ["BASELINES", "SaliencyBenchmark", "saliency_benchmark"]

BASELINES = ("chance", "central_blob", "population_prior", "random_weights")


@dataclass
class SaliencyBenchmark:
    """What :func:`saliency_benchmark` measured.

    Attributes:
        lifts: one row per (model, method, candidate, scan): ``lift`` of the map against the
            age-derivative ground truth; ``candidate`` is ``map`` or a baseline.
        comparison: one row per (model, method, baseline) of
            :func:`~brainage_core.analysis.interpret.tables.prior_comparison` (``model`` and
            ``method`` columns added).
        deletion: one row per (model, method, fraction): test MAE with that share of the
            brain replaced by the training mean image, in the order of each map; ``method``
            also ``random``, ``central_blob`` and ``population_prior`` (full resolution).
        deletion_areas: one row per (model, method) of
            :func:`~brainage_core.analysis.interpret.priors.deletion_areas`.
        n_subjects: scans scored; ``min_age``: the age threshold; ``layer``: Grad-RAM's layer.
    """

    lifts: pd.DataFrame
    comparison: pd.DataFrame
    deletion: pd.DataFrame
    deletion_areas: pd.DataFrame
    n_subjects: int
    min_age: float
    layer: str


def saliency_benchmark(
    run_dirs: Mapping[str, str | os.PathLike[str]],
    derivative_dir: str | os.PathLike[str],
    layer: str = DEFAULT_LAYER,
    methods: Sequence[str] = ("gradram", *ATTRIBUTION_METHODS),
    min_age: float = 60.0,
    top_fraction: float = 0.1,
    max_subjects: int | None = None,
    fractions: Sequence[float] = DELETION_FRACTIONS,
    n_boot: int = N_BOOT,
    seed: int = 0,
    batch_size: int = 4,
) -> SaliencyBenchmark:
    """Score each model's maps by each method against the phantom's truth and four baselines.

    Args:
        run_dirs: model name -> finished run on a synthetic cohort (the same cohort and split).
        derivative_dir: where the scans' age-derivative maps are written (reused when present).
        layer: Grad-RAM's target layer (choose it on validation,
            :func:`~brainage_core.analysis.interpret.explain.choose_layer`).
        methods: ``gradram`` and/or :data:`~brainage_core.analysis.interpret.attributions.ATTRIBUTION_METHODS`.
        min_age: score healthy test scans at or above this age.
        top_fraction: share of brain voxels taken as most salient / most affected
            (:func:`~brainage_core.analysis.interpret.scoring.saliency_in_ground_truth`).
        max_subjects: keep the first scans only (for quick runs).
        fractions: deletion fractions.
        n_boot: bootstrap resamples of the comparison.
        seed: seed of the random-weights copy, the bootstrap and the random deletion.
        batch_size: scans per pass.

    Returns:
        The benchmark's tables.

    Raises:
        ValueError: a run is not on a synthetic cohort, or no test scan is old enough.
    """
    lifts, comparisons, curves, areas = [], [], [], []
    n_subjects = 0
    for name, run_dir in run_dirs.items():
        model, config = load_model(run_dir)
        frame = read_manifest(config.data.manifest)
        if "effect_map" not in frame.columns:
            raise ValueError(f"{config.data.manifest}: no effect_map column; the benchmark needs the synthetic cohort")
        split = assign_splits(frame, config.data.test_fold)
        healthy = frame["group"].isin(list(config.data.train_groups))
        test = frame[((split == "test") & healthy & (frame["age"] >= min_age)).to_numpy()]
        train = frame[((split == "train") & healthy).to_numpy()]
        if max_subjects is not None:
            test = test.head(max_subjects)
        if test.empty:
            raise ValueError(f"{config.data.manifest}: no healthy test scan aged >= {min_age}")
        volumes, affines = load_manifest_volumes(test, config.data, progress=False)
        train_volumes, _ = load_manifest_volumes(train, config.data, progress=False)
        fill = train_volumes.float().mean(0)  # fill: [1, X, Y, Z], the population mean image
        shape = tuple(volumes.shape[2:])
        cohort_dir = Path(config.data.manifest).parent
        derivative_paths = write_age_derivatives(cohort_dir, test["subject_id"].tolist(), derivative_dir)
        truth = np.stack(
            [load_on_grid(derivative_paths[s], affines[i], shape, order=1) for i, s in enumerate(test["subject_id"])]
        )  # truth: [N, X, Y, Z]
        train_effects = np.stack([load_on_grid(path, affines[0], shape, order=1) for path in train["effect_map"]])
        brains = volumes.float() > 0  # brains: [N, 1, X, Y, Z]
        random_model = randomized_copy(model, seed)
        n_subjects = len(test)
        deletion_maps: dict[str, torch.Tensor] = {}
        for method in methods:
            grid = layer_shape(model, layer, shape) if method == "gradram" else None
            candidates = {
                "map": method_maps(model, volumes, method, layer, fill, batch_size),
                "central_blob": central_blob(brains, grid),
                "population_prior": population_prior(train_effects, grid).expand_as(volumes.float()),
                "random_weights": method_maps(random_model, volumes, method, layer, fill, batch_size),
            }
            per_subject = {"chance": np.ones(len(test))}
            for candidate, maps in candidates.items():
                score = saliency_in_ground_truth(maps, truth, brains, top_fraction)
                per_subject[candidate] = np.asarray(score["per_subject"]["lift"])
                lifts.append(
                    pd.DataFrame(
                        {
                            "model": name,
                            "method": method,
                            "candidate": candidate,
                            "subject_id": test["subject_id"].to_numpy(),
                            "lift": per_subject[candidate],
                        }
                    )
                )
            table = prior_comparison(per_subject, ["map"], list(BASELINES), n_boot=n_boot, seed=seed)
            comparisons.append(table.drop(columns="map").assign(model=name, method=method))
            deletion_maps[method] = candidates["map"]
        deletion_maps["central_blob"] = central_blob(brains)
        deletion_maps["population_prior"] = population_prior(train_effects)
        curve = deletion_curves(
            model,
            volumes,
            test["age"].to_numpy(),
            deletion_maps,
            fill,
            fractions=fractions,
            seed=seed,
            batch_size=batch_size,
        )
        curves.append(curve.assign(model=name))
        areas.append(deletion_areas(curve).assign(model=name))
    return SaliencyBenchmark(
        lifts=pd.concat(lifts, ignore_index=True),
        comparison=pd.concat(comparisons, ignore_index=True),
        deletion=pd.concat(curves, ignore_index=True),
        deletion_areas=pd.concat(areas, ignore_index=True),
        n_subjects=n_subjects,
        min_age=min_age,
        layer=layer,
    )
