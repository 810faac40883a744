"""Comparing training methods across seeds: the ablation's tables, tests and feature analyses.

All numbers are computed on the healthy controls of the test split (``group == CN``,
``split == test``): the subjects no model was trained or selected on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats
from scipy.spatial.distance import pdist
from sklearn.decomposition import PCA

from brainage_core.analysis.metrics import mae_by_age_band, prediction_consistency, regression_metrics
from brainage_core.data import VolumeDataset, load_manifest_volumes
from brainage_core.fileio import atomic_path
from brainage_core.inference import extract_features, predict_ages
from brainage_core.manifest import read_manifest
from brainage_core.ownership import claim
from brainage_core.rundir import load_model, read_history, read_predictions

__all__ = [
    "analyse_features",
    "collect_runs",
    "comparison_values",
    "describe_comparison",
    "errors_by_age_band",
    "feature_continuity",
    "format_summary",
    "healthy_test_rows",
    "mean_predictor_verdict",
    "paired_tests",
    "robustness_table",
    "robustness_values",
    "summarise_methods",
    "write_tables",
]


def healthy_test_rows(predictions: pd.DataFrame) -> pd.DataFrame:
    """Rows of healthy controls in the test split."""
    return predictions[(predictions["group"] == "CN") & (predictions["split"] == "test")]


def collect_runs(run_dirs: Mapping[tuple[str, int], str | os.PathLike[str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read finished runs keyed by (method, seed).

    Returns:
        ``runs``: one row per run with its test-control metrics (``mae``, ``rmse``, ``r2``,
        ``pearson_r``, ``spearman_gap_age``), ``mean_predictor_mae`` (the MAE of always
        predicting the mean age of the run's training controls), selected epoch and training
        minutes; and
        ``errors``: one row per (method, seed, test control) with ``age``, ``predicted_age``
        and ``abs_error``.
    """
    rows, errors = [], []
    for (method, seed), run_dir in run_dirs.items():
        run_dir = Path(run_dir)
        every_row = read_predictions(run_dir)
        predictions = healthy_test_rows(every_row)
        training_mean = every_row.loc[(every_row["group"] == "CN") & (every_row["split"] == "train"), "age"].mean()
        history = read_history(run_dir)
        rows.append(
            {
                "method": method,
                "seed": seed,
                **regression_metrics(predictions["age"], predictions["predicted_age"]),
                "mean_predictor_mae": float((predictions["age"] - training_mean).abs().mean()),
                "best_epoch": int(history.loc[history["val_mae"].idxmin(), "epoch"]),
                "minutes": float(history["seconds"].sum() / 60),
            }
        )
        errors.append(
            predictions[["subject_id", "age", "predicted_age"]].assign(
                method=method, seed=seed, abs_error=(predictions["predicted_age"] - predictions["age"]).abs()
            )
        )
    return pd.DataFrame(rows), pd.concat(errors, ignore_index=True)


def summarise_methods(runs: pd.DataFrame, metrics: tuple[str, ...] = ("mae", "r2", "pearson_r")) -> pd.DataFrame:
    """Mean and SD over seeds of each metric, one row per method (ordered by mean MAE).

    With a ``mean_predictor_mae`` column (from :func:`collect_runs`), also
    ``beats_mean_predictor``: how many of the method's runs have a lower MAE than it.
    """
    grouped = runs.groupby("method")[list(metrics)].agg(["mean", "std"])
    grouped.columns = [f"{metric}_{stat}" for metric, stat in grouped.columns]
    grouped["n_seeds"] = runs.groupby("method")["seed"].nunique()
    if "mean_predictor_mae" in runs:
        grouped["beats_mean_predictor"] = (runs["mae"] < runs["mean_predictor_mae"]).groupby(runs["method"]).sum()
    return grouped.sort_values("mae_mean")


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The table of :func:`summarise_methods` for display: "mean ± SD" strings, one row per method.

    Returns:
        Columns ``MAE`` and ``R2``/``r`` ("mean ± SD" over seeds, 2 and 3 decimals; the SD of a
        single seed shows as 0), ``n_seeds`` and ``runs_beating_mean_predictor`` ("k / n").
    """

    def mean_sd(metric: str, decimals: int) -> pd.Series:
        style = f"{{:.{decimals}f}}".format
        return summary[f"{metric}_mean"].map(style) + " ± " + summary[f"{metric}_std"].fillna(0).map(style)

    beating = summary["beats_mean_predictor"].astype(int).astype(str) + " / " + summary["n_seeds"].astype(str)
    return summary.assign(
        MAE=mean_sd("mae", 2), R2=mean_sd("r2", 3), r=mean_sd("pearson_r", 3), runs_beating_mean_predictor=beating
    )[["MAE", "R2", "r", "n_seeds", "runs_beating_mean_predictor"]]


def mean_predictor_verdict(runs: pd.DataFrame) -> str:
    """One sentence: do all runs beat the mean predictor, and if not, which ones do not.

    Args:
        runs: the table of :func:`collect_runs` (needs ``mae`` and ``mean_predictor_mae``).
    """
    losing = runs[runs["mae"] >= runs["mean_predictor_mae"]]
    baseline = runs["mean_predictor_mae"]
    level = (
        f"{baseline.iloc[0]:.2f} years"
        if baseline.nunique() == 1
        else f"{baseline.min():.2f}-{baseline.max():.2f} years"
    )
    if losing.empty:
        return f"All {len(runs)} runs beat the mean predictor (test MAE {level})."
    names = ", ".join(f"{row.method.upper()} seed {row.seed} ({row.mae:.2f})" for row in losing.itertuples())
    return f"{len(runs) - len(losing)} of {len(runs)} runs beat the mean predictor (test MAE {level}); not: {names}."


def paired_tests(runs: pd.DataFrame, errors: pd.DataFrame, reference: str = "rnc") -> pd.DataFrame:
    """Each method against ``reference`` with two paired tests.

    * over seeds: paired t-test of the test MAE of runs with the same seed (few pairs; low power);
    * over subjects: Wilcoxon signed-rank test of each test subject's absolute error, averaged
      over seeds, between the two methods (same subjects, so the pairing removes between-subject
      variation).

    Returns:
        One row per other method: ``mae_difference`` (method minus reference, years; positive
        means the reference is better), ``t_seeds``, ``p_seeds``, ``n_seeds``, ``p_subjects``,
        ``n_subjects``, ``reference_better_fraction`` (share of subjects with a smaller error
        under the reference).
    """
    if reference not in set(runs["method"]):
        raise ValueError(f"reference method {reference!r} has no runs; methods: {sorted(set(runs['method']))}")
    by_seed = runs.pivot(index="seed", columns="method", values="mae")
    by_subject = errors.groupby(["subject_id", "method"])["abs_error"].mean().unstack("method")
    rows = []
    for method in (m for m in by_seed.columns if m != reference):
        seeds = by_seed[[reference, method]].dropna()
        if len(seeds) >= 2:
            t_statistic, p_seeds = stats.ttest_rel(seeds[method], seeds[reference])
        else:
            t_statistic, p_seeds = np.nan, np.nan
        subjects = by_subject[[reference, method]].dropna()
        p_subjects = (
            float(stats.wilcoxon(subjects[method], subjects[reference]).pvalue) if len(subjects) >= 2 else np.nan
        )
        rows.append(
            {
                "method": method,
                "mae_difference": float((seeds[method] - seeds[reference]).mean()),
                "t_seeds": float(t_statistic),
                "p_seeds": float(p_seeds),
                "n_seeds": len(seeds),
                "p_subjects": p_subjects,
                "n_subjects": len(subjects),
                "reference_better_fraction": float((subjects[reference] < subjects[method]).mean()),
            }
        )
    return pd.DataFrame(rows)


def describe_comparison(tests: pd.DataFrame, reference: str, method: str, alpha: float = 0.05) -> str:
    """One honest sentence comparing ``reference`` with ``method`` from :func:`paired_tests`.

    The sentence states the direction, the size of the MAE difference, the subject-level
    Wilcoxon p-value, and whether the difference is significant at ``alpha``; it never claims
    a win the numbers do not show.
    """
    row = tests.set_index("method").loc[method]
    difference, p_value = float(row["mae_difference"]), float(row["p_subjects"])
    better, worse = (reference, method) if difference > 0 else (method, reference)
    size = f"{abs(difference):.2f} years lower mean test MAE"
    seeds = f"over {int(row['n_seeds'])} seed(s)"
    if np.isnan(p_value):
        return f"{better.upper()} has a {size} than {worse.upper()} {seeds}; too few subjects for a paired test."
    if p_value < alpha:
        return (
            f"{better.upper()} has a {size} than {worse.upper()} {seeds}, a significant difference "
            f"(paired Wilcoxon over {int(row['n_subjects'])} test subjects, p = {p_value:.2g})."
        )
    return (
        f"{better.upper()} has a {size} than {worse.upper()} {seeds}, but the difference is not "
        f"significant (paired Wilcoxon over {int(row['n_subjects'])} test subjects, p = {p_value:.2g}): "
        f"on these data the two cannot be told apart."
    )


def comparison_values(
    runs: pd.DataFrame, summary: pd.DataFrame, tests: pd.DataFrame, reference: str, n_seeds: int
) -> dict[str, object]:
    """The accuracy numbers and sentences the ablation chapter quotes.

    Args:
        runs: the table of :func:`collect_runs`.
        summary: :func:`summarise_methods` of ``runs``.
        tests: :func:`paired_tests` of ``runs`` against ``reference``.
        reference: the method the others were tested against.
        n_seeds: seeds per method.

    Returns:
        ``mean_predictor`` (:func:`mean_predictor_verdict`), ``reference_mae`` (mean test MAE of
        the reference), ``best_method`` (upper-case name of the lowest mean MAE), ``n_seeds``,
        ``n_test`` (most test subjects in a paired test; 0 without tests), ``verdicts`` (one
        Markdown bullet of :func:`describe_comparison` per tested method) and, when MSE ran and
        is not the reference, ``mse_mae`` and ``verdict_mse``.
    """
    values: dict[str, object] = {
        "mean_predictor": mean_predictor_verdict(runs),
        "reference_mae": float(summary.loc[reference, "mae_mean"]),
        "best_method": summary.index[0].upper(),
        "n_seeds": n_seeds,
        "n_test": int(tests["n_subjects"].max()) if len(tests) else 0,
    }
    if "mse" in set(runs["method"]) and reference != "mse":
        values["mse_mae"] = float(summary.loc["mse", "mae_mean"])
        values["verdict_mse"] = describe_comparison(tests, reference, "mse")
    values["verdicts"] = "\n".join(f"- {describe_comparison(tests, reference, m)}" for m in tests["method"])
    return values


def errors_by_age_band(
    errors: pd.DataFrame, edges: tuple[float, ...] = (0, 30, 40, 50, 60, 70, 80, math.inf)
) -> pd.DataFrame:
    """MAE and mean gap per age band for each method (all seeds pooled)."""
    tables = [
        mae_by_age_band(group["age"], group["predicted_age"], edges=edges).assign(method=method)
        for method, group in errors.groupby("method")
    ]
    return pd.concat(tables, ignore_index=True)


def feature_continuity(features: np.ndarray, ages: np.ndarray) -> float:
    """Spearman correlation between pairwise feature distances and pairwise age differences.

    1 means that subjects far apart in age are far apart in feature space, in the same order;
    0 means that feature distances ignore age.

    Args:
        features: ``[N, D]``.
        ages: ``[N]``.
    """
    features, ages = np.asarray(features, dtype=float), np.asarray(ages, dtype=float)
    if len(features) != len(ages) or len(ages) < 3:
        raise ValueError(f"need >= 3 subjects with one age each; got {len(features)} feature rows and {len(ages)} ages")
    return float(stats.spearmanr(pdist(features), pdist(ages[:, None])).statistic)


@torch.no_grad()
def analyse_features(
    run_dir: str | os.PathLike[str], n_augmentations: int = 8, seed: int = 0, device: str = "cpu"
) -> dict:
    """Feature-space and robustness analysis of one run on its test controls.

    Returns:
        ``pca`` (DataFrame: subject_id, age, pc1, pc2), ``continuity`` (see
        :func:`feature_continuity`) and ``consistency`` (SD of the predicted age over
        ``n_augmentations`` augmented copies of each scan, with the run's augmentation settings;
        see :func:`~brainage_core.analysis.metrics.prediction_consistency`).
    """
    model, config = load_model(run_dir, device)
    predictions = healthy_test_rows(read_predictions(run_dir))
    if "image" not in predictions.columns:
        raise ValueError(f"{run_dir}/predictions.csv has no 'image' column; retrain with this version of brainage")
    # The manifest rows of these scans, by image (a subject may have several scans).
    rows = read_manifest(config.data.manifest).set_index("image").loc[predictions["image"]].reset_index()
    volumes, _ = load_manifest_volumes(rows, config.data, progress=False)
    torch_device = torch.device(device)
    features = extract_features(model, volumes, torch_device).numpy()
    ages = predictions["age"].to_numpy()
    coordinates = PCA(n_components=2, random_state=seed).fit_transform(features)
    dataset = VolumeDataset(volumes, torch.tensor(ages), config.augment, n_views=n_augmentations, seed=seed)
    augmented = np.stack(
        [predict_ages(model, dataset[index][0], torch_device).numpy() for index in range(len(dataset))]
    )  # augmented: [N, n_augmentations]
    return {
        "pca": pd.DataFrame(
            {
                "subject_id": predictions["subject_id"].to_numpy(),
                "age": ages,
                "pc1": coordinates[:, 0],
                "pc2": coordinates[:, 1],
            }
        ),
        "continuity": feature_continuity(features, ages),
        "consistency": prediction_consistency(augmented),
    }


def robustness_table(analyses: Mapping[str, dict]) -> pd.DataFrame:
    """Feature continuity and augmentation consistency, one row per method.

    Args:
        analyses: method -> :func:`analyse_features` of one of its runs.

    Returns:
        Columns ``continuity``, ``TTA SD mean (years)`` and ``TTA SD max (years)``.
    """
    return pd.DataFrame(
        {
            "continuity": {method: analysis["continuity"] for method, analysis in analyses.items()},
            "TTA SD mean (years)": {method: a["consistency"]["mean_sd"] for method, a in analyses.items()},
            "TTA SD max (years)": {method: a["consistency"]["max_sd"] for method, a in analyses.items()},
        }
    )


def robustness_values(robustness: pd.DataFrame, reference: str) -> dict[str, object]:
    """The feature-space numbers the ablation chapter quotes, from :func:`robustness_table`.

    Returns:
        ``continuity_rnc``: the continuity of ``reference`` (RNC in the book);
        ``continuity_best``: the upper-case name of the most continuous method.
    """
    return {
        "continuity_rnc": float(robustness.loc[reference, "continuity"]),
        "continuity_best": robustness["continuity"].idxmax().upper(),
    }


def write_tables(
    out_dir: str | os.PathLike[str], runs: pd.DataFrame, tests: pd.DataFrame, robustness: pd.DataFrame
) -> list[Path]:
    """Write the ablation's tables as CSV into ``out_dir`` (created if missing), atomically.

    Files: ``runs.csv`` (:func:`collect_runs`), ``paired_tests.csv`` (:func:`paired_tests`) and
    ``robustness.csv`` (:func:`robustness_table`, methods as the index column); all recorded as
    the project's (:func:`~brainage_core.ownership.claim`).

    Returns:
        The paths written.
    """
    out_dir = Path(out_dir)
    tables = {"runs.csv": (runs, False), "paired_tests.csv": (tests, False), "robustness.csv": (robustness, True)}
    claim(out_dir, list(tables))
    for name, (table, index) in tables.items():
        with atomic_path(out_dir / name, suffix=".csv") as temp:
            table.to_csv(temp, index=index)
    return [out_dir / name for name in tables]
