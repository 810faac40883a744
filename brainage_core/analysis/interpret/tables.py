"""Tables of :func:`~brainage_core.analysis.interpret.explain.explain_run` results, one row per model.

* :func:`ground_truth_table`: the ground-truth scores (overlap, chance, lift, Spearman) of every
  model's map variants (signed Grad-RAM, ReLU Grad-RAM, random-weights model).
* :func:`randomization_table`: the trained-vs-random map similarity of every model.
* :func:`saliency_values`: the numbers the Grad-RAM chapter quotes from both.
* :func:`prior_comparison`: each map's per-scan score against content-free baselines (chance,
  central blob, population prior, random weights), with bootstrap intervals over scans;
  :func:`benchmark_table` and :func:`benchmark_values` present the phantom benchmark's.
* :func:`randomization_sentence`: what a trained-vs-random correlation does and does not show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from brainage_core.analysis.metrics import N_BOOT

__all__ = [
    "benchmark_table",
    "benchmark_values",
    "ground_truth_table",
    "prior_comparison",
    "randomization_sentence",
    "randomization_table",
    "saliency_values",
]

GROUND_TRUTH_COLUMNS = ("overlap", "chance", "lift", "spearman")
RANDOMIZATION_COLUMNS = ("spearman", "pearson", "ssim", "n_subjects")


def ground_truth_table(summaries: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Ground-truth scores of each model's maps, from ``explain_run`` summaries.

    Args:
        summaries: model name -> the summary ``explain_run`` returns; models without ground truth
            (no effect maps in the manifest) contribute no rows.

    Returns:
        One row per (model, map variant): columns ``model``, ``maps`` (``gradram``,
        ``gradram_relu``, ``random_model``), ``overlap``, ``chance``, ``lift`` and ``spearman``;
        empty (no columns) when no model has ground truth.
    """
    rows = []
    for model, summary in summaries.items():
        truth = summary["scores"].get("ground_truth") or {}
        for maps, scores in truth.items():
            if isinstance(scores, dict):  # the variants; "n_subjects" is a number
                rows.append({"model": model, "maps": maps, **{key: scores[key] for key in GROUND_TRUTH_COLUMNS}})
    return pd.DataFrame(rows)


def randomization_table(summaries: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Similarity of each model's maps to those of its random-weights copy (the sanity check).

    Returns:
        Index: model name; columns ``spearman``, ``pearson``, ``ssim`` (means over scans) and
        ``n_subjects``.
    """
    return pd.DataFrame(
        {
            model: {key: summary["scores"]["randomization"][key] for key in RANDOMIZATION_COLUMNS}
            for model, summary in summaries.items()
        }
    ).T


def saliency_values(scores: pd.DataFrame, randomization: pd.DataFrame) -> dict[str, Any]:
    """The numbers the Grad-RAM chapter quotes.

    Args:
        scores: :func:`ground_truth_table` (may be empty).
        randomization: :func:`randomization_table`.

    Returns:
        Per model ``<name>``: ``random_spearman_<name>`` and, with ground truth, ``lift_<name>``,
        ``lift_random_<name>`` (lift of the signed maps and of the random-weights maps) and
        ``spearman_<name>``; with ground truth also ``better``: the model of highest signed-map
        lift (in model order, a later model wins unless strictly beaten).
    """
    values: dict[str, Any] = {
        f"random_spearman_{model}": float(randomization.loc[model, "spearman"]) for model in randomization.index
    }
    if len(scores):
        indexed = scores.set_index(["model", "maps"])
        models = list(dict.fromkeys(scores["model"]))
        for model in models:
            values[f"lift_{model}"] = float(indexed.loc[(model, "gradram"), "lift"])
            values[f"lift_random_{model}"] = float(indexed.loc[(model, "random_model"), "lift"])
            values[f"spearman_{model}"] = float(indexed.loc[(model, "gradram"), "spearman"])
        better = models[0]
        for model in models[1:]:
            if not indexed.loc[(better, "gradram"), "lift"] > indexed.loc[(model, "gradram"), "lift"]:
                better = model
        values["better"] = better
    return values


def prior_comparison(
    per_subject: Mapping[str, Sequence[float] | np.ndarray],
    maps: Sequence[str],
    baselines: Sequence[str],
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Does each map beat every content-free baseline? Paired bootstrap over scans.

    Args:
        per_subject: name -> one score per scan (e.g. the ``lift`` list of
            :func:`~brainage_core.analysis.interpret.scoring.saliency_in_ground_truth`), the
            same scans in the same order for every name; a constant (e.g. chance lift 1) may be
            given as a list of that value.
        maps: the names to judge (e.g. ``rnc``, ``mse``).
        baselines: the names to beat (e.g. ``chance``, ``central_blob``, ``population_prior``,
            ``random_weights``).
        n_boot: bootstrap resamples of the scans (the same resamples for every comparison).
        seed: seed of the resampling.
        level: confidence level of the intervals.

    Returns:
        One row per (``map``, ``baseline``): ``score`` and ``baseline_score`` (means over
        scans), ``difference`` with ``difference_low`` / ``difference_high`` (percentile
        interval), ``beats`` (the interval lies above 0) and ``beats_all`` (the map beats every
        baseline: only then does it count as informative).
    """
    scores = {name: np.asarray(per_subject[name], dtype=np.float64) for name in [*maps, *baselines]}
    sizes = {len(values) for values in scores.values()}
    if len(sizes) != 1 or not sizes.pop():
        raise ValueError(
            f"every score needs one value per scan, the same scans: lengths {[len(v) for v in scores.values()]}"
        )
    n = len(scores[maps[0]])
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))  # draws: [B, n]
    tail = (1 - level) / 2
    rows = []
    for name in maps:
        for baseline in baselines:
            difference = scores[name] - scores[baseline]  # difference: [n]
            resampled = np.nanmean(difference[draws], axis=1)  # resampled: [B]
            low, high = np.nanquantile(resampled, [tail, 1 - tail])
            rows.append(
                {
                    "map": name,
                    "baseline": baseline,
                    "score": float(np.nanmean(scores[name])),
                    "baseline_score": float(np.nanmean(scores[baseline])),
                    "difference": float(np.nanmean(difference)),
                    "difference_low": float(low),
                    "difference_high": float(high),
                    "beats": bool(low > 0),
                }
            )
    table = pd.DataFrame(rows)
    table["beats_all"] = table.groupby("map")["beats"].transform("all")
    return table


def benchmark_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, method): the map's lift and, per baseline, its lift and the difference.

    Args:
        comparison: ``SaliencyBenchmark.comparison``
            (:func:`~brainage_core.analysis.interpret.benchmark.saliency_benchmark`).

    Returns:
        Index (``model``, ``method``); columns ``lift`` (the map's mean lift), then for each
        baseline ``<baseline>`` (its mean lift) and ``<baseline> diff`` (``d [low, high]``, a
        star when the interval lies above 0), and ``beats all`` (yes/no).
    """
    rows = {}
    for (model, method), group in comparison.groupby(["model", "method"], sort=False):
        row: dict[str, Any] = {"lift": float(group["score"].iloc[0])}
        for item in group.itertuples():
            star = "*" if item.beats else ""
            row[str(item.baseline)] = float(item.baseline_score)
            row[f"{item.baseline} diff"] = (
                f"{item.difference:+.2f} [{item.difference_low:+.2f}, {item.difference_high:+.2f}]{star}"
            )
        row["beats all"] = "yes" if bool(group["beats_all"].iloc[0]) else "no"
        rows[(model, method)] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = table.index.set_names(["model", "method"])
    return table


def benchmark_values(comparison: pd.DataFrame, areas: pd.DataFrame, reference: str, other: str) -> dict[str, str]:
    """The chapter's verdict sentences on the benchmark, from the numbers.

    Args:
        comparison: ``SaliencyBenchmark.comparison``.
        areas: ``SaliencyBenchmark.deletion_areas``.
        reference: the model the chapter is about (e.g. ``RNC``); ``other``: its comparison (``MSE``).

    Returns:
        ``verdict`` (how many maps beat all baselines, which, and which baseline stops the
        others), ``versus`` (the reference's best method against the other model's, by lift)
        and ``deletion`` (which maps' deletion hurts the model more than random deletion).
    """
    judged = comparison.groupby(["model", "method"], sort=False)
    winners = [f"{model} {method}" for (model, method), group in judged if bool(group["beats_all"].iloc[0])]
    # The hardest baseline: beaten by the fewest maps, then with the lowest mean margin.
    hardness = comparison.groupby("baseline").agg(
        unbeaten=("beats", lambda beats: int((~beats).sum())), margin=("difference", "mean")
    )
    unbeaten = hardness[hardness["unbeaten"] > 0].sort_values(["unbeaten", "margin"], ascending=[False, True])[
        "unbeaten"
    ]
    if winners:
        verdict = (
            f"{len(winners)} of {judged.ngroups} maps beat every trivial baseline (chance, central blob, "
            f"population prior, random weights; 95 % intervals over scans): {', '.join(winners)}."
        )
    else:
        verdict = (
            f"None of the {judged.ngroups} maps beats every trivial baseline (chance, central blob, "
            "population prior, random weights; 95 % intervals over scans)."
        )
    if len(unbeaten):
        verdict += f" The hardest baseline is the {unbeaten.index[0].replace('_', ' ')}, which {int(unbeaten.iloc[0])} maps do not beat."
    lifts = comparison.groupby(["model", "method"], sort=False)["score"].first()
    best = {model: lifts[model].idxmax() for model in (reference, other) if model in lifts.index.get_level_values(0)}
    versus = ""
    if len(best) == 2:
        versus = (
            f"The highest lift of {reference} is {lifts[(reference, best[reference])]:.2f} ({best[reference]}), "
            f"of {other} {lifts[(other, best[other])]:.2f} ({best[other]})."
        )
    priors = areas["method"].isin(["central_blob", "population_prior"])
    maps = areas[~priors]
    hurting = [f"{row.model} {row.method}" for row in maps.itertuples() if row.area > 0]
    deletion = (
        f"Deleting the most salient voxels first hurts the model more than random deletion for {len(hurting)} "
        f"of {len(maps)} maps" + (f" ({', '.join(hurting)})" if hurting else "")
    )
    if priors.any() and len(maps):
        best_map, best_prior = maps.loc[maps["area"].idxmax()], areas[priors].loc[areas[priors]["area"].idxmax()]
        deletion += (
            f"; the largest area of a map is {best_map['area']:.2f} ({best_map['model']} {best_map['method']}), "
            f"of a content-free map {best_prior['area']:.2f} ({best_prior['model']} "
            f"{str(best_prior['method']).replace('_', ' ')})"
        )
    deletion += "."
    return {"verdict": verdict, "versus": versus, "deletion": deletion}


def randomization_sentence(spearman: float) -> str:
    """How to read the trained-vs-random rank correlation of the maps (Adebayo et al. 2018).

    A correlation near +1 means the maps barely depend on the weights; a strong negative one
    means both networks' maps follow the same input structure with the sign flipped, which is
    not evidence of learning either; only a weak correlation says the maps changed with training.
    """
    if spearman >= 0.3:
        return f"{spearman:.2f}: similar maps, so they largely echo the input, not what the model learned"
    if spearman <= -0.3:
        return (
            f"{spearman:.2f}: strongly anti-correlated, so both maps follow the same input structure with the sign "
            "flipped; this is not evidence that the maps reflect learning"
        )
    return f"{spearman:.2f}: weakly related, so the maps changed with training"
