"""The data chapter's cohort analyses (brainage_core.analysis.cohort)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainage_core.analysis import cohort
from brainage_core.cohorts.synthetic import generate_cohort
from brainage_core.manifest import read_manifest


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A tiny synthetic cohort at 4 mm: its manifest path and the manifest read."""
    manifest = generate_cohort(
        tmp_path_factory.mktemp("cohort"), n_subjects=24, seed=0, spacing=4.0, progress=False, workers=1
    )
    return manifest, read_manifest(manifest, check_images="none")


def _truth(ages: list[float], groups: list[str], **columns: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"subject_id": [f"s{i}" for i in range(len(ages))], "age": ages, "group": groups, **columns})


def test_ground_truth_is_read_beside_the_manifest_and_none_for_a_manifest_of_ones_own(
    synthetic: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    manifest, frame = synthetic
    truth = cohort.read_ground_truth(manifest)
    assert truth is not None
    assert sorted(truth["subject_id"]) == sorted(frame["subject_id"])
    assert {"true_gap", "head_scale", "gm_ml", "csf_ventricular_ml"} <= set(truth.columns)
    own = tmp_path / "manifest.csv"
    own.write_text("subject_id,image,age,sex,group,split\n")
    assert cohort.read_ground_truth(own) is None
    (tmp_path / "ground_truth.csv").write_text("subject_id,group\ns1,CN\n")
    with pytest.raises(KeyError, match=r"ground_truth.csv lacks the column\(s\) \['age'\]"):
        cohort.read_ground_truth(own)


def test_the_analyses_run_on_a_generated_cohort(synthetic: tuple[Path, pd.DataFrame]) -> None:
    manifest, frame = synthetic
    truth = cohort.read_ground_truth(manifest)
    gaps = cohort.latent_gap_summary(truth)
    assert list(gaps.index) == ["CN", "AD", "PD"]
    assert gaps["n"].sum() == len(truth)
    assert gaps.loc["CN", "mean"] == pytest.approx(truth.loc[truth["group"] == "CN", "true_gap"].mean())
    assert 0.0 < cohort.grey_matter_loss_per_year(truth) < 1.5  # % per year: atrophy, of plausible size
    patients = cohort.ventricle_excess(truth)
    assert set(patients["group"]) == {"AD", "PD"}
    assert patients["stage"].str.match(r"^(AD, CDR|PD, H&Y) \d").all()
    # A 24-subject cohort's few patients carry no reliable sign (individual ventricle size varies
    # by about 35 %); that AD enlarges the ventricles is tested on controlled subjects in test_synth.
    by_group = patients.groupby("group")[cohort.VENTRICLE_EXCESS].mean()
    assert cohort.mean_ventricle_excess(patients) == pytest.approx(by_group.to_dict())
    measured = cohort.measured_tissue_fractions(frame)
    assert len(measured) == (frame["group"] == "CN").sum()
    np.testing.assert_allclose(measured[["csf", "gm", "wm"]].sum(axis=1), 100.0)
    shape = cohort.brain_shape_overlap(frame)  # the controls' masks against their majority mask
    assert shape is not None and 0.9 < shape[0] < 1.0 and shape[1] > 0.0
    assert cohort.brain_shape_overlap(frame.drop(columns="mask")) is None
    picks = cohort.example_subjects(frame)
    assert list(picks["group"]) == ["CN"] * 4 + ["AD", "PD"]
    assert picks["age"].iloc[:4].is_monotonic_increasing


def test_latent_gap_summary_counts_means_and_leaves_missing_groups_empty() -> None:
    truth = _truth([30, 40, 50, 70], ["CN", "CN", "CN", "AD"], true_gap=[-1.0, 0.0, 4.0, 6.0])
    gaps = cohort.latent_gap_summary(truth)
    assert gaps.loc["CN"].tolist() == pytest.approx([3, 1.0, np.std([-1.0, 0.0, 4.0], ddof=1)])
    assert gaps.loc["AD", "mean"] == 6.0 and np.isnan(gaps.loc["AD", "sd"])  # one subject: no SD
    assert gaps.loc["PD", "n"] == 0 and np.isnan(gaps.loc["PD", "mean"])
    with pytest.raises(KeyError, match="true_gap"):
        cohort.latent_gap_summary(truth.drop(columns="true_gap"))


def test_grey_matter_loss_is_the_head_adjusted_slope_in_percent_of_the_young_mean() -> None:
    ages = [20.0, 30.0, 40.0, 60.0, 80.0]
    head_scale = [1.0, 1.1, 0.9, 1.2, 1.0]
    grey = [1000 * (1 - 0.004 * (age - 25)) * scale**3 for age, scale in zip(ages, head_scale)]
    truth = _truth([*ages, 70.0], ["CN"] * 5 + ["AD"], head_scale=[*head_scale, 1.0], gm_ml=[*grey, 1.0])
    truth["wm_ml"] = 500.0
    # Head-adjusted GM: 1020, 980 under 35 (mean 1000), so it falls by 0.4 % of that mean per year.
    assert cohort.grey_matter_loss_per_year(truth) == pytest.approx(0.4)
    relative = cohort.relative_tissue_volumes(truth)
    assert relative["age"].tolist() == ages  # controls only, youngest first
    assert relative["gm_ml"].tolist() == pytest.approx([102.0, 98.0, 94.0, 86.0, 78.0])
    with pytest.raises(ValueError, match="younger than 18"):
        cohort.grey_matter_loss_per_year(truth, young_age=18)


def test_ventricle_excess_is_measured_against_age_matched_controls() -> None:
    def expected(age: float) -> float:
        return 10 + 0.01 * (age - 20) ** 2  # the controls' exact quadratic

    control_ages = [20.0, 35.0, 50.0, 65.0, 80.0]
    ages = [*control_ages, 70.0, 75.0, 60.0]
    csf = [expected(age) for age in control_ages] + [expected(70) + 5, expected(75) + 15, expected(60) + 2]
    truth = _truth(
        ages,
        ["CN"] * 5 + ["AD", "AD", "PD"],
        csf_ventricular_ml=csf,
        cdr=[0, 0, 0, 0, 0, 0.5, 1.0, np.nan],
        hoehn_yahr=[np.nan] * 7 + [2.0],
    )
    patients = cohort.ventricle_excess(truth)
    assert patients[cohort.VENTRICLE_EXCESS].tolist() == pytest.approx([5.0, 15.0, 2.0])
    assert patients["stage"].tolist() == ["AD, CDR 0.5", "AD, CDR 1.0", "PD, H&Y 2.0"]
    assert cohort.mean_ventricle_excess(patients) == pytest.approx({"AD": 10.0, "PD": 2.0})
    with pytest.raises(ValueError, match="at least 3 healthy controls"):
        cohort.ventricle_excess(truth.iloc[3:])
    with pytest.raises(KeyError, match="from ventricle_excess"):
        cohort.mean_ventricle_excess(truth)


def test_example_subjects_pick_controls_by_age_then_the_oldest_patients() -> None:
    frame = _truth([50, 20, 80, 35, 65, 70, 90, 60], ["CN", "CN", "CN", "CN", "CN", "AD", "AD", "PD"])
    frame.index = [7, 7, 7, 7, 7, 7, 7, 7]  # labels need not be unique
    picks = cohort.example_subjects(frame, quantiles=(0.0, 0.5, 1.0))
    assert picks["age"].tolist() == [20, 50, 80, 90, 60]
    assert cohort.example_subjects(frame, quantiles=(0.0,), patient_groups=("PD", "MCI"))["age"].tolist() == [20, 60]
    with pytest.raises(ValueError, match="healthy controls"):
        cohort.example_subjects(frame[frame["group"] != "CN"])
    with pytest.raises(ValueError, match="quantiles"):
        cohort.example_subjects(frame, quantiles=(1.5,))


def test_measured_tissue_fractions_need_a_mask(synthetic: tuple[Path, pd.DataFrame]) -> None:
    _, frame = synthetic
    with pytest.raises(KeyError, match=r"\['mask'\]"):
        cohort.measured_tissue_fractions(frame.drop(columns="mask"))
    unmasked = frame.copy()
    first_control = unmasked.index[unmasked["group"] == "CN"][0]
    unmasked.loc[first_control, "mask"] = ""
    with pytest.raises(ValueError, match="no brain mask|gives none"):
        cohort.measured_tissue_fractions(unmasked, max_subjects=1000)
