"""Clinical analyses of the brain-age gap on a synthetic table with known structure."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

from brainage_core.analysis.clinical import (
    analysis_sample,
    clinical_report,
    clinical_values,
    gap_by_group,
    measured_and_latent_gaps,
    partial_spearman,
    plot_gap_by_group,
    plot_gap_vs_score,
    severity_associations,
    true_gap_recovery,
)
from brainage_core.analysis.metrics import corrected_predictions

N_CN_TEST = 150


def synthetic_predictions(seed: int = 0) -> pd.DataFrame:
    """CN gap ~ N(0, 3); AD +8 rising with CDR, falling with MMSE; PD +2 rising with UPDRS-III.

    A latent severity drives both the scores and the gap. Predicted ages carry the usual age
    bias (slope 0.75 towards age 70), which the CN-val bias correction removes.
    """
    rng = np.random.default_rng(seed)
    layout = [
        ("CN", "train", 80),
        ("CN", "val", 80),
        ("CN", "test", N_CN_TEST),
        ("AD", "train", 40),
        ("AD", "val", 40),
        ("AD", "test", 70),
        ("PD", "test", 150),
    ]
    frames = []
    for group, split, n in layout:
        severity = rng.normal(0, 1, n)
        frame = pd.DataFrame(
            {"group": group, "split": split, "age": rng.uniform(55, 85, n), "sex": rng.choice(["M", "F"], n)}
        )
        frame["mmse"] = frame["cdr"] = frame["updrs3"] = frame["hoehn_yahr"] = np.nan
        if group == "CN":
            frame["true_gap"] = rng.normal(0, 3, n)
        elif group == "AD":
            frame["true_gap"] = 8 + 3 * severity + rng.normal(0, 2, n)
            frame["mmse"] = np.clip(np.round(22 - 3 * severity + rng.normal(0, 1.5, n)), 0, 30)
            frame["cdr"] = np.select([severity < -0.5, severity < 0.7], [0.5, 1.0], 2.0)
        else:
            frame["true_gap"] = 2 + 1.5 * severity + rng.normal(0, 2, n)
            frame["updrs3"] = np.clip(np.round(30 + 10 * severity + rng.normal(0, 3, n)), 0, 132)
            frame["hoehn_yahr"] = np.clip(np.round(2 + severity), 1, 5)
        frames.append(frame)
    predictions = pd.concat(frames, ignore_index=True)
    predictions.insert(0, "subject_id", [f"sub-{index:04d}" for index in range(len(predictions))])
    brain_age = predictions["age"] + predictions["true_gap"] + rng.normal(0, 2, len(predictions))
    predictions["predicted_age"] = 0.75 * brain_age + 0.25 * 70
    predictions["image"] = "img.nii.gz"
    return predictions


@pytest.fixture(scope="module")
def corrected() -> pd.DataFrame:
    return corrected_predictions(synthetic_predictions())


def test_analysis_sample_is_cn_test_plus_all_patients(corrected: pd.DataFrame) -> None:
    sample = analysis_sample(corrected)
    assert (sample["group"] == "CN").sum() == N_CN_TEST
    assert set(sample.loc[sample["group"] == "CN", "split"]) == {"test"}
    assert (sample["group"] == "AD").sum() == 150  # AD rows of every split


def test_gap_by_group_orders_ad_above_pd_above_cn(corrected: pd.DataFrame) -> None:
    table = gap_by_group(corrected).set_index("group")
    assert table.index.tolist() == ["CN", "AD", "PD"]
    patients = corrected[corrected["group"] != "CN"]["age"]
    cn_test = corrected[(corrected["group"] == "CN") & (corrected["split"] == "test")]["age"]
    matched = int(cn_test.between(patients.min(), patients.max()).sum())
    assert N_CN_TEST - 5 < table.loc["CN", "n"] == matched and table.loc["AD", "n"] == 150
    assert table.loc["AD", "difference"] > table.loc["PD", "difference"] > 0
    assert table.loc["AD", "ci_low"] > 0 and table.loc["AD", "p"] < 1e-6
    assert table.loc["AD", "ci_low"] < table.loc["AD", "difference"] < table.loc["AD", "ci_high"]
    assert table.loc["AD", "difference"] == pytest.approx(8, abs=1.5)
    assert table.loc["AD", "cohen_d"] > table.loc["PD", "cohen_d"] > 0
    assert np.isnan(table.loc["CN", "difference"])


def test_gap_by_group_compares_patients_with_age_matched_controls(corrected: pd.DataFrame) -> None:
    """Young controls with a large corrected gap (a residual nonlinear age bias) change nothing."""
    young = corrected[(corrected["group"] == "CN") & (corrected["split"] == "test")].head(20).copy()
    young["age"], young["gap_corrected"] = 25.0, 15.0
    young["subject_id"] = young["subject_id"] + "-young"
    with_young = gap_by_group(pd.concat([corrected, young], ignore_index=True)).set_index("group")
    assert with_young.loc["AD", "difference"] == pytest.approx(
        gap_by_group(corrected).set_index("group").loc["AD", "difference"]
    )


def test_gap_by_group_with_a_single_age_matched_control_warns_nothing(corrected: pd.DataFrame) -> None:
    """A tiny cohort (the smoke book) may keep one control: no numpy warning reaches the page."""
    patients = corrected[corrected["group"] != "CN"]
    control = corrected[(corrected["group"] == "CN") & (corrected["split"] == "test")].head(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = gap_by_group(pd.concat([control, patients], ignore_index=True)).set_index("group")
    assert table.loc["CN", "n"] == 1 and np.isfinite(table.loc["AD", "cohen_d"])


def test_gap_by_group_needs_patients(corrected: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="patient rows"):
        gap_by_group(corrected[corrected["group"] == "CN"])


def test_severity_associations_find_the_simulated_effects(corrected: pd.DataFrame) -> None:
    table = severity_associations(corrected)
    assert table.columns.tolist() == [
        "group",
        "score",
        "n",
        "partial_spearman",
        "p",
        "p_fdr",
        "ols_slope",
        "ols_ci_low",
        "ols_ci_high",
        "ols_p",
    ]
    rows = table.set_index(["group", "score"])
    assert rows.loc[("AD", "cdr"), "partial_spearman"] > 0
    assert rows.loc[("AD", "mmse"), "partial_spearman"] < 0
    assert rows.loc[("PD", "updrs3"), "partial_spearman"] > 0
    assert rows.loc[("AD", "mmse"), "ols_ci_high"] < 0 < rows.loc[("AD", "cdr"), "ols_ci_low"]
    for key in [("AD", "cdr"), ("AD", "mmse"), ("PD", "updrs3")]:
        assert rows.loc[key, "p_fdr"] < 0.05
    assert (table["p_fdr"] >= table["p"]).all()


def test_untestable_pairs_are_reported_but_not_tested(corrected: pd.DataFrame) -> None:
    sparse = corrected.copy()
    pd_rows = sparse.index[sparse["group"] == "PD"]
    sparse.loc[pd_rows[5:], "hoehn_yahr"] = np.nan  # 5 complete cases: too few
    table = severity_associations(sparse).set_index(["group", "score"])
    assert table.loc[("PD", "hoehn_yahr"), "n"] == 5
    assert table.loc[("PD", "hoehn_yahr"), ["partial_spearman", "p", "p_fdr", "ols_slope"]].isna().all()
    full = severity_associations(corrected).set_index(["group", "score"])
    # BH over three tests instead of four: the adjusted p-values change, the raw ones do not.
    assert table.loc[("AD", "cdr"), "p"] == full.loc[("AD", "cdr"), "p"]


def test_partial_spearman_without_covariates_is_spearman() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    reference = st.spearmanr(x, y)
    rho, p = partial_spearman(x, y)
    assert rho == pytest.approx(reference.statistic)
    assert p == pytest.approx(reference.pvalue)


def test_partial_spearman_matches_manual_residualisation() -> None:
    rng = np.random.default_rng(1)
    n = 60
    age = rng.uniform(50, 80, n)
    sex = rng.integers(0, 2, n).astype(float)
    x = 0.1 * age + rng.normal(size=n)
    y = 0.1 * age + 0.5 * x + rng.normal(size=n)
    design = np.column_stack([np.ones(n), st.rankdata(age), st.rankdata(sex)])

    def residual(values: np.ndarray) -> np.ndarray:
        ranks = st.rankdata(values)
        return ranks - design @ np.linalg.lstsq(design, ranks, rcond=None)[0]

    expected = np.corrcoef(residual(x), residual(y))[0, 1]
    t = expected * np.sqrt((n - 4) / (1 - expected**2))
    rho, p = partial_spearman(x, y, np.column_stack([age, sex]))
    assert rho == pytest.approx(expected)
    assert p == pytest.approx(2 * st.t.sf(abs(t), n - 4))


def test_partial_spearman_removes_a_shared_confounder() -> None:
    rng = np.random.default_rng(2)
    age = rng.uniform(50, 80, 300)
    x, y = age + rng.normal(0, 3, 300), age + rng.normal(0, 3, 300)
    assert st.spearmanr(x, y).statistic > 0.8
    rho, p = partial_spearman(x, y, age)
    assert abs(rho) < 0.15 and p > 0.01
    with pytest.raises(ValueError, match="constant"):
        partial_spearman(np.ones(10), np.arange(10.0))


def test_true_gap_recovery(corrected: pd.DataFrame) -> None:
    recovery = true_gap_recovery(corrected)
    assert recovery["overall"]["n"] == N_CN_TEST + 300
    assert recovery["overall"]["pearson_r"] > 0.8
    assert set(recovery["by_group"]) == {"CN", "AD", "PD"}
    assert recovery["by_group"]["AD"]["spearman_rho"] > 0.5
    with pytest.raises(ValueError, match="true_gap"):
        true_gap_recovery(corrected.drop(columns="true_gap"))


def test_plots_return_axes_with_group_sizes(corrected: pd.DataFrame) -> None:
    """The box plot draws the sample gap_by_group compares: controls in the patients' age range."""
    compared = gap_by_group(corrected).set_index("group")["n"]
    assert 0 < compared["CN"] <= N_CN_TEST
    young = corrected[(corrected["group"] == "CN") & (corrected["split"] == "test")].head(20).copy()
    young["age"], young["subject_id"] = 5.0, young["subject_id"] + "-young"
    ax = plot_gap_by_group(pd.concat([corrected, young], ignore_index=True))
    labels = [label.get_text() for label in ax.get_xticklabels()]
    assert labels == [f"CN\n(n={compared['CN']})", "AD\n(n=150)", "PD\n(n=150)"]
    plt.close(ax.figure)
    ax = plot_gap_vs_score(corrected, "AD", "cdr")
    assert ax.get_title() == "AD (n=150)" and ax.get_xlabel() == "CDR (global)"
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="need 3"):
        plot_gap_vs_score(corrected, "CN", "mmse")


def _write_run(folder: Path, predictions: pd.DataFrame) -> Path:
    folder.mkdir(parents=True)
    predictions.to_csv(folder / "predictions.csv", index=False)
    (folder / "config.yaml").write_text("data:\n  train_groups: [CN]\n")
    return folder


def test_clinical_report_writes_tables_and_figures(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", synthetic_predictions())
    report = clinical_report(run)
    out = run / "clinical"
    expected = {
        "gap_by_group.csv",
        "severity_associations.csv",
        "true_gap_recovery.json",
        "true_gap_by_group.csv",
        "gap_by_group.png",
        "gap_vs_mmse.png",
        "gap_vs_cdr.png",
        "gap_vs_updrs3.png",
        "gap_vs_hoehn_yahr.png",
    }
    assert set(report["files"]) == expected
    assert {path.name for path in out.iterdir()} == expected | {
        ".brainage-owned.json"
    }  # no temporary files left behind
    assert pd.read_csv(out / "gap_by_group.csv")["group"].tolist() == ["CN", "AD", "PD"]
    assert len(pd.read_csv(out / "severity_associations.csv")) == 4
    recovery = json.loads((out / "true_gap_recovery.json").read_text())
    assert recovery["gap_corrected"]["overall"]["pearson_r"] > 0.8
    assert report["bias_correction"]["n"] == 80 and report["train_groups"] == ["CN"]
    latent = pd.read_csv(out / "true_gap_by_group.csv").set_index("group")
    assert latent.loc["AD", "difference"] == pytest.approx(8.0, abs=1.0)  # the simulated +8 y
    assert latent.loc["PD", "difference"] == pytest.approx(2.0, abs=1.0)


def test_measured_gaps_are_set_beside_the_latent_truth(tmp_path: Path) -> None:
    """The table puts the model's measured difference from CN next to the same OLS on the latent
    gap, so a model that doubles the truth is visible as such."""
    predictions = synthetic_predictions()
    predictions["predicted_age"] = predictions["age"] + 2.0 * predictions["true_gap"]  # reads twice the gap
    report = clinical_report(_write_run(tmp_path / "run", predictions), method="beheshti")
    table = measured_and_latent_gaps({"doubling": report})
    assert list(table.index) == ["AD", "PD"] and list(table.columns) == ["doubling", "latent", "n"]
    measured, latent = (float(table.loc["AD", column].split(" ")[0]) for column in ("doubling", "latent"))
    assert measured == pytest.approx(2 * latent, rel=0.1)
    values = clinical_values({"doubling": report}, reference="doubling")
    assert values["AD_latent"] == pytest.approx(latent, abs=0.05)
    assert values["truegap_r_AD_doubling"] > 0.9 and values["truegap_r_CN_doubling"] > 0.9
    no_truth = clinical_report(_write_run(tmp_path / "plain", predictions.drop(columns="true_gap")), method="beheshti")
    assert measured_and_latent_gaps({"m": no_truth}).empty


def test_clinical_report_without_true_gap(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", synthetic_predictions().drop(columns="true_gap"))
    report = clinical_report(run, out_dir=tmp_path / "elsewhere", method="beheshti")
    assert "true_gap_recovery.json" not in report["files"] and report["true_gap_recovery"] is None
    assert (tmp_path / "elsewhere" / "gap_by_group.png").is_file()
