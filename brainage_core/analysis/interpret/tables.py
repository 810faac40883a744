"""Tables of :func:`~brainage_core.analysis.interpret.explain.explain_run` results, one row per model.

* :func:`ground_truth_table`: the ground-truth scores (overlap, chance, lift, Spearman) of every
  model's map variants (signed Grad-RAM, ReLU Grad-RAM, random-weights model).
* :func:`randomization_table`: the trained-vs-random map similarity of every model.
* :func:`saliency_values`: the numbers the Grad-RAM chapter quotes from both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

__all__ = ["ground_truth_table", "randomization_table", "saliency_values"]

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
