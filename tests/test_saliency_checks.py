"""Voxel attributions, content-free saliency baselines on the maps' grid, deletion curves, the prior comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from brainage_core.analysis import interpret
from brainage_core.analysis.interpret import GradRAM, saliency_maps
from brainage_core.analysis.interpret.attributions import ATTRIBUTION_METHODS, attribution_maps
from brainage_core.analysis.interpret.benchmark import BASELINES, saliency_benchmark
from brainage_core.analysis.interpret.priors import (
    central_blob,
    deletion_areas,
    deletion_curves,
    layer_grid,
    layer_shape,
    population_prior,
)
from brainage_core.analysis.interpret.tables import prior_comparison
from brainage_core.cohorts.synthetic import generate_cohort
from brainage_core.config import load_config
from brainage_core.models import ModelConfig, build_model
from brainage_core.train import train
from tests.test_interpret import SIZE, OneRegionNet, one_region_cohort
from tests.test_train import tiny_overrides


def test_baselines_live_on_the_grid_of_the_layer_maps() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=0.125)).eval()
    volumes = torch.rand(2, 1, 32, 48, 32)
    grid = layer_shape(model, "encoder.layer3", volumes.shape[2:])
    assert grid == tuple(GradRAM(model, "encoder.layer3").compute_map(volumes).shape[2:])
    masks = torch.zeros_like(volumes)
    masks[:, :, 4:28, 6:42, 4:28] = 1
    assert central_blob(masks, grid).shape == volumes.shape
    prior = population_prior(torch.rand(5, 1, 32, 48, 32), grid)
    assert prior.shape == (1, 1, 32, 48, 32)
    # On the layer grid a map keeps only the grid's degrees of freedom: detail that averages to
    # zero within every grid cell leaves it unchanged.
    noise = torch.randn_like(volumes)
    cell_means = F.interpolate(F.adaptive_avg_pool3d(noise, grid), size=volumes.shape[2:], mode="nearest")
    blob = central_blob(masks)
    torch.testing.assert_close(layer_grid(blob + noise - cell_means, grid), layer_grid(blob, grid))
    assert not torch.allclose(layer_grid(blob + noise, grid), layer_grid(blob, grid))


def test_central_blob_peaks_at_the_brain_centre() -> None:
    masks = torch.zeros(1, 1, 20, 20, 20)
    masks[:, :, 4:13, 6:15, 2:11] = 1  # centroid (8, 10, 6)
    blob = central_blob(masks)[0, 0]
    assert tuple(int(i) for i in np.unravel_index(int(blob.argmax()), blob.shape)) == (8, 10, 6)
    assert blob.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fewer than 2 voxels"):
        central_blob(torch.zeros(1, 1, 4, 4, 4))


def test_population_prior_is_the_mean_absolute_effect() -> None:
    effects = torch.stack([torch.full((1, 3, 3, 3), -2.0), torch.full((1, 3, 3, 3), 4.0)])
    torch.testing.assert_close(population_prior(effects), torch.full((1, 1, 3, 3, 3), 3.0))
    with pytest.raises(ValueError, match=r"\[M, 1, X, Y, Z\]"):
        population_prior(np.zeros((3, 3)))


def test_deleting_the_salient_region_hurts_more_than_random_deletion() -> None:
    model = OneRegionNet().eval()
    volumes, effect = one_region_cohort(6, seed=1)
    ages = model(volumes).detach() + torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    fill = volumes.mean(0)
    maps = {
        "gradram": saliency_maps(model, volumes, "features"),
        "truth": effect,
        "prior": effect.mean(0, keepdim=True),
    }
    curves = deletion_curves(model, volumes, ages.numpy(), maps, fill, fractions=(0.0, 0.02, 0.05))
    at_zero = curves[curves["fraction"] == 0]["mae"]
    assert np.allclose(at_zero, at_zero.iloc[0]), "nothing deleted: every curve starts at the same MAE"
    assert at_zero.iloc[0] == pytest.approx(1.1667, abs=1e-3)
    areas = deletion_areas(curves).set_index("method")
    assert (areas["area"] > 0).all(), areas
    assert areas.loc["truth", "mae_at_max"] > areas.loc["truth", "random_mae_at_max"] + 5
    assert curves["n_subjects"].eq(6).all() and volumes.shape[-1] == SIZE
    with pytest.raises(ValueError, match="fractions must lie in"):
        deletion_curves(model, volumes, ages.numpy(), maps, fill, fractions=(1.5,))


def test_prior_comparison_needs_every_baseline_beaten() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(2.0, 0.5, size=80)
    scores = {"rnc": base + 1.0, "mse": base, "chance": np.ones(80), "blob": base + 0.01 * rng.normal(size=80)}
    table = prior_comparison(scores, ["rnc", "mse"], ["chance", "blob"], n_boot=500).set_index(["map", "baseline"])
    assert table.loc[("rnc", "blob"), "difference"] == pytest.approx(1.0, abs=0.01)
    assert table.loc[("rnc", "chance"), "beats"] and table.loc[("rnc", "blob"), "beats"]
    assert table.loc[("rnc", "chance"), "beats_all"]
    assert table.loc[("mse", "chance"), "beats"] and not table.loc[("mse", "blob"), "beats"]
    assert not table.loc[("mse", "chance"), "beats_all"], "beating chance alone is not enough"
    with pytest.raises(ValueError, match="one value per scan"):
        prior_comparison({"a": [1.0, 2.0], "b": [1.0]}, ["a"], ["b"])


@pytest.mark.parametrize("method", ATTRIBUTION_METHODS)
def test_attributions_find_the_one_region_the_model_reads(method: str) -> None:
    model = OneRegionNet().eval()
    volumes, _ = one_region_cohort(2, seed=1)
    maps = attribution_maps(model, volumes, method, baseline=volumes.mean(0))
    assert maps.shape == volumes.shape
    mass = maps.abs()[:, :, :16, :16, :16].flatten(1).sum(1) / maps.abs().flatten(1).sum(1)  # [N]
    assert mass.min() > 0.9, mass.tolist()


def test_integrated_gradients_are_complete() -> None:
    """The attributions sum to the predicted age minus that of the baseline image."""
    model = OneRegionNet().eval()
    volumes, _ = one_region_cohort(2, seed=2)
    baseline = volumes.mean(0, keepdim=True)
    maps = attribution_maps(model, volumes, "integrated_gradients", baseline=baseline, ig_steps=64)
    expected = (model(volumes) - model(baseline)).detach()
    torch.testing.assert_close(maps.flatten(1).sum(1), expected, atol=0.05, rtol=0.01)
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribution_maps(model, volumes, "lime")


@pytest.mark.slow
def test_benchmark_scores_each_method_against_every_baseline(tmp_path: Path) -> None:
    manifest = generate_cohort(tmp_path / "cohort", n_subjects=24, seed=0, spacing=4.0, progress=False, workers=1)
    run = train(load_config(None, tiny_overrides(tmp_path, manifest, "rnc")), tmp_path / "run", progress=False)
    methods = ("gradram", "gradient_x_input")
    result = saliency_benchmark(
        {"rnc": run}, tmp_path / "dage", layer="encoder.layer2", methods=methods, min_age=20, n_boot=200
    )
    n = result.n_subjects
    assert n >= 1 and len(list((tmp_path / "dage").glob("*_dage.nii.gz"))) == n
    assert len(result.lifts) == len(methods) * 4 * n
    assert set(result.lifts["candidate"]) == {"map", "central_blob", "population_prior", "random_weights"}
    assert (result.lifts["lift"] >= 0).all()
    assert len(result.comparison) == len(methods) * 4 and set(result.comparison["baseline"]) == set(BASELINES)
    assert (result.comparison.query("baseline == 'chance'")["baseline_score"] == 1.0).all()
    assert {"random", "central_blob", "population_prior", *methods} == set(result.deletion["method"])
    assert set(result.deletion_areas["method"]) == {"central_blob", "population_prior", *methods}
    with pytest.raises(ValueError, match="no healthy test scan aged >= 200"):
        saliency_benchmark({"rnc": run}, tmp_path / "dage", methods=methods, min_age=200)


def test_benchmark_sentences_say_when_no_map_beats_the_baselines() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(3.0, 0.3, size=40)
    rows = []
    for model, gain in (("RNC", 0.5), ("MSE", -1.0)):
        scores = {"map": base + gain, "chance": np.ones(40), "central_blob": base, "random_weights": base - 2}
        table = prior_comparison(scores, ["map"], ["chance", "central_blob", "random_weights"], n_boot=300)
        rows.append(table.drop(columns="map").assign(model=model, method="gradram"))
    comparison = pd.concat(rows, ignore_index=True)
    areas = pd.DataFrame(
        {"model": ["RNC", "MSE", "RNC"], "method": ["gradram", "gradram", "central_blob"], "area": [0.5, -0.2, 1.0]}
    )
    values = interpret.benchmark_values(comparison, areas, "RNC", "MSE")
    assert (
        values["verdict"].startswith("1 of 2 maps beat every trivial baseline") and "RNC gradram" in values["verdict"]
    )
    assert "The hardest baseline is the central blob, which 1 maps do not beat." in values["verdict"]
    assert values["deletion"].startswith("Deleting the most salient voxels first hurts the model more than random")
    assert (
        "for 1 of 2 maps (RNC gradram)" in values["deletion"]
        and "content-free map 1.00 (RNC central blob)" in values["deletion"]
    )
    table = interpret.benchmark_table(comparison)
    assert table.loc[("RNC", "gradram"), "beats all"] == "yes" and table.loc[("MSE", "gradram"), "beats all"] == "no"
    assert table.loc[("RNC", "gradram"), "central_blob diff"].endswith("*")
    comparison["beats"], comparison["beats_all"] = False, False
    assert interpret.benchmark_values(comparison, areas, "RNC", "MSE")["verdict"].startswith("None of the 2 maps")


def test_randomization_reading_does_not_take_anticorrelation_for_learning() -> None:
    assert "not evidence" in interpret.randomization_sentence(-0.5)
    assert "echo the input" in interpret.randomization_sentence(0.8)
    assert "changed with training" in interpret.randomization_sentence(0.1)


def test_region_relevance_shares_and_enrichment() -> None:
    labels = np.zeros((2, 4, 4, 4), dtype=np.int64)
    labels[:, :2] = 47  # hippocampus: half the brain
    labels[:, 2:] = 4  # a ventricle: the other half
    maps = np.zeros((2, 1, 4, 4, 4))
    maps[0, 0, :2] = 3.0  # all relevance in the hippocampus
    maps[1, 0] = -1.0  # flat
    table = interpret.region_relevance(maps, labels, ["a", "b"], {"hippocampus": (47, 48), "ventricles": (4,)})
    rows = table.set_index(["subject_id", "region"])
    assert rows.loc[("a", "hippocampus"), "share"] == 1.0 and rows.loc[("a", "hippocampus"), "enrichment"] == 2.0
    assert rows.loc[("b", "ventricles"), "share"] == 0.5 and rows.loc[("b", "ventricles"), "enrichment"] == 1.0
    with pytest.raises(ValueError, match="cover the same voxels"):
        interpret.region_relevance(maps, labels[:, :2], ["a", "b"])


def test_relevance_follows_volume_and_methods_agree() -> None:
    ids = [f"s{i}" for i in range(6)]
    volume = np.linspace(10, 60, 6)
    relevance = pd.DataFrame(
        {
            "subject_id": ids,
            "region": "ventricles",
            "share": volume / 100,
            "volume_share": 0.1,
            "enrichment": volume / 10,
        }
    )
    volumes = pd.DataFrame({4: volume / 2, 51: volume / 2}, index=pd.Index(ids, name="subject_id"))
    correlation = interpret.relevance_volume_correlation(relevance, volumes, {"ventricles": (4, 51)})
    assert correlation.loc[0, "pearson_r"] == pytest.approx(1.0) and correlation.loc[0, "n_subjects"] == 6
    other = relevance.assign(region=["a", "b", "c", "d", "e", "f"])
    agreement = interpret.method_agreement({"x": other, "y": other.assign(enrichment=other["enrichment"] * 3)})
    assert agreement.loc["x", "y"] == pytest.approx(1.0)
    result = interpret.RegionSaliency(
        relevance=other.assign(method="x"),
        correlation=correlation.assign(method="x"),
        agreement=agreement,
        n_subjects=6,
    )
    values = interpret.region_values(result)
    assert values["top_regions"] == "x: f (6.0 times its share of the brain)."
    assert values["volume_sentence"].startswith("Across subjects, the ventricles' relevance enrichment against")
    assert values["agreement_sentence"] == (
        "Between methods, the Spearman correlation of the regions' enrichment ranges from 1.00 to 1.00."
    )
