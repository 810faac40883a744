"""Tests of the synthetic aging cohort (the brainage_core.cohorts.synthetic package, baseline)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage_core.analysis.baseline import baseline_age_prediction
from brainage_core.cohorts import synthetic as synth
from brainage_core.cohorts.synthetic import SubjectParams, SynthConfig, assign_cohort_splits, sample_subjects
from brainage_core.cohorts.synthetic.model import FIELD_GRID_MM
from brainage_core.cohorts.synthetic.params import AGING_PROCESSES
from brainage_core.cohorts.synthetic.subjects import AD_COMPONENTS, ANATOMY_TRAITS
from brainage_core.config_loader import ConfigError
from brainage_core.manifest import read_manifest, validate_manifest

ROOT = Path(__file__).resolve().parents[1]
SPACING = 3.0


@pytest.fixture(scope="module")
def model() -> synth.SynthModel:
    return synth.prepare_model(SPACING)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 6-subject cohort made with 2 workers and with 1, and another seed."""
    root = tmp_path_factory.mktemp("cohorts")
    return {
        "two_workers": synth.generate_cohort(root / "a", 6, seed=0, spacing=SPACING, progress=False, workers=2),
        "one_worker": synth.generate_cohort(root / "b", 6, seed=0, spacing=SPACING, progress=False, workers=1),
        "other_seed": synth.generate_cohort(root / "c", 6, seed=1, spacing=SPACING, progress=False, workers=1),
    }


def _subject(model: synth.SynthModel, **changes: object) -> SubjectParams:
    """A controlled subject: template-sized head, no pose change, median WMH, average anatomy and rates."""
    base = sample_subjects(1, 0, model.config)[0]
    fixed = dict(
        group="CN",
        age=75.0,
        true_gap=0.0,
        severity=0.0,
        cdr=0.0,
        head_scale=1.0,
        rotation_deg=(0.0, 0.0, 0.0),
        translation_mm=(0.0, 0.0, 0.0),
        wmh_z=0.0,
        site_gain=1.0,
        site_contrast=0.0,
        site_noise=1.0,
        anatomy_z=dict.fromkeys(ANATOMY_TRAITS, 0.0),
        rate_z=dict.fromkeys(AGING_PROCESSES, 0.0),
        pattern_z=dict.fromkeys(AD_COMPONENTS, 0.0),
    )
    return dataclasses.replace(base, **{**fixed, **changes})


def _volumes(model: synth.SynthModel, subject: SubjectParams) -> dict[str, float]:
    return synth.tissue_volumes(synth.synthesize_subject(model, subject).tissues, SPACING)


def _files(manifest: Path) -> dict[str, bytes]:
    root = manifest.parent
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: setattr(c.groups["CN"], "gap_sd", -1.0), "groups.CN.gap_sd"),
        (lambda c: setattr(c.groups["AD"], "age_max", 130.0), "groups.AD.age_max"),
        (lambda c: setattr(c.groups["PD"], "age_min", 90.0), "age_min 90 > age_max 85"),
        (
            lambda c: c.groups.update(XX=dataclasses.replace(c.groups["CN"], fraction=0.0)),
            "unknown group name(s) ['XX']",
        ),
        (lambda c: setattr(c.groups["CN"], "fraction", 0.5), "sum to 0.8"),
        (lambda c: setattr(c.scanner, "noise_sd", -0.1), "scanner.noise_sd"),
        (lambda c: setattr(c.aging, "gm_loss_per_year", float("nan")), "aging.gm_loss_per_year"),
        (lambda c: c.splits.update(train=0.9), "splits: fractions sum to 1.3"),
    ],
)
def test_bad_config_fails_before_writing(tmp_path: Path, change: object, message: str) -> None:
    config = SynthConfig()
    change(config)
    out_dir = tmp_path / "cohort"
    with pytest.raises(ValueError, match=re.escape(message)):
        synth.generate_cohort(out_dir, 4, seed=0, spacing=SPACING, config=config, progress=False, workers=1)
    assert not out_dir.exists()


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"spacing": 0.0}, "spacing"), ({"n_subjects": 0}, "n_subjects"), ({"seed": -1}, "seed")]
)
def test_bad_arguments_fail_before_writing(tmp_path: Path, kwargs: dict[str, float], message: str) -> None:
    arguments = {"n_subjects": 4, "seed": 0, "spacing": SPACING, **kwargs}
    with pytest.raises(ValueError, match=message):
        synth.generate_cohort(tmp_path / "cohort", progress=False, workers=1, **arguments)
    assert not (tmp_path / "cohort").exists()


def test_config_yaml_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "synth.yaml"
    path.write_text(
        "groups:\n  CN: {fraction: 0.6}\n  AD: {fraction: 0.25}\n"
        "aging:\n  gm_loss_per_year: 0.004\n"
        "scores:\n  ad_cdr_probabilities: {0.5: 0.5, 1: 0.5}\n"
    )
    config = SynthConfig.from_yaml(path)
    assert config.groups["AD"].fraction == 0.25 and config.groups["PD"].fraction == 0.15
    assert config.aging.gm_loss_per_year == 0.004 and config.scores.ad_cdr_probabilities == {0.5: 0.5, 1.0: 0.5}
    assert SynthConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    path.write_text("aging:\n  gm_loss_per_yr: 0.004\n")
    with pytest.raises(ConfigError, match="aging.gm_loss_per_yr: unknown key"):
        SynthConfig.from_yaml(path)


def test_config_loader_lists_every_problem_at_once(tmp_path: Path) -> None:
    path = tmp_path / "synth.yaml"
    path.write_text(
        "groups:\n  XX: {fraction: 0.1}\n  AD: {fraction: many}\n  PD: 3\n"
        "aging: {gm_loss_per_yr: 0.004, wm_gain_max: 0.9}\n"
        "shape: 3\nsplits: {train: 0.5, val: 0.2, test: 0.2}\n"
    )
    with pytest.raises(ConfigError) as caught:
        SynthConfig.from_yaml(path)
    expected = [
        "groups: unknown group name(s) ['XX']; the phantom simulates only ['CN', 'AD', 'PD']",
        "shape: unknown key in the config; valid keys:",
        "groups.AD.fraction: must be a number, got 'many'",
        "groups.PD: must be a section (a mapping of keys), got 3",
        "aging.gm_loss_per_yr: unknown key in section 'aging'; valid keys:",
        "splits: fractions sum to 0.9, they must sum to 1",
        "aging.wm_gain_max = 0.9 is outside the allowed range [0, 0.2]",
    ]
    problems = caught.value.problems
    assert len(problems) == len(expected), problems
    assert all(problem.startswith(start) for problem, start in zip(problems, expected)), problems
    assert str(path) in str(caught.value)
    path.write_text("groups: [CN]\n")
    with pytest.raises(ConfigError, match="groups: must be a mapping of sections"):
        SynthConfig.from_yaml(path)
    path.write_text("aging: {gm_loss_per_year: [0.1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        SynthConfig.from_yaml(path)


def test_config_values_take_their_declared_types() -> None:
    config = SynthConfig.from_dict(
        {"groups": {"AD": {"age_min": 62}}, "splits": {"train": 1}, "scanner": {"n_sites": 2.0}}
    )
    assert config.groups["AD"] == dataclasses.replace(SynthConfig().groups["AD"], age_min=62.0)
    assert isinstance(config.groups["AD"].age_min, float) and config.splits == {"train": 1.0}
    assert isinstance(config.splits["train"], float) and config.scanner.n_sites == 2
    assert isinstance(config.scanner.n_sites, int)


def test_the_cohort_package_imports_no_torch() -> None:
    """Spawned workers import the package for every cohort: it must stay light (no torch)."""
    code = "import sys, brainage_core.cohorts.synthetic; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"


def test_subject_sampling_is_realistic() -> None:
    config = SynthConfig()
    subjects = sample_subjects(400, 3, config)
    frame = pd.DataFrame([dataclasses.asdict(s) | {"biological_age": s.biological_age} for s in subjects])
    assert frame["group"].value_counts().to_dict() == {"CN": 280, "AD": 60, "PD": 60}
    for group, spec in config.groups.items():
        ages = frame.loc[frame["group"] == group, "age"]
        assert ages.between(spec.age_min, spec.age_max).all()
    ad, pd_ = frame[frame["group"] == "AD"], frame[frame["group"] == "PD"]
    mmse_by_cdr = ad.groupby("cdr")["mmse"].mean()
    assert mmse_by_cdr.is_monotonic_decreasing and ad["mmse"].between(0, 30).all()
    assert pd_.groupby("hoehn_yahr")["updrs3"].mean().is_monotonic_increasing
    assert np.corrcoef(pd_["updrs3"], pd_["hoehn_yahr"])[0, 1] > 0.6
    gaps = frame.groupby("group")["true_gap"].mean()
    assert abs(gaps["CN"]) < 1.0 and gaps["AD"] > gaps["PD"] > gaps["CN"]
    assert 3.0 < frame.loc[frame["group"] == "CN", "true_gap"].std() < 5.0
    assert np.corrcoef(ad["cdr"], ad["true_gap"])[0, 1] > 0  # gap grows with severity
    men, women = frame[frame["sex"] == "M"], frame[frame["sex"] == "F"]
    assert men["head_scale"].mean() > women["head_scale"].mean()
    splits = pd.Series(assign_cohort_splits(subjects, config, 3))
    assert splits.value_counts(normalize=True).round(2).to_dict() == {"train": 0.6, "val": 0.2, "test": 0.2}
    for group in ("CN", "AD", "PD"):
        in_group = splits[frame["group"] == group].value_counts(normalize=True)
        assert abs(in_group["train"] - 0.6) < 0.05


# --- cohort files ------------------------------------------------------------------------------


def test_same_seed_gives_identical_files(cohorts: dict[str, Path]) -> None:
    first, second = _files(cohorts["two_workers"]), _files(cohorts["one_worker"])
    assert len(first) == 3 * 6 + 3 + 1  # subject files, manifest, ground truth, cohort.json, ownership record
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_other_seed_gives_other_subjects(cohorts: dict[str, Path]) -> None:
    first, other = read_manifest(cohorts["one_worker"]), read_manifest(cohorts["other_seed"])
    assert not np.allclose(first["age"], other["age"])
    image_a = np.asarray(nib.load(first["image"].iloc[0]).dataobj)
    image_b = np.asarray(nib.load(other["image"].iloc[0]).dataobj)
    assert not np.array_equal(image_a, image_b)


def test_manifest_and_files(cohorts: dict[str, Path]) -> None:
    manifest = cohorts["two_workers"]
    assert validate_manifest(manifest) == []
    frame = read_manifest(manifest)
    for column in ("site", "split", "mask", "mmse", "cdr", "true_gap", "effect_map"):
        assert column in frame.columns
    truth = pd.read_csv(manifest.parent / "ground_truth.csv")
    volumes = ("gm_ml", "wm_ml", "csf_ventricular_ml", "csf_sulcal_ml", "wmh_ml", "hippocampal_gm_ml")
    for column in ("biological_age", "head_scale", *volumes):
        assert column in truth.columns
    assert np.allclose(truth["biological_age"], truth["age"] + truth["true_gap"], atol=0.011)
    meta = json.loads((manifest.parent / "cohort.json").read_text())
    assert meta["seed"] == 0 and meta["n_subjects"] == 6 and meta["spacing"] == SPACING and "package_version" in meta
    row = frame.iloc[0]
    image, mask, effect = (nib.load(row[c]) for c in ("image", "mask", "effect_map"))
    assert image.shape == mask.shape == effect.shape == (66, 78, 63)
    assert np.allclose(image.affine, mask.affine) and np.allclose(image.affine, effect.affine)
    assert np.allclose(np.diag(image.affine)[:3], SPACING) and nib.aff2axcodes(image.affine) == ("R", "A", "S")
    data, inside = np.asarray(image.dataobj), np.asarray(mask.dataobj) > 0
    assert data.dtype == np.int16 and (data[~inside] == 0).all() and 1300 < inside.sum() * SPACING**3 / 1000 < 2600
    assert (effect.get_fdata()[~inside] == 0).all()


def test_rerun_reuses_refuses_or_regenerates(cohorts: dict[str, Path], tmp_path: Path) -> None:
    manifest = cohorts["one_worker"]
    before = manifest.stat().st_mtime_ns
    assert synth.generate_cohort(manifest.parent, 6, seed=0, spacing=SPACING, progress=False, workers=1) == manifest
    assert manifest.stat().st_mtime_ns == before  # complete and matching: reused
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes.txt"):
        synth.generate_cohort(foreign, 2, seed=0, spacing=SPACING, progress=False, workers=1)


def test_interrupted_generation_leaves_no_trusted_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out_dir = tmp_path / "cohort"
    synth.generate_cohort(out_dir, 3, seed=0, spacing=SPACING, progress=False, workers=1)
    real = synth.synthesize_subject
    calls = []

    def failing(model: synth.SynthModel, subject: SubjectParams) -> synth.SubjectImages:
        calls.append(subject.subject_id)
        if len(calls) == 3:
            raise RuntimeError("injected failure")
        return real(model, subject)

    monkeypatch.setattr(synth.writer, "synthesize_subject", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        synth.generate_cohort(out_dir, 4, seed=0, spacing=SPACING, progress=False, workers=1)
    assert not (out_dir / "manifest.csv").exists() and not (out_dir / "cohort.json").exists()
    assert not list(out_dir.rglob(".tmp-*"))
    monkeypatch.setattr(synth.writer, "synthesize_subject", real)
    manifest = synth.generate_cohort(out_dir, 4, seed=0, spacing=SPACING, progress=False, workers=1)
    assert validate_manifest(manifest) == [] and len(read_manifest(manifest)) == 4


def test_baseline_runs_on_a_cohort(cohorts: dict[str, Path]) -> None:
    result = baseline_age_prediction(cohorts["one_worker"], n_splits=3, seed=0)
    assert result["n"] == 6 and np.isfinite(result["mae_ridge"]) and result["mae_mean"] > 0
    with pytest.raises(ValueError, match="need at least"):
        baseline_age_prediction(cohorts["one_worker"], n_splits=5)


# --- biology -----------------------------------------------------------------------------------


def test_template_compartments(model: synth.SynthModel) -> None:
    template = synth.load_template(SPACING)
    names = ("gm", "wm", "csf_ventricular", "csf_sulcal", "envelope")
    volumes = synth.tissue_volumes({name: template[name] for name in names}, SPACING)
    assert 10 < volumes["csf_ventricular"] < 40  # lateral + third ventricles of a young adult
    assert abs(sum(volumes[name] for name in names[:4]) - volumes["envelope"]) < 1.0
    assert volumes["gm"] > volumes["wm"] > volumes["csf_sulcal"] > volumes["csf_ventricular"]


def test_aging_trajectories(model: synth.SynthModel) -> None:
    by_age = {age: _volumes(model, _subject(model, age=float(age))) for age in (25, 45, 65, 85)}
    gm = [by_age[a]["gm"] for a in (25, 45, 65, 85)]
    assert gm[0] > gm[1] > gm[2] > gm[3] and 0.1 < 1 - gm[3] / gm[0] < 0.35
    ventricles = [by_age[a]["csf_ventricular"] for a in (25, 45, 65, 85)]
    growth = np.diff(ventricles)
    assert growth[2] > growth[1] > growth[0] > 0  # accelerating
    wm = [by_age[a]["wm"] for a in (25, 45, 65, 85)]
    assert wm[1] > wm[0] and wm[1] > wm[3]  # inverted U
    assert by_age[85]["csf_sulcal"] > by_age[45]["csf_sulcal"]
    assert by_age[85]["wmh"] > by_age[65]["wmh"] > by_age[45]["wmh"]
    assert by_age[85]["hippocampal_gm"] < by_age[25]["hippocampal_gm"]


def test_intensities_and_effect_map(model: synth.SynthModel) -> None:
    young = synth.synthesize_subject(model, _subject(model, age=model.config.aging.reference_age, wmh_z=-5.0))
    assert young.effect.max() < 0.01  # the reference itself: nothing changed
    old = synth.synthesize_subject(model, _subject(model, age=85.0))
    tissues = old.tissues
    image = old.image.astype(float)
    wm, gm = image[tissues["wm"] > 0.9].mean(), image[tissues["gm"] > 0.9].mean()
    csf = image[tissues["csf_ventricular"] > 0.9].mean()
    assert wm > gm > csf > 0
    ventricle_rim = (tissues["csf_ventricular"] > 0.5) & (young.tissues["csf_ventricular"] < 0.5)
    assert old.effect[ventricle_rim].mean() > 5 * old.effect[(old.mask > 0) & ~ventricle_rim].mean()


def test_age_derivative_is_exact_where_the_image_is_linear_in_age() -> None:
    """With every volume change switched off, only the GM/WM contrast moves, linearly in age:
    the finite difference equals the analytic slope, voxel by voxel."""
    aging = dataclasses.replace(
        synth.AgingEffects(),
        gm_loss_per_year=0.0,
        gm_loss_acceleration=0.0,
        wm_gain_max=0.0,
        wm_decline_quadratic=0.0,
        ventricle_growth_per_year=0.0,
        ventricle_growth_quadratic=0.0,
        wmh_growth_per_year=0.0,
        hippocampal_loss_per_year=0.0,
        hippocampal_loss_quadratic=0.0,
        temporal_loss_quadratic=0.0,
    )
    still = synth.prepare_model(SPACING, dataclasses.replace(synth.SynthConfig(), aging=aging))
    subject = _subject(still, age=70.0)
    derivative = synth.age_derivative(still, subject)
    images = synth.synthesize_subject(still, subject)
    tissues, levels = images.tissues, still.config.intensities
    rate = aging.contrast_loss_per_year
    expected = (-rate * levels.wm * tissues["wm"] + rate * levels.gm * tissues["gm"]) / levels.wm
    expected = expected * (images.mask > 0)
    np.testing.assert_allclose(derivative, expected, atol=1e-6)
    with pytest.raises(ValueError, match="step must be > 0"):
        synth.age_derivative(still, subject, step=0.0)


def test_age_derivative_marks_where_an_old_brain_is_aging(model: synth.SynthModel) -> None:
    subject = _subject(model, age=75.0)
    derivative = np.abs(synth.age_derivative(model, subject))
    tissues = synth.synthesize_subject(model, subject).tissues
    rim = (tissues["csf_ventricular"] > 0.05) & (tissues["csf_ventricular"] < 0.95)
    deep_wm = (tissues["wm"] > 0.99) & (tissues["wmh"] == 0)
    assert derivative[rim].mean() > 5 * derivative[deep_wm].mean()


@pytest.mark.slow
def test_age_derivatives_of_a_written_cohort(cohorts: dict[str, Path], tmp_path: Path) -> None:
    cohort = cohorts["one_worker"].parent
    model, subjects = synth.cohort_subjects(cohort)
    first = read_manifest(cohorts["one_worker"]).iloc[0]
    redrawn = synth.synthesize_subject(model, subjects[first["subject_id"]]).image
    np.testing.assert_array_equal(redrawn, np.asarray(nib.load(first["image"]).dataobj))  # drawn again exactly
    ids = sorted(subjects)[:2]
    paths = synth.write_age_derivatives(cohort, ids, tmp_path / "dage")
    for subject_id, path in paths.items():
        stored = nib.load(path)
        np.testing.assert_allclose(stored.get_fdata(), synth.age_derivative(model, subjects[subject_id]), atol=1e-6)
        np.testing.assert_allclose(stored.affine, model.affine)
    stamp = paths[ids[0]].stat().st_mtime_ns
    assert synth.write_age_derivatives(cohort, ids, tmp_path / "dage") == paths
    assert paths[ids[0]].stat().st_mtime_ns == stamp, "existing maps are reused"
    with pytest.raises(ValueError, match="no subjects"):
        synth.write_age_derivatives(cohort, ["sub-9999"], tmp_path / "dage")
    with pytest.raises(ValueError, match="no cohort.json"):
        synth.cohort_subjects(tmp_path)


def test_disease_effects_scale_with_severity(model: synth.SynthModel) -> None:
    control = _volumes(model, _subject(model))
    ad = {cdr: _volumes(model, _subject(model, group="AD", cdr=cdr, severity=cdr)) for cdr in (0.5, 1.0, 2.0)}
    pd_ = _volumes(model, _subject(model, group="PD", cdr=float("nan"), severity=1.0, updrs3=30.0, hoehn_yahr=2.0))
    ventricles = [control["csf_ventricular"]] + [ad[c]["csf_ventricular"] for c in (0.5, 1.0, 2.0)]
    assert ventricles == sorted(ventricles) and ventricles[-1] > 1.3 * ventricles[0]
    hippocampus = [control["hippocampal_gm"]] + [ad[c]["hippocampal_gm"] for c in (0.5, 1.0, 2.0)]
    assert hippocampus == sorted(hippocampus, reverse=True) and hippocampus[-1] < 0.8 * hippocampus[0]
    csf = {name: v["csf_ventricular"] + v["csf_sulcal"] for name, v in (("CN", control), ("AD", ad[1.0]), ("PD", pd_))}
    assert csf["AD"] - csf["CN"] > csf["PD"] - csf["CN"] > 0
    assert control["gm"] > pd_["gm"] > ad[1.0]["gm"]


def test_image_measured_csf_follows_age(model: synth.SynthModel, tmp_path: Path) -> None:
    measured = {}
    for age in (30.0, 80.0):
        result = synth.synthesize_subject(model, _subject(model, age=age))
        paths = {kind: tmp_path / f"{kind}_{age:g}.nii.gz" for kind in ("image", "mask")}
        nib.save(nib.Nifti1Image(result.image, model.affine), paths["image"])
        nib.save(nib.Nifti1Image(result.mask, model.affine), paths["mask"])
        measured[age] = synth.image_tissue_volumes(paths["image"], paths["mask"])
    assert measured[80.0]["csf"] > 1.3 * measured[30.0]["csf"] and measured[80.0]["gm"] < measured[30.0]["gm"]


def test_a_relative_output_folder_keeps_every_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Notebooks pass paths like '../cohort': the stale-file sweep must not delete the new files."""
    (tmp_path / "book").mkdir()
    monkeypatch.chdir(tmp_path / "book")
    manifest = synth.generate_cohort("../cohort", 4, seed=1, spacing=4.0, progress=False, workers=1)
    assert validate_manifest(manifest) == []
    assert len(list((tmp_path / "cohort" / "images").iterdir())) == 4


def test_hippocampus_ages_on_its_own_curve(model: synth.SynthModel) -> None:
    """Slow before 60, about 1 %/y of the remaining volume late in life (fraser2015hippocampal)."""

    def remaining(age: float) -> float:
        return 1.0 - synth.aging_targets(_subject(model, age=age), model.config)["hippocampal_loss"]

    def percent_per_year(age: float) -> float:
        return 100.0 * (remaining(age - 0.5) - remaining(age + 0.5)) / remaining(age)

    assert percent_per_year(45.0) < 0.3
    assert 0.6 < percent_per_year(75.0) < 1.5 and percent_per_year(80.0) > percent_per_year(70.0)
    # The medial temporal lobe does not follow the cortex: switching cortical aging off leaves it.
    still_cortex = dataclasses.replace(model.config.aging, gm_loss_per_year=0.0, gm_loss_acceleration=0.0)
    other = synth.prepare_model(SPACING, dataclasses.replace(model.config, aging=still_cortex))
    old = {
        name: _volumes(m, _subject(m, age=80.0))["hippocampal_gm"] for name, m in (("all", model), ("no cortex", other))
    }
    assert old["no cortex"] == pytest.approx(old["all"], rel=0.03)


def test_individual_anatomy_and_rates_change_one_subject(model: synth.SynthModel) -> None:
    """Age-independent anatomy and subject-specific rates: same age, different brains."""
    base = _subject(model, age=70.0)
    average = _volumes(model, base)
    big_ventricles = _volumes(model, dataclasses.replace(base, anatomy_z={**base.anatomy_z, "ventricles": 1.0}))
    ratio = big_ventricles["csf_ventricular"] / average["csf_ventricular"]
    assert ratio == pytest.approx(np.exp(model.config.anatomy.ventricle_log_sd), rel=0.1)
    fast_hippocampus = _volumes(model, dataclasses.replace(base, rate_z={**base.rate_z, "hippocampus": 2.0}))
    assert fast_hippocampus["hippocampal_gm"] < 0.95 * average["hippocampal_gm"]
    assert fast_hippocampus["csf_sulcal"] == pytest.approx(average["csf_sulcal"], rel=0.01)  # other processes kept
    thin_cortex = _volumes(model, dataclasses.replace(base, anatomy_z={**base.anatomy_z, "cortex": 2.0}))
    assert thin_cortex["gm"] < 0.97 * average["gm"] and thin_cortex["csf_sulcal"] > average["csf_sulcal"]
    rates = np.array([[s.rate_z[p] for p in AGING_PROCESSES] for s in sample_subjects(400, 0, model.config)])
    correlation = np.corrcoef(rates.T)[np.triu_indices(len(AGING_PROCESSES), 1)]
    assert abs(correlation.mean() - model.config.aging.rate_correlation) < 0.1  # one shared factor


def test_the_shape_deformation_is_a_diffeomorphism(model: synth.SynthModel) -> None:
    """Scaling and squaring keeps the Jacobian determinant positive (no folding) everywhere."""
    strong = dataclasses.replace(model.config.anatomy, deformation_coarse_sd_mm=10.0, deformation_sd_mm=5.0)
    folded = synth.prepare_model(SPACING, dataclasses.replace(model.config, anatomy=strong))
    for seed in range(3):
        displacement = synth.diffeomorphic_displacement(np.random.default_rng(seed), folded)  # output voxels
        gradients = np.stack([np.stack(np.gradient(component)) for component in displacement])  # (3, 3, ...)
        jacobian = np.moveaxis(gradients * (SPACING / FIELD_GRID_MM), (0, 1), (-2, -1)) + np.eye(3)
        assert np.linalg.det(jacobian).min() > 0
        assert np.abs(displacement).max() * SPACING > 5.0  # large, yet invertible


def test_parkinson_shrinks_the_putamen_without_making_csf(model: synth.SynthModel) -> None:
    control = synth.synthesize_subject(model, _subject(model))
    patient = synth.synthesize_subject(
        model, _subject(model, group="PD", cdr=float("nan"), severity=2.0, updrs3=60.0, hoehn_yahr=3.0)
    )
    to_index = np.linalg.inv(model.affine)  # the control has no pose change: MNI mm -> voxel
    centre = np.rint(to_index[:3, :3] @ np.array(synth.REGIONS["putamen"][0]) + to_index[:3, 3]).astype(int)
    region = np.zeros(model.shape, bool)
    region[tuple(slice(c - 2, c + 3) for c in centre)] = True  # a 15-mm cube in the right putamen
    lost_gm = (control.tissues["gm"] - patient.tissues["gm"])[region].sum()
    gained_wm = (patient.tissues["wm"] - control.tissues["wm"])[region].sum()
    gained_sulcal = (patient.tissues["csf_sulcal"] - control.tissues["csf_sulcal"])[region].sum()
    assert lost_gm > 0.5 and gained_wm == pytest.approx(lost_gm, rel=0.05) and abs(gained_sulcal) < 0.05 * lost_gm
