"""Saliency on real scans, by anatomical region: relevance shares, volumes, agreement of methods.

Real scans have no ground truth, but brain-age studies validate saliency against the anatomy
known to age (ventricles, hippocampus, insula, thalamus, ...): what share of a map's relevance
falls in each region (against the region's share of the brain, what a flat map would give),
whether a subject's relevance in a region follows that region's volume, and whether different
methods agree on the ranking of regions. The regions are groups of DLMUSE labels (the numbers
of NiChart's ``muse_dict.csv``), which the shared IXI scans carry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats

__all__ = [
    "AGING_REGIONS",
    "RegionSaliency",
    "method_agreement",
    "region_relevance",
    "region_saliency",
    "region_values",
    "relevance_volume_correlation",
]

# DLMUSE label numbers of the regions brain-age saliency studies look at (muse_dict.csv).
AGING_REGIONS: dict[str, tuple[int, ...]] = {
    "ventricles": (4, 11, 49, 50, 51, 52),  # 3rd, 4th, inferior lateral and lateral ventricles
    "hippocampus": (47, 48),
    "amygdala": (31, 32),
    "thalamus": (59, 60),
    "insula": (102, 103, 172, 173),  # anterior and posterior insula
    "caudate": (36, 37),
    "putamen": (57, 58),
}


def region_relevance(
    maps: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    subject_ids: Sequence[str],
    regions: Mapping[str, Sequence[int]] = AGING_REGIONS,
) -> pd.DataFrame:
    """Each region's share of a map's relevance, per subject.

    Args:
        maps: ``[N, 1, X, Y, Z]`` or ``[N, X, Y, Z]`` saliency maps (``|.|`` is used).
        labels: label volumes on the maps' grid (same shape; e.g. ``load_on_grid(order=0)``);
            label 0 is outside the brain.
        subject_ids: ``[N]``.
        regions: region name -> label numbers.

    Returns:
        One row per (subject, region): ``subject_id``, ``region``, ``share`` (the region's
        |relevance| / the labelled brain's), ``volume_share`` (the region's voxels / the brain's:
        a flat map's share) and ``enrichment`` (``share / volume_share``).
    """
    relevance = np.abs(np.asarray(maps, dtype=np.float64)).reshape(len(subject_ids), -1)  # relevance: [N, V]
    label = np.rint(np.asarray(labels)).astype(np.int64).reshape(len(subject_ids), -1)  # label: [N, V]
    if relevance.shape != label.shape:
        raise ValueError(f"maps {relevance.shape} and labels {label.shape} must cover the same voxels")
    rows = []
    for i, subject in enumerate(subject_ids):
        brain = label[i] > 0
        total, voxels = relevance[i][brain].sum(), brain.sum()
        if voxels == 0:
            raise ValueError(f"{subject}: the label volume has no labelled voxel on the map grid")
        for region, numbers in regions.items():
            inside = np.isin(label[i], list(numbers))
            share = float(relevance[i][inside].sum() / total) if total > 0 else np.nan
            volume_share = float(inside.sum() / voxels)
            rows.append(
                {
                    "subject_id": subject,
                    "region": region,
                    "share": share,
                    "volume_share": volume_share,
                    "enrichment": share / volume_share if volume_share > 0 else np.nan,
                }
            )
    return pd.DataFrame(rows)


def relevance_volume_correlation(
    relevance: pd.DataFrame,
    volumes: pd.DataFrame,
    regions: Mapping[str, Sequence[int]] = AGING_REGIONS,
    column: str = "enrichment",
) -> pd.DataFrame:
    """Across subjects, does a region's relevance follow the region's volume?

    By default the relevance is the region's *enrichment* (share of relevance per share of the
    brain): a region's raw share grows with its size even under a flat map, so the share would
    correlate with volume whatever the model does (``column="share"`` gives that anyway).

    Args:
        relevance: :func:`region_relevance`.
        volumes: one row per subject (index ``subject_id``), one column per label number, in ml
            (:func:`~brainage_core.analysis.crossval.region_volumes`).
        regions: region name -> label numbers (summed).
        column: ``enrichment`` or ``share``.

    Returns:
        One row per region: ``pearson_r``, ``p`` and ``n_subjects``.
    """
    rows = []
    for region, numbers in regions.items():
        shares = relevance[relevance["region"] == region].set_index("subject_id")[column]
        present = [number for number in numbers if number in volumes.columns]
        volume = volumes.reindex(shares.index)[present].sum(axis=1)
        valid = shares.notna() & volume.notna()
        if valid.sum() < 3 or shares[valid].std() == 0 or volume[valid].std() == 0:
            rows.append({"region": region, "pearson_r": np.nan, "p": np.nan, "n_subjects": int(valid.sum())})
            continue
        result = stats.pearsonr(shares[valid], volume[valid])
        rows.append(
            {
                "region": region,
                "pearson_r": float(result.statistic),
                "p": float(result.pvalue),
                "n_subjects": int(valid.sum()),
            }
        )
    return pd.DataFrame(rows)


def method_agreement(relevance_by_method: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Spearman correlation, over regions, of the methods' mean enrichment (a method x method table)."""
    means = pd.DataFrame(
        {
            method: table.groupby("region", sort=False)["enrichment"].mean()
            for method, table in relevance_by_method.items()
        }
    )
    return means.corr(method="spearman")


@dataclass
class RegionSaliency:
    """What :func:`region_saliency` measured on one run's scans.

    Attributes:
        relevance: :func:`region_relevance` rows with a ``method`` column.
        correlation: :func:`relevance_volume_correlation` rows with a ``method`` column.
        agreement: :func:`method_agreement` of the methods.
        n_subjects: scans explained.
    """

    relevance: pd.DataFrame
    correlation: pd.DataFrame
    agreement: pd.DataFrame
    n_subjects: int


def region_saliency(
    run_dir: str | os.PathLike[str],
    methods: Sequence[str] = ("gradram", "gradient_x_input", "integrated_gradients"),
    layer: str = "encoder.layer3",
    split: str = "test",
    regions: Mapping[str, Sequence[int]] = AGING_REGIONS,
    batch_size: int = 4,
) -> RegionSaliency:
    """Region relevance of a run's maps on the scans of ``split`` (a manifest with ``labels``).

    Maps are computed on the preprocessed scans (Grad-RAM at ``layer``; the voxel attributions
    with the training scans' mean image as baseline), labels are brought onto the same grid by
    nearest neighbour, and region volumes are measured on the label images.

    Raises:
        ValueError: the run's manifest has no ``labels`` column, or the split is empty.
    """
    from brainage_core.analysis.crossval import region_volumes
    from brainage_core.analysis.interpret.attributions import method_maps
    from brainage_core.analysis.interpret.maps_io import load_on_grid
    from brainage_core.data import assign_splits, load_manifest_volumes
    from brainage_core.manifest import read_manifest
    from brainage_core.rundir import load_model

    model, config = load_model(run_dir)
    frame = read_manifest(config.data.manifest)
    if "labels" not in frame.columns:
        raise ValueError(f"{config.data.manifest}: no labels column; region saliency needs label images")
    splits = assign_splits(frame, config.data.test_fold)
    rows = frame[(splits == split).to_numpy()].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"{config.data.manifest}: no scans in split {split!r}")
    volumes, affines = load_manifest_volumes(rows, config.data, progress=False)
    train, _ = load_manifest_volumes(frame[(splits == "train").to_numpy()], config.data, progress=False)
    shape = tuple(volumes.shape[2:])
    labels = np.stack([load_on_grid(path, affines[i], shape, order=0) for i, path in enumerate(rows["labels"])])
    ids = rows["subject_id"].astype(str).tolist()
    sizes = region_volumes(list(rows["labels"]), ids)
    relevance, correlation = {}, []
    mean_image = train.float().mean(0)  # mean_image: [1, X, Y, Z], the integrated-gradients baseline
    for method in methods:
        maps = method_maps(model, volumes, method, layer, mean_image, batch_size)
        relevance[method] = region_relevance(maps, labels, ids, regions)
        correlation.append(relevance_volume_correlation(relevance[method], sizes, regions).assign(method=method))
    return RegionSaliency(
        relevance=pd.concat([table.assign(method=method) for method, table in relevance.items()], ignore_index=True),
        correlation=pd.concat(correlation, ignore_index=True),
        agreement=method_agreement(relevance),
        n_subjects=len(rows),
    )


def region_values(result: RegionSaliency) -> dict[str, str]:
    """Sentences on :func:`region_saliency`, from the numbers.

    Returns:
        ``top_regions`` (each method's region of highest mean enrichment), ``volume_sentence``
        (the ventricles' enrichment-volume correlation per method, when measured) and
        ``agreement_sentence`` (the range of the methods' Spearman correlations over regions).
    """
    means = result.relevance.groupby(["method", "region"], sort=False)["enrichment"].mean()
    top = [
        f"{method}: {means[method].idxmax()} ({means[method].max():.1f} times its share of the brain)"
        for method in means.index.get_level_values(0).unique()
    ]
    ventricles = result.correlation[result.correlation["region"] == "ventricles"].dropna(subset=["pearson_r"])
    volume = (
        "Across subjects, the ventricles' relevance enrichment against ventricular volume: "
        + ", ".join(f"r = {row.pearson_r:.2f} (p = {row.p:.2g}; {row.method})" for row in ventricles.itertuples())
        + "."
        if len(ventricles)
        else "The ventricles' relevance-volume correlation could not be measured."
    )
    pairs = result.agreement.where(~np.eye(len(result.agreement), dtype=bool)).stack()
    agreement = (
        f"Between methods, the Spearman correlation of the regions' enrichment ranges from {pairs.min():.2f} "
        f"to {pairs.max():.2f}."
        if len(pairs)
        else "Only one method: no agreement to measure."
    )
    return {"top_regions": "; ".join(top) + ".", "volume_sentence": volume, "agreement_sentence": agreement}
