"""Tables of :func:`~brainage_core.analysis.interpret.explain.explain_run` results, one row per model.

* :func:`ground_truth_table`: the ground-truth scores (overlap, chance, lift, Spearman) of every
  model's map variants (signed Grad-RAM, ReLU Grad-RAM, random-weights model).
* :func:`randomization_table`: the trained-vs-random map similarity of every model.
* :func:`saliency_values`: the numbers the Grad-RAM chapter quotes from both.
* :func:`prior_comparison`: each map's per-scan score against content-free baselines (chance,
  central blob, population prior, random weights), with bootstrap intervals over scans.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from brainage_core.analysis.metrics import N_BOOT

__all__ = ["ground_truth_table", "prior_comparison", "randomization_table", "saliency_values"]

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
