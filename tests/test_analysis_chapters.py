"""The tables and quoted numbers of the ablation, clinical and Grad-RAM chapters, on hand-made inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from IPython.display import Markdown

from brainage_core.analysis import compare
from brainage_core.analysis.clinical import (
    accuracy_table,
    clinical_report,
    clinical_values,
    gap_by_group,
    severity_associations,
    true_gap_recovery,
)
from brainage_core.analysis.correlation import correlations
from brainage_core.analysis.evaluation import evaluate_run
from brainage_core.analysis.interpret import ground_truth_table, randomization_table, saliency_values
from brainage_core.analysis.method_tests import method_differences
from brainage_core.analysis.metrics import corrected_predictions
from brainage_core.book import gluing
from brainage_core.ownership import owned_files
from brainage_core.rundir import read_predictions
from tests.test_clinical import _write_run, synthetic_predictions


def hand_runs() -> pd.DataFrame:
    """rnc: seeds 0, 1 with MAE 2 and 3; mse: seed 0 with MAE 5 (worse than its mean predictor)."""
    return pd.DataFrame(
        {
            "method": ["rnc", "rnc", "mse"],
            "seed": [0, 1, 0],
            "mae": [2.0, 3.0, 5.0],
            "r2": [0.5, 0.7, 0.1],
            "pearson_r": [0.8, 0.9, 0.4],
            "mean_predictor_mae": [4.0, 4.0, 4.0],
        }
    )


def hand_errors(n_subjects: int = 12) -> pd.DataFrame:
    """Per-subject errors: every mse error is 2 years larger than the rnc error of the same subject and seed."""
    rows = []
    for seed in (0, 1):
        for method, shift in (("rnc", 0.0), ("mse", 2.0)):
            if method == "mse" and seed == 1:
                continue
            for subject in range(n_subjects):
                rows.append(
                    {"subject_id": subject, "method": method, "seed": seed, "abs_error": 1 + subject / 4 + shift}
                )
    return pd.DataFrame(rows)


def test_verdict_values_quote_the_differences_table() -> None:
    runs, errors = hand_runs(), hand_errors()
    table = method_differences(errors, "rnc", n_boot=500)
    values = compare.verdict_values(table, runs, "rnc", {"mse": "MSE"})
    assert values["reference_mae"] == pytest.approx(errors.loc[errors["method"] == "rnc", "abs_error"].mean())
    assert values["n_seeds"] == 2 and values["n_test"] == 12
    assert values["mean_predictor"].startswith("2 of 3 runs beat the mean predictor (test MAE 4.00 years); not: MSE")
    assert values["verdict_mse"].startswith("RNC has a 2.00 y lower test MAE than MSE")
    assert values["verdicts"] == f"- {values['verdict_mse']}"
    assert values["seed_spread"].startswith("RNC SD 0.71 y (range 2.00-3.00, 2 runs)")


def test_training_values_name_the_runs_still_improving() -> None:
    runs = hand_runs().assign(
        passes_per_epoch=[100, 100, 100], best_epoch=[5, 9, 12], last_epoch=[11, 15, 12], max_epochs=30
    )
    runs["stopped_early"] = runs["last_epoch"] < runs["max_epochs"]
    values = compare.training_values(runs)
    assert values["passes_sentence"] == "MSE 100, RNC 100: equal for every method."
    assert values["plateau_sentence"].startswith("2 of 3 runs kept an epoch before their last")
    assert values["plateau_sentence"].endswith("still improving at the end: MSE seed 0.")


def test_recipe_table_and_learning_curve_values() -> None:
    recipe = pd.DataFrame(
        {
            "choice": ["batch size"] * 4 + ["temperature"] * 4,
            "setting": [32, 32, 64, 64, 2.0, 2.0, 1.0, 1.0],
            "tuned": [True, True, False, False, True, True, False, False],
            "seed": [0, 1] * 4,
            "val_mae": [6.0, 6.4, 5.0, 5.2, 6.0, 6.4, 6.1, 6.5],
        }
    )
    table = compare.recipe_table(recipe).set_index(["choice", "setting"])
    assert table.loc[("batch size", "64"), "val_mae"] == pytest.approx(5.1)
    assert table.loc[("batch size", "32"), "runs"] == 2 and table.loc[("batch size", "32"), "tuned"]
    sentence = compare.recipe_values(compare.recipe_table(recipe))["recipe_sentence"]
    assert sentence.startswith("batch size: 64 is best (5.10 y), 1.10 y below the tuned 32 (beyond the seed SD")
    assert sentence.endswith("temperature: the tuned 2 is best (6.20 y).")
    one_seed = compare.recipe_values(compare.recipe_table(recipe[recipe["seed"] == 0]))["recipe_sentence"]
    assert "64 is best (5.00 y), 1.00 y below the tuned 32 (one seed each: no spread measured)" in one_seed
    recipe.loc[2:3, "val_mae"] = [6.0, 6.2]
    assert "within the seed spread" in compare.recipe_values(compare.recipe_table(recipe))["recipe_sentence"]
    curve = pd.DataFrame(
        {
            "method": ["rnc", "mse", "ridge", "rnc", "mse", "ridge"],
            "n_train": [25, 25, 25, 126, 126, 126],
            "mae": [8.0, 10.0, 7.0, 6.0, 6.5, 5.5],
            "mae_low": [7.0, 9.1, 6.0, 5.0, 5.5, 4.5],
            "mae_high": [9.0, 11.0, 8.0, 7.0, 7.5, 6.5],
        }
    )
    values = compare.learning_curve_values(curve, "rnc")
    assert values["lc_sizes"] == "25, 126"
    assert "with 25 subjects RIDGE is lowest (7.00 y); RNC's interval is clear of MSE" in values["lc_sentence"]
    assert (
        "with 126 subjects RIDGE is lowest (5.50 y); RNC's interval overlaps every other method's"
        in values["lc_sentence"]
    )


def test_robustness_table_and_values() -> None:
    analyses = {
        "rnc": {"continuity": 0.6, "consistency": {"mean_sd": 0.2, "max_sd": 0.5}},
        "mse": {"continuity": 0.8, "consistency": {"mean_sd": 0.1, "max_sd": 0.3}},
    }
    table = compare.robustness_table(analyses)
    assert list(table.columns) == ["continuity", "TTA SD mean (years)", "TTA SD max (years)"]
    assert table.loc["rnc"].tolist() == [0.6, 0.2, 0.5] and table.loc["mse"].tolist() == [0.8, 0.1, 0.3]
    assert compare.robustness_values(table, "rnc") == {"continuity_rnc": 0.6, "continuity_best": "MSE"}


def test_write_tables_writes_and_claims_three_csvs(tmp_path: Path) -> None:
    runs, errors = hand_runs(), hand_errors()
    tests = method_differences(errors, "rnc", n_boot=100)
    robustness = pd.DataFrame({"continuity": {"rnc": 0.6, "mse": 0.8}})
    out = tmp_path / "ablation"
    paths = compare.write_tables(out, runs=runs, differences=tests, robustness=robustness)
    assert [path.name for path in paths] == ["runs.csv", "method_differences.csv", "robustness.csv"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "runs.csv"), runs)
    assert pd.read_csv(out / "method_differences.csv")["method"].tolist() == tests["method"].tolist()
    assert pd.read_csv(out / "robustness.csv", index_col=0)["continuity"].to_dict() == {"rnc": 0.6, "mse": 0.8}
    assert owned_files(out) == {"runs.csv", "method_differences.csv", "robustness.csv"}
    assert {path.name for path in out.iterdir()} == {
        "runs.csv",
        "method_differences.csv",
        "robustness.csv",
        ".brainage-owned.json",
    }


def hand_evaluation(mae: float) -> dict:
    metric = {"value": mae, "ci_low": mae - 0.5, "ci_high": mae + 0.25}
    stage = {"mae": metric, "r2": metric, "pearson_r": metric, "spearman_gap_age": metric}
    return {"raw": stage, "corrected": {key: {**value, "value": value["value"] + 1} for key, value in stage.items()}}


def test_accuracy_table_formats_values_with_intervals() -> None:
    table = accuracy_table({"RNC": hand_evaluation(1.23456), "MSE": hand_evaluation(2.0)})
    assert list(table.columns) == ["corrected", "raw"]
    assert table.index.names == ["model", "metric"] and len(table) == 8
    assert table.loc[("RNC", "mae"), "raw"] == "1.235 [0.735, 1.485]"
    assert table.loc[("RNC", "mae"), "corrected"] == "2.235 [0.735, 1.485]"
    assert table.loc[("MSE", "spearman_gap_age"), "raw"] == "2.000 [1.500, 2.250]"


@pytest.fixture(scope="module")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run = _write_run(tmp_path_factory.mktemp("clinical") / "run", synthetic_predictions())
    return run, clinical_report(run, n_boot=50)


def test_clinical_report_returns_the_tables_it_computes(report_run: tuple[Path, dict]) -> None:
    run, report = report_run
    corrected = corrected_predictions(read_predictions(run))
    pd.testing.assert_frame_equal(report["predictions"], corrected)
    pd.testing.assert_frame_equal(report["gap_by_group"], gap_by_group(corrected))
    pd.testing.assert_frame_equal(report["severity_associations"], severity_associations(corrected))
    pd.testing.assert_frame_equal(pd.read_csv(run / "clinical" / "gap_by_group.csv"), report["gap_by_group"])
    assert report["true_gap_recovery"]["gap_corrected"] == true_gap_recovery(corrected)
    assert report["true_gap_recovery"]["gap"] == true_gap_recovery(corrected, "gap")
    evaluation = evaluate_run(run, n_boot=50)
    assert report["evaluation"] == evaluation
    assert json.loads((run / "metrics.json").read_text())["raw"] == evaluation["raw"]


def test_clinical_report_without_n_boot_has_no_evaluation(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", synthetic_predictions().drop(columns="true_gap"))
    report = clinical_report(run, method="beheshti")
    assert report["evaluation"] is None and not (run / "metrics.json").exists()


def test_clinical_values_quote_the_reports(report_run: tuple[Path, dict]) -> None:
    _, report = report_run
    other = {**report, "true_gap_recovery": None, "evaluation": None}
    values = clinical_values({"RNC": report, "MSE": other}, reference="RNC")
    groups = report["gap_by_group"].set_index("group")
    severity = report["severity_associations"].set_index(["group", "score"])
    assert values["mae_raw_RNC"] == report["evaluation"]["raw"]["mae"]["value"]
    assert values["gapage_corr_RNC"] == report["evaluation"]["corrected"]["spearman_gap_age"]["value"]
    assert values["AD_gap_RNC"] == groups.loc["AD", "difference"] == values["AD_gap_MSE"]
    assert (values["PD_lo_RNC"], values["PD_hi_RNC"]) == (groups.loc["PD", "ci_low"], groups.loc["PD", "ci_high"])
    assert values["AD_d_RNC"] == groups.loc["AD", "cohen_d"] and "CN_gap_RNC" not in values
    assert values["rho_AD_cdr"] == severity.loc[("AD", "cdr"), "partial_spearman"]
    assert values["pfdr_PD_updrs3"] == severity.loc[("PD", "updrs3"), "p_fdr"]
    assert values["truegap_r_RNC"] == report["true_gap_recovery"]["gap_corrected"]["overall"]["pearson_r"]
    assert values["n_correction"] == 80 and isinstance(values["n_correction"], int)
    assert "truegap_r_MSE" not in values and "mae_raw_MSE" not in values
    assert all(type(value) in (float, int) for value in values.values())


def test_correlations_are_none_where_undefined() -> None:
    x = pd.Series([1.0, 2.0, 3.0, 4.0])
    result = correlations(x, 2 * x)
    assert result["n"] == 4 and result["pearson_r"] == pytest.approx(1.0) and result["spearman_rho"] == 1.0
    constant = correlations(x, pd.Series([1.0] * 4))
    assert constant["pearson_r"] is None and constant["spearman_p"] is None


def saliency_summary(lift: float, random_lift: float, spearman: float, with_truth: bool = True) -> dict:
    scores = {"overlap": 0.3, "chance": 0.1, "lift": lift, "spearman": spearman, "pearson": 0.0, "per_subject": {}}
    truth = {"n_subjects": 4, "gradram": scores, "gradram_relu": {**scores, "lift": lift / 2}}
    truth["random_model"] = {**scores, "lift": random_lift}
    randomization = {"spearman": spearman / 2, "pearson": 0.1, "ssim": 0.2, "n_subjects": 4, "seed": 0}
    return {"n_subjects": 4, "scores": {"randomization": randomization, "ground_truth": truth if with_truth else None}}


def test_ground_truth_and_randomization_tables() -> None:
    summaries = {"RNC": saliency_summary(3.0, 1.0, 0.4), "MSE": saliency_summary(2.0, 1.5, 0.2)}
    scores = ground_truth_table(summaries)
    assert list(scores.columns) == ["model", "maps", "overlap", "chance", "lift", "spearman"]
    assert list(zip(scores["model"], scores["maps"])) == [
        (model, maps) for model in ("RNC", "MSE") for maps in ("gradram", "gradram_relu", "random_model")
    ]
    assert scores["lift"].tolist() == [3.0, 1.5, 1.0, 2.0, 1.0, 1.5]
    randomization = randomization_table(summaries)
    assert list(randomization.columns) == ["spearman", "pearson", "ssim", "n_subjects"]
    assert randomization.loc["MSE", "spearman"] == 0.1 and randomization.loc["RNC", "n_subjects"] == 4
    values = saliency_values(scores, randomization)
    assert values == {
        "random_spearman_RNC": 0.2,
        "random_spearman_MSE": 0.1,
        "lift_RNC": 3.0,
        "lift_random_RNC": 1.0,
        "spearman_RNC": 0.4,
        "lift_MSE": 2.0,
        "lift_random_MSE": 1.5,
        "spearman_MSE": 0.2,
        "better": "RNC",
    }


def test_saliency_values_ties_and_missing_ground_truth() -> None:
    tied = {"RNC": saliency_summary(2.0, 1.0, 0.4), "MSE": saliency_summary(2.0, 1.0, 0.2)}
    assert saliency_values(ground_truth_table(tied), randomization_table(tied))["better"] == "MSE"
    none = {"RNC": saliency_summary(2.0, 1.0, 0.4, with_truth=False)}
    scores = ground_truth_table(none)
    assert scores.empty
    assert saliency_values(scores, randomization_table(none)) == {"random_spearman_RNC": 0.2}


def test_glue_values_glues_strings_as_markdown(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(gluing, "glue", lambda name, value, display: calls.append((name, value, display)))
    gluing.glue_values({"n": 3, "r": 0.25, "verdict": "**RNC** wins", "missing": math.nan}, prefix="abl_")
    assert [(name, display) for name, _, display in calls] == [
        ("abl_n", False),
        ("abl_r", False),
        ("abl_verdict", False),
        ("abl_missing", False),
    ]
    assert calls[0][1] == 3 and calls[1][1] == 0.25 and np.isnan(calls[3][1])
    assert isinstance(calls[2][1], Markdown) and calls[2][1].data == "**RNC** wins"
