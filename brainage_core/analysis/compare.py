"""Comparing training methods across seeds: the ablation's tables, tests and feature analyses.

All numbers are computed on the healthy controls of the test split (``group == CN``,
``split == test``): the subjects no model was trained or selected on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats
from scipy.spatial.distance import pdist
from sklearn.decomposition import PCA

from brainage_core.analysis.metrics import (
    healthy_test_rows,
    mae_by_age_band,
    prediction_consistency,
    regression_metrics,
)
from brainage_core.data import VolumeDataset, load_manifest_volumes
from brainage_core.fileio import atomic_path
from brainage_core.inference import extract_features, predict_ages
from brainage_core.manifest import read_manifest
from brainage_core.ownership import claim
from brainage_core.rundir import load_model, read_config, read_history, read_predictions, selected_epoch

__all__ = [
    "analyse_features",
    "collect_runs",
    "errors_by_age_band",
    "feature_continuity",
    "learning_curve_values",
    "mean_predictor_verdict",
    "probe_errors",
    "recipe_table",
    "recipe_values",
    "robustness_table",
    "robustness_values",
    "summarise_methods",
    "training_table",
    "training_values",
    "validation_curves",
    "verdict_values",
    "write_tables",
]


def collect_runs(run_dirs: Mapping[tuple[str, int], str | os.PathLike[str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read finished runs keyed by (method, seed).

    Returns:
        ``runs``: one row per run with its test-control metrics (``mae``, ``rmse``, ``r2``,
        ``pearson_r``, ``spearman_gap_age``), ``probe_mae`` (the linear probe on frozen
        features, the same readout for every method; NaN for runs made before it existed),
        ``mean_predictor_mae`` (the MAE of always predicting the mean age of the run's training
        controls), the schedule (``best_epoch``, ``last_epoch``, ``max_epochs``,
        ``stopped_early``: early stopping ended the run before its last scheduled epoch),
        compute (``passes_per_epoch``, ``passes``: forward + backward passes of one image
        until the run stopped) and training ``minutes``; and
        ``errors``: one row per (method, seed, test control) with ``age``, ``predicted_age``,
        ``abs_error`` and ``probe_abs_error``.
    """
    rows, errors = [], []
    for (method, seed), run_dir in run_dirs.items():
        run_dir = Path(run_dir)
        every_row = read_predictions(run_dir)
        predictions = healthy_test_rows(every_row)
        probe = predictions.get("predicted_age_probe", pd.Series(np.nan, index=predictions.index))
        training_mean = every_row.loc[(every_row["group"] == "CN") & (every_row["split"] == "train"), "age"].mean()
        history = read_history(run_dir)
        max_epochs = read_config(run_dir).train.epochs
        passes = history["passes"] if "passes" in history else pd.Series(np.nan, index=history.index)
        rows.append(
            {
                "method": method,
                "seed": seed,
                **regression_metrics(predictions["age"], predictions["predicted_age"]),
                "probe_mae": float((probe - predictions["age"]).abs().mean()),
                "mean_predictor_mae": float((predictions["age"] - training_mean).abs().mean()),
                "best_epoch": selected_epoch(history),
                "last_epoch": int(history["epoch"].max()),
                "max_epochs": max_epochs,
                "stopped_early": bool(history["epoch"].max() < max_epochs),
                "passes_per_epoch": float(passes.iloc[0] / history["epoch"].iloc[0]),
                "passes": float(passes.iloc[-1]),
                "minutes": float(history["seconds"].sum() / 60),
            }
        )
        errors.append(
            predictions[["subject_id", "age", "predicted_age"]].assign(
                method=method,
                seed=seed,
                abs_error=(predictions["predicted_age"] - predictions["age"]).abs(),
                probe_abs_error=(probe - predictions["age"]).abs(),
            )
        )
    return pd.DataFrame(rows), pd.concat(errors, ignore_index=True)


def training_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Schedule and compute per method, from :func:`collect_runs`: did every run plateau, at what cost.

    Returns:
        One row per method: ``runs``, ``passes_per_epoch`` (equal across methods when compute is
        matched), ``max_epochs``, ``best_epoch`` and ``last_epoch`` (mean over seeds),
        ``selected_before_last`` and ``stopped_early`` ("k / n" runs), ``passes_M`` (passes until
        the run stopped, mean, in millions) and ``minutes`` (mean).
    """
    grouped = runs.groupby("method")
    count = grouped.size()

    def share(flags: pd.Series) -> pd.Series:
        return flags.groupby(runs["method"]).sum().astype(int).astype(str) + " / " + count.astype(str)

    return pd.DataFrame(
        {
            "runs": count,
            "passes_per_epoch": grouped["passes_per_epoch"].first().astype(int),
            "max_epochs": grouped["max_epochs"].max(),
            "best_epoch": grouped["best_epoch"].mean().round(1),
            "last_epoch": grouped["last_epoch"].mean().round(1),
            "selected_before_last": share(runs["best_epoch"] < runs["last_epoch"]),
            "stopped_early": share(runs["stopped_early"]),
            "passes_M": (grouped["passes"].mean() / 1e6).round(3),
            "minutes": grouped["minutes"].mean().round(2),
        }
    )


def validation_curves(run_dirs: Mapping[tuple[str, int], str | os.PathLike[str]]) -> pd.DataFrame:
    """Every run's history in one table: ``method``, ``seed``, ``epoch``, ``train_mae``, ``val_mae``, ``selected``."""
    curves = []
    for (method, seed), run_dir in run_dirs.items():
        history = read_history(run_dir)[["epoch", "train_mae", "val_mae"]]
        curves.append(history.assign(method=method, seed=seed, selected=history["epoch"] == selected_epoch(history)))
    return pd.concat(curves, ignore_index=True)


def probe_errors(errors: pd.DataFrame, methods: Sequence[str], suffix: str = "+probe") -> pd.DataFrame:
    """The errors of ``methods`` read out by the linear probe, as methods named ``<method><suffix>``.

    Args:
        errors: the errors table of :func:`collect_runs` (with ``probe_abs_error``).
        methods: the methods whose probe readout differs from their own head (end-to-end regression).
    """
    chosen = errors[errors["method"].isin(list(methods))]
    return chosen.assign(method=chosen["method"] + suffix, abs_error=chosen["probe_abs_error"])


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


def training_values(runs: pd.DataFrame, run_label: str = "seed") -> dict[str, str]:
    """Two sentences on the schedule and compute of the runs (:func:`collect_runs`), as measured.

    Args:
        runs: the runs table of :func:`collect_runs`.
        run_label: what the second key of a run is (``seed``; ``n =`` for learning-curve sizes).

    Returns:
        ``passes_sentence`` (the passes per epoch of each method, and whether they are equal)
        and ``plateau_sentence`` (how many runs kept an epoch before their last and how many
        early stopping ended).
    """
    per_method = runs.groupby("method")["passes_per_epoch"].first()
    listed = ", ".join(f"{method.upper()} {int(passes):,}" for method, passes in per_method.items())
    equal = "equal for every method" if per_method.nunique() == 1 else "NOT equal across methods"
    before_last = int((runs["best_epoch"] < runs["last_epoch"]).sum())
    stopped = int(runs["stopped_early"].sum())
    plateau = (
        f"{before_last} of {len(runs)} runs kept an epoch before their last, and early stopping ended "
        f"{stopped} of {len(runs)} before the {int(runs['max_epochs'].max())}-epoch limit"
    )
    if before_last < len(runs):
        late = runs[runs["best_epoch"] >= runs["last_epoch"]]
        plateau += "; still improving at the end: " + ", ".join(
            f"{row.method.upper()} {run_label} {row.seed}" for row in late.itertuples()
        )
    return {"passes_sentence": f"{listed}: {equal}.", "plateau_sentence": plateau + "."}


def verdict_values(
    table: pd.DataFrame, runs: pd.DataFrame, reference: str, names: Mapping[str, str] | None = None
) -> dict[str, object]:
    """The numbers and sentences the ablation quotes from :func:`~brainage_core.analysis.method_tests.method_differences`.

    Returns:
        ``reference_mae``, ``n_seeds`` (most runs of a method), ``n_test``, ``verdicts`` (one
        Markdown bullet per compared method, :func:`~brainage_core.analysis.method_tests.describe_difference`),
        ``mean_predictor`` (:func:`mean_predictor_verdict`), ``seed_spread`` (SD and range of
        the test MAE over each method's runs) and ``verdict_<method>`` for each compared method
        (``+`` in a name becomes ``_``).
    """
    from brainage_core.analysis.method_tests import describe_differences

    indexed = table.set_index("method")
    sentences = describe_differences(table, reference, dict(names or {}))
    return {
        "reference_mae": float(indexed.loc[reference, "mae"]),
        "n_seeds": int(runs.groupby("method").size().max()),
        "n_test": int(indexed.loc[reference, "n_subjects"]),
        "verdicts": "\n".join(f"- {sentence}" for sentence in sentences.values()),
        "mean_predictor": mean_predictor_verdict(runs),
        "seed_spread": "; ".join(
            f"{method.upper()} SD {group['mae'].std():.2f} y (range {group['mae'].min():.2f}-{group['mae'].max():.2f}, "
            f"{len(group)} runs)"
            for method, group in runs.groupby("method")
            if len(group) > 1
        )
        or "not measured (one run per method)",
        **{f"verdict_{method.replace('+', '_')}": sentence for method, sentence in sentences.items()},
    }


def recipe_table(recipe: pd.DataFrame) -> pd.DataFrame:
    """The controlled recipe checks (:func:`~brainage_core.tuning.check_recipe`), one row per setting.

    Returns:
        One row per (``choice``, ``setting``: as text, numbers to 3 significant digits) in the
        order run: ``tuned`` (the starting
        point's setting), ``runs``, ``val_mae`` (mean best validation MAE over seeds) and
        ``val_mae_sd`` (their standard deviation; NaN with one seed).
    """
    if recipe.empty:
        return pd.DataFrame(columns=["choice", "setting", "tuned", "runs", "val_mae", "val_mae_sd"])
    recipe = recipe.assign(
        setting=[f"{value:.3g}" if isinstance(value, float) else str(value) for value in recipe["setting"]]
    )
    table = recipe.groupby(["choice", "setting"], sort=False).agg(
        tuned=("tuned", "first"), runs=("val_mae", "count"), val_mae=("val_mae", "mean"), val_mae_sd=("val_mae", "std")
    )
    return table.reset_index()


def recipe_values(table: pd.DataFrame) -> dict[str, str]:
    """One sentence per choice of :func:`recipe_table`: the best setting on validation, and by how much.

    Returns:
        ``recipe_sentence``: for each choice, the setting with the lowest mean validation MAE,
        the tuned setting's, and whether the gap exceeds the larger seed SD of the two (else
        "within the seed spread"; with one seed per setting, that no spread was measured).
    """
    parts = []
    for choice, rows in table.groupby("choice", sort=False):
        best = rows.loc[rows["val_mae"].idxmin()]
        tuned = rows[rows["tuned"]].iloc[0]
        if best["setting"] == tuned["setting"]:
            parts.append(f"{choice}: the tuned {tuned['setting']} is best ({tuned['val_mae']:.2f} y)")
            continue
        gap = tuned["val_mae"] - best["val_mae"]
        if rows["runs"].max() < 2:
            clear = "one seed each: no spread measured"
        else:
            spread = np.nanmax([best["val_mae_sd"], tuned["val_mae_sd"]])
            clear = "within the seed spread" if not gap > spread else f"beyond the seed SD of {spread:.2f} y"
        parts.append(
            f"{choice}: {best['setting']} is best ({best['val_mae']:.2f} y), {gap:.2f} y below the tuned "
            f"{tuned['setting']} ({clear})"
        )
    return {"recipe_sentence": "; ".join(parts) + "." if parts else "No recipe checks were run."}


def learning_curve_values(curve: pd.DataFrame, reference: str) -> dict[str, str]:
    """The sizes and one sentence on :func:`~brainage_core.book.workflow.learning_curve`, as measured.

    The sentence names, at each size, the method with the lowest test MAE and whether the
    reference's interval overlaps MSE's and ridge's (overlapping intervals: no clear difference);
    a size with one method (ridge alone, when no deep method is trained there) gives its MAE.
    """
    sizes = sorted(curve["n_train"].unique())
    parts = []
    for size in sizes:
        rows = curve[curve["n_train"] == size].set_index("method")
        best = rows["mae"].idxmin()
        ranking = "is lowest" if len(rows) > 1 else "alone"
        text = f"with {size} subjects {best.upper()} {ranking} ({rows.loc[best, 'mae']:.2f} y)"
        if reference in rows.index:
            ref = rows.loc[reference]
            others = [m for m in rows.index if m != reference]
            apart = [
                m.upper()
                for m in others
                if ref["mae_high"] < rows.loc[m, "mae_low"] or rows.loc[m, "mae_high"] < ref["mae_low"]
            ]
            text += (
                f"; {reference.upper()}'s interval is clear of " + ", ".join(apart)
                if apart
                else f"; {reference.upper()}'s interval overlaps every other method's"
            )
        parts.append(text)
    return {
        "lc_sizes": ", ".join(str(size) for size in sizes),
        "lc_sentence": "At each size, one training run: " + "; ".join(parts) + ".",
    }


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
    out_dir: str | os.PathLike[str], runs: pd.DataFrame, differences: pd.DataFrame, robustness: pd.DataFrame
) -> list[Path]:
    """Write the ablation's tables as CSV into ``out_dir`` (created if missing), atomically.

    Files: ``runs.csv`` (:func:`collect_runs`), ``method_differences.csv``
    (:func:`~brainage_core.analysis.method_tests.method_differences`) and
    ``robustness.csv`` (:func:`robustness_table`, methods as the index column); all recorded as
    the project's (:func:`~brainage_core.ownership.claim`).

    Returns:
        The paths written.
    """
    out_dir = Path(out_dir)
    tables = {
        "runs.csv": (runs, False),
        "method_differences.csv": (differences, False),
        "robustness.csv": (robustness, True),
    }
    claim(out_dir, list(tables))
    for name, (table, index) in tables.items():
        with atomic_path(out_dir / name, suffix=".csv") as temp:
            table.to_csv(temp, index=index)
    return [out_dir / name for name in tables]
